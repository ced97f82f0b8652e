"""Scale: the selection at the paper's widths (hidden 3,584 of Qwen2.5-7B, N = 6,400 responses per
question) on synthetic float32 feature shards written by the real cache writer, one question per
shard. The peak memory (max RSS) of the real ``python -m repexp.inference select`` CLI, measured in
a child process, must not grow with the number of questions: 2 and 4 questions agree within 10%.
(The selection that held the whole pool in float64 peaked at 1,160 and 1,899 MB here: +64%; the
streamed one at 784 MB both times.) benchmarks/bench_scale.py runs the full 2-vs-8 check with
full orders."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from repexp import memory

HIDDEN, N = 3584, 6400


def write_shards(out, n_questions, hidden=HIDDEN, n=N, seed=0):
    """``n_questions`` feature shards (float32 ``mean``, one question each) and their score
    tables."""
    from repexp.atomic import write_parquet
    from repexp.features import write_cache

    rng = np.random.default_rng(seed)
    manifests, scores = [], []
    for q in range(n_questions):
        rows = pd.DataFrame({"qid": f"q{q}", "sample": np.arange(n)})
        feats = {"mean": rng.standard_normal((n, hidden), dtype=np.float32)}
        m = out / f"shard-{q}.json"
        write_cache(m, feats, rows, model="synthetic", dtype="float32", shard_name=m.stem)
        write_parquet(
            rows.assign(correct=(rng.random(n) < 0.1).astype(float)),
            m.with_suffix(".scores.parquet"),
        )
        manifests.append(str(m))
        scores.append(str(m.with_suffix(".scores.parquet")))
    return manifests, scores


def select_peak_rss_mb(manifests, scores, out_prefix, *extra) -> float:
    """Max RSS (MiB) of the select CLI over these shards, in a fresh child process
    (:func:`repexp.memory.peak_rss`)."""
    cmd = [
        sys.executable,
        "-m",
        "repexp.inference",
        "select",
        "--features",
        *manifests,
        "--scores",
        *scores,
        "--model",
        "synthetic",
        "--task",
        "t",
        "--sampler",
        "vanilla",
        "--out-prefix",
        str(out_prefix),
        *extra,
    ]
    return memory.peak_rss(cmd)["maxrss"] / 2**20


@pytest.mark.scale
def test_select_peak_memory_does_not_grow_with_questions(tmp_path):
    manifests, scores = write_shards(tmp_path, 4)
    # a short order (k_max = 16) keeps the test fast: the memory at stake is the features'
    peaks = {
        q: select_peak_rss_mb(manifests[:q], scores[:q], tmp_path / f"sel{q}", "--k-max", "16")
        for q in (2, 4)
    }
    questions = pd.read_parquet(tmp_path / "sel4.questions.parquet")
    assert questions.drop_duplicates("qid")["n"].tolist() == [N] * 4
    shard_mb = N * HIDDEN * 4 / 2**20  # one question's float32 features: 87.5 MiB
    assert peaks[2] > shard_mb, peaks  # the measurement sees the features
    assert abs(peaks[4] - peaks[2]) <= 0.10 * peaks[2], (
        f"peak memory of select grew from {peaks[2]:.0f} MB (2 questions) "
        f"to {peaks[4]:.0f} MB (4): "
        f"the selection must hold one shard at a time"
    )
