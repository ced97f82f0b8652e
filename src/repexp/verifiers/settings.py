"""The verifier settings: the ``verifiers`` config section as one dataclass.

One encoding everywhere, as the RL stage's ``--settings``: the workflow passes the validated section
(the schema, ``workflow/schemas/config.schema.yaml``, fills every default) as one JSON value
(``--verifiers '<json>'``) and :meth:`VerifierSettings.from_json` reads it. The field names are the
config keys. The dataclass defaults serve Python callers that pass nothing (``get_task("math")``);
they equal the schema's (a test checks), except ``math_reward``: its config key is the **RL
stage's** MATH scorer (schema default ``recipe``), while everything else scores MATH with
math-verify, so :meth:`VerifierSettings.for_stage` gives each stage its settings.

>>> s = VerifierSettings.for_stage({"math_reward": "recipe", "math_timeout_s": 2.0}, "inference")
>>> (s.math_reward, s.math_timeout_s)
('math_verify', 2.0)
>>> VerifierSettings.from_json(s.to_json()) == s
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

__all__ = ["STAGES", "VerifierSettings"]

#: the stages that score responses: ``inference`` (inference and token-level pools) and ``rl``
#: (training rewards, dev pass@1, RL test pools)
STAGES = ("inference", "rl")


@dataclass(frozen=True)
class VerifierSettings:
    """The checker switches of every task (config/README.md, ``verifiers``)."""

    workers: int = 2  # scoring processes (the scoring rules' threads)
    math_timeout_s: float = 5.0  # per-answer limit of math-verify (process-level)
    gsm8k_last_number_fallback: bool = False  # gsm8k: the last number when there is no ####
    math_reward: str = "math_verify"  # math: math_verify or recipe (the authors' string rule)
    code_timeout_s: float = 10.0  # sandbox: wall clock per program
    code_memory_mb: int = 2048  # sandbox: address space per process
    code_max_procs: int = 32  # sandbox: processes

    MATH_REWARDS: ClassVar[tuple[str, ...]] = ("math_verify", "recipe")

    def __post_init__(self):
        if self.math_reward not in self.MATH_REWARDS:
            raise ValueError(
                f"math_reward must be 'math_verify' or 'recipe', not {self.math_reward!r}"
            )

    @classmethod
    def from_dict(cls, d: dict | None) -> VerifierSettings:
        """The settings of a ``verifiers`` section (missing keys: the defaults above)."""
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown verifier setting(s) {unknown}; known: {', '.join(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> VerifierSettings:
        return cls.from_dict(json.loads(text))

    @classmethod
    def for_stage(cls, section: dict | VerifierSettings, stage: str) -> VerifierSettings:
        """The settings a stage scores with: the section as it is for ``rl``; with math-verify
        for MATH at ``inference`` (``math_reward`` is the RL stage's scorer)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        s = section if isinstance(section, cls) else cls.from_dict(section)
        return s if stage == "rl" else replace(s, math_reward="math_verify")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
