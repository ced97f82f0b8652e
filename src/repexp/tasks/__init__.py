"""The five tasks of the paper (+ the two post-training data sets): data, prompts and verifiers.

Every task is one record in one dict, :data:`repexp.tasks.specs.TASKS` (re-exported here): name,
label, prompt template, splits and their pinned sizes per source, loaders, offline wheel, scorer,
answer format. ``get_task(name, **options)`` returns a :class:`Task`;
``Task.score(answer, response)`` is 1.0 or 0.0, where ``answer`` is the reference stored with the
question (see ``repexp.tasks.sources``).

========  ==========================  ====================================  ====================
name      paper data (``source: hub``)  offline stand-in (``source: offline``)  checker
========  ==========================  ====================================  ====================
math      MATH (lighteval), MATH-500    CHAMP, numeric answers (85)           last \\boxed{},
                                                                                math-verify
gsm8k     openai/gsm8k main             GSM-Symbolic (reasoning-gym)          number after ####
mbppplus  evalplus/mbppplus (378)       HumanEval (164)                       sandboxed tests
game24    nlile/24-game (1,362)         ToT 24.csv: the same 1,362 puzzles    exact rationals
aime      AIME 2025 (MathArena)         openai/evals AIME items (15)          integer 0-999
aime2024  AIME 2024 I+II (MathArena)    openai/evals AIME items (15)          integer 0-999
dapo      deduplicated DAPO-Math-17K    CHAMP, numeric answers                last \\boxed{},
                                                                                math-verify
arith     (none: offline only)          reasoning-gym chain_sum               number after ####,
                                                                                else last number
========  ==========================  ====================================  ====================

``arith`` is not a paper task: it is the post-training stand-in of the CPU default, where
SmolLM2-135M-Instruct has reward variance (config/README.md, "Embedded default"); its data option
``chain_sum`` (``{"terms", "digits", "operators"}``, config key ``tasks.arith.chain_sum``) sets the
difficulty of its problems (``repexp.tasks.sources.arith_offline``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repexp.tasks import sources as src
from repexp.tasks.specs import BOXED, HASH, HUMANEVAL_TEMPLATE, SOURCES, TASKS, TaskSpec
from repexp.verifiers.settings import VerifierSettings

log = logging.getLogger(__name__)

__all__ = [
    "BOXED",
    "HASH",
    "HUMANEVAL_TEMPLATE",
    "OFFLINE_WHEELS",
    "SIZES",
    "SOURCES",
    "SPLITS",
    "TABLE_COLUMNS",
    "TASKS",
    "TASK_NAMES",
    "TEMPLATES",
    "Task",
    "TaskSpec",
    "VerifierSettings",
    "build_table",
    "data_options",
    "expected_questions",
    "get_task",
    "score_many",
    "spec_of",
    "subset",
    "task_from_config",
    "wheels_of",
]

# Views of TASKS, for the modules that read one column of it (built at import: a task added to
# TASKS at run time is seen by the functions below, not by these).
TEMPLATES = {n: t.template for n, t in TASKS.items()}
SPLITS = {n: t.splits for n, t in TASKS.items()}
TASK_NAMES = tuple(TASKS)
SIZES = {(n, source): sizes for n, t in TASKS.items() for source, sizes in t.sizes.items()}
OFFLINE_WHEELS = {n: t.offline_wheel for n, t in TASKS.items() if t.offline_wheel}

# get_task's older names of verifier settings (VerifierSettings' fields are the config keys)
_VERIFIER_ALIASES = {"last_number_fallback": "gsm8k_last_number_fallback"}
_VERIFIER_KEYS = {f for f in VerifierSettings.__dataclass_fields__}


def spec_of(name: str) -> TaskSpec:
    """The record of task ``name`` in :data:`TASKS`, or a ValueError listing the known tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def expected_questions(
    task: str,
    source: str,
    split: str,
    n_questions: int | None = None,
    qids: list[str] | None = None,
) -> int | None:
    """How many questions ``prepare_task`` will write (None when the source size is not pinned)."""
    if qids:
        return len(qids)
    total = spec_of(task).sizes[source][split]
    if total is None:
        return n_questions
    return total if n_questions is None else min(n_questions, total)


def wheels_of(task: str, source: str) -> list[str]:
    """The wheels the task's ``source`` reads (``prepare_task``'s inputs; none for hub data)."""
    wheel = spec_of(task).offline_wheel
    return [wheel] if source == "offline" and wheel else []


