"""The `vllm` pool backend for real, on CPU, against the `hf` backend (marker `vllm`).

vLLM runs from `vllm-cpu` (a community CPU build of vLLM's own source) in the separate test
environment ``.venv-vllm`` that ``bash scripts/vllm_cpu_env.sh`` builds; it is never a runtime
dependency. Without that environment every test here is skipped (CI does not build it: see README,
"vLLM on CPU (test only)"). Run: ``bash scripts/vllm_cpu_env.sh && .venv/bin/pytest -m vllm``.

One pool shard of SmolLM2-135M-Instruct on two GSM8K questions is generated twice through the
project's CLI (``python -m repexp.pools``): with ``--backend vllm`` by the vLLM environment's
Python, with ``--backend hf`` by this one; both float32, with the embedded config's ``temp0.6``
sampler (temperature 0.6), so that the model's raw log-probs (what pools store) and the sampler's
processed ones differ. A third, short question makes some responses end with EOS within the budget.
The pools must have the same columns and dtypes, consistent finish reasons and texts, and every
stored log-prob must equal a float32 transformers forward pass over the same prompt + response ids.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO

from repexp.models import load_model, load_tokenizer, prepare_model
from repexp.tasks import build_table, get_task

VLLM_VENV = REPO / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
READY = VLLM_PYTHON.exists() and (VLLM_VENV / ".repexp-vllm-cpu.stamp").exists()

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not READY,
        reason=f"no vLLM test environment at {VLLM_VENV} (build it: bash scripts/vllm_cpu_env.sh)",
    ),
]

MODEL = "smollm2-135m-instruct"
SAMPLER, TEMPERATURE = "temp0.6", 0.6  # config/config.yaml's Fig. 6 sampler
N, MAX_NEW_TOKENS, QUESTIONS = 4, 48, 3
SHORT = "Say hello in five words."  # answered (EOS) well within MAX_NEW_TOKENS
# The engine's KV cache, GiB. vLLM's CPU worker otherwise reserves gpu_memory_utilization (0.92)
# of the machine's memory and refuses to start when that much is not free.
KV_CACHE_GIB = "1"
# Summed log-prob, |vLLM or hf - forward|, per response token (justified in the test below).
LOGPROB_TOL_PER_TOKEN = 1e-4


def run_pool(
    backend: str,
    model,
    tasks,
    out,
    *,
    n: int = N,
    max_new_tokens: int = MAX_NEW_TOKENS,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """One shard of all QUESTIONS through ``python -m repexp.pools`` in the backend's env."""
    python = str(VLLM_PYTHON) if backend == "vllm" else sys.executable
    cmd = [
        python,
        "-m",
        "repexp.pools",
        "--model",
        str(model),
        "--model-name",
        MODEL,
        "--tasks",
        str(tasks),
        "--sampler-name",
        SAMPLER,
        "--temperature",
        str(TEMPERATURE),
        "--shard",
        "0",
        "--questions-per-shard",
        str(QUESTIONS),
        "--n",
        str(n),
        "--max-new-tokens",
        str(max_new_tokens),
        "--seed",
        "0",
        "--backend",
        backend,
        "--batch-size",
        str(n),
        "--dtype",
        "float32",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=REPO)
    lines = (proc.stdout + proc.stderr).splitlines()  # vLLM logs to stdout
    if proc.returncode != 0:
        errors = [ln[:400] for ln in lines if re.search(r"Error|error", ln)][-12:]
        pytest.fail(
            f"{backend} pool failed (exit {proc.returncode}); errors:\n"
            + "\n".join(errors)
            + "\n...\n"
            + "\n".join(ln[:400] for ln in lines[-15:])
        )
    # for the report (-s): the run's wall time and the backend's own timing lines; nothing asserted
    print(f"\n{backend} pool CLI ({n} per question): {time.perf_counter() - t0:.0f} s")
    for line in lines:
        if re.search(r"tok/s|init engine|[Ll]oading .*took|compil.*took", line):
            print(f"  {line[-200:]}")
    return proc


