"""The RL settings the workflow needs to build the DAG (``workflow/rules/common.smk``, ``rl.smk``,
``repexp.jobs``, ``repexp.memory``): one task's resolved ``rl`` section, a training run's
``--settings``, its dev and test sets, and the run names in the result paths.

Pure functions of the config; importing this module imports neither torch nor TRL.
"""

from __future__ import annotations

import copy
import re

from repexp.rl.methods import BASE, METHODS
from repexp.tasks import SPLITS

# Keys of the rl section that choose the grid, not the training: given to the trainer by their own
# flags (--model-name, --task, --method, --seed), or used only after training (test_samples).
GRID_KEYS = ("model", "tasks", "methods", "seeds", "test_samples")


# ------------------------------------------------------------------------------------------------
def task_settings(rl: dict, task: str) -> dict:
    """The ``rl`` config section with ``task_overrides[task]`` applied (and removed).

    An override replaces the top-level key of the same name; a key that only a method's section
    holds (``proj_dim`` -> ``repexp.proj_dim``) replaces it there; any other key (``dev_task``) is
    added at the top level.

    >>> rl = {"max_response_length": 1024, "repexp": {"proj_dim": 32},
    ...       "task_overrides": {"dapo": {"max_response_length": 8192, "proj_dim": 128,
    ...                                   "dev_task": "aime2024"}}}
    >>> task_settings(rl, "dapo")
    {'max_response_length': 8192, 'repexp': {'proj_dim': 128}, 'dev_task': 'aime2024'}
    >>> task_settings(rl, "math")["repexp"]
    {'proj_dim': 32}
    """
    settings = copy.deepcopy({k: v for k, v in rl.items() if k != "task_overrides"})
    for key, value in (rl.get("task_overrides") or {}).get(task, {}).items():
        if key in settings and not isinstance(settings[key], dict):
            settings[key] = value
            continue
        sections = [s for s in settings.values() if isinstance(s, dict) and key in s]
        if len(sections) > 1:
            raise ValueError(
                f"rl.task_overrides.{task}.{key} is ambiguous: several rl sections have {key!r}"
            )
        if sections:
            sections[0][key] = value
        else:
            settings[key] = value
    return settings


def train_settings(rl: dict, task: str) -> dict:
    """The training run's ``--settings``: :func:`task_settings` without the grid keys
    (:data:`GRID_KEYS`), so that adding a seed or a task, or changing the test sample count, does
    not change (and so re-run) the finished trainings."""
    return {k: v for k, v in task_settings(rl, task).items() if k not in GRID_KEYS}


def splits_of(task: str, settings: dict) -> tuple[str, str, str, str]:
    """``(dev_task, dev_split, test_task, test_split)`` of RL training on ``task`` (paper.md
    §3.4-3.5).

    The dev set is the task's own ``dev`` split (GSM8K: the first 512 test questions, MATH:
    MATH-500) unless ``settings["dev_task"]`` names another task (DAPO -> AIME 2024); the test set
    is the dev task's ``test_rest`` split when it has one, else its ``test`` split, so a task
    without a separate dev split (AIME 2024) is both the dev and the test set, as in the paper.

    >>> splits_of("gsm8k", {})
    ('gsm8k', 'dev', 'gsm8k', 'test_rest')
    >>> splits_of("dapo", {"dev_task": "aime2024"})
    ('aime2024', 'test', 'aime2024', 'test')
    """
    for name in (task, settings.get("dev_task") or task):
        if name not in SPLITS:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(SPLITS)}")
    if "train" not in SPLITS[task]:
        raise ValueError(
            f"task {task!r} has no train split (it has {', '.join(SPLITS[task])}); RL needs one"
        )
    dev_task = settings.get("dev_task") or task
    have = SPLITS[dev_task]
    if "dev" in have:
        dev_split = "dev"
    elif dev_task != task:
        dev_split = "test"
    else:
        raise ValueError(
            f"task {task!r} has no dev split; set rl.task_overrides.{task}.dev_task to a task "
            f"whose questions are the dev set (as dapo -> aime2024)"
        )
    return dev_task, dev_split, dev_task, "test_rest" if "test_rest" in have else "test"


def run_name(method: str, seed: int | None = None) -> str:
    """The path component of one evaluated policy: ``base`` or ``<method>/seed<seed>``."""
    return BASE if method == BASE else f"{method}/seed{int(seed)}"


def parse_run(run: str) -> tuple[str, int | None]:
    """Inverse of :func:`run_name`.

    >>> parse_run("repexp/seed41"), parse_run("base")
    (('repexp', 41), ('base', None))
    """
    if run == BASE:
        return BASE, None
    m = re.fullmatch(r"(.+)/seed(\d+)", run)
    if not m or m.group(1) not in METHODS:
        raise ValueError(
            f"not a run name: {run!r}; expected 'base' or '<method>/seed<N>' with method in "
            f"{tuple(METHODS)}"
        )
    return m.group(1), int(m.group(2))