@dataclass(frozen=True)
class Task:
    """A task: where its questions come from, how they are prompted, and how answers are checked.

    ``options`` are the task's data options (its record's ``data_options``, e.g. ``arith``'s
    ``chain_sum``); ``verifiers`` the checker switches. ``score`` is safe to call anywhere
    (math-verify runs under a process-level timeout, code runs in the sandbox); ``check`` is the
    same decision computed in-process, for worker processes that already run under a timeout
    (``score_many``).
    """

    name: str
    source: str = "offline"
    template: str | None = None
    options: dict = field(default_factory=dict)
    verifiers: VerifierSettings = field(default_factory=VerifierSettings)

    def __post_init__(self):
        spec = spec_of(self.name)
        if self.source not in SOURCES:
            raise ValueError(
                f"task {self.name}: source must be 'hub' or 'offline', not {self.source!r}"
            )
        if self.source not in spec.sizes:
            raise ValueError(
                f"task {self.name} has no {self.source!r} source (it has {', '.join(spec.sources)})"
            )

    @property
    def spec(self) -> TaskSpec:
        return spec_of(self.name)

    # ---------------------------------------------------------------- prompts
    @property
    def prompt_template(self) -> str:
        if self.template:
            return self.template
        spec = self.spec
        if self.source == "offline" and spec.offline_template:
            return spec.offline_template
        return spec.template

    def messages(self, question: str) -> list[dict]:
        """The chat messages for one question: a single user turn (the model's default system
        prompt)."""
        return [{"role": "user", "content": self.prompt_template.format(question=question)}]

    # ---------------------------------------------------------------- data
    def load(
        self, split: str, *, wheel_dir: Path | None = None, load: Callable | None = None
    ) -> list[dict]:
        spec = self.spec
        if split not in spec.splits:
            raise src.TaskDataError(
                f"task {self.name} has no split {split!r}; it has {', '.join(spec.splits)}"
            )
        if self.source == "hub":
            return spec.hub(split, load or src.hub_load, **self.options)
        return spec.offline(split, wheel_dir, **self.options)

    # ---------------------------------------------------------------- verification
    def check(self, answer: str, response: str) -> float:
        """Correctness computed in this process (no timeout around math-verify)."""
        return self.spec.scorer(answer, response, self.verifiers, None)

    def score(self, answer: str, response: str) -> float:
        """1.0 if ``response`` answers correctly given the reference ``answer``, else 0.0."""
        return self.spec.scorer(answer, response, self.verifiers, self.verifiers.math_timeout_s)

    def final_answer(self, response: str) -> str | None:
        """The answer the scorer reads from ``response``, canonicalised for grouping (None: none
        can be extracted); a ValueError for code tasks, whose answer is a program's behaviour."""
        spec = self.spec
        if spec.final_answer is None:
            raise ValueError(
                f"task {self.name!r} has no extractable final answer"
                + (" (a code task: its answer is a program's behaviour)" if spec.code else "")
            )
        return spec.final_answer(response, self.verifiers)


