"""The settings of the token-level jobs: one dataclass, with its defaults read from the schema.

The ``token_level`` section of workflow/schemas/config.schema.yaml is the one source of every
default: the workflow validates the config against it (which fills the defaults in), and each
token-level rule passes the section as one ``--settings`` JSON (:func:`settings_json`) that
:meth:`Settings.from_dict` reads. A field left out when a :class:`Settings` is made by hand (the
tests, the benchmarks, a notebook) takes the schema's default too.

A new token-level setting: a schema entry under ``token_level`` and a field here, nothing else.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

# keys of the token_level section that choose which jobs and files exist (repexp.jobs and the
# rules read them), not what a job computes: they are not job settings
GRID_KEYS = ("model", "task", "reference_model", "betas", "responses_per_job")


@functools.cache
def schema_defaults(section: str = "token_level") -> dict:
    """The ``default`` of every key of a config section, read from the schema."""
    import yaml

    props = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def _schema_default(key: str):
    """A dataclass field whose default is the schema's ``token_level.<key>`` default."""
    return field(default_factory=lambda: schema_defaults()[key])


@dataclass(frozen=True)
class Settings:
    """The job settings of the token-level stage: config ``token_level`` without its
    :data:`GRID_KEYS` (config/README.md, section ``token_level``, says what each key means)."""

    n_questions: int = _schema_default("n_questions")
    reference_samples: int | None = _schema_default("reference_samples")
    k_max: int = _schema_default("k_max")
    seeds: int = _schema_default("seeds")
    lam: float = _schema_default("lam")
    top_p: float = _schema_default("top_p")
    top_k: int = _schema_default("top_k")
    candidate_batch: int = _schema_default("candidate_batch")
    max_new_tokens: int = _schema_default("max_new_tokens")
    runs_per_shard: int = _schema_default("runs_per_shard")
    slots: int = _schema_default("slots")
    vanilla_batch_size: int = _schema_default("vanilla_batch_size")
    difficulty_bins: int = _schema_default("difficulty_bins")

    def __post_init__(self):
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1 or self.candidate_batch < 1 or self.max_new_tokens < 1:
            raise ValueError("top_k, candidate_batch and max_new_tokens must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        """From the ``--settings`` JSON (or the whole ``token_level`` section: its grid keys are
        ignored); an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - set(GRID_KEYS))
        if unknown:
            raise ValueError(f"unknown token_level settings {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def settings_json(token_level: dict) -> str:
    """The ``--settings`` of the token-level rules: the ``token_level`` section without its grid
    keys (so that adding a β or changing the job split does not re-run the finished jobs), as
    JSON."""
    return json.dumps({k: v for k, v in token_level.items() if k not in GRID_KEYS}, sort_keys=True)
