"""Pools (hf backend on the tiny model; vLLM arguments through a stand-in module) and the feature
cache."""

from __future__ import annotations

import gc
import json
import sys
import types
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from repexp.features import (
    POOLINGS,
    FeatureError,
    ForwardMemory,
    cache_bytes,
    check_fits,
    dequantize_groups,
    length_batches,
    pooled_states,
    quantize_groups,
    read_cache,
    shared_prefix_cache,
    write_cache,
)
from repexp.models import load_model, load_tokenizer
from repexp.pools import (
    RawLogprobRecorder,
    Sampler,
    generate_hf,
    generate_shard,
    n_shards,
    prompt_ids_of,
    question_seed,
    shard_rows,
    vllm_calls,
    vllm_sampling_params,
)


@pytest.fixture(scope="module")
def questions():
    msgs = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(3)]
    return pd.DataFrame(
        {
            "qid": [f"q{i}" for i in range(3)],
            "prompt": [json.dumps(m) for m in msgs],
            "task": "gsm8k",
        }
    )


def test_shards_cover_the_questions_once():
    rows = [list(shard_rows(10, s, 4)) for s in range(n_shards(10, 4))]
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="shard 3 is empty"):
        shard_rows(10, 3, 4)


def test_question_seed_is_stable_and_distinct():
    assert question_seed(0, "m", "t", "s", "q1") == question_seed(0, "m", "t", "s", "q1")
    assert question_seed(0, "m", "t", "s", "q1") != question_seed(0, "m", "t", "s", "q2")
    assert question_seed(0, "m", "t", "s", "q1") != question_seed(1, "m", "t", "s", "q1")
    # pinned definition (sha256 of the joined parts): the same on every machine and Python version
    assert question_seed(0, "m", "t", "s", "q1") == 2111941674227697307


def test_sampler_validates():
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=0)


def test_pool_is_reproducible_and_independent_of_sharding(tiny, questions):
    kw = dict(
        n=6,
        sampler=Sampler(),
        max_new_tokens=12,
        seed=3,
        seed_parts=("tiny", "gsm8k", "vanilla"),
        batch_size=4,
        dtype="float32",
    )
    a = generate_shard(tiny, questions, **kw)
    b = generate_shard(tiny, questions, **kw)
    pd.testing.assert_frame_equal(a, b)
    # a question's responses do not depend on the other questions of its shard
    c = generate_shard(tiny, questions.iloc[2:], **kw)
    pd.testing.assert_frame_equal(c.reset_index(drop=True), a[a.qid == "q2"].reset_index(drop=True))
    assert list(a.columns) == [
        "qid",
        "sample",
        "prompt_ids",
        "response_ids",
        "text",
        "finish_reason",
        "logprob",
        "n_tokens",
    ]
    assert (a.groupby("qid")["sample"].apply(list) == [list(range(6))] * 3).all()
    assert set(a["finish_reason"]) <= {"stop", "length"}
    assert (a.loc[a.finish_reason == "length", "n_tokens"] == 12).all()


