"""RL post-training of one (model, task, method, seed) with TRL's GRPOTrainer (paper.md §3).

CLI (the ``rl_train`` rule)::

    python -m repexp.rl.train --model resources/models/<model> --model-name <model> --task <task> \\
        --train resources/tasks/<task>/train.parquet --dev resources/tasks/<dev_task>/<dev_split>.parquet \\
        --method grpo|unlikeliness|repexp --seed 41 --settings '<resolved rl settings as JSON>' \\
        --source offline|hub --threads N --out results/rl/<model>/<task>/<method>/seed<seed>

Optional: ``--verifiers '<verifiers section as JSON>'`` (checker switches), ``--keep-checkpoints``.
Multi-GPU (``rl.gpus_per_run`` = N > 1, one process per GPU; the rule does this):
``accelerate launch --num_processes N --config_file profiles/accelerate/fsdp.yaml -m repexp.rl.train ...``
(or ``--multi_gpu`` for plain data parallelism; rule ``rl_train`` builds this line from the config)
(same flags; ``--threads`` is the job's CPU threads, shared by its processes).

Stopping: after ``max_steps`` steps, or with a time budget ``max_hours`` (the paper: one day on 8
GPUs, "effectively run until the time budget ends", paper.md §3.2) at the first step boundary after
``max_hours`` of training wall time (:class:`TimeBudget`). That time is the training loop's (rollouts,
updates, dev evaluations, checkpoints; model loading and the step-0 evaluation excluded), summed over
the attempts of a resumed run: it is kept per step in ``state/elapsed.json``, and a run resumed from
its checkpoint at update U goes on from the time recorded at U (time spent on steps that a kill lost
is not counted). The stopping step is saved and evaluated on the dev set like ``max_steps``, so
checkpoint selection sees it; ``done.json`` says which limit stopped the run (``stopped_by``). A rerun
that resumes from the last step's checkpoint (killed before ``done.json``) trains no further.

Outputs under ``--out`` (a *step* is one generation round of ``train_batch_prompts`` prompts, as in
verl; ``update`` is TRL's optimiser step):

* ``dev.csv`` -- step, update, dev_pass1, dev_questions, dev_samples, seconds: dev pass@1 (mean over
  questions of c/n with ``dev_samples`` samples at τ = 1, top-p 1) before training (step 0, the base
  model) and every ``eval_every`` steps and at the last step (``max_steps``, or the step that spent
  the time budget ``max_hours``);
* ``best/`` -- the policy with the highest dev pass@1, compared strictly (>) against an initial best
  of 0 (paper.md §3.5); the base model's files (links) when step 0 is best or no step beats 0.
  A loadable model folder (``repexp.models.load_model``) with its tokenizer and a
  ``repexp_model.json`` manifest. Trained weights are saved in **float32** (the training precision:
  updates of lr 1e-6 vanish in bfloat16), so load it with ``dtype="float32"``;
* ``best.json`` -- {"step", "update", "dev_pass1", "method", "seed", "task"};
* ``train_log.csv`` -- one row per step: its number of optimiser ``updates``, mean loss and
  grad_norm, lr, the reward parts of its rollouts (``reward_correct`` = mean r*, ``reward_bonus`` =
  mean bonus (0 for GRPO/Unlikeliness), ``reward_total`` = mean reward TRL normalised),
  ``unlikeliness_scale`` (mean r̃/r* over correct rollouts), ``frac_reward_zero_std``, the shaping
  diagnostics of :func:`repexp.rl.trainer.advantage_diagnostics` (``groups_all_correct``,
  ``groups_reordered``, ``shaping_share``, ``adv_abs``, ``adv_abs_all_correct``),
  ``completion_length``, ``entropy``, ``clip_ratio``, and seconds: ``seconds_generation``,
  ``seconds_bonus_forward`` (RepExp's base-model forward), ``seconds_unlikeliness_forward`` (the
  policy forward for the ranks), ``seconds_reward`` (all reward functions, those forwards included),
  ``seconds_update`` (forward/backward/optimiser step) and ``seconds_step`` (the wall time of the
  step's updates, dev evaluation and checkpointing excluded);
* ``rollouts.csv`` -- one row per step: the ``update`` it was generated at, the number of
  ``rollouts`` and their :func:`repexp.rl.trainer.rollout_hash` in generation order (space-separated),
  so that two runs of one seed can be compared rollout by rollout
  (:func:`repexp.rl.evaluate.rollout_divergence`);
* ``weights_sketch.npz`` -- CountSketches of the final policy's and the base model's weights
  (:func:`repexp.rl.evaluate.weight_sketch`, from the last checkpoint): the L2 distance between two
  runs' final weights without keeping the weights (:func:`repexp.rl.evaluate.weight_divergence`);
* ``checkpoints/`` -- the trainer's last checkpoint (every ``eval_every`` steps and at the end): a
  rerun after a kill resumes from it (model, optimiser, scheduler, RNG, data position);
* ``state/`` -- ``dev.csv``, ``train_log.csv``, ``best/`` and ``best.json`` while the run is in
  progress (follow ``state/train_log.csv`` to watch it), and ``elapsed.json`` (training seconds at
  every step boundary, for the time budget); the first four are published to the four outputs above
  only at the end (``publish``), because Snakemake deletes a killed job's outputs before rerunning
  it, and a resumed run needs its earlier dev rows and best model. ``checkpoints/`` and ``state/`` are
  removed at the end unless ``--keep-checkpoints``;
* ``done.json`` -- written after the outputs, atomically: steps, updates, the best step,
  ``stopped_by`` (``"max_steps"`` or ``"max_hours"``), ``train_seconds`` (the training wall time the
  budget counts, over every attempt), ``seconds`` (this attempt's wall time), the settings.

Seeds: ``--seed`` seeds TRL/transformers (``seed``, ``data_seed``: the prompt order of the
``RepeatSampler`` and the sampling RNG), the RepExp projections (``repexp.bonus.projection_seed``)
and the dev-set sampling (one seed per step and question).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp.atomic import atomic_path
from repexp.rl.trainer import METHODS, RLSettings, grpo_config, rl_trainer_class

log = logging.getLogger("repexp.rl.train")

DEV_BATCH_SEQUENCES = 64  # dev samples per generate call (several questions per batch)
STATE = "state"  # folder of the tables and best model of a run in progress
ROLLOUTS = "rollouts.csv"
PUBLISHED = (
    "dev.csv",
    "train_log.csv",
    "best.json",
    ROLLOUTS,
)  # copied from state/ to the outputs at the end
SKETCH = "weights_sketch.npz"  # CountSketches of the final and the initial weights (divergence)
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


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def read_questions(path, tok, max_prompt_length: int, what: str) -> list[dict]:
    """``{"prompt": messages, "answer", "qid"}`` per question of a task table, without prompts longer
    than ``max_prompt_length`` tokens (verl's ``filter_overlong_prompts``; the count is logged)."""
    from repexp.pools import prompt_ids_of

    df = pd.read_parquet(path)
    for col in ("qid", "prompt", "answer"):
        if col not in df.columns:
            raise ValueError(f"{path} has no column {col!r}; is it a repexp.tasks table?")
    rows = []
    for qid, prompt, answer in zip(df["qid"], df["prompt"], df["answer"], strict=True):
        msgs = json.loads(prompt)
        if len(prompt_ids_of(tok, msgs)) <= max_prompt_length:
            rows.append({"prompt": msgs, "answer": str(answer), "qid": str(qid)})
    if len(rows) < len(df):
        log.warning(
            "%s: dropped %d of %d prompts longer than %d tokens",
            what,
            len(df) - len(rows),
            len(df),
            max_prompt_length,
        )
    if not rows:
        raise ValueError(
            f"{path}: no prompt fits in max_prompt_length = {max_prompt_length} tokens"
        )
    return rows


def dev_pass1(counts: list[tuple[int, int]]) -> float:
    """Dev pass@1 = mean over questions of c/n (paper.md §3.5)."""
    return float(np.mean([c / n for c, n in counts])) if counts else 0.0


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if path.is_file() and path.stat().st_size:
        return pd.read_csv(path)
    return pd.DataFrame(columns=columns)


def _write_json(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------
# best checkpoint
# ------------------------------------------------------------------------------------------------
def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace the folder ``dest`` by ``tmp`` (both on one filesystem); never leaves ``dest`` half-written."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


def link_base_model(base: Path, dest: Path, manifest: dict) -> None:
    """``dest`` = links to the base model's files + our manifest (step 0 is the best)."""
    from repexp.models import MANIFEST, check_model_dir

    base = check_model_dir(base).resolve()
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in base.iterdir():
        if f.name != MANIFEST and not f.name.startswith("."):
            (tmp / f.name).symlink_to(f.resolve())
    base_manifest = json.loads((base / MANIFEST).read_text())
    (tmp / MANIFEST).write_text(
        json.dumps({**manifest, "base_manifest": base_manifest}, indent=2, sort_keys=True)
    )
    _swap_in(tmp, dest)


# ------------------------------------------------------------------------------------------------
# callbacks
# ------------------------------------------------------------------------------------------------
def _callbacks():
    from transformers import TrainerCallback

    class DevEvaluator(TrainerCallback):
        """Dev pass@1 at step 0, every ``eval_every`` steps and at the end; keeps ``best/``.

        Evaluations run right after the trainer saved its checkpoint for that step (``on_save``), so
        a run killed during an evaluation resumes from that checkpoint and evaluates it again.
        """

        def __init__(self, run: Run):
            self.run = run
            self.trainer = None

        def on_train_begin(self, args, state, control, **kw):
            self.run.resume_tables(state.global_step)
            step = state.global_step // self.run.s.updates_per_step
            if not self.run.has_dev(step) and state.global_step % self.run.s.updates_per_step == 0:
                self.run.evaluate(self.trainer, step, state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= args.max_steps:
                control.should_save = True  # the final step is saved, hence evaluated
            return control

        def on_save(self, args, state, control, **kw):
            u = self.run.s.updates_per_step
            step = state.global_step // u
            if (
                state.global_step % u == 0
                and not self.run.has_dev(step)
                and (
                    step % self.run.s.eval_every == 0
                    or state.global_step >= args.max_steps
                    or self.run.stopped_by == "max_hours"
                )
            ):  # the last step, whichever limit ended the run
                self.run.evaluate(self.trainer, step, state.global_step)

    class TrainLogger(TrainerCallback):
        """Feeds every optimiser update to ``Run.log_update`` (``train_log.csv``, one progress line per step)."""

        def __init__(self, run: Run):
            self.run = run
            self.t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            # wall time of the whole update (generation, rewards, forward/backward, optimiser step)
            self.run.last_wall = time.perf_counter() - self.t0 if self.t0 is not None else None

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and state.is_world_process_zero:
                self.run.log_update(state.global_step, logs)

    class TimeBudget(TrainerCallback):
        """The time budget ``max_hours``: training stops at the first step boundary after it.

        At every step boundary the training wall time so far (the time recorded at the update this
        attempt started from + this attempt's time since ``on_train_begin``) is written to
        ``state/elapsed.json`` (:func:`record_elapsed`). Once it reaches ``max_hours`` the step is
        saved (``should_save``, so :class:`DevEvaluator` evaluates it) and training stops. A run that
        resumes from a checkpoint whose time already spent the budget (killed after its last step)
        trains no further: :class:`BudgetSpent` ends ``trainer.train`` right after the dev
        evaluation of that step; so does :class:`TrainingOver` for a run resumed from its
        ``max_steps`` checkpoint (the trainer would run one more update). The main process decides
        and tells the others (every process must stop at the same update). ``clock``: seconds (a
        fake one in the tests).
        """

        def __init__(self, run: Run, clock=time.monotonic):
            self.run, self.clock = run, clock
            self.base = 0.0  # training seconds before this attempt (recorded at the resumed update)
            self.t0: float | None = None

        def spent(self, seconds: float) -> bool:
            h = self.run.s.max_hours
            return h is not None and seconds >= 3600.0 * h

        def on_train_begin(self, args, state, control, **kw):
            self.base = float(_from_main(read_elapsed(self.run.state, state.global_step)))
            self.t0 = self.clock()
            self.run.train_seconds = self.base
            if state.global_step >= args.max_steps:
                log.info("resumed at the last update (%d): no further training", state.global_step)
                raise TrainingOver(state.global_step)
            if _from_main(self.spent(self.base)):
                self.run.stopped_by = "max_hours"
                log.info(
                    "the time budget of %g h was spent at update %d (%.0f s of training): no further "
                    "training",
                    self.run.s.max_hours,
                    state.global_step,
                    self.base,
                )
                raise BudgetSpent(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % self.run.s.updates_per_step:
                return control  # not a step boundary
            elapsed = self.base + (self.clock() - self.t0)
            self.run.train_seconds = elapsed
            if self.run.is_main:
                record_elapsed(self.run.state, state.global_step, elapsed)
            if state.global_step < args.max_steps and _from_main(self.spent(elapsed)):
                self.run.stopped_by = "max_hours"
                control.should_save = True  # saved, hence evaluated on the dev set
                control.should_training_stop = True
                log.info(
                    "time budget: %.2f h of training at step %d (update %d) >= max_hours %g: stopping",
                    elapsed / 3600,
                    state.global_step // self.run.s.updates_per_step,
                    state.global_step,
                    self.run.s.max_hours,
                )
            return control

    return DevEvaluator, TrainLogger, TimeBudget


class TrainingOver(Exception):
    """A resumed run with nothing left to train (raised by ``TimeBudget.on_train_begin``)."""


class BudgetSpent(TrainingOver):
    """A resumed run whose time budget was already spent."""


ELAPSED = (
    "elapsed.json"  # in state/: {"seconds": {"<update>": training seconds at that step boundary}}
)


def read_elapsed(state: Path, update: int) -> float:
    """Training seconds recorded at ``update`` (the update a run resumes from; 0 for a fresh run);
    the latest record before it if that one is missing."""
    path = Path(state) / ELAPSED
    if not path.is_file():
        return 0.0
    seconds = {int(k): float(v) for k, v in json.loads(path.read_text())["seconds"].items()}
    if update in seconds:
        return seconds[update]
    earlier = [u for u in seconds if u <= update]
    return seconds[max(earlier)] if earlier else 0.0


def record_elapsed(state: Path, update: int, seconds: float) -> None:
    """Record the training seconds at a step boundary (records after ``update``, left by an attempt
    that a kill cut off after its last checkpoint, are dropped)."""
    path = Path(state) / ELAPSED
    old = json.loads(path.read_text())["seconds"] if path.is_file() else {}
    kept = {int(k): float(v) for k, v in old.items() if int(k) < update}
    kept[update] = round(float(seconds), 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json({"seconds": {str(k): v for k, v in sorted(kept.items())}}, path)


def _from_main(value):
    """``value`` as the main process has it (every process gets the same; no-op for one process)."""
    from accelerate import PartialState

    if PartialState().num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------
class Run:
    """State and files of one training run (everything the callbacks touch)."""

    def __init__(self, args, settings: RLSettings, tok, dev_rows: list[dict], task):
        self.a, self.s, self.tok, self.dev_rows, self.task = args, settings, tok, dev_rows, task
        self.out = Path(args.out)
        self.state = self.out / STATE  # the run's tables and best model until it is published
        self.dev = _read_csv(self.state / "dev.csv", DEV_COLUMNS)
        self.trainlog = _read_csv(self.state / "train_log.csv", LOG_COLUMNS)
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
            rollouts = _read_csv(self.state / ROLLOUTS, ROLLOUT_COLUMNS)
            rollouts = rollouts[rollouts["step"] <= global_step // self.s.updates_per_step]
            _write_csv(rollouts[ROLLOUT_COLUMNS], self.state / ROLLOUTS)
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
        try:
            if self.s.use_vllm:
                counts = self._dev_counts_vllm(trainer, mine)
            else:
                counts = self._dev_counts_hf(model, mine, step)
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
            _write_csv(self.dev[DEV_COLUMNS], self.state / "dev.csv")
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

    def _dev_counts_hf(self, model, rows, step) -> list[tuple[int, int]]:
        """(correct, samples) per question: HF ``generate`` at τ = 1, top-p 1, no top-k, several
        questions per batch (left-padded), each batch seeded by (seed, step, its first question)."""
        import contextlib

        import torch
        from transformers import GenerationConfig

        from repexp.pools import prompt_ids_of, question_seed

        n, tok = self.s.dev_samples, self.tok
        device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos_ids = sorted(
            (({*eos} if isinstance(eos, list) else {eos}) | {tok.eos_token_id}) - {None}
        )
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
        gen_cfg = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=self.s.max_response_length,
            eos_token_id=eos_ids,
            pad_token_id=pad,
        )
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
            mask = torch.tensor(
                [[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=device
            )
            rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
            with rng, amp, torch.inference_mode():
                torch.manual_seed(
                    question_seed(self.a.seed, "rl-dev", str(step), batch[0]["qid"]) % 2**63
                )
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            for i, r in enumerate(batch):
                for row in out[i * n : (i + 1) * n, width:].tolist():
                    stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
                    texts.append(
                        tok.decode(
                            row if stop is None else row[: stop + 1], skip_special_tokens=True
                        )
                    )
                    answers.append(r["answer"])
        return self._counts(answers, texts, n)

    def _counts(self, answers, texts, n) -> list[tuple[int, int]]:
        """(correct, n) per question from its n consecutive samples; ``reward_workers`` scoring processes."""
        if self.s.reward_workers > 1:
            from repexp.tasks import score_many

            scores = score_many(self.task, answers, texts, workers=self.s.reward_workers)
        else:
            scores = np.array([self.task.score(a, t) for a, t in zip(answers, texts, strict=True)])
        return [(int(scores[i : i + n].sum()), n) for i in range(0, len(scores), n)]

    def _dev_counts_vllm(self, trainer, rows) -> list[tuple[int, int]]:
        """Dev samples from the trainer's colocated vLLM engine (its sampling: τ, top-p 1, max length)."""
        from repexp.pools import prompt_ids_of

        if trainer.state.global_step != trainer._last_loaded_step:
            trainer.vllm_generation.sync_weights()
            trainer._last_loaded_step = trainer.state.global_step
        n = self.s.dev_samples
        prompts = [ids for r in rows for ids in [prompt_ids_of(self.tok, r["prompt"])] * n]
        _, completions, _, _ = trainer.vllm_generation.generate(
            prompts=prompts, images=None, num_generations=n
        )
        texts = self.tok.batch_decode(completions, skip_special_tokens=True)
        return self._counts([r["answer"] for r in rows for _ in range(n)], texts, n)

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
                _swap_in(tmp, dest)
        if self.is_main:
            _write_json(
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
        """Record one optimiser update; ``train_log.csv`` gets one row per step (its updates aggregated)."""
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
        row = step_row(math.ceil(update / u), self.pending, bonus=self.a.method == "repexp")
        table = pd.concat([self.trainlog, pd.DataFrame([row])], ignore_index=True)
        _write_csv(table[LOG_COLUMNS], self.state / "train_log.csv")
        if update % u == 0:
            self.trainlog, self.pending = table, []
            self.write_rollouts()
            log.info(
                "step %d/%d: loss %.4f correct %.3f bonus %.4f total %.3f grad-norm %.3g | generation %.1fs "
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
        """Append the generation rounds the trainer logged since the last call to ``rollouts.csv``."""
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
                [_read_csv(self.state / ROLLOUTS, ROLLOUT_COLUMNS), pd.DataFrame(rows)],
                ignore_index=True,
            )
            _write_csv(table[ROLLOUT_COLUMNS], self.state / ROLLOUTS)


def step_row(step: int, updates: list[dict], *, bonus: bool) -> dict:
    """One ``train_log.csv`` row from the updates of a step: means of the losses/norms, the rewards of
    the step's generation round (logged on its first update), summed seconds."""
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


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def reward_functions(args, s: RLSettings, verifier_options: dict):
    from repexp.rl.rewards import CorrectnessReward, RepExpReward

    if args.method == "repexp":
        r = s.repexp
        reward = RepExpReward(
            args.model,
            task=args.task,
            group_size=s.group_size,
            beta=r.beta,
            lam=r.lam,
            proj_dim=r.proj_dim,
            seed=args.seed,
            zero_if_none_correct=r.zero_if_none_correct,
            dtype=r.feature_dtype,
            source=args.source,
            verifier_options=verifier_options,
            workers=s.reward_workers,
            offload=r.offload_base,
        )
        # loaded by its first call, once the trainer has sharded the policy (rewards.RepExpReward)
        return [reward]
    return [
        CorrectnessReward(
            args.task,
            source=args.source,
            verifier_options=verifier_options,
            workers=s.reward_workers,
        )
    ]


def build_trainer(args, s: RLSettings, *, verifier_options: dict | None = None, **config_overrides):
    """The configured :class:`~repexp.rl.trainer.RLTrainer` and its :class:`Run` (used by tests/benchmarks)."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from repexp.models import check_model_dir, load_tokenizer
    from repexp.tasks import get_task

    verifier_options = dict(verifier_options or {})
    out = Path(args.out)
    cuda = torch.cuda.is_available()
    nproc = PartialState().num_processes
    cfg = grpo_config(
        s,
        output_dir=str(out / "checkpoints"),
        seed=args.seed,
        num_processes=nproc,
        cuda=cuda,
        **config_overrides,
    )
    tok = load_tokenizer(args.model)
    train_rows = read_questions(args.train, tok, s.max_prompt_length, "train")
    dev_rows = read_questions(args.dev, tok, s.max_prompt_length, "dev")
    policy = AutoModelForCausalLM.from_pretrained(check_model_dir(args.model), dtype=torch.float32)
    task = get_task(args.dev_task or args.task, source=args.source, **verifier_options)
    run = Run(args, s, tok, dev_rows, task)
    DevEvaluator, TrainLogger, TimeBudget = _callbacks()
    dev_cb = DevEvaluator(run)
    trainer = rl_trainer_class()(
        model=policy,
        reward_funcs=reward_functions(args, s, verifier_options),
        args=cfg,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tok,
        callbacks=[
            dev_cb,
            TrainLogger(run),
            TimeBudget(run),
        ],  # this order: a step is evaluated before BudgetSpent
        beta_rank=s.unlikeliness.beta_rank if args.method == "unlikeliness" else None,
        adv_eps=s.adv_eps,
    )
    dev_cb.trainer = trainer
    run.rollout_log = trainer.rollout_log  # the same list: the trainer appends, the Run writes
    return trainer, run


def publish(state: Path, out: Path) -> None:
    """Copy the finished run's tables and best model from ``state/`` to the rule's outputs.

    The outputs are written only here, at the end: Snakemake deletes the outputs of a killed job
    before it reruns it, so anything a resumed run needs lives in ``state/`` (and ``checkpoints/``).
    ``best/`` is copied as hard links (no second copy of the weights; the base model's links stay links).
    """
    for name in PUBLISHED:
        with atomic_path(out / name) as tmp:
            shutil.copyfile(state / name, tmp)
    tmp = out / ".best.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(state / "best", tmp, symlinks=True, copy_function=os.link)
    _swap_in(tmp, out / "best")


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under ``out/checkpoints`` (None if there is none).

    The trainer writes ``trainer_state.json`` last; a checkpoint folder without it was cut off by a
    kill while it was being saved, and is removed (transformers' ``get_last_checkpoint`` would pick it).
    """
    ckpt = out / "checkpoints"
    folders = (
        sorted(
            (p for p in ckpt.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
            reverse=True,
        )
        if ckpt.is_dir()
        else []
    )
    for folder in folders:
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        log.warning("removing %s: incomplete (killed while it was saved)", folder)
        shutil.rmtree(folder)
    return None


def train(args, verifier_options: dict | None = None, **config_overrides) -> dict:
    s = RLSettings.from_dict(
        json.loads(args.settings) if isinstance(args.settings, str) else args.settings
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(out)
    if resume is None:  # a fresh run: nothing of an earlier, unfinished one may leak in
        for name in (*PUBLISHED, SKETCH, "done.json"):
            (out / name).unlink(missing_ok=True)
        for folder in (out / "best", out / STATE):
            if folder.exists():
                shutil.rmtree(folder)
    else:
        (out / "done.json").unlink(missing_ok=True)
        log.info("resuming from %s", resume)
    args.dev_task = getattr(args, "dev_task", None) or s.dev_task
    t0 = time.perf_counter()
    trainer, run = build_trainer(args, s, verifier_options=verifier_options, **config_overrides)
    log.info(
        "%s on %s, seed %d: %d train prompts, %d dev questions; %d steps of %d prompts x %d rollouts "
        "(%d update(s) of %d prompts each); TRL: per-device batch %d, grad. accumulation %d, steps per "
        "generation %d, %d process(es)",
        args.method,
        args.task,
        args.seed,
        len(trainer.train_dataset),
        len(run.dev_rows),
        s.max_steps,
        s.train_batch_prompts,
        s.group_size,
        s.updates_per_step,
        s.mini_batch_prompts,
        trainer.args.per_device_train_batch_size,
        trainer.args.gradient_accumulation_steps,
        trainer.args.steps_per_generation,
        trainer.accelerator.num_processes,
    )
    if s.max_hours is not None:
        log.info(
            "time budget: %g h of training (stops at the first step boundary after it)", s.max_hours
        )
    if trainer.accelerator.num_processes != s.gpus_per_run:
        log.warning(
            "%d process(es), but rl.gpus_per_run is %d (the rule launches that many)",
            trainer.accelerator.num_processes,
            s.gpus_per_run,
        )
    try:
        trainer.train(resume_from_checkpoint=resume)
    except (
        TrainingOver
    ):  # resumed after the last step (max_steps, or the one that spent the budget)
        pass
    best, at = run.best
    if at is None:  # no step beat the initial best of 0: the base model stands
        if run.is_main:
            link_base_model(Path(args.model), run.state / "best", run._manifest(0, 0, 0.0, "base"))
            _write_json(
                {
                    "step": 0,
                    "update": 0,
                    "dev_pass1": float(run.dev["dev_pass1"].iloc[0]) if len(run.dev) else 0.0,
                    "method": args.method,
                    "seed": args.seed,
                    "task": args.task,
                },
                run.state / "best.json",
            )
    done = {
        "method": args.method,
        "seed": args.seed,
        "task": args.task,
        "model": args.model_name,
        "steps": trainer.state.global_step // s.updates_per_step,
        "updates": trainer.state.global_step,
        "best_step": at or 0,
        "best_dev_pass1": best,
        "resumed_from": resume,
        "stopped_by": run.stopped_by or "max_steps",
        "train_seconds": round(run.train_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": s.to_dict(),
    }
    trainer.accelerator.wait_for_everyone()
    if run.is_main:
        publish(run.state, out)
        final = last_checkpoint(out)  # the last step is always saved
        if final is None:
            raise RuntimeError(f"{out}/checkpoints has no checkpoint of the last step")
        from repexp.rl.evaluate import write_weight_sketch

        write_weight_sketch(final, args.model, out / SKETCH)
        _write_json(done, out / "done.json")
        if not getattr(args, "keep_checkpoints", False):
            for folder in (out / "checkpoints", run.state):
                if folder.exists():
                    shutil.rmtree(folder)
    log.info(
        "done (%s, step %d): best dev pass@1 %.4f at step %d; %.0fs",
        done["stopped_by"],
        done["steps"],
        best,
        at or 0,
        done["seconds"],
    )
    return done


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m repexp.rl.train", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--model", required=True, help="prepared model folder (the policy's and RepExp's base)"
    )
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--train", required=True, help="the task's train table (parquet)")
    ap.add_argument("--dev", required=True, help="the dev table (parquet)")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument(
        "--settings", required=True, help="the resolved rl settings of this task, as JSON"
    )
    ap.add_argument("--source", default="offline", choices=["offline", "hub"])
    ap.add_argument(
        "--threads", type=int, default=2, help="CPU threads of the job (shared by its processes)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--verifiers", default="{}", help="the verifiers config section, as JSON (checker switches)"
    )
    ap.add_argument(
        "--keep-checkpoints", action="store_true", help="keep checkpoints/ after a finished run"
    )
    return ap.parse_args(argv)


def verifier_options_of(section: dict) -> dict:
    """``get_task`` options from the ``verifiers`` config section."""
    m = {
        "gsm8k_last_number_fallback": "last_number_fallback",
        "math_timeout_s": "math_timeout_s",
        "code_timeout_s": "code_timeout_s",
        "code_memory_mb": "code_memory_mb",
        "code_max_procs": "code_max_procs",
        "math_reward": "math_reward",
    }  # the RL stage's MATH scorer (inference keeps math-verify)
    return {m[k]: v for k, v in section.items() if k in m}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch  # noqa: F401  (loaded first, so that its thread pool is capped too)

    # --threads is the job's; `accelerate launch` starts LOCAL_WORLD_SIZE processes that share them
    from repexp.parallel import cap_threads

    cap_threads(
        max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    )  # torch + BLAS
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(args, verifier_options=verifier_options_of(json.loads(args.verifiers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
