"""Tokens per second of token-level decoding (:func:`benchmark_rate`: the GPU checks' entry point,
benchmarks/gpu_check.py; benchmarks/bench_tokenlevel.py times the pieces on a CPU)."""

from __future__ import annotations

import time

from repexp.elliptical import CentredInverse
from repexp.tokenlevel.batch import BatchedExplorer, Run
from repexp.tokenlevel.decode import Decoder, make_generator
from repexp.tokenlevel.settings import Settings


def benchmark_rate(
    model,
    slots: int,
    steps: int,
    *,
    beta: float | None = 1.0,
    settings=None,
    tok=None,
    dtype: str = "bfloat16",
    device: str | None = None,
    engine: str = "batched",
    prompt: str = "Solve step by step: what is the sum of the first 100 odd numbers?",
) -> dict:
    """Tokens per second of token-level decoding: ``slots`` runs of one prompt (seeds 0..slots-1),
    each first through its plain response 1 (untimed), then ``steps`` timed lockstep steps of
    bonus decoding (``beta``; None: vanilla; the prompts' forwards are not timed).
    ``engine="sequential"`` times the sequential engine on one run for ``steps`` tokens instead
    (``slots`` ignored). ``model`` is a model folder or a
    loaded model (then pass ``tok``). Returns slots, tokens, seconds, tok_s, step_s (seconds per
    lockstep step) and the engine.

    The entry point of GPU checks (benchmarks/gpu_check.py)::

        from repexp.tokenlevel import benchmark_rate
        benchmark_rate("resources/models/qwen2.5-7b-instruct", slots=64, steps=50, device="cuda")
    """
    import torch

    from repexp.models import eos_ids_of, load_model, load_tokenizer
    from repexp.pools import prompt_ids_of

    if engine not in ("batched", "sequential"):
        raise ValueError(f"engine must be 'batched' or 'sequential', got {engine!r}")
    if isinstance(model, str | bytes) or hasattr(model, "__fspath__"):
        tok = tok or load_tokenizer(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model, dtype=dtype, device=device)
    if tok is None:
        raise ValueError("pass the tokenizer (tok=...) with a loaded model")
    settings = settings or Settings()
    dec = Decoder(model, eos_ids_of(model, tok), settings)
    prompt_ids = prompt_ids_of(tok, [{"role": "user", "content": prompt}])
    never = lambda text: False  # noqa: E731

    def sync():
        if dec.device.type == "cuda":
            torch.cuda.synchronize()

    if engine == "sequential":
        gen = make_generator(dec.device, 0)
        inverse = None
        if beta is not None:  # response 1: plain, gives Σ (untimed)
            inverse = CentredInverse(dec.base.config.hidden_size, settings.lam, device=dec.device)
            inverse.add(dec.generate(prompt_ids, generator=gen, need_states=True)["states"])
        tokens = 0
        sync()
        t0 = time.perf_counter()
        while tokens < steps:
            r = dec.generate(prompt_ids, generator=gen, inverse=inverse, beta=beta or 0.0)
            if inverse is not None:
                inverse.add(r["states"])
            tokens += len(r["response_ids"])
        sync()
        secs = time.perf_counter() - t0
        return {
            "engine": engine,
            "slots": 1,
            "tokens": tokens,
            "seconds": secs,
            "tok_s": tokens / secs,
            "step_s": secs / tokens,
        }
    ex = BatchedExplorer(dec, tok, slots)
    runs = [Run(prompt_ids, never, seed=s, beta=beta) for s in range(slots)]
    ex.explore(runs, k_max=10**9, until=1)  # response 1: plain, gives Σ
    t0_tokens, t0_fill = ex.tokens, ex.fill_seconds
    sync()
    t0 = time.perf_counter()
    ex.explore(runs, k_max=10**9, max_steps=steps)
    sync()
    secs = time.perf_counter() - t0 - (ex.fill_seconds - t0_fill)  # the steps, not the prompts
    tokens = ex.tokens - t0_tokens
    return {
        "engine": engine,
        "slots": slots,
        "tokens": tokens,
        "seconds": secs,
        "tok_s": tokens / secs,
        "step_s": secs / max(steps, 1),
    }