def test_logprob_and_finish_reason_match_a_forward_pass(tiny, questions):
    """The recorded log-prob is the raw model's, whatever the sampler; checked by a forward pass."""
    model, tok = load_model(tiny, dtype="float32"), load_tokenizer(tiny)
    prompt = prompt_ids_of(tok, json.loads(questions["prompt"][0]))
    rows = generate_hf(
        model,
        tok,
        prompt,
        n=4,
        sampler=Sampler(temperature=1.5, min_p=0.05),
        max_new_tokens=10,
        seed=11,
        batch_size=4,
    )
    for r in rows:
        ids = torch.tensor([prompt + r["response_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        want = sum(
            float(logp[len(prompt) - 1 + t, tok_id]) for t, tok_id in enumerate(r["response_ids"])
        )
        assert r["logprob"] == pytest.approx(want, rel=1e-4, abs=1e-3)
        eos = r["response_ids"][-1] == tok.eos_token_id
        assert (r["finish_reason"] == "stop") == eos
        assert tok.eos_token_id not in r["response_ids"][:-1]


def test_samplers_change_the_distribution(tiny, questions):
    model, tok = load_model(tiny, dtype="float32"), load_tokenizer(tiny)
    prompt = prompt_ids_of(tok, json.loads(questions["prompt"][0]))
    kw = dict(n=8, max_new_tokens=6, seed=5, batch_size=8)
    hot = generate_hf(model, tok, prompt, sampler=Sampler(temperature=1.0), **kw)
    nucleus = generate_hf(model, tok, prompt, sampler=Sampler(top_p=1e-9), **kw)
    # a tiny top-p keeps only the arg-max token (the random model is nearly uniform, so 0.01 would
    # keep ~1,500 tokens): every response is the greedy continuation
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[
        0, len(prompt) :
    ].tolist()
    for r in nucleus:
        assert r["response_ids"] == greedy[: len(r["response_ids"])]
    assert len({tuple(r["response_ids"]) for r in hot}) > 1


def test_raw_logprob_recorder_gathers_the_previous_token():
    rec = RawLogprobRecorder()
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    rec(torch.tensor([[7]]), scores)  # step 0: nothing sampled yet
    rec(torch.tensor([[7, 1]]), scores)  # token 1 was sampled at step 0
    out = rec.finish(torch.tensor([[7, 1, 0]]))  # token 0 sampled at step 1
    torch.testing.assert_close(out, torch.log(torch.tensor([[0.25, 0.5]])))


def test_vllm_sampling_params_set_every_field(monkeypatch):
    captured = {}

    class FakeParams:
        def __init__(self, **kw):
            captured.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=FakeParams))
    vllm_sampling_params(Sampler(temperature=1.5, min_p=0.05), n=64, max_new_tokens=512, seed=9)
    assert captured["n"] == 64 and captured["max_tokens"] == 512 and captured["seed"] == 9
    assert (captured["temperature"], captured["top_p"], captured["min_p"], captured["top_k"]) == (
        1.5,
        1.0,
        0.05,
        0,
    )
    assert captured["logprobs"] == 0 and captured["repetition_penalty"] == 1.0
    # the sum needs logprobs=0; the per-token entries as flat lists and without decoded strings
    assert captured["flat_logprobs"] is True and captured["detokenize"] is False


# ------------------------------------------------------------------------------------------------
# features
# ------------------------------------------------------------------------------------------------
def test_length_batches_respect_the_budget():
    lengths = np.array([5, 100, 7, 90, 3, 50])
    batches = length_batches(lengths, 200)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        assert lengths[b].max() * len(b) <= 200 or len(b) == 1


