"""benchmarks/gpu_check.py --smoke: the GPU check script runs end to end on the CPU (tiny shapes),
so that it cannot rot between the sessions that have a GPU (about 1 min on 2 cores)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = [
    "selection_match",
    "selection_speed",
    "features_match",
    "features_speed",
    "tokenlevel_match",
    "tokenlevel_speed",
    "tokenlevel_batched",
    "grpo_repexp",
    "frozen_fsdp",
]
# the only SKIP the smoke run may print (while repexp.tokenlevel has no batched engine), and the
# reason it must state
ALLOWED_SKIPS = {"tokenlevel_batched": "no batched token-level engine"}


def test_gpu_check_smoke_passes_every_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSDP_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--smoke",
            "--out",
            str(tmp_path / "summary.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = p.stdout
    assert p.returncode == 0, out[-6000:] + p.stderr[-4000:]
    lines = re.findall(r"^RESULT (\w+): (PASS|FAIL|SKIP) (\{.*\})$", out, re.M)
    assert [name for name, _, _ in lines] == CHECKS, out[-3000:]
    for name, status, numbers in lines:
        numbers = json.loads(numbers)
        if status == "SKIP":
            assert name in ALLOWED_SKIPS and ALLOWED_SKIPS[name] in numbers["reason"], (
                name,
                numbers,
            )
        else:
            assert status == "PASS", (name, numbers)
    summary = json.loads(out.strip().splitlines()[-1].removeprefix("SUMMARY "))
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] and summary["passed"] and list(summary["checks"]) == CHECKS
    c = summary["checks"]
    # the numbers behind the PASS lines
    assert c["selection_match"]["same_orders"] and c["selection_match"]["same_tables"]
    assert (
        c["features_match"]["max_abs_diff"] <= 1e-4
        and c["tokenlevel_match"]["max_abs_diff_candidates"] <= 1e-4
    )
    assert (
        c["features_speed"]["tokens_per_s"] > 0 and c["features_speed"]["peak_gpu_gib"] is None
    )  # CPU
    assert c["selection_speed"]["estimated_seconds_5000_questions"] > 0
    assert (
        c["tokenlevel_speed"]["seconds_per_token_bonus"] > 0
        and c["tokenlevel_speed"]["mean_candidates"] > 1
    )
    assert c["grpo_repexp"]["steps"] == 2 and max(c["grpo_repexp"]["reward_bonus"]) > 0
    assert (
        c["frozen_fsdp"]["plain_model_zeroed"] == [False, True] and c["frozen_fsdp"]["ranks_equal"]
    )
