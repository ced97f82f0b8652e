"""State and files of one training run (``repexp.rl.train``): what the callbacks touch.

:class:`Run` keeps the dev curve (``dev.csv``), the best model (``best/``, ``best.json``), the
training log (``train_log.csv``, one row per step: :func:`step_row`) and the rollout hashes
(``rollouts.csv``) under ``state/`` while the run is in progress; the dev samples themselves come
from :mod:`repexp.rl.dev`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp.rl.checkpoints import (
    ROLLOUTS,
    STATE,
    link_base_model,
    read_csv,
    swap_in,
    write_csv,
    write_json,
)
from repexp.rl.dev import dev_counts_hf, dev_counts_vllm, dev_pass1
from repexp.rl.methods import method
from repexp.rl.trainer import RLSettings

log = logging.getLogger("repexp.rl.train")

DEV_COLUMNS = ["step", "update", "dev_pass1", "dev_questions", "dev_samples", "seconds"]
DIAGNOSTICS = (
    "groups_all_correct",
    "groups_reordered",
    "shaping_share",
    "adv_abs",
    "adv_abs_all_correct",
)
LOG_COLUMNS = [
    "step",
    "updates",
    "loss",
    "grad_norm",
    "lr",
    "reward_correct",
    "reward_bonus",
    "reward_total",
    "unlikeliness_scale",
    "frac_reward_zero_std",
    *DIAGNOSTICS,
    "completion_length",
    "entropy",
    "clip_ratio",
    "seconds_generation",
    "seconds_bonus_forward",
    "seconds_unlikeliness_forward",
    "seconds_reward",
    "seconds_update",
    "seconds_step",
]
ROLLOUT_COLUMNS = ["step", "update", "rollouts", "hashes"]


class Run:
    """State and files of one training run (everything the callbacks touch)."""

    def __init__(self, args, settings: RLSettings, tok, dev_rows: list[dict], task):
        self.a, self.s, self.tok, self.dev_rows, self.task = args, settings, tok, dev_rows, task
        self.out = Path(args.out)
        self.state = self.out / STATE  # the run's tables and best model until it is published
        self.dev = read_csv(self.state / "dev.csv", DEV_COLUMNS)
        self.trainlog = read_csv(self.state / "train_log.csv", LOG_COLUMNS)
        self.rollout_log: list[
            dict
        ] = []  # RLTrainer.rollout_log: generation rounds not yet written
        self.pending: list[dict] = []  # the logged updates of the current step
        self.last_wall: float | None = None  # wall seconds of the last update (TrainLogger)
        self.stopped_by: str | None = (
            None  # "max_hours" when the time budget ended the run (TimeBudget)
        )
        self.train_seconds = 0.0  # training wall time over every attempt, at the last step boundary
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------- bookkeeping
    @property
    def is_main(self) -> bool:
        from accelerate import PartialState

        return PartialState().is_main_process

    def resume_tables(self, global_step: int) -> None:
        """Drop table rows after the step the run (re)starts from."""
        self.dev = self.dev[self.dev["update"] <= global_step].reset_index(drop=True)
        self.trainlog = self.trainlog[
            self.trainlog["step"] <= global_step // self.s.updates_per_step
        ]
        self.trainlog = self.trainlog.reset_index(drop=True)
        self.pending = []
        if self.is_main:
            rollouts = read_csv(self.state / ROLLOUTS, ROLLOUT_COLUMNS)
            rollouts = rollouts[rollouts["step"] <= global_step // self.s.updates_per_step]
            write_csv(rollouts[ROLLOUT_COLUMNS], self.state / ROLLOUTS)
        if global_step:
            log.info(
                "resuming at update %d (step %d); %d dev rows kept",
                global_step,
                global_step // self.s.updates_per_step,
                len(self.dev),
            )

    def has_dev(self, step: int) -> bool:
        return bool((self.dev["step"] == step).any())

    @property
    def best(self) -> tuple[float, int | None]:
        """(best dev pass@1 so far, its step): strict > against an initial 0 (paper.md §3.5)."""
        best, at = 0.0, None
        for step, p in zip(self.dev["step"], self.dev["dev_pass1"], strict=True):
            if p > best:
                best, at = float(p), int(step)
        return best, at

    # ---------------------------------------------------------------- dev evaluation
    def evaluate(self, trainer, step: int, update: int) -> float:
        from accelerate.utils import gather_object

        t0 = time.perf_counter()
        acc = trainer.accelerator
        mine = self.dev_rows[acc.process_index :: acc.num_processes]
        # every process gets the same number of questions (vLLM's tensor-parallel groups need it);
        # the padding repeats a question and is dropped below
        per_process = -(-len(self.dev_rows) // acc.num_processes)
        n_real = len(mine)
        mine = mine + [self.dev_rows[0]] * (per_process - n_real)
        model = acc.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        workers = self.s.reward_workers
        try:
            if self.s.use_vllm:
                counts = dev_counts_vllm(
                    trainer, self.tok, mine, n=self.s.dev_samples, task=self.task, workers=workers
                )
            else:
                counts = dev_counts_hf(
                    model,
                    self.tok,
                    mine,
                    n=self.s.dev_samples,
                    max_new_tokens=self.s.max_response_length,
                    seed=self.a.seed,
                    step=step,
                    task=self.task,
                    workers=workers,
                )
        finally:
            model.train(was_training)
        counts = gather_object(counts[:n_real])
        p1 = dev_pass1(counts)
        seconds = time.perf_counter() - t0
        best_before, _ = self.best
        improved = p1 > best_before
        if improved:
            self.save_best(trainer, step, update, p1)
        row = {
            "step": step,
            "update": update,
            "dev_pass1": p1,
            "dev_questions": len(counts),
            "dev_samples": self.s.dev_samples,
            "seconds": round(seconds, 2),
        }
        self.dev = pd.concat([self.dev, pd.DataFrame([row])], ignore_index=True)
        if self.is_main:
            write_csv(self.dev[DEV_COLUMNS], self.state / "dev.csv")
        log.info(
            "dev step %d (update %d): pass@1 %.4f over %d questions x %d samples in %.1fs%s",
            step,
            update,
            p1,
            len(counts),
            self.s.dev_samples,
            seconds,
            " (new best)" if improved else "",
        )
        return p1

    def _manifest(self, step: int, update: int, p1: float, dtype: str) -> dict:
        return {
            "spec": {
                "source": "rl",
                "base_model": self.a.model_name,
                "task": self.a.task,
                "method": self.a.method,
                "seed": self.a.seed,
                "step": step,
                "update": update,
                "dtype": dtype,
            },
            "dev_pass1": p1,
        }

    def save_best(self, trainer, step: int, update: int, p1: float) -> None:
        from repexp.models import MANIFEST

        dest = self.state / "best"
        if step == 0:
            if self.is_main:
                link_base_model(Path(self.a.model), dest, self._manifest(0, 0, p1, "base"))
        else:
            tmp = dest.with_name(f".{dest.name}.partial")
            if self.is_main and tmp.exists():
                shutil.rmtree(tmp)
            trainer.accelerator.wait_for_everyone()
            trainer.save_model(str(tmp))  # collective under FSDP/DeepSpeed; float32 weights
            if self.is_main:
                self.tok.save_pretrained(tmp)
                (tmp / "training_args.bin").unlink(missing_ok=True)
                (tmp / MANIFEST).write_text(
                    json.dumps(
                        self._manifest(step, update, p1, "float32"), indent=2, sort_keys=True
                    )
                    + "\n"
                )
                swap_in(tmp, dest)
        if self.is_main:
            write_json(
                {
                    "step": step,
                    "update": update,
                    "dev_pass1": p1,
                    "method": self.a.method,
                    "seed": self.a.seed,
                    "task": self.a.task,
                },
                self.state / "best.json",
            )
        trainer.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- training log
    def log_update(self, update: int, logs: dict) -> None:
        """Record one optimiser update; ``train_log.csv`` gets one row per step (its updates
        aggregated)."""
        u = self.s.updates_per_step

        def g(key, default=np.nan):
            v = logs.get(key)
            return default if v is None else float(v)

        step_time = self.last_wall if self.last_wall is not None else g("step_time")
        self.last_wall = None
        self.pending.append(
            {
                "update": update,
                "loss": g("loss"),
                "grad_norm": g("grad_norm"),
                "lr": g("learning_rate"),
                "reward_correct": g("reward_correct"),
                "reward_bonus": g("reward_bonus"),
                "reward_total": g("reward"),
                "unlikeliness_scale": g("unlikeliness_scale"),
                "frac_reward_zero_std": g("frac_reward_zero_std"),
                **{k: g(k) for k in DIAGNOSTICS},
                "completion_length": g("completions/mean_length"),
                "entropy": g("entropy"),
                "clip_ratio": g("clip_ratio/region_mean"),
                "seconds_generation": g("timing/generation", 0.0),
                "seconds_bonus_forward": g("timing/bonus_forward", 0.0),
                "seconds_unlikeliness_forward": g("timing/unlikeliness_forward", 0.0),
                "seconds_reward": g("timing/reward", 0.0),
                "seconds_update": step_time - g("timing/generate_and_score", 0.0),
                "seconds_step": step_time,
            }
        )
        row = step_row(math.ceil(update / u), self.pending, bonus=method(self.a.method).bonus)
        table = pd.concat([self.trainlog, pd.DataFrame([row])], ignore_index=True)
        write_csv(table[LOG_COLUMNS], self.state / "train_log.csv")
        if update % u == 0:
            self.trainlog, self.pending = table, []
            self.write_rollouts()
            log.info(
                "step %d/%d: loss %.4f correct %.3f bonus %.4f total %.3f grad-norm %.3g | "
                "generation %.1fs "
                "bonus-forward %.1fs reward %.1fs update %.1fs step %.1fs | elapsed %.0fs",
                row["step"],
                self.s.max_steps,
                row["loss"],
                row["reward_correct"],
                row["reward_bonus"],
                row["reward_total"],
                row["grad_norm"],
                row["seconds_generation"],
                row["seconds_bonus_forward"],
                row["seconds_reward"],
                row["seconds_update"],
                row["seconds_step"],
                time.perf_counter() - self.t0,
            )

    def write_rollouts(self) -> None:
        """Append the generation rounds the trainer logged since the last call to
        ``rollouts.csv``."""
        u = self.s.updates_per_step
        rows = [
            {
                "step": r["update"] // u + 1,
                "update": r["update"],
                "rollouts": len(r["hashes"]),
                "hashes": " ".join(r["hashes"]),
            }
            for r in self.rollout_log
        ]
        self.rollout_log.clear()
        if rows:
            table = pd.concat(
                [read_csv(self.state / ROLLOUTS, ROLLOUT_COLUMNS), pd.DataFrame(rows)],
                ignore_index=True,
            )
            write_csv(table[ROLLOUT_COLUMNS], self.state / ROLLOUTS)


def step_row(step: int, updates: list[dict], *, bonus: bool) -> dict:
    """One ``train_log.csv`` row from the updates of a step: means of the losses/norms, the rewards
    of the step's generation round (logged on its first update), summed seconds."""
    df = pd.DataFrame(updates)

    def mean(col):
        v = df[col].dropna()
        return float(v.mean()) if len(v) else np.nan

    row = {"step": step, "updates": len(df), "lr": float(df["lr"].iloc[-1])}
    for col in (
        "loss",
        "grad_norm",
        "reward_correct",
        "reward_bonus",
        "reward_total",
        "unlikeliness_scale",
        "frac_reward_zero_std",
        *DIAGNOSTICS,
        "completion_length",
        "entropy",
        "clip_ratio",
    ):
        row[col] = mean(col)
    if not bonus:
        row["reward_bonus"] = 0.0
    for col in [c for c in df.columns if c.startswith("seconds_")]:
        row[col] = float(df[col].sum())
    return row