def get_task(
    name: str,
    *,
    source: str = "offline",
    template: str | None = None,
    verifiers: VerifierSettings | dict | None = None,
    **options,
) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`: ``math``, ``gsm8k``, ``mbppplus``,
    ``game24``, ``aime``, ``aime2024``, ``dapo``, ``arith``).

    ``verifiers`` are the checker switches (:class:`~repexp.verifiers.settings.VerifierSettings`
    or the ``verifiers`` config section as a dict; default: the inference stage's defaults). They
    may also be given one by one as keyword ``options`` (``math_timeout_s``, ``code_timeout_s``,
    ``code_memory_mb``, ``code_max_procs``, ``math_reward``: ``math_verify``, the default, or
    ``recipe``, the authors' string-equivalence reward, for ``math`` only;
    ``gsm8k_last_number_fallback`` alias ``last_number_fallback``). The other ``options`` are the
    task's data options (``chain_sum`` for ``arith``: the difficulty of its problems,
    :func:`repexp.tasks.sources.arith_difficulty`); ``None`` means the default.
    """
    spec = spec_of(name)
    settings = (
        verifiers
        if isinstance(verifiers, VerifierSettings)
        else VerifierSettings.from_dict(verifiers)
    )
    switches, data = {}, {}
    for key, value in options.items():
        key = _VERIFIER_ALIASES.get(key, key)
        if key in _VERIFIER_KEYS:
            switches[key] = value
        elif key in spec.data_options:
            if value is not None:
                spec.data_options[key](value)  # a bad setting fails here, not when data is read
                data[key] = value
        elif value is not None:
            owners = [n for n, t in TASKS.items() if key in t.data_options]
            raise ValueError(
                f"the option {key} is for the task {', '.join(owners)} only, not {name}"
                if owners
                else f"unknown option {key!r} for task {name}; its data options: "
                f"{', '.join(spec.data_options) or '(none)'}; verifier settings: "
                f"{', '.join(sorted(_VERIFIER_KEYS))}"
            )
    if switches:
        settings = VerifierSettings.from_dict({**settings.to_dict(), **switches})
    return Task(name=name, source=source, template=template, options=data, verifiers=settings)


def data_options(name: str, config: dict) -> dict:
    """The data options of task ``name`` set in a validated config (``tasks.<name>.<option>``,
    the ones its record declares; unset ones are left out)."""
    entry = config["tasks"][name]
    return {k: entry[k] for k in spec_of(name).data_options if entry.get(k) is not None}


def task_from_config(name: str, config: dict, *, stage: str = "inference") -> Task:
    """The task ``name`` with the data source, template, data options and verifier settings of a
    validated config, as ``stage`` (``inference`` or ``rl``) scores it."""
    entry = config["tasks"][name]
    return get_task(
        name,
        source=entry["source"],
        template=entry["template"],
        verifiers=VerifierSettings.for_stage(config["verifiers"], stage),
        **data_options(name, config),
    )


# -------------------------------------------------------------------------------------------------
# scoring many responses (both cores)
# -------------------------------------------------------------------------------------------------
def _check_one(task: Task, answer: str, response: str) -> float:
    return task.check(answer, response)


def score_many(
    task: Task,
    answers: Sequence[str],
    responses: Sequence[str],
    *,
    workers: int = 2,
    timeout_s: float | None = None,
    desc: str | None = None,
) -> np.ndarray:
    """Score ``responses[i]`` against ``answers[i]`` in ``workers`` processes, one timeout per item.

    An item that exceeds ``timeout_s`` (default: the task's math or code timeout + 5 s) is scored
    0.0 and logged; a bug in a checker is raised, not scored.
    """
    from repexp.parallel import map_with_timeout

    if len(answers) != len(responses):
        raise ValueError(f"{len(answers)} answers but {len(responses)} responses")
    if timeout_s is None:
        timeout_s = max(task.verifiers.math_timeout_s, task.verifiers.code_timeout_s) + 5.0
    out = map_with_timeout(
        _check_one,
        [(task, a, r) for a, r in zip(answers, responses, strict=True)],
        timeout_s=timeout_s,
        workers=workers,
        on_timeout=0.0,
        desc=desc,
    )
    return np.asarray(out, dtype=np.float64)


# -------------------------------------------------------------------------------------------------
# the question table
# -------------------------------------------------------------------------------------------------
TABLE_COLUMNS = [
    "qid",
    "question",
    "prompt",
    "answer",
    "difficulty",
    "task",
    "split",
    "source",
    "meta",
]


def subset(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded subset of ``n`` records without replacement, in the source's order; all if ``n``
    is None."""
    if n is None or n >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
    return [records[i] for i in keep]


def build_table(
    task: Task,
    split: str,
    *,
    n_questions: int | None = None,
    subset_seed: int = 0,
    qids: list[str] | None = None,
    wheel_dir: Path | None = None,
    load: Callable | None = None,
):
    """The questions of one task split as a DataFrame with :data:`TABLE_COLUMNS`.

    ``qids`` (an explicit list of question ids, in that order) takes precedence over the seeded
    ``n_questions`` subset."""
    import pandas as pd

    recs = task.load(split, wheel_dir=wheel_dir, load=load)
    want = task.spec.sizes[task.source][split]
    if want is not None and len(recs) != want:
        raise src.TaskDataError(
            f"task {task.name} split {split} ({task.source}) has {len(recs)} questions, expected "
            f"{want}: the upstream data changed. Check it, then update the task's sizes in "
            f"repexp.tasks.TASKS."
        )
    if qids:
        by_id = {r["qid"]: r for r in recs}
        missing = [q for q in qids if q not in by_id]
        if missing:
            raise src.TaskDataError(
                f"task {task.name} split {split}: unknown question ids {missing[:5]}"
            )
        recs = [by_id[q] for q in qids]
    else:
        recs = subset(recs, n_questions, subset_seed)
    if not recs:
        raise src.TaskDataError(f"task {task.name} split {split} ({task.source}) has no questions")
    qids = [r["qid"] for r in recs]
    if len(set(qids)) != len(qids):
        raise src.TaskDataError(f"task {task.name} split {split}: duplicate question ids")
    return pd.DataFrame(
        {
            "qid": qids,
            "question": [r["question"] for r in recs],
            "prompt": [json.dumps(task.messages(r["question"])) for r in recs],
            "answer": [r["answer"] for r in recs],
            "difficulty": [np.nan if r["difficulty"] is None else r["difficulty"] for r in recs],
            "task": task.name,
            "split": split,
            "source": task.source,
            "meta": [json.dumps(r["meta"], sort_keys=True) for r in recs],
        },
        columns=TABLE_COLUMNS,
    )
