"""The results index page: every figure with a link to its executed notebook, and the STC table.

    python -m repexp.report --figures results/figures/*.png --notebooks results/notebooks/*.html \\
        --stc results/tables/stc.csv --out results/index.html
"""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import repexp
from repexp.atomic import atomic_path

TITLES = {
    "overview": "Overview: RepExp's first picks vs random picks in one pool (v1 Fig. 3)",
    "stc": "Samples-to-correct, RepExp vs random (Fig. 1)",
    "features": "Mean vs last vs penultimate token features (Fig. 4)",
    "model_rank_difficulty": "Gain vs model strength and question difficulty (Fig. 5)",
    "samplers": "RepExp under five pool samplers (Fig. 6)",
    "tokenlevel": "Token-level RepExp vs vanilla sampling (Fig. 7)",
    "tokenlevel_se": "Token-level RepExp vs vanilla sampling, with standard errors (Fig. 10)",
    "rl_passk": "pass@k after RL post-training: Base, GRPO, Unlikeliness, RepExp (Fig. 2)",
    "rl_passk_alt": "pass@k after RL post-training, linear k and difference to the base model (Fig. 11)",
    "rl_loglik": "Beyond sharpening: base-model log-likelihood of the trained models' responses (Fig. 9)",
    "rl_loglik_tasks": "Beyond sharpening on every RL task (Fig. 12)",
    "rl_training": "RL training curves: dev pass@1 and rewards (not a paper figure)",
    "rl_hparams": "RL post-training hyper-parameters (Table 3)",
}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def index_page(figures: list[str], notebooks: list[str], stc: pd.DataFrame | None, *, out: Path,
               config_name: str) -> str:
    by_name = {Path(n).stem: n for n in notebooks}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>RepExp replication: results</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto} img{max-width:100%;"
        "border:1px solid #ddd} table{border-collapse:collapse;font-size:90%} td,th{padding:2px 8px;"
        "border-bottom:1px solid #eee}</style></head><body>",
        "<h1>RepExp replication: results</h1>",
        f"<p>config <code>{html.escape(config_name)}</code>, commit <code>{git_commit()}</code>, repexp "
        f"{repexp.__version__}, built {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if stc is not None:
        parts.append("<h2>Samples-to-correct (solved questions, vanilla pools, mean features)</h2>")
        base = stc[(stc["sampler"] == "vanilla") & (stc["pooling"] == "mean")]
        cols = ["model", "task", "questions", "unsolved", "pass1", "stc_random", "stc_repexp", "reduction",
                "speedup"]
        parts.append(base[cols].round(3).to_html(index=False, na_rep="-"))
    for fig in figures:
        name = Path(fig).stem
        rel_png = os.path.relpath(fig, out.parent)
        nb = by_name.get(name)
        link = f" (<a href='{html.escape(os.path.relpath(nb, out.parent))}'>notebook</a>)" if nb else ""
        parts.append(f"<h2>{html.escape(TITLES.get(name, name))}{link}</h2>"
                     f"<img src='{html.escape(rel_png)}' alt='{html.escape(name)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.report", description=__doc__.split("\n")[0])
    ap.add_argument("--figures", nargs="+", required=True)
    ap.add_argument("--notebooks", nargs="*", default=[])
    ap.add_argument("--stc", default=None, help="the inference-time STC table, when that stage ran")
    ap.add_argument("--config-name", default="config/config.yaml")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = Path(a.out)
    page = index_page(a.figures, a.notebooks, pd.read_csv(a.stc) if a.stc else None, out=out, config_name=a.config_name)
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
