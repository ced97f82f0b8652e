r"""The required answer format (repexp.verifiers.formats) and its columns in the score tables."""

from __future__ import annotations

import pandas as pd
import pytest

from repexp.score import pool_stats, score_pool
from repexp.tasks import TASK_NAMES, get_task
from repexp.verifiers.formats import FORMATS, format_ok

CASES = [
    # (task, response, format_ok)
    ("math", r"so $\boxed{\frac12}$.", True),
    ("math", r"so \fbox{3}", True),
    ("math", r"the answer is 1/2", False),
    ("math", r"\boxed{}", False),  # empty box: no answer
    ("math", r"\boxed{1", False),  # truncated: unbalanced
    ("math", r"\boxed{wrong}", True),  # the format, not the answer
    ("aime", r"\boxed{033}", True),
    ("dapo", "34", False),
    ("gsm8k", "so 3 + 4 = 7\n#### 7", True),
    ("gsm8k", "#### $1,000.", True),
    ("gsm8k", "the answer is 7", False),
    ("gsm8k", "#### the answer is 7", False),  # the strict checker reads nothing here
    ("gsm8k", "#### 7\nno wait\n####", False),  # the last #### counts
    ("arith", "7 - 9 = -2\n#### -2", True),
    ("arith", "-2", False),  # the scorer's last-number fallback reads it, the format is missed
    ("game24", r"\boxed{(10 - 4) * (6 - 2)}", True),
    ("game24", "Answer: (10 - 4) * (6 - 2)", False),  # the checker reads it, the format is missed
    ("mbppplus", "Here:\n```python\ndef f():\n    return 1\n```\n", True),
    ("mbppplus", "```\ndef f():\n    return 1\n```", True),
    ("mbppplus", "```py\nx = 1", True),  # an unclosed final block still is a block
    ("mbppplus", "def f():\n    return 1\n", False),
    ("mbppplus", "```text\nnot code\n```", False),
    ("math", "", False),
]


@pytest.mark.parametrize(("task", "response", "expected"), CASES)
def test_format_ok(task, response, expected):
    assert format_ok(task, response) is expected


def test_every_task_has_a_format():
    assert set(FORMATS) == set(TASK_NAMES)
    with pytest.raises(ValueError, match="no answer format"):
        format_ok("sudoku", "x")


def test_score_table_has_format_ok_and_a_correct_answer_can_miss_it():
    questions = pd.DataFrame({"qid": ["a", "b"], "answer": ["7", "5"]})
    pool = pd.DataFrame(
        {
            "qid": ["a", "a", "a", "b"],
            "sample": [0, 1, 2, 0],
            "text": ["#### 7", "it is 7", "#### 8", "#### 5"],
        }
    )
    strict = score_pool(pool, questions, get_task("gsm8k"), workers=1)
    assert strict["correct"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert strict["format_ok"].tolist() == [True, False, True, True]
    lenient = score_pool(pool, questions, get_task("gsm8k", last_number_fallback=True), workers=1)
    assert lenient["correct"].tolist() == [1.0, 1.0, 0.0, 1.0]  # correct without the format
    assert lenient["format_ok"].tolist() == strict["format_ok"].tolist()


def test_pool_stats_per_question():
    scores = pd.DataFrame(
        {
            "qid": ["q2"] * 3 + ["q1"] * 2,
            "sample": [0, 1, 2, 0, 1],
            "correct": [1.0, 0.0, 1.0, 0.0, 0.0],
            "format_ok": [True, False, True, True, False],
        }
    )
    stats = pool_stats(scores)
    assert stats.to_dict("records") == [
        {"qid": "q2", "n": 3, "c": 2, "format_ok": 2},
        {"qid": "q1", "n": 2, "c": 0, "format_ok": 1},
    ]
    with pytest.raises(ValueError, match="scored twice"):
        pool_stats(pd.concat([scores, scores.iloc[:1]]))


def test_stats_cli_reads_every_shard(tmp_path):
    from repexp.score import main

    shards = [
        pd.DataFrame(
            {"qid": ["a", "a"], "sample": [0, 1], "correct": [1.0, 0.0], "format_ok": [True, True]}
        ),
        pd.DataFrame(
            {"qid": ["b", "b"], "sample": [0, 1], "correct": [0.0, 0.0], "format_ok": [False, True]}
        ),
    ]
    files = []
    for i, df in enumerate(shards):
        files.append(str(tmp_path / f"shard-{i}.scores.parquet"))
        df.to_parquet(files[-1])
    out = tmp_path / "stats.parquet"
    keys = ["--model", "m", "--task", "gsm8k", "--sampler", "vanilla", "--out", str(out)]
    assert main(["stats", "--scores", *files, *keys]) == 0
    got = pd.read_parquet(out)
    assert got[["qid", "n", "c", "format_ok"]].to_dict("records") == [
        {"qid": "a", "n": 2, "c": 1, "format_ok": 2},
        {"qid": "b", "n": 2, "c": 0, "format_ok": 1},
    ]
    assert set(got["model"]) == {"m"} and set(got["sampler"]) == {"vanilla"}
    with pytest.raises(SystemExit, match="several score shards"):
        main(["stats", "--scores", files[0], files[0], *keys])
