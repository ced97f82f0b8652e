"""Token-level RepExp cost (``repexp.tokenlevel``): the candidate step and generation speed.

(a) One bonus step at a ``--prefix``-token prefix with ``--candidates`` candidates: ours computes
    every candidate's last-layer state in one batch on the prefix's key/value cache (a tree mask:
    each candidate sees the prefix and itself); the naive way re-runs prefix + candidate for every
    candidate (in batches of ``candidate_batch``). Both give the same states (the largest
    difference is printed).
(b) Tokens per second of generation with the bonus against vanilla generation (the same decoding
    loop without candidates), same prompt, filters and seed, several responses each.

    .venv/bin/python benchmarks/bench_tokenlevel.py [--model resources/models/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from repexp.models import load_model, load_tokenizer
from repexp.tokenlevel import CentredInverse, Decoder, Settings, eos_ids_of, make_generator


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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import DynamicCache

    model = load_model(a.model, dtype=a.dtype)
    tok = load_tokenizer(a.model)
    settings = Settings(max_new_tokens=a.max_new_tokens, candidate_batch=a.candidate_batch)
    dec = Decoder(model, eos_ids_of(model, tok), settings)
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, model.config.vocab_size, size=a.prefix).tolist()
    cands = torch.from_numpy(rng.choice(model.config.vocab_size, size=a.candidates, replace=False))

    # (a) the candidate step
    cache = DynamicCache()
    with torch.inference_mode():
        dec._forward(torch.tensor([prefix]), cache)
        ours_states = dec.candidate_states(cache, a.prefix, cands)[0]

        def ours():
            dec.candidate_states(cache, a.prefix, cands)

        def naive_states():
            out = []
            for s in range(0, a.candidates, a.candidate_batch):
                chunk = cands[s:s + a.candidate_batch]
                ids = torch.cat([torch.tensor(prefix).expand(len(chunk), -1), chunk[:, None]], dim=1)
                out.append(dec.base(input_ids=ids).last_hidden_state[:, -1])
            return torch.cat(out)

        naive_ref = naive_states()
        t_ours = best_of(ours, a.repeats)
        t_naive = best_of(naive_states, a.repeats)
    err = float((ours_states.float() - naive_ref.float()).abs().max() / naive_ref.float().abs().max())

    # (b) generation speed, bonus vs vanilla
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a Python function that returns the "
                                                                  "n-th Fibonacci number."}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
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

    print(f"model {a.model} ({a.dtype}), {torch.get_num_threads()} thread(s)")
    print(f"(a) one bonus step: prefix {a.prefix} tokens, {a.candidates} candidates, batches of {a.candidate_batch}")
    print(f"{'method':60s} {'seconds':>9s}")
    print(f"{'ours: candidates on the prefix key/value cache (tree mask)':60s} {t_ours:9.4f}")
    print(f"{'naive: re-run prefix + candidate for every candidate':60s} {t_naive:9.4f}")
    print(f"speed-up: {t_naive / t_ours:.1f}x   (max relative difference of the states: {err:.2e})")
    print(f"(b) generation, {a.responses} responses of at most {a.max_new_tokens} tokens after one plain response")
    print(f"{'method':60s} {'tokens':>7s} {'seconds':>9s} {'tok/s':>7s}")
    for name, (tokens, secs) in speeds.items():
        print(f"{name:60s} {tokens:7d} {secs:9.2f} {tokens / secs:7.1f}")
    v, b = (speeds[k][0] / speeds[k][1] for k in speeds)
    print(f"bonus overhead: {v / b:.2f}x time per token (mean {np.mean(cand_counts):.1f} candidates per step "
          f"after top-k 128 / top-p 0.95)")


if __name__ == "__main__":
    main()
