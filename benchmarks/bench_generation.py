"""Generation: throughput of the `hf` pool backend, and the host memory of vLLM's outputs.

    .venv/bin/python benchmarks/bench_generation.py [--model resources/models/smollm2-135m-instruct]
    .venv/bin/python benchmarks/bench_generation.py --vllm-memory [--vllm-logprobs PATH]

``--vllm-memory`` needs no GPU: it builds, with vLLM 0.31's own ``vllm/logprobs.py`` (from an
installed vllm, or the file of the pinned wheel: ``pip download --no-deps vllm==0.31.0`` and unzip),
what vLLM's output processor keeps per generated token until ``LLM.generate`` returns, and measures
it with ``tracemalloc``:

* before (``logprobs=0``, ``detokenize=True``): the output's token id, a ``{token_id: Logprob}``
  dict per position with its decoded token string, and the detokenized text;
* after (``logprobs=0, flat_logprobs=True, detokenize=False``): the token id and one entry in each
  of ``FlatLogprobs``' flat lists (token id, log-prob, rank, no decoded string);
* our row: the response's int64 token array and its text (decoded once).

The per-token figures times the responses of one call give the call's host memory, printed for a
whole 204,800-response shard in one call (before) and one question per call (after).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import random
import string
import time
import tracemalloc
from pathlib import Path

import numpy as np


def vllm_logprobs_module(path: str | None):
    """vLLM's ``logprobs.py`` (stdlib-only), loaded as a standalone module."""
    if path is None:
        spec = importlib.util.find_spec("vllm")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                "vllm is not installed here: pass --vllm-logprobs PATH/vllm/logprobs.py "
                "(pip download --no-deps vllm==0.31.0 -d /tmp/vllm; unzip the wheel)"
            )
        path = str(Path(next(iter(spec.submodule_search_locations))) / "logprobs.py")
    spec = importlib.util.spec_from_file_location("vllm_logprobs_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


def measured(build) -> tuple[int, object]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def vllm_memory(a) -> None:
    lp, path = vllm_logprobs_module(a.vllm_logprobs)
    rng = random.Random(0)
    tokens = [[rng.randrange(151_000) for _ in range(a.tokens)] for _ in range(a.responses)]
    values = [[-rng.random() * 5 for _ in range(a.tokens)] for _ in range(a.responses)]
    ranks = [[rng.randrange(1, 5000) for _ in range(a.tokens)] for _ in range(a.responses)]

    def piece():  # a decoded token: 1-8 characters, a new str object per token as vLLM makes it
        return "".join(rng.choices(string.ascii_letters, k=rng.randrange(1, 9)))

    def before():
        kept = []
        for ids, vals, rks in zip(tokens, values, ranks, strict=True):
            out_ids, logprobs, text = [], [], []
            for t, v, r in zip(ids, vals, rks, strict=True):
                out_ids.append(int(str(t)))  # a fresh int, as .tolist() makes
                d = piece()
                lp.append_logprobs_for_next_position(logprobs, [out_ids[-1]], [v], [d], r, 0)
                text.append(d)
            kept.append((out_ids, logprobs, "".join(text)))
        return kept

    def after():
        kept = []
        for ids, vals, rks in zip(tokens, values, ranks, strict=True):
            out_ids, logprobs = [], lp.FlatLogprobs()
            for t, v, r in zip(ids, vals, rks, strict=True):
                out_ids.append(int(str(t)))
                lp.append_logprobs_for_next_position(
                    logprobs, [out_ids[-1]], [v], itertools.repeat(None), r, 0
                )
            kept.append((out_ids, logprobs))
        return kept

    def row():
        return [(np.asarray(ids, dtype=np.int64), "x" * (4 * len(ids))) for ids in tokens]

    n_tok = a.responses * a.tokens
    rows = []
    for name, fn in (
        ("before: logprobs=0 (dict + Logprob + decoded str per token)", before),
        ("after: + flat_logprobs=True, detokenize=False", after),
        ("our row: int64 token array + text", row),
    ):
        t0 = time.perf_counter()
        nbytes, kept = measured(fn)
        rows.append((name, nbytes / n_tok, time.perf_counter() - t0))
        del kept
    print(f"vLLM's {path}; {a.responses} responses x {a.tokens} tokens, measured with tracemalloc")
    print(
        f"{'kept per generated token until generate() returns':62s} {'B/token':>8s} {'build s':>8s}"
    )
    for name, b, t in rows:
        print(f"{name:62s} {b:8.0f} {t:8.2f}")
    b_before, b_after = rows[0][1], rows[1][1]
    length = a.paper_tokens
    shard = 204_800 * length
    question = a.paper_n * length
    print(f"\nhost memory of one call at {length} tokens per response (paper MATH/GSM8K pools):")
    print(f"  before, one call per 204,800-response shard: {shard * b_before / 1e9:6.1f} GB")
    print(
        f"  after,  one call per question ({a.paper_n:,} responses):     "
        f"{question * b_after / 1e9:6.2f} GB"
    )
    print(
        "  after,  AIME: one question of 8,192 x 2,000 tokens:      "
        f"{8192 * 2000 * b_after / 1e9:6.2f} GB"
    )
    print(
        "  rows kept for the whole shard (204,800 responses):        "
        f"{shard * rows[2][1] / 1e9:6.2f} GB"
    )


def hf_throughput(a) -> None:
    import torch

    from repexp.models import load_model, load_tokenizer
    from repexp.pools import Sampler, generate_hf, prompt_ids_of

    model, tok = load_model(a.model, dtype=a.dtype), load_tokenizer(a.model)
    prompt = prompt_ids_of(
        tok,
        [
            {
                "role": "user",
                "content": "A shop sells 12 pens a day. How many pens does "
                "it sell in a week? Let's think step by step and output the final answer "
                'after "####".',
            }
        ],
    )
    print(
        f"model {a.model} ({a.dtype}), {torch.get_num_threads()} threads, "
        f"prompt {len(prompt)} tokens, "
        f"max_new_tokens {a.max_new_tokens}, vanilla sampling (raw log-probs recorded)"
    )
    print(f"{'batch':>6s} {'responses':>9s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s}")
    for b in a.batches:
        t0 = time.perf_counter()
        rows = generate_hf(
            model,
            tok,
            prompt,
            n=b,
            sampler=Sampler(),
            max_new_tokens=a.max_new_tokens,
            seed=0,
            batch_size=b,
        )
        dt = time.perf_counter() - t0
        ntok = sum(len(r["response_ids"]) for r in rows)
        print(f"{b:6d} {b:9d} {ntok:7d} {dt:8.2f} {ntok / dt:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resources/models/smollm2-135m-instruct")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--vllm-memory", action="store_true", help="the vLLM host-memory table instead")
    ap.add_argument(
        "--vllm-logprobs", default=None, help="path of vllm/logprobs.py (default: installed vllm)"
    )
    ap.add_argument("--responses", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=450)
    ap.add_argument(
        "--paper-tokens", type=int, default=450, help="mean response length (MATH, cluster model)"
    )
    ap.add_argument("--paper-n", type=int, default=6400)
    a = ap.parse_args()
    from repexp.models import cpu_capability_line

    print(f"# {cpu_capability_line()}")
    vllm_memory(a) if a.vllm_memory else hf_throughput(a)


if __name__ == "__main__":
    main()
