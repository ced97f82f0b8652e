"""The results index page: every figure with a link to its executed notebook, the STC table, the
replication findings (``findings.csv``, :mod:`repexp.findings`), and the provenance of every result
table (commit, config hash, packages, model, seed).

    python -m repexp.report --figures results/figures/*.png --notebooks results/notebooks/*.html \\
        --stc results/tables/stc.csv --findings results/tables/findings.csv \\
        --tables results/tables/*.csv \\
        --stage-hashes '{"inference": "…"}' \\
        --out results/index.html
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import repexp
from repexp import findings as findings_mod
from repexp import metrics, provenance
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
    "rl_passk_alt": (
        "pass@k after RL post-training, linear k and difference to the base model (Fig. 11)"
    ),
    "rl_loglik": (
        "Beyond sharpening: base-model log-likelihood of the trained models' responses (Fig. 9)"
    ),
    "rl_loglik_tasks": "Beyond sharpening on every RL task (Fig. 12)",
    "rl_training": "RL training curves: dev pass@1 and rewards (not a paper figure)",
    "rl_hparams": "RL post-training hyper-parameters (Table 3)",
}


def _short(commit: str) -> str:
    """A commit as 12 hex digits (``-dirty`` kept)."""
    head, dirty, _ = commit.partition("-dirty")
    return head[:12] + ("-dirty" if dirty else "")


def _codes(values: list[str], fmt=str) -> str:
    return ", ".join(f"<code>{html.escape(fmt(v))}</code>" for v in values) or "-"


def _read_provenance(table: str) -> dict:
    """:func:`repexp.provenance.read`; a table it cannot read is listed with the error."""
    try:
        return provenance.read(table)
    except Exception as err:  # noqa: BLE001 -- the page is built anyway and says what failed
        empty = {k: [] for k in provenance.FIELDS}
        return {
            "table": Path(table).name,
            "rows": 0,
            **empty,
            "error": f"unreadable: {type(err).__name__}: {err}",
        }


def provenance_section(
    tables: list[str], current: dict, stage_hashes: dict[str, str] | None = None
) -> str:
    """The Provenance section: this page's commit and packages, and per table the commit(s),
    config hash(es), model(s), seed(s) and packages that produced it
    (:func:`repexp.provenance.read`), with a flag where a table differs from this checkout, this
    config (``stage_hashes``: the current config hash of each stage), this environment or the
    other tables."""
    stage_hashes = stage_hashes or {}
    summaries = [_read_provenance(t) for t in tables]
    known = [c for s in summaries for c in s["git_commit"] if c != provenance.UNKNOWN]
    usual = Counter(known).most_common(1)[0][0] if len(set(known)) > 1 else None
    envs = {current["packages"]: 1}
    for s in summaries:
        for p in s["packages"]:
            envs.setdefault(p, len(envs) + 1)
    rows = []
    for s in summaries:
        flags = [s["error"]] if "error" in s else []
        commits, hashes = s["git_commit"], s["config_hash"]
        if not commits and not hashes and not flags:
            flags.append("no provenance recorded" + (" (no rows)" if not s["rows"] else ""))
        if len(commits) > 1:
            flags.append("several commits")
        if current["git_commit"] != provenance.UNKNOWN and any(
            c not in (current["git_commit"], provenance.UNKNOWN) for c in commits
        ):
            flags.append("commit differs from this checkout")
        if usual and any(c not in (usual, provenance.UNKNOWN) for c in commits):
            flags.append("commit differs from the other tables")
        if len(hashes) > 1:
            flags.append("several config hashes")
        expected = [stage_hashes[st] for st in s["stage"] if st in stage_hashes]
        if expected and any(h not in expected for h in hashes):
            flags.append(f"config changed since (this config: {', '.join(expected)})")
        if any(p != current["packages"] for p in s["packages"]):
            flags.append("packages differ from this environment")
        flag = "; ".join(flags)
        rows.append(
            f"<tr{' class=flagged' if flag else ''}><td><code>{html.escape(s['table'])}</code></td>"
            f"<td>{s['rows']}</td><td>{_codes(s['stage'])}</td><td>{_codes(commits, _short)}</td>"
            f"<td>{_codes(hashes)}</td><td>{_codes(s['model'])}</td><td>{_codes(s['seed'])}</td>"
            f"<td>{', '.join(f'env {envs[p]}' for p in s['packages']) or '-'}</td>"
            f"<td class=flag>{html.escape(flag) if flag else 'ok'}</td></tr>"
        )
    parts = [
        "<h2 id='provenance'>Provenance</h2>",
        f"<p>This page: commit <code>{html.escape(current['git_commit'])}</code> "
        "(<code>-dirty</code>: tracked files had uncommitted changes), environment env 1.",
    ]
    if stage_hashes:
        parts.append(
            " Config hash of each stage now: "
            + ", ".join(
                f"{html.escape(st)} <code>{html.escape(h)}</code>"
                for st, h in sorted(stage_hashes.items())
            )
            + "."
        )
    parts.append("</p>")
    if rows:
        parts.append(
            "<table><tr><th>table</th><th>rows</th><th>stage</th><th>commit</th>"
            "<th>config hash</th>"
            "<th>model</th><th>seed</th><th>packages</th><th>check</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    parts.append(
        "<p>Environments (package versions):</p><ul>"
        + "".join(
            f"<li>env {i}{' (this page)' if i == 1 else ''}: "
            f"<code>{html.escape(p.replace(';', '; '))}</code></li>"
            for p, i in envs.items()
        )
        + "</ul>"
    )
    return "\n".join(parts)


def findings_section(table: pd.DataFrame) -> str:
    """The "Replication findings" section: per finding and scope of ``findings.csv`` the paper's
    claim and number (with its paper.md section), ours with its 95% CI, the verdict (and why),
    the power (the minimal detectable effect) and the configuration the number came from. Every
    number is read from the table."""
    t = provenance.strip(table)
    e = html.escape
    parts = ["<h2 id='findings'>Replication findings</h2>"]
    if t.empty:
        parts.append("<p>No findings (findings.csv has no rows).</p>")
        return "\n".join(parts)
    n_boot = ", ".join(str(int(v)) for v in sorted(set(t["n_boot"].dropna())))
    seeds = ", ".join(str(int(v)) for v in sorted(set(t["boot_seed"].dropna())))
    counts = t["verdict"].value_counts()
    tally = ", ".join(f"{counts[v]} {e(v)}" for v in findings_mod.VERDICTS if v in counts)
    parts.append(
        "<p>Each of the paper's findings and headline numbers against this run "
        f"({tally}). <i>Ours</i>: the estimate and its 95% percentile bootstrap CI over "
        f"questions (and over seeds where there are seeds; {e(n_boot)} resamples, generator seed "
        f"{e(seeds)}). <i>Power</i>: the minimal detectable effect at 80% power, "
        "(z<sub>0.975</sub> + z<sub>0.8</sub>) &times; bootstrap SE: a smaller deviation from the "
        "paper's threshold this run could not tell from none. Verdicts: <i>consistent</i> / "
        "<i>inconsistent</i> when the CI lies on the paper's / the other side of its number, "
        "<i>inconclusive</i> when it covers it, <i>not testable at this scale</i> when the "
        "configuration lacks what the finding needs (<code>repexp.findings</code>).</p>"
    )
    rows = []
    for _, r in t.iterrows():
        unit = r["unit"]
        if r["verdict"] == findings_mod.NOT_TESTABLE:
            ours, power = "-", "-"
        else:
            est, lo, hi = (findings_mod.format_value(unit, r[c]) for c in ("estimate", "lo", "hi"))
            ours = f"{est} [{lo}, {hi}]"
            power = findings_mod.format_value(unit, r["mde"]).lstrip("+")
        n = [] if pd.isna(r["questions"]) else [f"{int(r['questions'])} questions"]
        if not pd.isna(r["seeds"]):
            n.append(f"{int(r['seeds'])} seed(s)")
        reason = (
            ""
            if pd.isna(r["reason"]) or not r["reason"]
            else f"<br><small>{e(r['reason'])}</small>"
        )
        source = "; ".join(
            str(x)
            for x in (r["config"], r["tables"], r["stage"], r["config_hash"])
            if not pd.isna(x) and str(x)
        )
        flag = {"consistent": "ok", "inconsistent": "bad"}.get(r["verdict"], "open")
        rows.append(
            f"<tr><td><b>{e(str(r['finding']))}</b><br><small>{e(str(r['scope']))}</small></td>"
            f"<td>{e(str(r['claim']))}<br><small>{e(str(r['section']))}</small></td>"
            f"<td>{e(str(r['paper']))}</td>"
            f"<td>{e(ours)}<br><small>{e(str(r['statistic']))}"
            f"{'; ' + e(', '.join(n)) if n else ''}</small></td>"
            f"<td class='verdict {flag}'>{e(str(r['verdict']))}{reason}</td>"
            f"<td>{e(power)}</td><td><small>{e(source)}</small></td></tr>"
        )
    parts.append(
        "<table class=findings><tr><th>finding</th><th>claim</th><th>paper</th>"
        "<th>ours [95% CI]</th><th>verdict</th><th>power (mde)</th><th>configuration</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return "\n".join(parts)


def index_page(
    figures: list[str],
    notebooks: list[str],
    stc: pd.DataFrame | None,
    *,
    out: Path,
    config_name: str,
    tables: list[str] | None = None,
    stage_hashes: dict[str, str] | None = None,
    findings: pd.DataFrame | None = None,
) -> str:
    by_name = {Path(n).stem: n for n in notebooks}
    current = provenance.collect()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>RepExp replication: results</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto} img{max-width:100%;"
        "border:1px solid #ddd} table{border-collapse:collapse;font-size:90%} "
        "td,th{padding:2px 8px;border-bottom:1px solid #eee} "
        "tr.flagged td.flag{color:#b00;font-weight:bold} td.verdict.ok{color:#060} "
        "td.verdict.bad{color:#b00;font-weight:bold} table.findings td{vertical-align:top}"
        "</style></head><body>",
        "<h1>RepExp replication: results</h1>",
        f"<p>config <code>{html.escape(config_name)}</code>, "
        f"commit <code>{_short(current['git_commit'])}</code>, "
        f"repexp {repexp.__version__}, built {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        "(<a href='#provenance'>provenance</a>).</p>",
    ]
    if stc is not None:
        parts.append("<h2>Samples-to-correct (solved questions, vanilla pools, mean features)</h2>")
        # the long table (a `method` column), RepExp against random: metrics.versus
        base = metrics.versus(stc[(stc["sampler"] == "vanilla") & (stc["pooling"] == "mean")])
        cols = [
            "model",
            "task",
            "questions",
            "unsolved",
            "pass1",
            "stc_random",
            "stc_repexp",
            "reduction",
            "speedup",
        ]
        parts.append(base[cols].round(3).to_html(index=False, na_rep="-"))
    if findings is not None:
        parts.append(findings_section(findings))
    for fig in figures:
        name = Path(fig).stem
        rel_png = os.path.relpath(fig, out.parent)
        nb = by_name.get(name)
        link = (
            f" (<a href='{html.escape(os.path.relpath(nb, out.parent))}'>notebook</a>)"
            if nb
            else ""
        )
        parts.append(
            f"<h2>{html.escape(TITLES.get(name, name))}{link}</h2>"
            f"<img src='{html.escape(rel_png)}' alt='{html.escape(name)}'>"
        )
    parts.append(provenance_section(tables or [], current, stage_hashes))
    parts.append("</body></html>")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.report", description=__doc__.split("\n")[0])
    ap.add_argument("--figures", nargs="+", required=True)
    ap.add_argument("--notebooks", nargs="*", default=[])
    ap.add_argument("--stc", default=None, help="the inference-time STC table, when that stage ran")
    ap.add_argument(
        "--findings", default=None, help="findings.csv (python -m repexp.findings), when written"
    )
    ap.add_argument("--config-name", default="config/config.yaml")
    ap.add_argument(
        "--tables", nargs="*", default=[], help="result tables whose provenance the page lists"
    )
    ap.add_argument(
        "--stage-hashes", default="{}", help="JSON {stage: config hash of the current config}"
    )
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = Path(a.out)
    page = index_page(
        a.figures,
        a.notebooks,
        pd.read_csv(a.stc) if a.stc else None,
        out=out,
        config_name=a.config_name,
        tables=a.tables,
        stage_hashes=json.loads(a.stage_hashes),
        findings=pd.read_csv(a.findings, dtype=findings_mod.TEXT_COLUMNS) if a.findings else None,
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
