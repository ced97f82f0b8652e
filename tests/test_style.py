"""Style is enforced, not suggested: `ruff format --check` and `ruff check` over the whole tree
(package, tests, benchmarks, notebooks), with the configuration in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")

pytestmark = pytest.mark.skipif(
    RUFF is None, reason="ruff is not installed (pip install -e .[dev])"
)


@pytest.mark.parametrize("args", [["format", "--check"], ["check"]], ids=["format", "check"])
def test_ruff_is_clean(args):
    proc = subprocess.run([RUFF, *args, "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, (
        f"`ruff {' '.join(args)} .` found problems; run `ruff format . && ruff check --fix .`:\n"
        + proc.stdout[-4000:]
        + proc.stderr[-2000:]
    )
