"""The dev evaluation of one training run (paper.md §3.5): ``dev_samples`` samples per question at
τ = 1, top-p 1, no top-k, scored by the task's verifier; dev pass@1 = mean over questions of c/n.

Samples come from the policy's own ``generate`` (:func:`dev_counts_hf`, several questions per
left-padded batch, each batch seeded by (seed, step, its first question)) or from the trainer's
colocated vLLM engine (:func:`dev_counts_vllm`).
"""

from __future__ import annotations

import numpy as np

DEV_BATCH_SEQUENCES = 64  # dev samples per generate call (several questions per batch)


def dev_pass1(counts: list[tuple[int, int]]) -> float:
    """Dev pass@1 = mean over questions of c/n (paper.md §3.5)."""
    return float(np.mean([c / n for c, n in counts])) if counts else 0.0


def dev_counts_hf(
    model, tok, rows, *, n: int, max_new_tokens: int, seed: int, step: int, task, workers: int = 1
) -> list[tuple[int, int]]:
    """(correct, samples) per question of ``rows``: ``n`` samples each from HF ``generate`` at τ =
    1, top-p 1, no top-k, several questions per batch (left-padded), each batch seeded by (seed,
    step, its first question); scored by ``task`` (:func:`score_counts`)."""
    import contextlib

    import torch

    from repexp.models import cut_at_eos, sampling_config
    from repexp.pools import prompt_ids_of, question_seed

    device = next(model.parameters()).device
    gen_cfg, eos_ids = sampling_config(model, tok, max_new_tokens)
    pad = gen_cfg.pad_token_id
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    per_batch = max(1, DEV_BATCH_SEQUENCES // n)
    answers, texts = [], []
    for b in range(0, len(rows), per_batch):
        batch = rows[b : b + per_batch]
        prompts = [ids for r in batch for ids in [prompt_ids_of(tok, r["prompt"])] * n]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=device)
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng, amp, torch.inference_mode():
            torch.manual_seed(question_seed(seed, "rl-dev", str(step), batch[0]["qid"]) % 2**63)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        for i, r in enumerate(batch):
            for row in out[i * n : (i + 1) * n, width:].tolist():
                texts.append(tok.decode(cut_at_eos(row, eos_ids)[0], skip_special_tokens=True))
                answers.append(r["answer"])
    return score_counts(task, answers, texts, n, workers)


def score_counts(task, answers, texts, n: int, workers: int = 1) -> list[tuple[int, int]]:
    """(correct, n) per question from its n consecutive samples; ``workers`` scoring processes
    (``rl.reward_workers``)."""
    if workers > 1:
        from repexp.tasks import score_many

        scores = score_many(task, answers, texts, workers=workers)
    else:
        scores = np.array([task.score(a, t) for a, t in zip(answers, texts, strict=True)])
    return [(int(scores[i : i + n].sum()), n) for i in range(0, len(scores), n)]


def dev_counts_vllm(trainer, tok, rows, *, n: int, task, workers: int = 1) -> list[tuple[int, int]]:
    """(correct, samples) per question of ``rows``: ``n`` samples each from the trainer's colocated
    vLLM engine (its sampling: τ, top-p 1, max length), scored by ``task``."""
    from repexp.pools import prompt_ids_of

    if trainer.state.global_step != trainer._last_loaded_step:
        trainer.vllm_generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step
    prompts = [ids for r in rows for ids in [prompt_ids_of(tok, r["prompt"])] * n]
    _, completions, _, _ = trainer.vllm_generation.generate(
        prompts=prompts, images=None, num_generations=n
    )
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    answers = [r["answer"] for r in rows for _ in range(n)]
    return score_counts(task, answers, texts, n, workers)