@pytest.fixture(scope="module")
def shard_inputs(tmp_path_factory, wheel_dir):
    """(SmolLM2 folder, task table): two GSM8K questions and a short one."""
    d = tmp_path_factory.mktemp("vllm_cpu")
    spec = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"][MODEL]
    model = prepare_model(spec, d / MODEL, wheel=str(wheel_dir / f"{spec['wheel']}.whl"))
    table = build_table(
        get_task("gsm8k"), "test", n_questions=QUESTIONS - 1, subset_seed=0, wheel_dir=wheel_dir
    )
    short = table.iloc[:1].assign(
        qid="short", question=SHORT, prompt=json.dumps([{"role": "user", "content": SHORT}])
    )
    pd.concat([table, short], ignore_index=True).to_parquet(d / "gsm8k.parquet")
    return model, d / "gsm8k.parquet"


@pytest.fixture(scope="module")
def pools(shard_inputs, tmp_path_factory):
    """(model folder, vLLM pool, hf pool, their Parquet schemas)."""
    model, tasks = shard_inputs
    d = tmp_path_factory.mktemp("pools")
    out = {b: d / f"{b}.parquet" for b in ("vllm", "hf")}
    # vllm: one question per LLM.generate call, so that the shard takes three calls
    run_pool("vllm", model, tasks, out["vllm"], extra=("--responses-per-call", str(N)))
    run_pool("hf", model, tasks, out["hf"])
    schema = {b: pq.read_schema(p) for b, p in out.items()}
    return model, pd.read_parquet(out["vllm"]), pd.read_parquet(out["hf"]), schema


def test_vllm_pool_has_the_hf_pool_schema(pools):
    _, v, h, schema = pools
    assert list(v.columns) == list(h.columns)
    assert v.dtypes.to_dict() == h.dtypes.to_dict()
    assert schema["vllm"].names == schema["hf"].names
    assert schema["vllm"].types == schema["hf"].types  # e.g. list<int64> token ids, double logprob
    meta = {b: json.loads(x.metadata[b"repexp"]) for b, x in schema.items()}
    assert len(v) == len(h) == QUESTIONS * N
    key = ["qid", "sample"]
    assert v[key].values.tolist() == h[key].values.tolist()  # same questions, samples 0..N-1
    # the same tokenizer and chat template in both environments: identical prompts
    for (_, a), (_, b) in zip(v.groupby("qid"), h.groupby("qid"), strict=True):
        assert {tuple(p) for p in a["prompt_ids"]} == {tuple(p) for p in b["prompt_ids"]}
    assert meta["vllm"]["backend"] == "vllm" and meta["hf"]["backend"] == "hf"
    assert {k: x for k, x in meta["vllm"].items() if k != "backend"} == {
        k: x for k, x in meta["hf"].items() if k != "backend"
    }
    # vLLM actually sampled: responses differ within a question (n > 1 distinct sequences)
    assert v.groupby("qid")["response_ids"].apply(lambda s: len({tuple(r) for r in s})).min() > 1


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_finish_reasons_tokens_and_text(pools, backend):
    model, v, h, _ = pools
    pool = v if backend == "vllm" else h
    tok = load_tokenizer(model)
    eos = tok.eos_token_id
    assert set(pool["finish_reason"]) <= {"stop", "length"}
    # both branches below are exercised: the short question's responses end with EOS
    assert (pool.loc[pool.qid == "short", "finish_reason"] == "stop").any()
    for r in pool.itertuples():
        ids = list(r.response_ids)
        assert r.n_tokens == len(ids) > 0
        if r.finish_reason == "stop":  # ended by the end-of-sequence token, which is stored
            assert ids[-1] == eos and eos not in ids[:-1], (r.qid, r.sample)
        else:  # cut at the budget, no end-of-sequence token anywhere
            assert len(ids) == MAX_NEW_TOKENS and eos not in ids, (r.qid, r.sample)
        assert r.text == tok.decode(ids, skip_special_tokens=True), (r.qid, r.sample)


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_logprobs_match_a_float32_forward(pools, backend):
    """The stored log-prob is the raw model's (vLLM: logprobs_mode "raw_logprobs", its default,
    computed from the logits before the temperature) summed over the response tokens, EOS
    included; recomputed here by one float32 transformers forward over prompt + response ids.

    Tolerance: both sides run the same float32 weights but different kernels (vLLM's CPU paged
    attention and fused ops vs transformers' SDPA), so each token's log-prob differs by float32
    rounding of a 30-layer network: measured at most 1.4e-5 per token (hf: 9.6e-6); a summed
    log-prob of n tokens is checked to LOGPROB_TOL_PER_TOKEN * n (1e-4 per token, 4.8e-3 for 48
    tokens). A wrong token alignment, a missing EOS term or the sampler's processed log-probs
    (temperature 0.6) would be off by far more (checked: by > 0.1 on average)."""
    model_dir, v, h, _ = pools
    pool = v if backend == "vllm" else h
    model = load_model(model_dir, dtype="float32")
    worst, off_processed = 0.0, []
    with torch.inference_mode():
        for r in pool.itertuples():
            prompt, resp = list(r.prompt_ids), list(r.response_ids)
            ids = torch.tensor([prompt + resp])
            logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
            tgt = torch.tensor(resp)[:, None]
            ref = float(torch.log_softmax(logits, -1).gather(1, tgt).sum())
            # what the sampler's distribution gives the same tokens: must NOT be what is stored
            processed = float(torch.log_softmax(logits / TEMPERATURE, -1).gather(1, tgt).sum())
            off_processed.append(abs(r.logprob - processed))
            assert np.isfinite(r.logprob) and r.logprob < 0
            err = abs(r.logprob - ref)
            worst = max(worst, err / len(resp))
            assert err <= LOGPROB_TOL_PER_TOKEN * len(resp), (r.qid, r.sample, r.logprob, ref)
    print(
        f"{backend}: largest |logprob - forward| per token {worst:.2e}; mean |logprob - the "
        f"sampler's processed log-prob| {np.mean(off_processed):.2f}"
    )
    assert np.mean(off_processed) > 0.1


