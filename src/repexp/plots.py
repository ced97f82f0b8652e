"""Shared helpers of the figure notebooks (``notebooks/*.ipynb``, paper.md §4).

The notebooks read only the small tables in ``results/tables`` and call these helpers for what
every figure shares: loading a table, the authors' colours (random = seaborn "deep" grey, RepExp =
"colorblind" green), the log2 k axis of pass@k plots, the y = x line of STC scatters, a note when
a run is too small for a comparison to mean much, and saving both a PDF and a PNG.

>>> import pandas as pd
>>> note_if_degenerate(pd.DataFrame({"model": ["a"], "task": ["math"]}), by=("model", "task"))
'only one model and one task in this run'
>>> pick(None, pd.Series([3, 5], index=["gsm8k", "math"]), "task")
'math'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns

from repexp.features import POOLINGS
from repexp.metrics import methods_wide, versus
from repexp.provenance import strip as strip_provenance
from repexp.tasks import TASKS

__all__ = [
    "CORRECT_COLOR",
    "POOLINGS",
    "POOLING_COLORS",
    "POOLING_LABELS",
    "RANDOM_COLOR",
    "RANDOM_LABEL",
    "REPEXP_COLOR",
    "REPEXP_LABEL",
    "SAMPLER_LABELS",
    "empty_panel",
    "grid",
    "identity_line",
    "load",
    "log2_k_axis",
    "method_color",
    "method_label",
    "methods",
    "methods_wide",
    "note_if_degenerate",
    "only",
    "palette",
    "passk_panel",
    "pick",
    "plotted",
    "plain_log_ticks",
    "print_table",
    "sampler_label",
    "save",
    "setup",
    "task_markers",
    "titled",
    "top",
    "versus",
]

# Colours of the authors' plot script (paper.md §4): Base/random = deep[7], RepExp = colorblind[2].
RANDOM_COLOR = sns.color_palette("deep")[7]
REPEXP_COLOR = sns.color_palette("colorblind")[2]
REPEXP_LABEL = "RepExp (ours)"
RANDOM_LABEL = "random"
CORRECT_COLOR = sns.color_palette("colorblind")[0]
POOLING_COLORS = {
    "mean": REPEXP_COLOR,
    "last": sns.color_palette("colorblind")[0],
    "penultimate": sns.color_palette("colorblind")[4],
}
# Pool generators of paper §1.6 (config/paper.yaml names); any other name is shown as written.
SAMPLER_LABELS = {
    "vanilla": "vanilla (τ = 1.0)",
    "temp0.6": "low temperature (τ = 0.6)",
    "temp1.5": "high temperature (τ = 1.5)",
    "minp0.05": "min-p 0.05 (τ = 1.5)",
    "topp0.9": "nucleus (top-p = 0.9)",
}
POOLING_LABELS = {
    "mean": "mean of response tokens (paper)",
    "last": "last token",
    "penultimate": "penultimate token",
}
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]


def methods(table: pd.DataFrame) -> list[str]:
    """The selection methods of a long table (its ``method`` column): random first, RepExp
    second, then the others as they first appear."""
    present = list(dict.fromkeys(table["method"])) if "method" in table else []
    first = [m for m in ("random", "repexp") if m in present]
    return first + [m for m in present if m not in first]


def method_label(method: str) -> str:
    """random and RepExp as the paper labels them; another selector by its SELECTORS label."""
    if method in ("random", "repexp"):
        return {"random": RANDOM_LABEL, "repexp": REPEXP_LABEL}[method]
    from repexp.selectors import SELECTORS

    return SELECTORS[method].label if method in SELECTORS else method


def method_color(method: str) -> tuple:
    """The authors' colours for random and RepExp; a stable "deep" colour for any other selector
    (from its position in SELECTORS, so it keeps its colour across figures and runs); RepExp on a
    middle layer (``repexp_layer<L>``) in a paler RepExp colour."""
    if method in ("random", "repexp"):
        return {"random": RANDOM_COLOR, "repexp": REPEXP_COLOR}[method]
    from repexp.selectors import SELECTORS

    if method in SELECTORS and SELECTORS[method].layer is not None:
        return sns.desaturate(REPEXP_COLOR, 0.45)

    names = [m for m in SELECTORS if m not in ("random", "repexp")]
    i = names.index(method) if method in names else len(names)
    colors = [c for j, c in enumerate(sns.color_palette("deep")) if j not in (7, 2)]
    return colors[i % len(colors)]


def setup() -> None:
    """seaborn whitegrid, as the authors' plots; tight bounding boxes when saving."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"savefig.bbox": "tight", "lines.linewidth": 1.5, "legend.frameon": True})


