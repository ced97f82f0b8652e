"""The figure table: one record per figure notebook, the tables it reads and the stage that makes
them.

A figure is ``notebooks/<name>.ipynb`` (papermill, reading only ``results/tables``) plus one entry
here. The workflow draws every figure whose stage the config turns on (``workflow/rules/common.smk``
asks :func:`figures_for`); the notebook is a declared input of its ``figure`` job, so editing it
redraws exactly that figure. ``notebooks/README.md`` maps the names to the paper's numbering.

>>> sorted(figures_for({"rl"}))[:2]
['rl_hparams', 'rl_loglik']
>>> figures_for({"token_level"})["tokenlevel"]
['results/tables/tokenlevel_passk.csv', 'results/tables/tokenlevel_difficulty.csv']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIGURES", "STAGES", "Figure", "figures_for"]

STAGES = ("inference", "token_level", "rl")
T = "results/tables/"


@dataclass(frozen=True)
class Figure:
    """One figure: its notebook's name, the stage whose tables it reads, and those tables."""

    name: str
    stage: str
    tables: tuple[str, ...]
    paper: str = ""  # the paper's number (v1 / revision), for the index and the docs

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"figure {self.name}: unknown stage {self.stage!r}; one of {STAGES}")
        if not self.tables or not all(t.startswith(T) for t in self.tables):
            raise ValueError(
                f"figure {self.name}: tables must be files under {T}, got {self.tables}"
            )


def _fig(name: str, stage: str, tables: list[str], paper: str = "") -> Figure:
    return Figure(name, stage, tuple(T + t for t in tables), paper)


FIGURES: dict[str, Figure] = {
    f.name: f
    for f in (
        _fig("overview", "inference", ["overview.parquet"], "v1 Fig. 3"),
        _fig("stc", "inference", ["stc.csv", "questions.parquet"], "Fig. 1"),
        _fig("features", "inference", ["stc.csv", "passk.csv"], "Fig. 4"),
        _fig("model_rank_difficulty", "inference", ["stc.csv", "deciles.csv"], "Fig. 5"),
        _fig("samplers", "inference", ["stc.csv", "passk.csv"], "Fig. 6"),
        _fig(
            "selectors",
            "inference",
            ["stc.csv", "passk.csv", "questions.parquet"],
            "beyond the paper (issue 13)",
        ),
        _fig(
            "tokenlevel",
            "token_level",
            ["tokenlevel_passk.csv", "tokenlevel_difficulty.csv"],
            "Fig. 7",
        ),
        _fig(
            "tokenlevel_se",
            "token_level",
            ["tokenlevel_passk.csv", "tokenlevel_difficulty.csv"],
            "Fig. 10",
        ),
        _fig("rl_passk", "rl", ["rl_passk.csv", "rl_efficiency.csv"], "Fig. 2"),
        _fig("rl_passk_alt", "rl", ["rl_passk.csv"], "Fig. 11"),
        _fig("rl_loglik", "rl", ["rl_loglik.parquet"], "Fig. 9"),
        _fig("rl_loglik_tasks", "rl", ["rl_loglik.parquet"], "Fig. 12"),
        _fig(
            "rl_training",
            "rl",
            ["rl_dev.csv", "rl_train.csv", "rl_best.csv", "rl_divergence.csv"],
            "training curves",
        ),
        _fig("rl_hparams", "rl", ["rl_hparams.csv"], "Table 3"),
    )
}


def figures_for(stages_on: set[str] | frozenset[str]) -> dict[str, list[str]]:
    """``{figure: [tables]}`` of every figure whose stage is on, in table order."""
    unknown = set(stages_on) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; one of {STAGES}")
    return {f.name: list(f.tables) for f in FIGURES.values() if f.stage in stages_on}
