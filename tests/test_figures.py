"""The figure table (`repexp.figures`): every record has its notebook, the workflow draws exactly
the figures of the stages a config runs, and a new figure is one notebook plus one record
(CONTRIBUTING.md, "A new figure")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, fresh_run_dir

from repexp.figures import FIGURES, STAGES, Figure, figures_for


def test_every_figure_has_its_notebook_and_a_row_in_the_notebook_readme():
    readme = (REPO / "notebooks" / "README.md").read_text()
    for name in FIGURES:
        assert (REPO / "notebooks" / f"{name}.ipynb").is_file(), name
        assert f"`{name}.ipynb`" in readme, name
    # and no notebook without a record
    assert {p.stem for p in (REPO / "notebooks").glob("*.ipynb")} == set(FIGURES)


def test_figures_for_follows_the_stages():
    assert figures_for(set()) == {}
    assert set(figures_for(set(STAGES))) == set(FIGURES)
    inference = figures_for({"inference"})
    assert set(inference) == {
        "overview",
        "stc",
        "features",
        "model_rank_difficulty",
        "samplers",
        "selectors",
    }
    assert inference["stc"] == ["results/tables/stc.csv", "results/tables/questions.parquet"]
    with pytest.raises(ValueError, match="unknown stage"):
        figures_for({"tokenlevel"})
    with pytest.raises(ValueError, match="unknown stage"):
        Figure("x", "post_training", ("results/tables/a.csv",))
    with pytest.raises(ValueError, match="results/tables/"):
        Figure("x", "rl", ("results/rl/a.csv",))


def _dry_run(cwd: Path, entry: str | None, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -n -p -F` of the repository's workflow in ``cwd``; ``entry``: Python run in
    Snakemake's own process first (a table entry, as a user's edit of repexp/figures.py)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    code = (
        entry or ""
    ) + "import sys\nfrom snakemake.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    cmd = [sys.executable, "-c", code, "-n", "-p", "-F", "-s", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.workflow
def test_a_new_figure_is_one_notebook_and_one_record(tmp_path, wheel_dir):
    run = fresh_run_dir(tmp_path / "run", wheel_dir)
    # the notebook: any figure notebook (parameters cell, plots.save) under a new name
    (run / "notebooks" / "toy.ipynb").write_bytes((REPO / "notebooks" / "stc.ipynb").read_bytes())
    entry = (
        "from repexp import figures as f\n"
        "f.FIGURES['toy'] = f.Figure('toy', 'inference', ('results/tables/stc.csv',), 'toy')\n"
    )
    proc = _dry_run(run, entry, "--configfile", "config/test.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # its figure job: the notebook and the record's table in, the four outputs out
    jobs = out.split("\n\n")
    (job,) = [j for j in jobs if "rule figure:" in j and "figure=toy" in j]
    assert "notebooks/toy.ipynb" in job and "results/tables/stc.csv" in job
    assert "results/figures/toy.pdf" in job and "results/notebooks/toy.html" in job
    assert "papermill notebooks/toy.ipynb results/notebooks/toy.ipynb" in out
    # the results page links it
    (index,) = [j for j in jobs if "rule results_index:" in j]
    assert "results/notebooks/toy.html" in index and "results/figures/toy.png" in index
    # one figure job more than without the record, and nothing else changes
    plain = _dry_run(run, None, "--configfile", "config/test.yaml")
    assert plain.returncode == 0, plain.stderr[-3000:]
    count = {
        name: int(re.search(r"^figure\s+(\d+)$", p.stdout, re.M).group(1))
        for name, p in (("with", proc), ("without", plain))
    }
    assert count["with"] == count["without"] + 1
    # without the record the figure is no target of the workflow
    missing = _dry_run(run, None, "--configfile", "config/test.yaml", "results/figures/toy.pdf")
    assert missing.returncode != 0
