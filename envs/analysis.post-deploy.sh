#!/usr/bin/env bash
# Snakemake runs this once inside each new conda env (`--sdm conda`), right after `conda env create`
# (generation.post-deploy.sh and training.post-deploy.sh link here). It installs the repexp package
# itself, editable and without dependencies (the env file pins those), from the checkout snakemake
# runs in: the working directory, or REPEXP_ROOT when snakemake runs elsewhere (--directory).
set -euo pipefail
root="${REPEXP_ROOT:-$PWD}"
if ! grep -qs '^name = "repexp"$' "$root/pyproject.toml"; then
  echo "post-deploy: '$root' is not a repexp-replication checkout (no pyproject.toml naming repexp)." >&2
  echo "post-deploy: run snakemake from the repository root, or set REPEXP_ROOT=/path/to/checkout." >&2
  exit 1
fi
python -m pip install --no-deps --disable-pip-version-check -e "$root"
