"""The notebook-test harness shared by tests/test_notebooks.py and tests/test_rl_eval.py: run the
figure notebooks under papermill on synthetic tables, a few at a time, and read back what each
figure plots (``<png stem>.plotted.json``, written by :func:`repexp.plots.save`)."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from conftest import REPO


def execute(notebook: str, out_dir: str, tables_dir: str) -> str | None:
    """Run one notebook with papermill; None on success, else the error text (picklable). The
    figures go to ``out_dir``, which the notebook must create; the executed copy next to it."""
    import papermill

    name = Path(notebook).stem
    try:
        papermill.execute_notebook(
            notebook,
            str(Path(out_dir).parent / f"{name}.ipynb"),
            parameters={
                "tables_dir": tables_dir,
                "out_pdf": str(Path(out_dir) / f"{name}.pdf"),
                "out_png": str(Path(out_dir) / f"{name}.png"),
            },
            kernel_name="python3",
            cwd=str(REPO),
            progress_bar=False,
        )
    except Exception as err:  # noqa: BLE001 -- reported by the test of this notebook
        return f"{type(err).__name__}: {err}"
    return None


def execute_all(
    root: Path,
    variants: Iterable[str],
    notebooks: Iterable[str],
    build_tables: Callable[[Path, str], Path],
    workers: int = 2,
) -> dict[tuple[str, str], tuple[Path, str | None]]:
    """Every notebook on the tables ``build_tables(root / variant / "tables", variant)`` of every
    variant, ``workers`` at a time (each run is mostly kernel start-up): {(variant, notebook):
    (its figures folder ``root / variant / "figures"``, None or the error text)}."""
    jobs = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for variant in variants:
            tables = build_tables(root / variant / "tables", variant)
            out = root / variant / "figures"
            for name in notebooks:
                notebook = str(REPO / "notebooks" / f"{name}.ipynb")
                jobs[variant, name] = (out, pool.submit(execute, notebook, str(out), str(tables)))
        return {key: (out, future.result()) for key, (out, future) in jobs.items()}


def assert_committed_clean(names: Iterable[str]) -> None:
    """Each notebook: the python3 kernel, one ``parameters`` cell with the three papermill
    parameters, and no outputs."""
    for name in names:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
        for param in ("tables_dir", "out_pdf", "out_png"):
            assert f"{param} = " in tagged[0].source, f"{name}: no parameter {param}"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} has outputs"


def assert_figure(out: Path, name: str, variant: str, error: str | None) -> None:
    """The notebook ran and wrote a PDF and a non-trivial PNG."""
    assert error is None, f"{name} failed on the {variant} tables:\n{error}"
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    assert pdf.exists() and pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 2_000
    assert png.exists() and png.stat().st_size > 5_000, f"{variant}/{name}: the PNG is nearly empty"


def plotted(out: Path, name: str) -> list[dict]:
    """The panels of figure ``name`` as :func:`repexp.plots.plotted` read them back."""
    return json.loads((out / f"{name}.plotted.json").read_text())


def panel(panels: list[dict], title: str) -> dict:
    """The one panel whose title starts with ``title``."""
    hits = [p for p in panels if p["title"].startswith(title)]
    assert len(hits) == 1, (title, [p["title"] for p in panels])
    return hits[0]


def line(p: dict, label: str) -> dict:
    """The one line of panel ``p`` labelled ``label``."""
    hits = [ln for ln in p["lines"] if ln["label"] == label]
    assert len(hits) == 1, (label, [ln["label"] for ln in p["lines"]])
    return hits[0]
