"""The conda environments of `--sdm conda` (envs/*.yaml) against pyproject.toml, the constraints
file that CI installs from, the test environment itself, and the rules that use them."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import tomllib

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENVS = REPO / "envs"
ENV_NAMES = ("analysis", "generation", "training")
GPU_ENVS = ("generation", "training")
# The one documented deviation from the constraints: vLLM 0.31 needs numpy < 2.4
# (envs/*.yaml header)
GPU_OVERRIDES = {"numpy": "2.3.5"}
# Launcher-side only: Snakemake submits and runs the jobs from the environment it was started in
LAUNCHER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}
    return runtime, extras


def _pins(lines) -> dict[str, Requirement]:
    pins = {}
    for line in lines:
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            pins[canonicalize_name(req.name)] = req
    return pins


def _version(req: Requirement) -> str:
    return next(iter(req.specifier)).version


CONSTRAINTS = _pins((ENVS / "constraints.txt").read_text().splitlines())


def _env(name: str) -> dict:
    return yaml.safe_load((ENVS / f"{name}.yaml").read_text())


def _env_pins(name: str) -> dict[str, Requirement]:
    deps = _env(name)["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    return _pins(pip)


def test_constraints_pin_every_dependency_within_pyproject():
    runtime, extras = _pyproject()
    declared = runtime + [r for reqs in extras.values() for r in reqs]
    assert {canonicalize_name(r.name) for r in declared} == set(CONSTRAINTS)
    for req in declared:
        pinned = _version(CONSTRAINTS[canonicalize_name(req.name)])
        assert req.specifier.contains(pinned), f"{req.name}=={pinned} is outside pyproject's {req}"


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_pins_match_constraints_and_pyproject(name):
    runtime, extras = _pyproject()
    env = _env(name)
    assert "python=3.11" in env["dependencies"]
    pins = _env_pins(name)
    wanted = {
        canonicalize_name(r.name): r
        for r in runtime
        if canonicalize_name(r.name) not in LAUNCHER_ONLY
    }
    if name in GPU_ENVS:
        wanted.update({canonicalize_name(r.name): r for r in extras["gpu"]})
    assert set(pins) == set(wanted), f"envs/{name}.yaml differs from pyproject.toml"
    for key, req in pins.items():
        expected = _version(CONSTRAINTS[key])
        if name in GPU_ENVS:
            expected = GPU_OVERRIDES.get(key, expected)
        assert _version(req) == expected, f"envs/{name}.yaml: {req} but constraints say {expected}"
        assert wanted[key].specifier.contains(_version(req)), (
            f"envs/{name}.yaml: {req} outside pyproject"
        )
        assert req.extras == wanted[key].extras, (
            f"envs/{name}.yaml: {req} lost the extras of {wanted[key]}"
        )
    # the package itself comes from the post-deploy script, never from a path in the env file
    # (Snakemake copies the env file to .snakemake/conda/, where a relative path points elsewhere)
    assert not any("-e" in str(d) or "../" in str(d) for d in env["dependencies"])
    assert (ENVS / f"{name}.post-deploy.sh").resolve() == (
        ENVS / "analysis.post-deploy.sh"
    ).resolve()


def test_test_environment_has_exactly_the_constrained_versions():
    """What CI tests is what the cluster envs get (scripts/install.sh installs with the
    constraints)."""
    for key, req in CONSTRAINTS.items():
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            assert key == "vllm", f"{req.name} is not installed"
            continue
        assert installed.split("+")[0] == _version(req), (
            f"{req.name} {installed} installed, {req} pinned"
        )


def test_every_rule_uses_an_existing_env():
    used = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for path in re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", text):
            assert (smk.parent / path).resolve().parent == ENVS, f"{smk.name}: {path}"
            used.add((smk.parent / path).resolve().stem)
        assert text.count("conda:") == len(re.findall(r"^rule ", text, re.M)), (
            f"{smk.name}: a rule without conda:"
        )
    assert used == set(ENV_NAMES)


def _post_deploy(cwd, tmp_path, env=None):
    """Run the post-deploy script with a `python` on PATH that records its arguments instead of
    pip."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/pip-args\n')
    (fake / "python").chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k != "REPEXP_ROOT"}
    environ.update(PATH=f"{fake}:{os.environ['PATH']}", **(env or {}))
    return subprocess.run(
        ["bash", str(ENVS / "generation.post-deploy.sh")],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
    )


def test_post_deploy_installs_the_checkout_it_runs_in(tmp_path):
    proc = _post_deploy(REPO, tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "pip-args").read_text().split()
    assert args[:3] == ["-m", "pip", "install"] and "--no-deps" in args
    assert args[-2:] == ["-e", str(REPO)]


def test_post_deploy_outside_the_checkout_names_the_fix(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _post_deploy(elsewhere, tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "pip-args").exists()
    assert str(elsewhere) in proc.stderr and "REPEXP_ROOT" in proc.stderr
    proc = _post_deploy(elsewhere, tmp_path, env={"REPEXP_ROOT": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pip-args").read_text().split()[-2:] == ["-e", str(REPO)]
