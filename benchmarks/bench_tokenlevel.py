"""Token-level RepExp cost (``repexp.tokenlevel`` and its batched engine): the candidate step,
generation speed, and the batched engine against the sequential one.

(a) One bonus step at a ``--prefix``-token prefix with ``--candidates`` candidates: ours computes
    every candidate's last-layer state in one batch on the prefix's key/value cache (a tree mask:
    each candidate sees the prefix and itself); the naive way re-runs prefix + candidate for every
    candidate (in batches of ``candidate_batch``). Both give the same states (the largest
    difference is printed).
(b) Tokens per second of generation with the bonus against vanilla generation (the same decoding
    loop without candidates), same prompt, filters and seed, several responses each.
(c) The batched engine against the sequential one: B runs (seeds 0..B-1, ``--run-responses``
    responses each: one plain, then bonus ones) for B in ``--slots``, vanilla and beta = 1. Per B
    the sequential engine decodes the B runs one after the other, then the batched engine decodes
    them in lockstep on B slots, in one process (interleaved, so that a change of the machine's
    load hits both). In float32 both give the same responses; in bf16 other matrix shapes round
    differently and responses can diverge (the token counts then differ: tokens/s is the measure).

    .venv/bin/python benchmarks/bench_tokenlevel.py [--model resources/models/smollm2-135m-instruct]
    .venv/bin/python benchmarks/bench_tokenlevel.py --only c --slots 1,4,16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from repexp.elliptical import CentredInverse
from repexp.models import cpu_capability_line, eos_ids_of, load_model, load_tokenizer
from repexp.tokenlevel import BatchedExplorer, Decoder, Run, Settings, explore, make_generator


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resources/models/smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--candidate-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="abc", help="the parts to run: any of a, b, c")
    ap.add_argument("--slots", default="1,4,16", help="(c) the numbers of runs B")
    ap.add_argument("--run-responses", type=int, default=3, help="(c) responses per run")
    ap.add_argument("--run-tokens", type=int, default=32, help="(c) max_new_tokens per response")
    a = ap.parse_args()
    print(f"# {cpu_capability_line()}")
    torch.set_num_threads(a.threads)
    model = load_model(a.model, dtype=a.dtype)
    tok = load_tokenizer(a.model)
    settings = Settings(max_new_tokens=a.max_new_tokens, candidate_batch=a.candidate_batch)
    dec = Decoder(model, eos_ids_of(model, tok), settings)
    prompt = tok.apply_chat_template(
        [
            {
                "role": "user",
                "content": "Write a Python function that returns the n-th Fibonacci number.",
            }
        ],
        add_generation_prompt=True,
        tokenize=True,
    )
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    print(f"model {a.model} ({a.dtype}), {torch.get_num_threads()} thread(s)")
    if "a" in a.only:
        bench_step(a, model, dec)
    if "b" in a.only:
        bench_bonus(a, model, dec, settings, prompt)
    if "c" in a.only:
        bench_batched(a, model, tok, prompt)


def bench_step(a, model, dec) -> None:
    """(a) the candidate step on the key/value cache against re-running the prefix per candidate."""
    from transformers import DynamicCache

    rng = np.random.default_rng(0)
    prefix = rng.integers(0, model.config.vocab_size, size=a.prefix).tolist()
    cands = torch.from_numpy(rng.choice(model.config.vocab_size, size=a.candidates, replace=False))
    cache = DynamicCache()
    with torch.inference_mode():
        dec._forward(torch.tensor([prefix]), cache)
        ours_states = dec.candidate_states(cache, a.prefix, cands)[0]

        def ours():
            dec.candidate_states(cache, a.prefix, cands)

        def naive_states():
            out = []
            for s in range(0, a.candidates, a.candidate_batch):
                chunk = cands[s : s + a.candidate_batch]
                ids = torch.cat(
                    [torch.tensor(prefix).expand(len(chunk), -1), chunk[:, None]], dim=1
                )
                out.append(dec.base(input_ids=ids).last_hidden_state[:, -1])
            return torch.cat(out)

        naive_ref = naive_states()
        t_ours = best_of(ours, a.repeats)
        t_naive = best_of(naive_states, a.repeats)
    err = float(
        (ours_states.float() - naive_ref.float()).abs().max() / naive_ref.float().abs().max()
    )
    print(
        f"(a) one bonus step: prefix {a.prefix} tokens, {a.candidates} candidates, "
        f"batches of {a.candidate_batch}"
    )
    print(f"{'method':60s} {'seconds':>9s}")
    print(f"{'ours: candidates on the prefix key/value cache (tree mask)':60s} {t_ours:9.4f}")
    print(f"{'naive: re-run prefix + candidate for every candidate':60s} {t_naive:9.4f}")
    print(f"speed-up: {t_naive / t_ours:.1f}x   (max relative difference of the states: {err:.2e})")


def bench_bonus(a, model, dec, settings, prompt) -> None:
    """(b) generation with the bonus against vanilla, both on the sequential engine."""
    speeds, cand_counts = {}, []
    for name in ("vanilla", "bonus (beta = 1)"):
        gen = make_generator("cpu", 0)
        inverse = CentredInverse(model.config.hidden_size, settings.lam)
        first = dec.generate(prompt, generator=gen, need_states=True)  # response 1: plain for both
        inverse.add(first["states"])
        tokens, t0 = 0, time.perf_counter()
        for _ in range(a.responses):
            if name == "vanilla":
                r = dec.generate(prompt, generator=gen)
            else:
                r = dec.generate(prompt, generator=gen, inverse=inverse, beta=1.0)
                inverse.add(r["states"])
                cand_counts.append(r["mean_candidates"])
            tokens += len(r["response_ids"])
        speeds[name] = (tokens, time.perf_counter() - t0)
    print(
        f"(b) generation, {a.responses} responses of at most {a.max_new_tokens} tokens after one "
        f"plain response"
    )
    print(f"{'method':60s} {'tokens':>7s} {'seconds':>9s} {'tok/s':>7s}")
    for name, (tokens, secs) in speeds.items():
        print(f"{name:60s} {tokens:7d} {secs:9.2f} {tokens / secs:7.1f}")
    v, b = (speeds[k][0] / speeds[k][1] for k in speeds)
    print(
        f"bonus overhead: {v / b:.2f}x time per token (mean {np.mean(cand_counts):.1f} candidates "
        f"per step after top-k 128 / top-p 0.95)"
    )


def bench_batched(a, model, tok, prompt) -> None:
    """(c) B runs on the batched engine (B slots) against the same runs on the sequential one."""
    dec = Decoder(
        model,
        eos_ids_of(model, tok),
        Settings(max_new_tokens=a.run_tokens, candidate_batch=a.candidate_batch),
    )
    never = lambda text: False  # noqa: E731
    k = a.run_responses
    print(
        f"(c) batched vs sequential engine: B runs of {k} responses (1 plain + {k - 1} bonus for "
        f"beta = 1) of at most {a.run_tokens} tokens"
    )
    print(
        "tok/s per CPU-second of this process "
        "(one thread: robust to other processes on the machine), "
        "then per wall-second"
    )
    print(
        "| runs | B | sequential tok/CPU-s | batched tok/CPU-s | "
        "speed-up (CPU) | speed-up (wall) | "
        "tokens (seq / batched) | same responses |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for beta in (None, 1.0):
        for slots in (int(x) for x in a.slots.split(",")):
            t0, c0 = time.perf_counter(), time.process_time()
            seq = [
                explore(dec, tok, prompt, never, k_max=k, beta=beta, seed=s) for s in range(slots)
            ]
            t_seq, c_seq = time.perf_counter() - t0, time.process_time() - c0
            runs = [Run(prompt, never, seed=s, beta=beta) for s in range(slots)]
            t0, c0 = time.perf_counter(), time.process_time()
            BatchedExplorer(dec, tok, slots).explore(runs, k_max=k)
            t_bat, c_bat = time.perf_counter() - t0, time.process_time() - c0
            n_seq = sum(r["n_tokens"] for rows in seq for r in rows)
            n_bat = sum(r["n_tokens"] for run in runs for r in run.rows)
            same = sum(
                [r["response_ids"] for r in run.rows] == [r["response_ids"] for r in rows]
                for run, rows in zip(runs, seq, strict=True)
            )
            name = "vanilla" if beta is None else f"beta = {beta:g}"
            print(
                f"| {name} | {slots} | {n_seq / c_seq:.1f} | {n_bat / c_bat:.1f} | "
                f"{(n_bat / c_bat) / (n_seq / c_seq):.2f}x | "
                f"{(n_bat / t_bat) / (n_seq / t_seq):.2f}x | "
                f"{n_seq} / {n_bat} | {same} of {slots} runs |",
                flush=True,
            )


if __name__ == "__main__":
    main()