def test_vllm_shard_larger_than_one_prefill_step(shard_inputs, pools, tmp_path):
    """A shard whose prompts exceed one engine step's token budget (vLLM's max_num_batched_tokens,
    4096 on CPU): 3 questions x 32 responses x ~70 prompt tokens = ~6,700 prefill tokens in one
    call, as in any real shard (the embedded default: 5 questions x 16, prompts of 100+ tokens).
    With chunked prefill vLLM splits a prefill over two steps and rewinds the request's seeded
    generator, which a CPU generator cannot do (`RuntimeError: CPU Generator does not use offset`);
    generate_vllm turns chunked prefill off on CPU.

    Also: a response depends only on its question's seed and its sample index, not on n, on the
    other questions of the call, or on the budget: the first N responses here (one call of three
    questions, 8 tokens) start with the tokens of the pool's (one question a call, n = N, 48
    tokens). Measured: all 12 agree."""
    model, tasks = shard_inputs
    n, max_new = 32, 8
    run_pool("vllm", model, tasks, tmp_path / "big.parquet", n=n, max_new_tokens=max_new)
    pool = pd.read_parquet(tmp_path / "big.parquet")
    assert len(pool) == QUESTIONS * n
    assert (pool.groupby("qid")["sample"].apply(sorted) == [list(range(n))] * QUESTIONS).all()
    eos = load_tokenizer(model).eos_token_id
    for r in pool.itertuples():
        ids = list(r.response_ids)
        assert r.n_tokens == len(ids) and 1 <= len(ids) <= max_new
        if r.finish_reason == "stop":
            assert ids[-1] == eos and eos not in ids[:-1], (r.qid, r.sample)
        else:
            assert r.finish_reason == "length" and len(ids) == max_new and eos not in ids
    # every question's responses were sampled with its own seed: not all alike
    assert pool.groupby("qid")["response_ids"].apply(lambda s: len({tuple(x) for x in s})).min() > 1
    small = pools[1].merge(pool, on=["qid", "sample"], suffixes=("", "_big"))
    assert len(small) == QUESTIONS * N
    for r in small.itertuples():
        k = min(len(r.response_ids), len(r.response_ids_big))
        assert list(r.response_ids[:k]) == list(r.response_ids_big[:k]), (r.qid, r.sample)
