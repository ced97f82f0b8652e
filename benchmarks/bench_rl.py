"""Seconds per RL training step: RepExp against plain GRPO (same config, same seed, one process).

RepExp adds to every GRPO step one no-grad forward of the frozen base model over the step's rollouts
(the features), a sparse projection and G×G-sized algebra per group. This times real training steps
of ``repexp.rl.train`` (TRL ``GRPOTrainer``) on the embedded default configuration (SmolLM2-135M-
Instruct, the ``arith`` task, 2 prompts × 8 rollouts, 64 new tokens), dev evaluation off, and
prints the per-step breakdown: generation, RepExp's base-model forward, all rewards, the update.
The paper reports RepExp at 0.73× GRPO's steps per hour on 8 H100s (1.37× per step); the target
here is ≤ 1.15× per step.

Both methods start from the same weights and seed, so their first generation round is identical;
later rounds differ (different policies), so compare the non-generation columns too.

    .venv/bin/python benchmarks/bench_rl.py [--steps 3] [--methods grpo,repexp] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def settings_from_config(config: Path, task: str) -> dict:
    from repexp.rl.settings import train_settings

    rl = yaml.safe_load(config.read_text())["rl"]
    return train_settings(rl, task)


def run(
    method: str,
    *,
    model: Path,
    tables: Path,
    task: str,
    settings: dict,
    steps: int,
    seed: int,
    out: Path,
):
    from repexp.rl.train import build_trainer
    from repexp.rl.trainer import RLSettings

    s = RLSettings.from_dict({**settings, "max_steps": steps, "eval_every": 10**6})
    args = SimpleNamespace(
        model=str(model),
        model_name=model.name,
        task=task,
        train=str(tables / "train.parquet"),
        dev=str(tables / "dev.parquet"),
        method=method,
        seed=seed,
        source="offline",
        out=str(out / method),
        dev_task=None,
        keep_checkpoints=False,
    )
    trainer, r = build_trainer(args, s, save_strategy="no")
    trainer.remove_callback(
        next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "DevEvaluator")
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return r.trainlog.assign(method=method), wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "resources/models/smollm2-135m-instruct"))
    ap.add_argument("--config", default=str(REPO / "config/config.yaml"))
    ap.add_argument("--task", default="arith")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default="grpo,repexp")
    ap.add_argument("--seed", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the per-step table here")
    a = ap.parse_args()
    from repexp.models import cpu_capability_line

    print(f"# {cpu_capability_line()}")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from repexp.tasks import build_table, get_task

    torch.set_num_threads(a.threads)
    settings = settings_from_config(Path(a.config), a.task)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task = get_task(a.task)
        for split in ("train", "dev"):
            build_table(
                task, split, n_questions=32, wheel_dir=REPO / "resources/wheels"
            ).to_parquet(tmp / f"{split}.parquet")
        logs, totals = [], {}
        for method in a.methods.split(","):
            log, wall, cpu = run(
                method,
                model=Path(a.model),
                tables=tmp,
                task=a.task,
                settings=settings,
                steps=a.steps,
                seed=a.seed,
                out=tmp,
            )
            logs.append(log)
            totals[method] = (wall, cpu)
    steps = pd.concat(logs, ignore_index=True)
    cols = [
        "seconds_step",
        "seconds_generation",
        "seconds_bonus_forward",
        "seconds_unlikeliness_forward",
        "seconds_reward",
        "seconds_update",
        "completion_length",
        "reward_correct",
        "reward_bonus",
    ]
    print(
        f"\nRL step time on {Path(a.model).name}, task {a.task}: "
        f"{settings['train_batch_prompts']} prompts x "
        f"{settings['group_size']} rollouts, <= {settings['max_response_length']} new tokens, "
        f"{a.steps} steps, {a.threads} thread(s)\n"
    )
    print(
        steps[["method", "step", *cols]].to_string(index=False, float_format=lambda x: f"{x:.3f}")
    )
    mean = steps.groupby("method", sort=False)[cols].mean()
    base = mean.loc["grpo"] if "grpo" in mean.index else None
    print("\nmean per step (s)            " + "  ".join(f"{m:>12s}" for m in mean.index))
    for col in cols[:6]:
        print(f"{col:28s} " + "  ".join(f"{mean.loc[m, col]:12.2f}" for m in mean.index))
    print(
        f"{'whole run wall / cpu (s)':28s} "
        + "  ".join(f"{totals[m][0]:6.0f}/{totals[m][1]:5.0f}" for m in mean.index)
    )
    if base is not None:
        for m in mean.index:
            if m == "grpo":
                continue
            extra = mean.loc[m, ["seconds_bonus_forward", "seconds_unlikeliness_forward"]].sum()
            step, step_base = mean.loc[m, "seconds_step"], base["seconds_step"]
            free = step - mean.loc[m, "seconds_generation"]
            free_base = step_base - base["seconds_generation"]
            print(
                f"\n{m} / grpo seconds per step: {step / step_base:.3f} "
                f"(whole-run CPU time {totals[m][1] / totals['grpo'][1]:.3f}); "
                f"{m}'s extra forward = {extra:.2f} s = {extra / step:.1%} of its step; "
                f"generation-free step ratio {free / free_base:.3f}"
            )
    if a.json:
        Path(a.json).write_text(json.dumps(steps.to_dict(orient="records"), indent=1))


if __name__ == "__main__":
    main()