def test_pooled_states_match_a_hand_computation(tiny):
    """Response positions only: mean over [P, P+T), last = P+T-1, penultimate = P+T-2 (EOS
    included)."""
    base = load_model(tiny, dtype="float32", lm_head=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, size=p).tolist() for p in (5, 9, 3, 7)]
    responses = [rng.integers(0, 1000, size=t).tolist() for t in (4, 1, 12, 6)]
    feats = pooled_states(
        base, prompts, responses, batch_tokens=24
    )  # forces several padded batches
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            h = base(torch.tensor([p + r])).last_hidden_state[0].numpy()  # alone, no padding
        resp = h[len(p) :]
        np.testing.assert_allclose(feats["mean"][i], resp.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(feats["last"][i], resp[-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            feats["penultimate"][i], resp[-2 if len(r) > 1 else -1], rtol=1e-5, atol=1e-5
        )
        assert not np.allclose(feats["mean"][i], h.mean(0))  # prompt positions are not pooled


def test_shared_prompt_kv_cache_path_matches_full_forward_passes(tiny):
    """A question's responses run on its prompt's key/value cache: same states as a full pass."""
    base = load_model(tiny, dtype="float32", lm_head=False)
    rng = np.random.default_rng(1)
    p1, p2 = rng.integers(0, 1000, size=11).tolist(), rng.integers(0, 1000, size=6).tolist()
    prompts = [p1, p1, p2, p1, p2, p1, [7, 8, 9]]  # two shared prompts and a single one
    responses = [rng.integers(0, 1000, size=t).tolist() for t in (4, 1, 9, 13, 2, 7, 5)]
    feats = pooled_states(base, prompts, responses, batch_tokens=20)  # several batches per prompt
    plain = pooled_states(base, prompts, responses, batch_tokens=20, share_prompts=False)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            resp = base(torch.tensor([p + r])).last_hidden_state[0, len(p) :].numpy()
        for name, want in (
            ("mean", resp.mean(0)),
            ("last", resp[-1]),
            ("penultimate", resp[max(len(r) - 2, 0)]),
        ):
            np.testing.assert_allclose(
                feats[name][i], want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {i}"
            )
            np.testing.assert_allclose(
                plain[name][i], want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {i}"
            )


def test_cache_roundtrip_checksum_and_nan(tmp_path):
    rows = pd.DataFrame({"qid": ["a", "a", "b"], "sample": [0, 1, 0]})
    feats = {
        "mean": np.arange(12, dtype=np.float32).reshape(3, 4),
        "last": np.ones((3, 4), np.float32),
    }
    write_cache(tmp_path / "s.json", feats, rows, model="m", dtype="float32", shard_name="s")
    got, got_rows = read_cache(tmp_path / "s.json", "mean")
    np.testing.assert_array_equal(got, feats["mean"])
    assert got_rows.values.tolist() == [["a", 0], ["a", 1], ["b", 0]]
    manifest = json.loads((tmp_path / "s.json").read_text())
    assert manifest["dim"] == 4 and manifest["poolings"] == ["last", "mean"]
    with pytest.raises(FeatureError, match="no 'penultimate'"):
        read_cache(tmp_path / "s.json", "penultimate")
    # a cached file changed on disk is detected by its checksum
    data = bytearray((tmp_path / "s.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "s.safetensors").write_bytes(bytes(data))
    with pytest.raises(FeatureError, match="checksum.*cache_features"):
        read_cache(tmp_path / "s.json")
    bad = {"mean": feats["mean"].copy()}
    bad["mean"][2, 1] = np.nan
    with pytest.raises(FeatureError, match="shard-7.*question b sample 0"):
        write_cache(
            tmp_path / "t.json", bad, rows, model="m", dtype="float32", shard_name="shard-7"
        )
    assert not (tmp_path / "t.json").exists()


# ------------------------------------------------------------------------------------------------
# batch planning and the GPU memory model (issue 14, defect 2)
# ------------------------------------------------------------------------------------------------
def test_length_batches_count_the_prompt_per_row():
    """A row attends to the prompt too: R x (P + width) <= batch_tokens (by hand)."""
    lengths = np.array([10, 8, 6, 4])
    # P = 5: width 10 -> 1 x 15, 2 x 15 = 30, 3 x 15 = 45 > 40; then width 6 -> 2 x 11 = 22
    assert [b.tolist() for b in length_batches(lengths, 40, prefix=5)] == [[0, 1], [2, 3]]
    # without a prompt the same budget takes all four (4 x 10 = 40)
    assert [b.tolist() for b in length_batches(lengths, 40)] == [[0, 1, 2, 3]]
    # a single row over the cap is its own batch; no cap at all: one batch
    assert [b.tolist() for b in length_batches(lengths, 12, prefix=5)] == [[0], [1], [2], [3]]
    assert [b.tolist() for b in length_batches(lengths, None, prefix=500)] == [[0, 1, 2, 3]]


def _memory():
    # H = 8, 2 layers, 4 heads over 2 key/value heads of dim 2, I = 16, 2-byte dtype, 1000 B weights
    return ForwardMemory(
        hidden=8,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=2,
        intermediate=16,
        dtype_bytes=2,
        weight_bytes=1000,
    )


def test_forward_memory_by_hand():
    m = _memory()
    # prompt cache: K and V x 2 layers x 2 kv heads x dim 2 x 5 tokens x 2 bytes
    assert m.prompt_cache(5) == 2 * 2 * 2 * 2 * 5 * 2 == 160
    # 3 rows x 4 response tokens after 5 prompt tokens (context 9):
    #   per query token: stream + hidden + cos/sin (2*8 + 2*2)*2 = 40, normed input 8*2 = 16,
    #     max(attention (3*4*2 + 3*2*2 + 8)*2 = 88, MLP (3*16 + 8)*2 = 112) = 112, output 8*2 = 16
    #   per context token: K, V with the prompt 2*2*2*2 = 16, repeated to 4 heads 2*4*2*2 = 32
    #   mask: 4 x 9 booleans
    per_row = 4 * (40 + 16 + 112 + 16) + 9 * (16 + 32) + 4 * 9
    assert m.activations(3, 4, 5) == 3 * per_row == 3612
    assert m.batch(3, 4, 5) == 1000 + 160 + 3612
    # the old scheme copied the prompt cache to every row: the model charges it once
    assert m.batch(3, 4, 5) - m.batch(1, 4, 5) == 2 * per_row


def test_memory_budget_picks_the_rows_and_counts_the_prompt():
    m = _memory()
    lengths = np.array([12, 10, 9, 4])
    budget = m.batch(2, 12, 5)  # exactly two rows of width 12 after a 5-token prompt
    fits = lambda rows, width: m.batch(rows, width, 5) <= budget  # noqa: E731
    assert [b.tolist() for b in length_batches(lengths, None, prefix=5, fits=fits)] == [
        [0, 1],
        [2, 3],
    ]
    # a longer prompt (its cache and every row's attention to it) leaves room for fewer rows
    long = lambda rows, width: m.batch(rows, width, 20) <= budget  # noqa: E731
    assert [b.tolist() for b in length_batches(lengths, None, prefix=20, fits=long)] == [
        [0],
        [1],
        [2],
        [3],
    ]
    # and a still longer one not even for one row: an error naming the key
    assert m.batch(1, 12, 20) <= budget < m.batch(1, 12, 60)
    check_fits(m, budget, 12, 20)
    with pytest.raises(FeatureError, match="gpu_memory_gb"):
        check_fits(m, budget, 12, 60)


def test_forward_memory_reads_the_model(tiny):
    base = load_model(tiny, dtype="float32", lm_head=False)
    m = ForwardMemory.of_model(base)
    cfg = base.config
    assert (m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim, m.intermediate, m.dtype_bytes) == (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.hidden_size // cfg.num_attention_heads,
        cfg.intermediate_size,
        4,
    )
    assert m.weight_bytes == 4 * sum(p.numel() for p in base.parameters()) + sum(
        b.numel() * b.element_size() for b in base.buffers()
    )


def test_memory_planned_batches_give_the_same_features(tiny):
    """Batches from the memory model (several per prompt) change no feature."""
    base = load_model(tiny, dtype="float32", lm_head=False)
    rng = np.random.default_rng(2)
    p1 = rng.integers(0, 1000, size=9).tolist()
    prompts = [p1] * 5 + [[4, 5, 6]]
    responses = [rng.integers(0, 1000, size=t).tolist() for t in (7, 3, 12, 5, 1, 4)]
    m = ForwardMemory.of_model(base)
    budget = m.batch(2, 12, 9)  # two rows per batch at most
    planned = pooled_states(
        base, prompts, responses, batch_tokens=None, memory=m, memory_budget=budget
    )
    whole = pooled_states(base, prompts, responses, batch_tokens=None)
    for name in POOLINGS:
        np.testing.assert_allclose(planned[name], whole[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(FeatureError, match="needs .* GB on the GPU"):
        pooled_states(base, prompts, responses, memory=m, memory_budget=m.batch(1, 3, 0) - 1)


def test_shared_prompt_cache_is_neither_copied_per_row_nor_grown(tiny):
    """The response rows read one batch-1 copy of the prompt's keys/values and store nothing."""
    from transformers import DynamicCache

    base = load_model(tiny, dtype="float32", lm_head=False)
    prompt = torch.tensor([[11, 12, 13, 14, 15]])
    cache = DynamicCache()
    with torch.no_grad():
        base(input_ids=prompt, past_key_values=cache, use_cache=True)
        shared = shared_prefix_cache(cache)
        ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
        mask = torch.tensor([[1] * 5 + [1, 1, 1], [1] * 5 + [1, 1, 0]])
        h = base(
            input_ids=ids, attention_mask=mask, past_key_values=shared, use_cache=True
        ).last_hidden_state
        full = base(torch.tensor([[11, 12, 13, 14, 15, 1, 2, 3]])).last_hidden_state
    torch.testing.assert_close(h[0], full[0, 5:], rtol=1e-5, atol=1e-5)
    for layer in shared.layers:
        assert tuple(layer.keys.shape[:1]) + tuple(layer.keys.shape[2:3]) == (
            1,
            5,
        )  # batch 1, 5 tokens
    assert shared.get_seq_length() == 5


def test_load_model_puts_weights_straight_on_the_accelerator(monkeypatch):
    """On a GPU the weights load through `device_map` (no full copy on the host, no `.to`)."""
    import transformers

    calls = []

    class Loaded:
        def eval(self):
            return self

        def to(self, *a, **k):
            raise AssertionError(
                "the model was moved after loading: it was materialised on the host first"
            )

    def fake(path, **kw):
        calls.append(kw)
        return Loaded()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    monkeypatch.setattr("repexp.models.check_model_dir", lambda p: p)
    load_model("m", dtype="bfloat16", device="cuda:1", lm_head=False)
    assert calls[-1]["device_map"] == "cuda:1" and calls[-1]["dtype"] == torch.bfloat16
    load_model("m", dtype="bfloat16", device="cpu", lm_head=False)
    assert "device_map" not in calls[-1]


# ------------------------------------------------------------------------------------------------
# cache dtypes (issue 14, defect 4)
# ------------------------------------------------------------------------------------------------
def test_quantize_groups_by_hand():
    x = np.array([[0.0, 1.0], [2.0, 3.0], [0.5, 1.5], [10.0, -4.0]], np.float32)
    groups = np.array([0, 0, 0, 1])
    q, lo, step = quantize_groups(x, groups)
    np.testing.assert_array_equal(lo, [[0, 1], [10, -4]])
    np.testing.assert_allclose(step, [[2 / 255, 2 / 255], [1, 1]])  # a constant column: step 1
    np.testing.assert_array_equal(
        q, [[0, 0], [255, 255], [64, 64], [0, 0]]
    )  # 0.5 / (2/255) = 63.75
    back = dequantize_groups(q, lo, step, groups)
    np.testing.assert_allclose(back[[0, 1, 3]], x[[0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(
        back[2], [64 * 2 / 255, 1 + 64 * 2 / 255], rtol=1e-6
    )  # within a half step


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "uint8"])
def test_cache_dtypes_roundtrip_to_float64_within_their_precision(tmp_path, dtype):
    rng = np.random.default_rng(0)
    qids = ["a"] * 40 + ["b"] * 25 + ["c"] * 35
    rows = pd.DataFrame(
        {"qid": qids, "sample": list(range(40)) + list(range(25)) + list(range(35))}
    )
    x = (rng.normal(size=(100, 16)) * rng.uniform(0.1, 30, size=16)).astype(np.float32)
    x[:, 3] += 500.0  # an outlier dimension, as in LM hidden states
    write_cache(
        tmp_path / "s.json", {"mean": x, "last": -x}, rows, model="m", dtype=dtype, shard_name="s"
    )
    got, got_rows = read_cache(tmp_path / "s.json", "mean")
    assert got.dtype == np.float64 and got.shape == x.shape
    assert got_rows.values.tolist() == rows.values.tolist()
    if dtype == "float32":
        np.testing.assert_array_equal(got, x)
    elif dtype in ("float16", "bfloat16"):
        eps = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
        assert np.all(np.abs(got - x) <= eps * np.abs(x) + 1e-30)
    else:  # within half a step of each question's own range, per dimension (brute force)
        for q in "abc":
            sel = np.array(qids) == q
            half_step = (x[sel].max(0) - x[sel].min(0)) / 255 / 2
            assert np.all(np.abs(got[sel] - x[sel]) <= half_step * (1 + 1e-4) + 1e-4)
    size = (tmp_path / "s.safetensors").stat().st_size
    assert (
        cache_bytes(100, 3, 16, 2, dtype) <= size <= cache_bytes(100, 3, 16, 2, dtype) + 2048
    )  # + header
    assert json.loads((tmp_path / "s.json").read_text())["dtype"] == dtype


# ------------------------------------------------------------------------------------------------
# vLLM calls (issue 14, defect 3): a stand-in `vllm` module, so no GPU is needed
# ------------------------------------------------------------------------------------------------
class _FakeParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Completion:
    def __init__(self, token_ids, finish_reason, cumulative_logprob):
        self.token_ids, self.finish_reason, self.cumulative_logprob = (
            token_ids,
            finish_reason,
            cumulative_logprob,
        )


class _Output:  # weak-referenceable, so the test can see whether a call's outputs are still held
    def __init__(self, outputs):
        self.outputs = outputs


class _FakeLLM:
    """Responses that depend only on (prompt, seed, sample index), like seeded vLLM requests."""

    made: list = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        self.alive = weakref.WeakSet()
        _FakeLLM.made.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        gc.collect()
        self.calls.append(
            {
                "prompts": [p["prompt_token_ids"] for p in prompts],
                "seeds": [p.seed for p in params],
                "responses": sum(p.n for p in params),
                "held_before": len(self.alive),
            }
        )
        outs = []
        for prompt, sp in zip(prompts, params, strict=True):
            assert sp.logprobs == 0 and sp.flat_logprobs and not sp.detokenize
            comps = []
            for j in range(sp.n):
                rng = np.random.default_rng([sp.seed, j, len(prompt["prompt_token_ids"])])
                ids = rng.integers(100, 5000, size=int(rng.integers(1, 9))).tolist()
                comps.append(
                    _Completion(ids, "stop" if j % 2 else "length", float(-rng.random() * len(ids)))
                )
            out = _Output(comps)
            self.alive.add(out)
            outs.append(out)
        return outs


@pytest.fixture()
def fake_vllm(monkeypatch):
    _FakeLLM.made = []
    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=_FakeLLM, SamplingParams=_FakeParams)
    )
    return _FakeLLM


def _vllm_shard(n: int) -> dict:
    """generate_shard's arguments for a vllm-backend shard of the tiny model's gsm8k questions."""
    return dict(
        n=n,
        sampler=Sampler(),
        max_new_tokens=8,
        seed=3,
        seed_parts=("tiny", "gsm8k", "vanilla"),
        backend="vllm",
    )


def test_vllm_calls_split_questions_by_responses():
    assert vllm_calls(5, 6400, 8192) == [range(i, i + 1) for i in range(5)]  # one question a call
    assert vllm_calls(5, 64, 128) == [range(0, 2), range(2, 4), range(4, 5)]
    assert vllm_calls(3, 10, 1000) == [range(0, 3)]


def test_vllm_pool_is_generated_in_bounded_calls_with_the_same_seeds(tiny, questions, fake_vllm):
    """Calls of at most max(n, responses_per_call) responses; each question keeps its seed; the pool
    equals the one-call pool; a call's outputs are released before the next call."""
    kw = _vllm_shard(n=6)
    one_call = generate_shard(tiny, questions, responses_per_call=10**6, **kw)
    per_question = generate_shard(tiny, questions, responses_per_call=6, **kw)
    pairs = generate_shard(tiny, questions, responses_per_call=12, **kw)
    big, small, two = (llm.calls for llm in fake_vllm.made)
    assert [c["responses"] for c in big] == [18] and [c["responses"] for c in small] == [6, 6, 6]
    assert [c["responses"] for c in two] == [12, 6]
    seeds = [question_seed(3, "tiny", "gsm8k", "vanilla", q) for q in questions["qid"]]
    assert big[0]["seeds"] == seeds and [c["seeds"][0] for c in small] == seeds
    assert all(c["held_before"] == 0 for c in small + two)
    pd.testing.assert_frame_equal(per_question, one_call)
    pd.testing.assert_frame_equal(pairs, one_call)
    tok = load_tokenizer(tiny)
    r = one_call.iloc[8]  # question q1, sample 2: the stand-in's tokens for that seed and sample
    rng = np.random.default_rng([seeds[1], 2, len(big[0]["prompts"][1])])
    assert list(r["response_ids"]) == rng.integers(100, 5000, size=int(rng.integers(1, 9))).tolist()
    assert list(r["prompt_ids"]) == list(big[0]["prompts"][1]) and r["qid"] == "q1"
    assert r["text"] == tok.decode(list(r["response_ids"]), skip_special_tokens=True)
    assert r["n_tokens"] == len(r["response_ids"]) and r["finish_reason"] in ("stop", "length")
    assert list(one_call["sample"]) == list(range(6)) * 3


def test_vllm_engine_keys_reach_the_llm(tiny, questions, fake_vllm):
    """inference.pool.vllm_gpu_memory_utilization / vllm_enforce_eager: passed to vllm.LLM when
    set, vLLM's own defaults (nothing passed) when not; the rule's flags come from the config."""
    from repexp.pools import vllm_engine_cli

    kw = _vllm_shard(n=2)
    generate_shard(tiny, questions, **kw)
    generate_shard(
        tiny, questions, vllm_engine={"gpu_memory_utilization": 0.35, "enforce_eager": True}, **kw
    )
    default, set_ = (llm.kw for llm in fake_vllm.made)
    assert "gpu_memory_utilization" not in default and "enforce_eager" not in default
    assert set_["gpu_memory_utilization"] == 0.35 and set_["enforce_eager"] is True
    assert {k: v for k, v in set_.items() if k not in default} == {
        "gpu_memory_utilization": 0.35,
        "enforce_eager": True,
    }
    flags = vllm_engine_cli({"vllm_gpu_memory_utilization": 0.35, "vllm_enforce_eager": True})
    assert flags.split() == ["--gpu-memory-utilization", "0.35", "--enforce-eager"]
    assert vllm_engine_cli({"vllm_gpu_memory_utilization": None, "vllm_enforce_eager": False}) == ""
