"""The table of RL methods (paper.md §3.3): one record per method, the only list of them.

Every place that depends on the method reads this table: the config check
(``repexp.config.reference_errors``: ``rl.methods``), the ``method`` / ``run`` wildcard constraints
of ``workflow/rules/rl.smk`` (:func:`wildcard_pattern`), the trainer CLI (``--method`` choices, the
reward function, Unlikeliness's rank scaling), the evaluation's method order and baselines, the
job-time and memory models (``repexp.jobs``, ``repexp.memory``: the extra forwards) and the
figures' labels and colours (``repexp.plots.RL_LABELS`` / ``RL_COLORS``).

The three methods of the paper differ only in how a rollout's reward is shaped before verl's
per-group advantage A_i = (r_i − mean(r)) / (std(r) + ε) (``repexp.rl.trainer``):

* GRPO: r = r* ∈ {0, 1}, the verifier's correctness (paper.md §3.2);
* Unlikeliness: r̃ = r* · (1 − β_rank · rank / G), the rank of the rollout's mean log-probability
  under the policy within its group (``repexp.rl.rewards.unlikeliness_scale``; paper.md §3.3);
* RepExp: r = r* + β · b, the elliptical bonus of the rollout's features under the frozen base
  model (``repexp.rl.rewards.RepExpReward``, ``repexp.bonus``; paper.md §3.3).

A new method is one reward function (``reward``: built from a :class:`RewardContext`, called TRL's
way, returning one float per completion) plus one entry in :data:`METHODS`; see CONTRIBUTING.md.
Importing this module imports neither torch nor TRL (the workflow reads it to build the DAG).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repexp.verifiers.settings import VerifierSettings

if TYPE_CHECKING:
    from repexp.rl.trainer import RLSettings

BASE = "base"  # the base model's run name: its test pass@k is the "Base Model" curve
OURS = "repexp"  # the method whose sample efficiency is measured against the others (paper.md §5)
REFERENCE = "grpo"  # every other method's run is compared with this one's (divergence table)


@dataclass(frozen=True)
class RewardContext:
    """What a method's reward function is built from: one training run (``repexp.rl.train``)."""

    model: str  # the prepared model folder: the policy's start and RepExp's frozen base model
    task: str  # the training task (its verifier scores r*)
    seed: int  # the run's seed (RepExp's projection seed)
    source: str  # "offline" or "hub" (where the task's data comes from)
    settings: RLSettings  # the resolved rl settings of the task
    # the checker switches of the RL stage (VerifierSettings.for_stage(section, "rl"))
    verifiers: VerifierSettings = field(default_factory=VerifierSettings)


@dataclass(frozen=True)
class RLMethod:
    """One RL method: how its reward is built and what its runs cost and look like.

    * ``reward`` -- builds the run's reward function (TRL's reward-function protocol:
      ``f(prompts, completions, **columns) -> [float]``, picklable) from a :class:`RewardContext`;
    * ``policy_ranks`` -- the trainer rescales r* by the rollout's rank under the policy
      (Unlikeliness: one extra no-grad policy forward per step, ``rl.unlikeliness.beta_rank``);
    * ``base_forward`` -- the reward runs the frozen base model (RepExp's features: one extra
      forward per step and the frozen model's memory, ``rl.repexp``);
    * ``bonus`` -- the reward is r* + a bonus that the function reports (``last["bonus"]``), logged
      as ``reward_bonus`` in ``train_log.csv`` (0 for the others);
    * ``label``, ``color`` -- the figures' legend entry and colour (a matplotlib colour string).
    """

    name: str
    reward: Callable[[RewardContext], Callable]
    label: str
    color: str
    policy_ranks: bool = False
    base_forward: bool = False
    bonus: bool = False

    @property
    def extra_forwards(self) -> int:
        """Forwards over a step's rollouts besides the policy update's (the job-time model)."""
        return int(self.policy_ranks) + int(self.base_forward)


def correctness_reward(c: RewardContext):
    """r* ∈ {0, 1}: the task's verifier on each completion (GRPO; Unlikeliness before its ranks)."""
    from repexp.rl.rewards import CorrectnessReward

    return CorrectnessReward(
        c.task,
        source=c.source,
        verifiers=c.verifiers,
        workers=c.settings.reward_workers,
    )


def repexp_reward(c: RewardContext):
    """r* + β · b: the elliptical bonus under the frozen base model (``rl.repexp`` settings).

    The frozen model is loaded by the function's first call, once the trainer has sharded the
    policy (``repexp.rl.rewards.RepExpReward``)."""
    from repexp.rl.rewards import RepExpReward

    r = c.settings.repexp
    return RepExpReward(
        c.model,
        task=c.task,
        group_size=c.settings.group_size,
        beta=r.beta,
        lam=r.lam,
        proj_dim=r.proj_dim,
        seed=c.seed,
        zero_if_none_correct=r.zero_if_none_correct,
        dtype=r.feature_dtype,
        source=c.source,
        verifiers=c.verifiers,
        workers=c.settings.reward_workers,
        offload=r.offload_base,
    )


# The authors' plot script (paper.md §4): GRPO = seaborn deep[-1], Unlikeliness = deep[1],
# RepExp = colorblind[2] (the base model's deep[7] is repexp.plots.RL_COLORS["base"]).
METHODS: dict[str, RLMethod] = {
    m.name: m
    for m in (
        RLMethod("grpo", correctness_reward, "GRPO", "#64b5cd"),
        RLMethod("unlikeliness", correctness_reward, "Unlikeliness", "#dd8452", policy_ranks=True),
        RLMethod(
            "repexp", repexp_reward, "RepExp (ours)", "#029e73", base_forward=True, bonus=True
        ),
    )
}


def method(name: str) -> RLMethod:
    """The record of ``name``, or a clear error naming the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown RL method {name!r}; known: {', '.join(METHODS)} (repexp.rl.methods.METHODS)"
        ) from None


def wildcard_pattern() -> str:
    """The regular expression of a method name in the workflow's paths:
    ``grpo|unlikeliness|...``."""
    import re

    return "|".join(re.escape(m) for m in METHODS)


def run_pattern() -> str:
    """The regular expression of an evaluated policy's run name
    (``repexp.rl.settings.run_name``)."""
    return rf"{BASE}|({wildcard_pattern()})/seed\d+"
