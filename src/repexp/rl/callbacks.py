"""The trainer callbacks of one training run (``repexp.rl.train``): the dev evaluations and the best
checkpoint (:class:`DevEvaluator`), the training log (:class:`TrainLogger`) and the time budget
``max_hours`` (:class:`TimeBudget`, with the training seconds kept in ``state/elapsed.json``).

The classes subclass ``transformers.TrainerCallback``, so they are built on first use
(:func:`callback_classes`): importing this module does not import transformers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from repexp.rl.checkpoints import write_json

if TYPE_CHECKING:
    from repexp.rl.run import Run

log = logging.getLogger("repexp.rl.train")


def callback_classes():
    """``(DevEvaluator, TrainLogger, TimeBudget)``: the callback classes (module doc)."""
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
        """Feeds every optimiser update to ``Run.log_update`` (``train_log.csv``, one progress
        line per step)."""

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
        saved (``should_save``, so :class:`DevEvaluator` evaluates it) and training stops. A run
        that resumes from a checkpoint whose time already spent the budget (killed after its last
        step)
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
                    "the time budget of %g h was spent at update %d (%.0f s of training): no "
                    "further "
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
                    "time budget: %.2f h of training at step %d (update %d) >= max_hours %g: "
                    "stopping",
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
    write_json({"seconds": {str(k): v for k, v in sorted(kept.items())}}, path)


def _from_main(value):
    """``value`` as the main process has it (every process gets the same; no-op for one process)."""
    from accelerate import PartialState

    if PartialState().num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]