def load(tables_dir: str | Path, name: str) -> pd.DataFrame:
    """Read ``tables_dir/name`` (``.csv`` or ``.parquet``) without its provenance columns/rows
    (:func:`repexp.provenance.strip`; the results page shows them); a missing table says how to
    build it."""
    path = Path(tables_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build it first, e.g. `snakemake {path}`")
    return strip_provenance(
        pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    )


def only(df: pd.DataFrame, **equal) -> pd.DataFrame:
    """The rows whose columns equal the given values, e.g. ``only(stc, sampler="vanilla")``."""
    mask = np.ones(len(df), dtype=bool)
    for col, value in equal.items():
        mask &= (df[col] == value).to_numpy()
    return df[mask].reset_index(drop=True)


def pick(requested, scores: pd.Series, what: str):
    """``requested`` if given (it must be one of ``scores.index``), else the index of the largest
    score (ties: first in sorted order); None when there is nothing to choose from."""
    if requested is not None:
        key = tuple(requested) if isinstance(requested, list) else requested
        if key not in scores.index:
            raise ValueError(
                f"{what} {requested!r} is not in the tables; available: {list(scores.index)}"
            )
        return key
    scores = scores.dropna()
    return None if scores.empty else scores.sort_index().idxmax()


def top(scores: pd.Series, n: int) -> list:
    """The index values of the ``n`` largest finite scores (ties: sorted order)."""
    scores = scores.dropna().sort_index()
    return list(scores.sort_values(ascending=False, kind="stable").index[:n])


def note_if_degenerate(
    df: pd.DataFrame, by: Sequence[str] = ("model", "task"), values: Sequence[str] = ()
) -> str:
    """A short note when the run is too small for the figure's comparison ('' when it is fine):
    no rows, a single value of a ``by`` column, or no finite value in a ``values`` column."""
    if df.empty:
        return "no rows for this figure in this run"
    notes = [f"one {col}" for col in by if df[col].nunique() <= 1]
    text = "only " + " and ".join(notes) + " in this run" if notes else ""
    empty = [
        col for col in values if not np.isfinite(pd.to_numeric(df[col], errors="coerce")).any()
    ]
    if empty:
        text += ("; " if text else "") + f"no finite {', '.join(empty)} (no solved question?)"
    return text


def titled(title: str, note: str) -> str:
    """``title`` with ``note`` on a second line, in parentheses, when there is one."""
    return f"{title}\n({note})" if note else title


def print_table(df: pd.DataFrame, title: str = "") -> None:
    """Print the numbers a figure plots, 4 significant digits."""
    if title:
        print(title)
    print("(no rows)" if df.empty else df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()


def sampler_label(sampler: str) -> str:
    return SAMPLER_LABELS.get(sampler, sampler)


def palette(names: Iterable[str], name: str = "colorblind") -> dict[str, tuple]:
    """One colour per distinct name (sorted), from seaborn palette ``name`` (husl past 10 names),
    so a model or a task keeps its colour across the figures of a run."""
    names = sorted(set(names))
    colors = sns.color_palette(name if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors, strict=True))


def task_markers(tasks: Iterable[str]) -> dict[str, str]:
    names = sorted(set(tasks))
    return {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(names)}


def grid(n: int, max_cols: int = 5, panel: tuple[float, float] = (4.2, 3.4), **subplots_kw):
    """A constrained-layout figure of ``n`` panels (at least one) in as few rows of at most
    ``max_cols`` as possible, the rows evenly filled; unused axes are removed."""
    n = max(n, 1)
    nrows = -(-n // max_cols)
    ncols = -(-n // nrows)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel[0] * ncols, panel[1] * nrows),
        squeeze=False,
        layout="constrained",
        **subplots_kw,
    )
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def empty_panel(ax, message: str) -> None:
    """Write ``message`` in the middle of a panel that has nothing to plot."""
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        transform=ax.transAxes,
        wrap=True,
        fontsize=10,
        color="0.35",
    )
    ax.grid(False)
    ax.tick_params(
        labelbottom=False, labelleft=False, length=0
    )  # not set_*ticks: axes may be shared


def plain_log_ticks(ax, axes: str = "xy") -> None:
    """Log-scaled ``axes`` labelled 1, 2, 5, 10, 20, ... instead of 2×10⁰-style labels."""
    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(mticker.NullFormatter())


def log2_k_axis(ax, ks) -> None:
    """x axis in log2 with ticks at the powers of two spanned by ``ks`` (at most ~9 labels)."""
    ks = np.asarray([k for k in ks if np.isfinite(k) and k > 0], dtype=float)
    ax.set_xscale("log", base=2)
    if ks.size == 0:
        return
    lo, hi = int(np.floor(np.log2(ks.min()))), int(np.ceil(np.log2(ks.max())))
    step = max(1, -(-(hi - lo + 1) // 9))
    ticks = [2.0**e for e in range(lo, hi + 1, step)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.0f}" if t < 10_000 else f"$2^{{{int(np.log2(t))}}}$" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(2.0**lo / 1.25, 2.0**hi * 1.25)


def identity_line(ax, *columns, pad: float = 1.4) -> bool:
    """Log-log axes with equal limits around the positive finite values of ``columns`` and a dashed
    y = x line (below it: RepExp needs fewer samples). False when there is no such value."""
    vals = np.concatenate([np.asarray(c, dtype=float).ravel() for c in columns]) if columns else []
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return False
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = vals.min() / pad, vals.max() * pad
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.4", lw=1, zorder=0, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    plain_log_ticks(ax)
    return True


def passk_panel(ax, curves: Sequence[tuple[str, pd.DataFrame, str, tuple]], title: str) -> bool:
    """pass@k curves on a log2 k axis; ``curves`` holds (label, table, column, colour) with the
    table having a ``k`` column. An empty panel with a note when no curve has a finite value."""
    drawn, ks = False, []
    for label, table, column, color in curves:
        d = table[["k", column]].dropna().sort_values("k")
        if d.empty:
            continue
        ax.plot(d["k"], d[column], marker="o", ms=3.5, color=color, label=label)
        ks.extend(d["k"])
        drawn = True
    if not drawn:
        empty_panel(ax, "no finite pass@k values")
    else:
        log2_k_axis(ax, ks)
        # a probability: the full range, so that panels sharing their y axis show every curve
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("k (responses sent to the verifier)")
        ax.set_ylabel("pass@k (fraction of questions solved)")
    ax.set_title(title)
    return drawn


def _values(a) -> list:
    """Numbers as JSON can hold them: floats, NaN / masked as None, anything else as a string."""
    try:
        arr = np.ma.asarray(a, dtype=float).filled(np.nan).ravel()
    except (TypeError, ValueError):  # labels, dates: strings
        return [None if v is None else str(v) for v in np.asarray(a, dtype=object).ravel()]
    return [float(v) if np.isfinite(v) else None for v in arr]


def plotted(fig) -> list[dict]:
    """What a figure shows, read back from its artists: one entry per drawn panel.

    Each panel has its ``title``, axis labels, and the data of every labelled or unlabelled
    ``lines`` (x, y), ``bars`` (one entry per bar container: its label, the bars' x centres and
    heights; horizontal bars give widths as ``heights``) and ``points`` (scatter offsets). Written
    next to the PNG by :func:`save`, so a test can hold the figure's values against its table.

    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([1, 2], [3.0, float("nan")], label="a")
    >>> _ = ax.bar([0, 1], [5, 6], label="b")
    >>> p = plotted(fig)[0]
    >>> p["lines"][0]["y"], p["bars"][0]["heights"]
    ([3.0, None], [5.0, 6.0])
    >>> plt.close(fig)
    """
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer

    panels = []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        bars = []
        for c in ax.containers:
            if not isinstance(c, BarContainer):
                continue
            horizontal = getattr(c, "orientation", "vertical") == "horizontal"
            centres = [
                (r.get_y() + r.get_height() / 2) if horizontal else (r.get_x() + r.get_width() / 2)
                for r in c.patches
            ]
            sizes = [r.get_width() if horizontal else r.get_height() for r in c.patches]
            bars.append({"label": c.get_label(), "x": _values(centres), "heights": _values(sizes)})
        lines = [
            {
                "label": line.get_label(),
                "x": _values(line.get_xdata()),
                "y": _values(line.get_ydata()),
            }
            for line in ax.get_lines()
        ]
        points = []
        for coll in ax.collections:
            if not isinstance(coll, PathCollection):  # scatter points, not error bars or fills
                continue
            offsets = np.ma.asarray(coll.get_offsets())
            if offsets.ndim == 2 and offsets.shape[1] == 2 and len(offsets):
                xy = {"x": _values(offsets[:, 0]), "y": _values(offsets[:, 1])}
                points.append({"label": coll.get_label(), **xy})
        panels.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "lines": lines,
                "bars": bars,
                "points": points,
            }
        )
    return panels


def save(fig, out_pdf: str | Path, out_png: str | Path, dpi: int = 150) -> None:
    """Write the figure as PDF and PNG (parent folders are created), and what it plots.

    ``<png stem>.plotted.json`` beside the PNG holds :func:`plotted`'s read-back of every panel.
    """
    for path in (Path(out_pdf), Path(out_png)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        print(f"wrote {path}")
    data = Path(out_png).with_suffix(".plotted.json")
    data.write_text(json.dumps(plotted(fig), indent=1))


# ------------------------------------------------------------------------------------------------
# token-level RepExp (Figs. 7 and 10)
# ------------------------------------------------------------------------------------------------
VANILLA_LABEL = "vanilla sampling"


def token_method_label(method: str, beta: float | None = None) -> str:
    """``vanilla`` -> "vanilla sampling"; ``beta0.5`` -> "token-level RepExp (β = 0.5)"."""
    if method == "vanilla":
        return VANILLA_LABEL
    return (
        f"token-level RepExp (β = {beta:g})" if beta is not None and np.isfinite(beta) else method
    )


def token_crossover(passk: pd.DataFrame, method: str) -> int | None:
    """The smallest k from which ``method``'s pass@k is at least vanilla's all the way to k_max
    (None: behind at k_max too), from ``tokenlevel_passk.csv``.

    >>> t = pd.DataFrame({"method": ["vanilla"] * 3 + ["beta1"] * 3, "k": [1, 2, 4] * 2,
    ...                   "pass_at_k": [0.2, 0.3, 0.4, 0.1, 0.3, 0.5]})
    >>> token_crossover(t, "beta1")
    2
    """
    a = passk[passk["method"] == method].set_index("k")["pass_at_k"]
    v = passk[passk["method"] == "vanilla"].set_index("k")["pass_at_k"].reindex(a.index)
    behind = np.flatnonzero((a < v).to_numpy())
    if not len(behind):
        return int(a.index[0])
    return int(a.index[behind[-1] + 1]) if behind[-1] + 1 < len(a) else None


def token_level_tables(tables_dir: str | Path):
    """The token-level figures' tables, with what both print: pass@k at the usual k, each β's
    crossover k against vanilla (the paper: 512-640) and the solve rates per difficulty bin.

    Returns a namespace with ``passk``, ``difficulty``, ``methods`` (vanilla first), ``betas``,
    ``k_max`` and ``where`` ("<model> on <task>")."""
    from types import SimpleNamespace

    passk = load(tables_dir, "tokenlevel_passk.csv")
    difficulty = load(tables_dir, "tokenlevel_difficulty.csv")
    methods = sorted(passk["method"].unique(), key=lambda m: (m != "vanilla", m))
    betas = [m for m in methods if m != "vanilla"]
    k_max = int(passk["k"].max()) if len(passk) else 0
    where = f"{passk['model'].iloc[0]} on {passk['task'].iloc[0]}" if len(passk) else "no runs"
    usual = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 640, 1024, k_max}
    ks = [k for k in sorted(usual) if 0 < k <= k_max]
    table = passk[passk["k"].isin(ks)].pivot_table(index="k", columns="method", values="pass_at_k")
    print_table(table.reset_index(), f"pass@k, {where}")
    if "vanilla" in methods:
        for m in betas:
            print(
                f"{m}: at least as good as vanilla from k = {token_crossover(passk, m)} on "
                "(paper: 512-640)"
            )
    print_table(difficulty, f"solve rate within {k_max} generations per difficulty bin")
    return SimpleNamespace(
        passk=passk, difficulty=difficulty, methods=methods, betas=betas, k_max=k_max, where=where
    )


def token_method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """Vanilla grey (the random colour); the β methods in greens/blues, the largest β in RepExp
    green."""
    betas = [m for m in methods if m != "vanilla"]
    others = [sns.color_palette("colorblind")[i] for i in (0, 4, 9, 3)]
    colors = {"vanilla": RANDOM_COLOR}
    for i, m in enumerate(reversed(betas)):
        colors[m] = REPEXP_COLOR if i == 0 else others[(i - 1) % len(others)]
    return colors


def token_passk_panel(ax, passk: pd.DataFrame, *, bands: bool) -> bool:
    """pass@k against the number of generations, one curve per method (± SE bands if ``bands``)."""
    methods = sorted(passk["method"].unique(), key=lambda m: (m != "vanilla", m))
    colors = token_method_colors(methods)
    styles = ["-", "--", ":", "-."]
    drawn = False
    for i, m in enumerate(methods):
        d = passk[passk["method"] == m].sort_values("k")
        if d["pass_at_k"].notna().sum() == 0:
            continue
        label = token_method_label(m, d["beta"].iloc[0])
        # a step function: the fraction of runs solved within k generations (k an integer)
        ax.plot(
            d["k"],
            d["pass_at_k"],
            color=colors[m],
            label=label,
            lw=1.8,
            ls=styles[i % len(styles)],
            drawstyle="steps-post",
        )
        if bands and d["se"].notna().any():
            ax.fill_between(
                d["k"],
                d["pass_at_k"] - d["se"],
                d["pass_at_k"] + d["se"],
                color=colors[m],
                alpha=0.15,
                lw=0,
                step="post",
            )
        drawn = True
    if not drawn:
        empty_panel(ax, "no runs (no solvable question in the reference pools?)")
        return False
    log2_k_axis(ax, passk["k"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k (generations per question)")
    ax.set_ylabel("pass@k (fraction of runs solved)")
    ax.legend(loc="upper left", fontsize=8)
    return True


def token_difficulty_panel(
    ax, difficulty: pd.DataFrame, *, methods: Sequence[str], error_bars: bool
) -> bool:
    """Solve-rate improvement over vanilla per difficulty bin (1 = hardest), one bar per method."""
    d = difficulty[difficulty["method"].isin(methods)]
    if d.empty or d["improvement"].notna().sum() == 0:
        empty_panel(ax, "no improvement to show (no runs, or no vanilla runs to compare with)")
        return False
    colors = token_method_colors(
        sorted(difficulty["method"].unique(), key=lambda m: (m != "vanilla", m))
    )
    bins = sorted(d["bin"].unique())
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        dm = d[d["method"] == m].set_index("bin").reindex(bins)
        x = np.arange(len(bins)) + (i - (len(methods) - 1) / 2) * width
        yerr = dm["improvement_se"].to_numpy() if error_bars else None
        ax.bar(
            x,
            dm["improvement"],
            width=width,
            color=colors.get(m),
            yerr=yerr,
            capsize=3,
            label=token_method_label(
                m, dm["beta"].dropna().iloc[0] if dm["beta"].notna().any() else None
            ),
        )
    ref = d.drop_duplicates("bin").set_index("bin").reindex(bins)
    ax.set_xticks(np.arange(len(bins)))
    ax.set_xticklabels(
        [
            f"{b}\n{lo:.2g}–{hi:.2g}"
            for b, lo, hi in zip(bins, ref["ref_pass1_min"], ref["ref_pass1_max"], strict=True)
        ],
        fontsize=8,
    )
    ax.axhline(0, color="0.3", lw=1)
    k = int(d["k"].iloc[0])
    ax.set_xlabel("difficulty bin (1 = hardest) and its reference pass@1 range")
    ax.set_ylabel(f"solve rate within {k} generations\nminus vanilla's")
    ax.legend(loc="best", fontsize=8)
    return True


# ------------------------------------------------------------------------------------------------
# RL post-training (Figs. 2, 9, 11, 12; Table 3)
# ------------------------------------------------------------------------------------------------
# The authors' plot script (paper.md §4): GRPO = deep[-1], Base = deep[7], RepExp = colorblind[2],
# Unlikeliness = deep[1]; marker "o", line width 1.275; legend at the bottom centre. The methods'
# labels and colours are their records in repexp.rl.methods.METHODS (the base model's are here).
RL_BASE_LABEL, RL_BASE_COLOR = "Base Model", sns.color_palette("deep")[7]


def _rl_methods():
    from repexp.rl.methods import BASE, METHODS

    return BASE, METHODS


def rl_method_order() -> tuple[str, ...]:
    """The base model, then the methods of ``repexp.rl.methods.METHODS`` in its order."""
    base, methods = _rl_methods()
    return (base, *methods)


def rl_labels() -> dict[str, str]:
    """Legend label per run kind: the base model's and each method's (its record's ``label``)."""
    base, methods = _rl_methods()
    return {base: RL_BASE_LABEL, **{m.name: m.label for m in methods.values()}}


def rl_colors() -> dict[str, tuple]:
    """Colour per run kind (RGB): the base model's and each method's (its record's ``color``)."""
    import matplotlib.colors as mcolors

    base, methods = _rl_methods()
    return {base: RL_BASE_COLOR, **{m.name: mcolors.to_rgb(m.color) for m in methods.values()}}


RL_METHODS = rl_method_order()
RL_LABELS = rl_labels()
RL_COLORS = rl_colors()
RL_LINEWIDTH = 1.275
# Panels are named by the test set: DAPO-trained runs are tested on AIME 2024 (paper.md §3.4).
RL_TASK_LABELS = {n: spec.label for n, spec in TASKS.items()}  # the task table's labels
_RL_TASK_ORDER = tuple(n for n, spec in TASKS.items() if spec.paper_rl)  # math, gsm8k, dapo


def rl_tasks(table: pd.DataFrame, requested=None) -> list[str]:
    """The tasks to draw: ``requested`` (a name or a list) or every task of ``table``, paper order
    first."""
    present = list(dict.fromkeys(table["task"])) if "task" in table else []
    if requested is not None:
        wanted = [requested] if isinstance(requested, str) else list(requested)
        unknown = [t for t in wanted if t not in present]
        if unknown:
            raise ValueError(f"task(s) {unknown} are not in the tables; available: {present}")
        return wanted
    return sorted(
        present, key=lambda t: (_RL_TASK_ORDER.index(t) if t in _RL_TASK_ORDER else 99, t)
    )


def rl_methods(table: pd.DataFrame) -> list[str]:
    """The methods of ``table`` in the paper's order (unknown names last)."""
    present = set(table["method"]) if "method" in table else set()
    order = rl_method_order()
    return [m for m in order if m in present] + sorted(present - set(order))


def rl_method_notes(table: pd.DataFrame, expected: Sequence[str] | None = None) -> str:
    """A note naming missing methods (of ``expected``, default: the base model and every method of
    ``repexp.rl.methods.METHODS``) and single-seed runs ('' when every method has several seeds)."""
    notes = []
    labels, expected = rl_labels(), rl_method_order() if expected is None else expected
    missing = [labels.get(m, m) for m in expected if m not in set(table.get("method", []))]
    if missing:
        notes.append("no " + ", ".join(missing) + " results in this run")
    if "seeds" in table and len(table):
        trained = table[table["method"] != "base"]
        if len(trained) and trained["seeds"].max() <= 1:
            notes.append("one seed per method: no SEM bands")
    return "; ".join(notes)


def rl_curve(
    ax,
    d: pd.DataFrame,
    method: str,
    *,
    x: str = "k",
    y: str = "mean",
    se: str | None = "se",
    label: str | None = None,
) -> bool:
    """One method's curve (marker "o") with a ±1 SEM band where ``se`` is finite; False if empty."""
    d = d[[x, y] + ([se] if se else [])].dropna(subset=[y]).sort_values(x)
    if d.empty:
        return False
    color = rl_colors().get(method)
    ax.plot(
        d[x],
        d[y],
        marker="o",
        ms=3.5,
        lw=RL_LINEWIDTH,
        color=color,
        label=rl_labels().get(method, method) if label is None else label,
    )
    if se and d[se].notna().any():
        band = d[d[se].notna()]
        ax.fill_between(
            band[x], band[y] - band[se], band[y] + band[se], color=color, alpha=0.2, lw=0
        )
    return True


def rl_legend(fig, methods: Sequence[str]) -> None:
    """The methods' legend at the bottom centre of the figure, in the paper's order."""
    from matplotlib.lines import Line2D

    colors, labels = rl_colors(), rl_labels()
    handles = [
        Line2D([], [], color=colors.get(m), marker="o", lw=RL_LINEWIDTH, label=labels.get(m, m))
        for m in methods
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)


def loglik_panel(
    ax,
    loglik: pd.DataFrame,
    column: str,
    methods: Sequence[str],
    title: str,
    bins: int | None = None,
) -> bool:
    """Overlaid density histograms of ``column`` (log-likelihood under the base model), one per
    method, on shared bins (default: 2 sqrt(n), 10 to 40), with each method's median as a dashed
    line; False when there is nothing to draw."""
    values = {m: loglik.loc[loglik["method"] == m, column].to_numpy(dtype=float) for m in methods}
    values = {m: v[np.isfinite(v)] for m, v in values.items()}
    values = {m: v for m, v in values.items() if v.size}
    ax.set_title(title)
    if not values:
        empty_panel(ax, "no finite log-likelihoods")
        return False
    allv = np.concatenate(list(values.values()))
    lo, hi = float(allv.min()), float(allv.max())
    bins = bins or int(np.clip(2 * np.sqrt(allv.size), 10, 40))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    colors, labels = rl_colors(), rl_labels()
    for m, v in values.items():
        color = colors.get(m)
        ax.hist(
            v,
            bins=edges,
            density=True,
            histtype="stepfilled",
            alpha=0.35,
            color=color,
            label=f"{labels.get(m, m)} (n = {v.size})",
        )
        ax.hist(v, bins=edges, density=True, histtype="step", lw=RL_LINEWIDTH, color=color)
        ax.axvline(np.median(v), color=color, ls="--", lw=1)
    ax.xaxis.set_major_locator(mticker.MaxNLocator(6))
    ax.set_ylabel("density")
    ax.legend(loc="best", fontsize=8)
    return True
