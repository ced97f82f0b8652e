"""The layout the README promises: the paper's math imports no stage, and the README's rule table
says which code every rule runs (so a rule's code is found from its name)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "repexp"
CORE = ("elliptical", "select", "selectors", "bonus", "metrics")
DATA = ("tasks", "verifiers")  # what the core may read: task records and answer extraction


def _repexp_imports(path: Path) -> set[str]:
    """Every ``repexp.*`` module a file imports, at any depth (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repexp"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("repexp")}
    return out


def test_the_core_imports_no_stage():
    for name in CORE:
        for module in _repexp_imports(SRC / f"{name}.py"):
            top = module.split(".")[1] if "." in module else ""
            assert top in CORE + DATA, f"repexp.{name} imports {module}: the core imports no stage"


def _rules() -> dict[str, tuple[str, str]]:
    """{rule: (rule file, what it runs)} read from the rule files' shell commands."""
    rules = {}
    for f in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = f.read_text()
        starts = [m for m in re.finditer(r"^rule (\w+):", text, re.M)]
        for i, m in enumerate(starts):
            body = text[m.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
            calls = sorted(set(re.findall(r"python -m (repexp[\w.]*)(?: ([a-z]+)\b)?", body)))
            if "papermill" in body:
                calls.append(("papermill", ""))
            if "rl_launcher" in body:  # `python -m repexp.rl.train` or accelerate launch -m ...
                calls.append(("repexp.rl.train", ""))
            assert len(calls) == 1, (m.group(1), calls)
            rules[m.group(1)] = (f.name, " ".join(c for c in calls[0] if c))
    return rules


def test_the_readme_rule_table_is_what_the_rules_run():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("<!-- rule table -->") : readme.index("<!-- end of rule table -->")]
    rows = re.findall(r"^\| `([\w.]+)` \| `(\w+)` \| `([^`]+)`", table, re.M)
    listed = {rule: (file, runs) for file, rule, runs in rows}
    rules = _rules()
    assert set(listed) == set(rules), set(listed) ^ set(rules)
    for rule, (file, runs) in rules.items():
        want = "notebooks/<figure>.ipynb" if runs == "papermill" else runs
        assert listed[rule] == (file, want), (rule, listed[rule], (file, want))
    # and every module the table names exists
    for _, runs in listed.values():
        if runs.startswith("repexp"):
            parts = runs.split()[0].split(".")[1:]
            path = SRC.joinpath(*parts)
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), runs
