"""RL post-training of one (model, task, method, seed) with TRL's GRPOTrainer (paper.md §3).

CLI (the ``rl_train`` rule)::

    python -m repexp.rl.train --model resources/models/<model> --model-name <model> --task <task> \\
        --train resources/tasks/<task>/train.parquet \\
        --dev resources/tasks/<dev_task>/<dev_split>.parquet \\
        --method <method> --seed 41 --settings '<resolved rl settings as JSON>' \\
        --source offline|hub --threads N --out results/rl/<model>/<task>/<method>/seed<seed>

Optional: ``--verifiers '<verifiers section as JSON>'`` (the checker switches, read as
``VerifierSettings.for_stage(section, "rl")``: the section's ``math_reward`` scores MATH rewards
and dev pass@1), ``--keep-checkpoints``.
Multi-GPU (``rl.gpus_per_run`` = N > 1, one process per GPU; the rule does this):
``accelerate launch --num_processes N --config_file profiles/accelerate/fsdp.yaml -m repexp.rl.train
...`` (or ``--multi_gpu`` for plain data parallelism; rule ``rl_train`` builds this line from the
config)
(same flags; ``--threads`` is the job's CPU threads, shared by its processes).

Stopping: after ``max_steps`` steps, or with a time budget ``max_hours`` (the paper: one day on 8
GPUs, "effectively run until the time budget ends", paper.md §3.2) at the first step boundary after
``max_hours`` of training wall time (``repexp.rl.callbacks.TimeBudget``). That time is the training
loop's (rollouts, updates, dev evaluations, checkpoints; model loading and the step-0 evaluation
excluded), summed
over the attempts of a resumed run: it is kept per step in ``state/elapsed.json``, and a run resumed
from
its checkpoint at update U goes on from the time recorded at U (time spent on steps that a kill lost
is not counted). The stopping step is saved and evaluated on the dev set like ``max_steps``, so
checkpoint selection sees it; ``done.json`` says which limit stopped the run (``stopped_by``). A
rerun that resumes from the last step's checkpoint (killed before ``done.json``) trains no further.

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
  ``rollouts`` and their :func:`repexp.rl.trainer.rollout_hash` in generation order
  (space-separated), so that two runs of one seed can be compared rollout by rollout
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
  it, and a resumed run needs its earlier dev rows and best model. ``checkpoints/`` and ``state/``
  are removed at the end unless ``--keep-checkpoints``;
* ``done.json`` -- written after the outputs, atomically: steps, updates, the best step,
  ``stopped_by`` (``"max_steps"`` or ``"max_hours"``), ``train_seconds`` (the training wall time the
  budget counts, over every attempt), ``seconds`` (this attempt's wall time), the settings.

Modules: this one is the CLI (:func:`train`, :func:`build_trainer`); the method's reward comes
from :mod:`repexp.rl.methods`, the run's state and tables from :mod:`repexp.rl.run`, its dev
samples from :mod:`repexp.rl.dev`, the callbacks from :mod:`repexp.rl.callbacks` and its files
(best-model swap, checkpoints, publishing) from :mod:`repexp.rl.checkpoints`.

Seeds: ``--seed`` seeds TRL/transformers (``seed``, ``data_seed``: the prompt order of the
``RepeatSampler`` and the sampling RNG), the RepExp projections (``repexp.bonus.projection_seed``)
and the dev-set sampling (one seed per step and question).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from repexp.parallel import start_cli
from repexp.rl.callbacks import BudgetSpent, TrainingOver, callback_classes  # noqa: F401
from repexp.rl.checkpoints import (
    PUBLISHED,
    SKETCH,
    STATE,
    last_checkpoint,
    link_base_model,
    publish,
    write_json,
)
from repexp.rl.methods import METHODS, RewardContext, method
from repexp.rl.run import Run
from repexp.rl.trainer import RLSettings, grpo_config, rl_trainer_class
from repexp.verifiers.settings import VerifierSettings

log = logging.getLogger("repexp.rl.train")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def read_questions(path, tok, max_prompt_length: int, what: str) -> list[dict]:
    """``{"prompt": messages, "answer", "qid"}`` per question of a task table, without prompts
    longer than ``max_prompt_length`` tokens (verl's ``filter_overlong_prompts``; the count is
    logged)."""
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


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def reward_functions(args, s: RLSettings, verifiers: VerifierSettings) -> list:
    """The run's reward functions: its method's
    (``repexp.rl.methods.METHODS[args.method].reward``)."""
    ctx = RewardContext(
        model=args.model,
        task=args.task,
        seed=args.seed,
        source=args.source,
        settings=s,
        verifiers=verifiers,
    )
    return [method(args.method).reward(ctx)]


def build_trainer(
    args, s: RLSettings, *, verifiers: VerifierSettings | None = None, **config_overrides
):
    """The configured :class:`~repexp.rl.trainer.RLTrainer` and its :class:`Run` (used by
    tests/benchmarks)."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from repexp.models import check_model_dir, load_tokenizer
    from repexp.tasks import get_task

    verifiers = VerifierSettings() if verifiers is None else verifiers
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
    task = get_task(args.dev_task or args.task, source=args.source, verifiers=verifiers)
    run = Run(args, s, tok, dev_rows, task)
    DevEvaluator, TrainLogger, TimeBudget = callback_classes()
    dev_cb = DevEvaluator(run)
    trainer = rl_trainer_class()(
        model=policy,
        reward_funcs=reward_functions(args, s, verifiers),
        args=cfg,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tok,
        callbacks=[
            dev_cb,
            TrainLogger(run),
            TimeBudget(run),
        ],  # this order: a step is evaluated before BudgetSpent
        beta_rank=s.unlikeliness.beta_rank if method(args.method).policy_ranks else None,
        adv_eps=s.adv_eps,
    )
    dev_cb.trainer = trainer
    run.rollout_log = trainer.rollout_log  # the same list: the trainer appends, the Run writes
    return trainer, run


def train(args, verifiers: VerifierSettings | None = None, **config_overrides) -> dict:
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
    trainer, run = build_trainer(args, s, verifiers=verifiers, **config_overrides)
    log.info(
        "%s on %s, seed %d: %d train prompts, %d dev questions; %d steps of %d prompts x %d "
        "rollouts "
        "(%d update(s) of %d prompts each); TRL: per-device batch %d, grad. accumulation %d, steps "
        "per "
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
            write_json(
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
        write_json(done, out / "done.json")
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
    ap.add_argument("--method", required=True, choices=list(METHODS))
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


def main(argv=None) -> int:
    args = parse_args(argv)
    # --threads is the job's; `accelerate launch` starts LOCAL_WORLD_SIZE processes that share them
    start_cli(max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), torch=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(args, verifiers=VerifierSettings.for_stage(json.loads(args.verifiers), "rl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
