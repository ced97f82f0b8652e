#!/usr/bin/env bash
# Install the workflow and its package into ./.venv (CPU build of torch 2.13.0) and make sure the
# OS sandbox for model-written code (bubblewrap) is present. Safe to rerun: it only adds what is
# missing. GPU clusters: add the `gpu` extra (vLLM) with `.venv/bin/pip install -e ".[gpu]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] bubblewrap (sandbox for MBPP+/HumanEval code) via apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
  else
    echo "[install] WARNING: bubblewrap (bwrap) is missing; scoring MBPP+/HumanEval needs it." >&2
    echo "[install]          Ask for your distribution's 'bubblewrap' package (e.g. apt-get install bubblewrap)." >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# torch first and pinned on every line, so that no other requirement pulls a CUDA build
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
# envs/constraints.txt: the exact versions of every direct dependency (the conda envs pin the same)
.venv/bin/pip install -q --disable-pip-version-check -c envs/constraints.txt -e ".[dev]" "torch==2.13.0"
echo "[install] done in $(( $(date +%s) - start )) s: $(.venv/bin/python -c 'import torch, transformers, trl, snakemake; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, snakemake {snakemake.__version__}")')"
