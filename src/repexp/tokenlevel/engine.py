"""The sequential run loops of token-level RepExp: one run (question, seed) at a time.

A run is up to ``k_max`` responses to one question, stopping at the first correct one (paper.md
§2 "Setting"). :func:`explore` decodes them one by one with :class:`~repexp.tokenlevel.decode.
Decoder` (the reference that the batched engine, :mod:`repexp.tokenlevel.batch`, reproduces);
:func:`explore_vanilla_batched` draws vanilla responses in batches with transformers ``generate``
(``token_level.vanilla_batch_size`` > 1).

The first response has no Σ yet and is sampled plainly (the same filters, no bonus): the paper
does not say what it does, and with Σ₀ = λI and no mean the bonus would only favour tokens with
large hidden states. Σ (:class:`repexp.elliptical.CentredInverse`) runs over every generated token
of the run's *completed* responses; the current one is excluded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from repexp.elliptical import CentredInverse
from repexp.tokenlevel.decode import Decoder, make_generator
from repexp.tokenlevel.settings import Settings


def explore(
    decoder: Decoder,
    tok,
    prompt_ids: list[int],
    check: Callable[[str], bool],
    *,
    k_max: int,
    beta: float | None,
    seed: int,
    stop_at_correct: bool = True,
) -> list[dict]:
    """Sequential responses to one prompt. ``beta=None``: vanilla (plain sampling, no Σ);
    otherwise token-level RepExp (response 1 plain, then the bonus on Σ of the earlier ones)."""
    gen = make_generator(decoder.device, seed)
    inverse = (
        None
        if beta is None
        else CentredInverse(
            decoder.base.config.hidden_size, decoder.settings.lam, device=decoder.device
        )
    )
    rows = []
    for i in range(1, k_max + 1):
        t0 = time.perf_counter()
        use = inverse if (inverse is not None and inverse.count) else None
        r = decoder.generate(
            prompt_ids,
            generator=gen,
            inverse=use,
            beta=beta or 0.0,
            need_states=inverse is not None,
        )
        if inverse is not None:
            inverse.add(r["states"])
        text = tok.decode(r["response_ids"], skip_special_tokens=True)
        correct = bool(check(text))
        rows.append(
            {
                "response": i,
                "response_ids": r["response_ids"],
                "n_tokens": len(r["response_ids"]),
                "finish_reason": r["finish_reason"],
                "correct": correct,
                "text": text,
                "mean_bonus": r["mean_bonus"],
                "mean_candidates": r["mean_candidates"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if correct and stop_at_correct:
            break
    return rows


def explore_vanilla_batched(
    model,
    tok,
    prompt_ids: list[int],
    check: Callable[[str], bool],
    *,
    k_max: int,
    settings: Settings,
    seed: int,
    batch_size: int,
) -> list[dict]:
    """Vanilla runs in batches of ``batch_size`` with transformers ``generate`` (same filters);
    responses are checked in order and the run stops at the first correct one, as the sequential
    runs do (a batch may generate up to ``batch_size - 1`` responses that are never counted)."""
    from repexp.pools import Sampler, generate_hf, question_seed

    sampler = Sampler(temperature=1.0, top_p=settings.top_p, top_k=settings.top_k)
    rows = []
    for start in range(0, k_max, batch_size):
        t0 = time.perf_counter()
        b = min(batch_size, k_max - start)
        batch = generate_hf(
            model,
            tok,
            prompt_ids,
            n=b,
            sampler=sampler,
            max_new_tokens=settings.max_new_tokens,
            seed=question_seed(seed, "batch", str(start)),
            batch_size=b,
        )
        secs = (time.perf_counter() - t0) / b
        for r in batch:
            correct = bool(check(r["text"]))
            rows.append(
                {
                    "response": start + r["sample"] + 1,
                    "response_ids": r["response_ids"],
                    "n_tokens": len(r["response_ids"]),
                    "finish_reason": r["finish_reason"],
                    "correct": correct,
                    "text": r["text"],
                    "mean_bonus": float("nan"),
                    "mean_candidates": float("nan"),
                    "seconds": secs,
                }
            )
            if correct:
                return rows
    return rows
