"""RL evaluation (repexp.rl.evaluate): splits, settings, checkpoint picking, pass@k over seeds,
sample efficiency, base-model log-likelihood, the tables CLI on hand-made runs, and the RL
notebooks.

The hand-made runs mimic what ``repexp.rl.train`` and the test-pool rules write (``done.json``,
``best.json``, ``dev.csv``, ``train_log.csv``, per-run ``questions.parquet``), so the tables and the
notebooks are exercised without training anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import nbharness
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from repexp import provenance
from repexp.rl import evaluate as ev

PAPER_RL = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["rl"]
PROVENANCE = {"stage": "rl", "config_hash": "abcdef012345", "model": "tiny", "seed": "41,42,43"}


# ------------------------------------------------------------------------------------------------
# settings, splits, runs
# ------------------------------------------------------------------------------------------------
def test_splits_of_follow_the_paper():
    assert ev.splits_of("gsm8k", {}) == ("gsm8k", "dev", "gsm8k", "test_rest")
    assert ev.splits_of("math", ev.task_settings(PAPER_RL, "math")) == (
        "math",
        "dev",
        "math",
        "test_rest",
    )
    # DAPO: AIME 2024 is both the dev and the test set (paper.md 3.5)
    assert ev.splits_of("dapo", ev.task_settings(PAPER_RL, "dapo")) == (
        "aime2024",
        "test",
        "aime2024",
        "test",
    )
    # a dev task with its own dev split gives dev + test_rest
    assert ev.splits_of("dapo", {"dev_task": "math"}) == ("math", "dev", "math", "test_rest")
    with pytest.raises(ValueError, match="no dev split"):
        ev.splits_of("dapo", {})
    with pytest.raises(ValueError, match="no train split"):
        ev.splits_of("aime2024", {})
    with pytest.raises(ValueError, match="unknown task"):
        ev.splits_of("gsm8k", {"dev_task": "nope"})


def test_task_settings_apply_overrides_and_train_settings_drop_the_grid():
    before = json.dumps(PAPER_RL, sort_keys=True)
    dapo = ev.task_settings(PAPER_RL, "dapo")
    assert "task_overrides" not in dapo
    assert (dapo["max_response_length"], dapo["train_batch_prompts"], dapo["eval_every"]) == (
        8192,
        512,
        10,
    )
    assert dapo["repexp"]["proj_dim"] == 128 and "proj_dim" not in dapo  # into the RepExp section
    assert dapo["dev_task"] == "aime2024"
    math_ = ev.task_settings(PAPER_RL, "math")
    assert (math_["max_response_length"], math_["repexp"]["proj_dim"]) == (
        1024,
        32,
    ) and "dev_task" not in math_
    assert json.dumps(PAPER_RL, sort_keys=True) == before  # the config is not mutated
    train = ev.train_settings(PAPER_RL, "dapo")
    assert not set(ev.GRID_KEYS) & set(train)
    assert train == {k: v for k, v in dapo.items() if k not in ev.GRID_KEYS}


def test_run_names_round_trip():
    for method, seed in [("base", None), ("grpo", 41), ("unlikeliness", 0), ("repexp", 43)]:
        assert ev.parse_run(ev.run_name(method, seed)) == (method, seed)
    for bad in ["grpo", "grpo/41", "ppo/seed1", "base/seed1"]:
        with pytest.raises(ValueError):
            ev.parse_run(bad)


def test_pick_best_is_strictly_greater_with_step0_the_base_model():
    dev = pd.DataFrame({"step": [20, 0, 10, 30, 40], "dev_pass1": [0.6, 0.5, 0.6, np.nan, 0.55]})
    assert ev.pick_best(dev) == (10, 0.6)  # unsorted input; tie 10/20 -> the earlier; NaN skipped
    assert ev.pick_best(pd.DataFrame({"step": [0, 5, 10], "dev_pass1": [0.3, 0.3, 0.1]})) == (
        0,
        0.3,
    )
    assert ev.pick_best(pd.DataFrame({"step": [0, 5], "dev_pass1": [0.0, 0.0]})) == (0, 0.0)
    with pytest.raises(ValueError):
        ev.pick_best(pd.DataFrame({"step": [0], "dev_pass1": [np.nan]}))


# ------------------------------------------------------------------------------------------------
# pass@k over seeds, sample efficiency
# ------------------------------------------------------------------------------------------------
def _questions(rows):
    q = pd.DataFrame(rows, columns=["task", "method", "seed", "qid", "n", "c"])
    q["seed"] = q["seed"].astype("Int64")
    return q


def test_passk_table_by_hand():
    # n = 4 everywhere. pass@k = 1 - C(4-c, k)/C(4, k): c=0 -> 0,0,0; c=1 -> 1/4, 1/2, 1;
    # c=2 -> 1/2, 5/6, 1; c=4 -> 1, 1, 1 (k = 1, 2, 4)
    q = _questions(
        [
            ("t", "base", None, "a", 4, 1),
            ("t", "base", None, "b", 4, 0),
            ("t", "grpo", 1, "a", 4, 2),
            ("t", "grpo", 1, "b", 4, 0),
            ("t", "grpo", 2, "a", 4, 4),
            ("t", "grpo", 2, "b", 4, 1),
        ]
    )
    got = ev.passk_table(q).set_index(["method", "k"])
    assert list(got.index) == [
        ("base", 1),
        ("base", 2),
        ("base", 4),
        ("grpo", 1),
        ("grpo", 2),
        ("grpo", 4),
    ]
    base = got.loc["base"]
    np.testing.assert_allclose(base["mean"], [1 / 8, 1 / 4, 1 / 2])
    assert base["se"].isna().all() and (base["seeds"] == 1).all() and (base["questions"] == 2).all()
    # per seed: seed 1 = 1/4, 5/12, 1/2; seed 2 = 5/8, 3/4, 1. se of two values = |a - b| / 2
    grpo = got.loc["grpo"]
    np.testing.assert_allclose(grpo["mean"], [(1 / 4 + 5 / 8) / 2, (5 / 12 + 3 / 4) / 2, 3 / 4])
    np.testing.assert_allclose(grpo["se"], [(5 / 8 - 1 / 4) / 2, (3 / 4 - 5 / 12) / 2, 1 / 4])
    assert (grpo["seeds"] == 2).all()


def test_passk_table_uses_every_power_of_two_and_n():
    q = _questions([("t", "repexp", 41, "a", 6, 3)])
    assert ev.passk_table(q)["k"].tolist() == [1, 2, 4, 6]
    assert ev.passk_table(q, ks=[1, 3])["k"].tolist() == [1, 3]


def test_efficiency_factor_closed_form():
    ks, p = [1, 2, 4, 8, 16], [0.1, 0.3, 0.5, 0.6, 0.7]
    # 0.4 is halfway between k = 2 (0.3) and k = 4 (0.5) in log k: k* = sqrt(8), factor = 16 /
    # sqrt(8)
    k_star, factor = ev.efficiency_factor(ks, p, 0.4)
    assert k_star == pytest.approx(math.sqrt(8)) and factor == pytest.approx(16 / math.sqrt(8))
    # a quarter of the way from k = 8 to k = 16: k* = 8 * 2**0.25
    k_star, factor = ev.efficiency_factor(ks, p, 0.625)
    assert k_star == pytest.approx(8 * 2**0.25) and factor == pytest.approx(2 / 2**0.25)
    assert ev.efficiency_factor(ks, p, 0.5) == pytest.approx((4.0, 4.0))  # exactly on a point
    assert ev.efficiency_factor(ks, p, 0.05) == (1.0, 16.0)  # reached at k = 1: a lower bound
    assert all(math.isnan(v) for v in ev.efficiency_factor(ks, p, 0.8))  # never reached
    assert ev.efficiency_factor(ks[::-1], p[::-1], 0.4)[0] == pytest.approx(
        math.sqrt(8)
    )  # unsorted
    assert ev.efficiency_factor(ks, p, 0.4, k_max=256)[1] == pytest.approx(256 / math.sqrt(8))


def test_efficiency_table_rows_per_baseline():
    ks = [1, 2, 4, 8]
    curves = {
        "repexp": [0.2, 0.4, 0.5, 0.6],
        "grpo": [0.3, 0.4, 0.42, 0.45],
        "base": [0.1, 0.3, 0.5, 0.7],
    }
    passk = pd.DataFrame(
        [
            {"task": "t", "method": m, "k": k, "mean": v}
            for m, vals in curves.items()
            for k, v in zip(ks, vals, strict=True)
        ]
    )
    eff = ev.efficiency_table(passk).set_index("baseline")
    assert list(eff.index) == ["base", "grpo", "unlikeliness"]
    assert eff.loc["grpo", "k_star"] == pytest.approx(math.sqrt(8)) and eff.loc["grpo", "reached"]
    assert (
        eff.loc["grpo", "factor"] == pytest.approx(8 / math.sqrt(8))
        and eff.loc["grpo", "note"] == ""
    )
    assert eff.loc["grpo", "baseline_at_kmax"] == 0.45 and eff.loc["grpo", "repexp_at_kmax"] == 0.6
    assert not eff.loc["base", "reached"] and "not reached" in eff.loc["base", "note"]
    assert (
        np.isnan(eff.loc["unlikeliness", "factor"])
        and "no unlikeliness curve" in eff.loc["unlikeliness", "note"]
    )
    zero = passk.assign(mean=np.where(passk["method"] == "grpo", 0.0, passk["mean"]))
    row = ev.efficiency_table(zero).set_index("baseline").loc["grpo"]
    assert np.isnan(row["factor"]) and not row["reached"] and "is 0: no factor" in row["note"]


# ------------------------------------------------------------------------------------------------
# log-likelihood under the base model
# ------------------------------------------------------------------------------------------------
def test_base_loglik_matches_a_hand_loop(tiny_lm):
    import torch

    model, tok = tiny_lm
    rng = np.random.default_rng(0)
    eos = tok.eos_token_id
    prompts = [list(rng.integers(0, 5000, size=n)) for n in (7, 3, 12, 5)]
    responses = [list(rng.integers(0, 5000, size=n)) + [eos] for n in (4, 9, 1, 6)]
    responses[2] = [eos]  # a response that is just EOS
    total, mean = ev.base_loglik(model, prompts, responses, batch_tokens=24, head_rows=3)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        hand = sum(float(lp[len(p) + t - 1, tok_id]) for t, tok_id in enumerate(r))
        assert total[i] == pytest.approx(hand, abs=1e-4), i
        assert mean[i] == pytest.approx(hand / len(r), abs=1e-5), i
    t2, m2 = ev.base_loglik(model, [prompts[0], [1, 2]], [responses[0], []])
    assert t2[0] == pytest.approx(total[0], abs=1e-4) and t2[1] == 0.0 and np.isnan(m2[1])


def test_base_loglik_of_base_samples_is_the_pool_logprob(tiny_lm):
    """A base-model pool records each response's raw log-probability while sampling: the same
    number."""
    from repexp.pools import Sampler, generate_hf, prompt_ids_of

    model, tok = tiny_lm
    prompt = prompt_ids_of(tok, [{"role": "user", "content": "2 + 2?"}])
    rows = generate_hf(
        model, tok, prompt, n=4, sampler=Sampler(), max_new_tokens=6, seed=3, batch_size=4
    )
    total, _ = ev.base_loglik(model, [prompt] * 4, [r["response_ids"] for r in rows])
    np.testing.assert_allclose(total, [r["logprob"] for r in rows], atol=1e-3)


def test_run_questions_counts_and_sample0():
    pool = pd.DataFrame(
        {
            "qid": ["b", "b", "a", "a", "a"],
            "sample": [1, 0, 0, 1, 2],
            "n_tokens": [3, 4, 5, 6, 7],
            "finish_reason": ["stop"] * 4 + ["length"],
            "logprob": [-1.0, -2.0, -3.0, -4.0, -5.0],
        }
    )
    scores = pd.DataFrame(
        {
            "qid": ["a", "a", "a", "b", "b"],
            "sample": [0, 1, 2, 0, 1],
            "correct": [False, True, True, True, False],
        }
    )
    q = ev.run_questions(pool, scores, task="gsm8k", run="repexp/seed42").set_index("qid")
    assert list(q.index) == ["b", "a"]  # pool order
    assert q.loc["a", ["n", "c", "n_tokens", "correct", "policy_logprob"]].tolist() == [
        3,
        2,
        5,
        False,
        -3.0,
    ]
    assert q.loc["b", ["n", "c", "n_tokens", "correct", "policy_logprob"]].tolist() == [
        2,
        1,
        4,
        True,
        -2.0,
    ]
    assert set(q["method"]) == {"repexp"} and set(q["seed"]) == {42}
    with pytest.raises(ValueError, match="out of step"):
        ev.run_questions(pool, scores.iloc[:-1], task="gsm8k", run="base")


# ------------------------------------------------------------------------------------------------
# the hyper-parameter table
# ------------------------------------------------------------------------------------------------
def test_hparams_table_renders_the_paper_config():
    from dataclasses import fields

    from repexp.rl.trainer import RLSettings

    spec = {"source": "hub", "repo_id": "Qwen/Qwen2.5-7B-Instruct"}
    t = ev.hparams_table(PAPER_RL, spec).set_index("key")
    assert list(t.columns) == ["section", "parameter", "math", "gsm8k", "dapo"]
    assert t.loc["max_response_length", ["math", "gsm8k", "dapo"]].tolist() == [
        "1024",
        "1024",
        "8192",
    ]
    assert t.loc["repexp.proj_dim", ["math", "dapo"]].tolist() == ["32", "128"]
    assert (
        t.loc["learning_rate", "math"] == "1e-06"
        and t.loc["model", "dapo"] == "Qwen/Qwen2.5-7B-Instruct"
    )
    assert t.loc["@test", ["gsm8k", "dapo"]].tolist() == ["gsm8k/test_rest", "aime2024/test"]
    assert t.loc["unlikeliness.beta_rank", "section"] == "Unlikeliness"
    assert t.loc["repexp.zero_if_none_correct", "math"] == "yes"
    assert t.loc["seeds", "math"] == "41, 42, 43"
    assert "task_overrides" not in t.index and "dev_task" not in t.index
    # every setting of the trainer is a row (labelled, or under "other" with its key)
    for f in fields(RLSettings):
        if f.name not in ("repexp", "unlikeliness", "dev_task"):
            assert f.name in t.index, f.name
    assert t.loc["weight_decay", "math"] == "0.01"  # a trainer default the config does not set
    assert (
        t.loc["adv_eps", "math"] == "1e-06" and t.loc["adv_eps", "section"] == "GRPO (all methods)"
    )  # verl's


def test_hparams_table_lists_settings_it_has_no_label_for(monkeypatch):
    real = ev.run_settings
    monkeypatch.setattr(ev, "run_settings", lambda rl, task: {**real(rl, task), "new_knob": 3})
    t = ev.hparams_table(PAPER_RL).set_index("key")
    assert t.loc["new_knob", "section"] == "other (config key)" and t.loc["new_knob", "dapo"] == "3"


# ------------------------------------------------------------------------------------------------
# the tables CLI on hand-made runs
# ------------------------------------------------------------------------------------------------
TASKS_RICH = ("math", "gsm8k", "dapo")


def make_runs(root: Path, variant: str) -> tuple[list[Path], list[Path]]:
    """Hand-made training runs and per-run test question tables: (questions files, done files).

    ``rich``: three tasks, base + three methods x three seeds, 64 samples per question.
    ``degenerate``: one task, one seed, no Unlikeliness, one dev evaluation, a NaN log-likelihood.
    """
    rng = np.random.default_rng(0)
    if variant == "rich":
        tasks, methods, seeds, n, n_q = (
            TASKS_RICH,
            ("grpo", "unlikeliness", "repexp"),
            (41, 42, 43),
            64,
            30,
        )
    else:
        tasks, methods, seeds, n, n_q = ("gsm8k",), ("grpo", "repexp"), (41,), 8, 4
    strength = {"base": 0.0, "grpo": 0.8, "unlikeliness": 0.4, "repexp": 0.3}
    qfiles, done = [], []
    for task in tasks:
        difficulty = rng.uniform(0.5, 4.0, size=n_q)
        for method, seed in [("base", None)] + [(m, s) for m in methods for s in seeds]:
            run = root / "rl" / task / ev.run_name(method, seed)
            (run / "test").mkdir(parents=True)
            # sharpening: GRPO concentrates the mass on easy questions, RepExp spreads it
            logit = -difficulty + 2.0 * strength[method] + rng.normal(0, 0.2, n_q)
            p = 1 / (1 + np.exp(-logit * (1 + 2 * (method == "grpo"))))
            c = rng.binomial(n, p)
            shift = {"base": 0.0, "grpo": 8.0, "unlikeliness": -2.0, "repexp": -6.0}[method]
            tokens = rng.integers(20, 120, size=n_q)
            loglik = -tokens * rng.uniform(0.2, 0.6, size=n_q) + shift
            q = pd.DataFrame(
                {
                    "task": task,
                    "method": method,
                    "seed": seed,
                    "qid": [f"q{i}" for i in range(n_q)],
                    "n": n,
                    "c": c,
                    "n_tokens": tokens,
                    "finish_reason": "stop",
                    "correct": rng.random(n_q) < p,
                    "policy_logprob": loglik + rng.normal(0, 1, n_q),
                    "loglik_sum": loglik,
                    "loglik_mean": loglik / tokens,
                }
            )
            if variant == "degenerate" and method == "repexp":
                q.loc[0, ["loglik_sum", "loglik_mean"]] = [0.0, np.nan]  # an empty response
            q["seed"] = q["seed"].astype("Int64")
            q.to_parquet(run / "test" / "questions.parquet", index=False)
            qfiles.append(run / "test" / "questions.parquet")
            if method == "base":
                continue
            steps = [0] if variant == "degenerate" else list(range(0, 60, 10))
            dev = pd.DataFrame(
                {
                    "step": steps,
                    "dev_pass1": np.round(
                        0.3
                        + 0.05 * np.sqrt(steps) * strength[method]
                        + rng.normal(0, 0.01, len(steps)),
                        3,
                    ),
                    "dev_questions": n_q,
                    "dev_samples": 8,
                }
            )
            step, pass1 = ev.pick_best(dev)
            dev.to_csv(run / "dev.csv", index=False)
            train_steps = np.arange(1, max(steps) + 1) if max(steps) else np.array([1])
            log = pd.DataFrame(
                {
                    "step": train_steps,
                    "loss": rng.normal(0, 0.1, len(train_steps)),
                    "reward_correct": 0.3 + 0.002 * train_steps,
                    "reward_bonus": 0.005 * (method == "repexp") * np.ones(len(train_steps)),
                    "reward_total": 0.3 + 0.002 * train_steps,
                    "seconds": 1.0,
                }
            )
            if variant == "rich":  # the shaping diagnostics (the degenerate runs predate them)
                all_correct = np.clip(0.1 + 0.01 * train_steps, 0, 1)
                log = log.assign(
                    groups_all_correct=all_correct,
                    groups_reordered=all_correct * (method != "grpo"),
                    shaping_share=0.5 * all_correct * (method != "grpo"),
                    adv_abs=0.8,
                    adv_abs_all_correct=0.6 * (method != "grpo"),
                )
                write_rollouts_and_sketch(run, task, method, seed, train_steps)
            log.to_csv(run / "train_log.csv", index=False)
            (run / "best").mkdir()
            (run / "best.json").write_text(
                json.dumps(
                    {"step": step, "dev_pass1": pass1, "method": method, "seed": seed, "task": task}
                )
            )
            (run / "done.json").write_text("{}")
            done.append(run / "done.json")
    return qfiles, done


def rollout_hashes(task: str, method: str, seed: int, step: int, n: int = 4) -> list[str]:
    """Hand-made rollout hashes: a run agrees with GRPO's of its seed on step 1, then differs on
    ``DIFFERING[method]`` of the ``n`` rollouts of every step."""
    differ = 0 if step == 1 or method == "grpo" else DIFFERING[method]
    return [f"{task}-{seed}-{step}-{i}" + (f"-{method}" if i < differ else "") for i in range(n)]


DIFFERING = {"unlikeliness": 1, "repexp": 3}
UPDATE = {"grpo": 1.0, "unlikeliness": 2.0, "repexp": 3.0}


def write_rollouts_and_sketch(run: Path, task: str, method: str, seed: int, steps) -> None:
    pd.DataFrame(
        {
            "step": steps,
            "update": steps - 1,
            "rollouts": 4,
            "hashes": [" ".join(rollout_hashes(task, method, seed, s)) for s in steps],
        }
    ).to_csv(run / "rollouts.csv", index=False)
    base = np.arange(8, dtype=float)
    final = base.copy()
    final[seed % 8] += UPDATE[method]  # each method moves one coordinate of its own
    np.savez(
        run / "weights_sketch.npz",
        names=np.array(["w"]),
        size=np.int64(8),
        seed=np.int64(0),
        final=final,
        base=base,
    )


def build_tables(root: Path, variant: str) -> Path:
    """The RL tables of ``variant`` written by the ``tables`` and ``hparams`` commands."""
    qfiles, done = make_runs(root / "runs", variant)
    out = root / "tables"
    prov = [
        "--provenance",
        json.dumps(PROVENANCE),
    ]  # as the workflow passes it: the tables carry it
    assert (
        ev.main(
            [
                "tables",
                "--questions",
                *map(str, qfiles),
                "--runs",
                *map(str, done),
                "--out-dir",
                str(out),
                *prov,
            ]
        )
        == 0
    )
    rl = (
        dict(PAPER_RL)
        if variant == "rich"
        else {
            **PAPER_RL,
            "tasks": ["gsm8k"],
            "seeds": [41],
            "methods": ["grpo", "repexp"],
            "task_overrides": {},
        }
    )
    assert (
        ev.main(
            [
                "hparams",
                "--rl",
                json.dumps(rl),
                "--model-spec",
                json.dumps({"source": "tiny_random"}),
                "--out",
                str(out / "rl_hparams.csv"),
                *prov,
            ]
        )
        == 0
    )
    return out


def test_tables_command_on_hand_made_runs(tmp_path):
    out = build_tables(tmp_path, "rich")
    passk = pd.read_csv(out / "rl_passk.csv")
    assert list(passk.columns[:7]) == ["task", "method", "k", "mean", "se", "seeds", "questions"]
    # provenance at the end: what the workflow passed, and the git commit and packages of this
    # process
    assert [c for c in passk.columns if c.startswith("prov_")] == [
        "prov_stage",
        "prov_git_commit",
        "prov_config_hash",
        "prov_model",
        "prov_seed",
        "prov_packages",
    ]
    assert (passk["prov_config_hash"] == PROVENANCE["config_hash"]).all() and (
        passk["prov_model"] == "tiny"
    ).all()
    assert (passk["prov_seed"].astype(str) == "41,42,43").all()
    assert (passk["prov_packages"] == provenance.packages()).all()
    assert passk["prov_git_commit"].nunique() == 1
    assert set(passk["k"]) == {1, 2, 4, 8, 16, 32, 64}
    assert passk.groupby(["task", "method"]).size().eq(7).all() and len(passk) == 3 * 4 * 7
    assert passk.loc[passk["method"] == "base", "se"].isna().all()
    assert (passk.loc[passk["method"] != "base", "seeds"] == 3).all()
    # the table agrees with a direct computation for one cell
    q = pd.read_parquet(
        out.parent / "runs" / "rl" / "math" / "grpo" / "seed42" / "test" / "questions.parquet"
    )
    assert ev.passk_table(q).query("k == 4")["mean"].iloc[0] == pytest.approx(
        np.mean([1 - math.comb(64 - c, 4) / math.comb(64, 4) for c in q["c"]])
    )
    eff = pd.read_csv(out / "rl_efficiency.csv")
    assert len(eff) == 9 and set(eff["baseline"]) == {"base", "grpo", "unlikeliness"}
    best = pd.read_csv(out / "rl_best.csv")
    assert len(best) == 27 and best["agrees_with_dev_csv"].all()
    dev = pd.read_csv(out / "rl_dev.csv")
    assert (
        list(dev.columns[:3]) == ["task", "method", "seed"]
        and dev.groupby(["task", "method", "seed"])["best"].sum().eq(1).all()
    )
    train = pd.read_csv(out / "rl_train.csv")
    assert list(train.columns[:4]) == ["task", "method", "seed", "step"] and len(train) == 27 * 50
    loglik = pd.read_parquet(out / "rl_loglik.parquet")
    assert len(loglik) == 3 * 10 * 30 and {"loglik_sum", "loglik_mean", "policy_logprob"} <= set(
        loglik.columns
    )
    assert loglik.loc[loglik["method"] == "base", "seed"].isna().all()
    assert (
        "prov_seed" not in loglik
        and (loglik["prov_config_hash"] == PROVENANCE["config_hash"]).all()
    )
    for name in ("rl_efficiency.csv", "rl_best.csv", "rl_dev.csv", "rl_train.csv"):
        table = pd.read_csv(out / name, dtype={"prov_config_hash": str})
        assert (table["prov_config_hash"] == PROVENANCE["config_hash"]).all(), name
    # each method's run against GRPO's of the same seed (hand-made: step 1 agrees, then
    # DIFFERING[method] of 4 rollouts per step differ; the final weights differ in one coordinate)
    div = pd.read_csv(out / "rl_divergence.csv")
    assert (
        len(div) == 3 * 3 * 2
        and set(div["versus"]) == {"grpo"}
        and set(div["method"]) == {"unlikeliness", "repexp"}
    )
    row = div[(div["task"] == "math") & (div["seed"] == 42) & (div["method"] == "repexp")].iloc[0]
    assert (row["steps"], row["steps_differing"], row["first_step_differing"]) == (50, 49, 2)
    assert (row["rollouts"], row["rollouts_differing"]) == (200, 49 * 3)
    assert row["frac_rollouts_differing"] == pytest.approx(49 * 3 / 200)
    # same coordinate (seed % 8): |3 - 1| = 2, GRPO's update 1, GRPO's final weights (0..7, +1 at
    # index 2)
    assert (
        row["weights_l2"],
        row["weights_rel_update"],
        row["update_l2"],
        row["versus_update_l2"],
    ) == (2, 2, 3, 1)
    assert row["weights_rel_weights"] == pytest.approx(
        2 / np.sqrt(sum(x * x for x in range(8)) + 2 * 2 + 1)
    )
    assert (div["prov_config_hash"].astype(str) == PROVENANCE["config_hash"]).all()
    # the per-run summary (python -m repexp.rl.evaluate summary) reads these tables back
    summary = ev.summary_table(
        *(
            provenance.strip(pd.read_csv(out / f"rl_{n}.csv"))
            for n in ("best", "train", "passk", "divergence")
        )
    )
    assert len(summary) == 27 + 3 and (summary["k"] == 64).all()
    one = summary[(summary["task"] == "math") & (summary["method"] == "repexp")]
    one = one[one["seed"] == 42].iloc[0]
    b = best[(best["task"] == "math") & (best["method"] == "repexp") & (best["seed"] == 42)].iloc[0]
    assert (one["dev_pass1_step0"], one["dev_pass1_best"], one["best_step"]) == (
        b["base_dev_pass1"],
        b["dev_pass1"],
        b["step"],
    )
    pk = passk[(passk["task"] == "math") & (passk["method"] == "repexp")].set_index("k")["mean"]
    assert (one["test_pass1"], one["test_passk"]) == (pk[1], pk[64])
    assert one["frac_rollouts_differing"] == pytest.approx(49 * 3 / 200)
    assert one["weights_rel_update"] == 2
    t = train[(train["task"] == "math") & (train["method"] == "repexp") & (train["seed"] == 42)]
    for c in ("groups_all_correct", "groups_reordered", "shaping_share"):
        assert one[c] == pytest.approx(t[c].mean()) if c in t else np.isnan(one[c])
    grpo = summary[summary["method"] == "grpo"]
    assert grpo["frac_rollouts_differing"].isna().all()  # GRPO is the reference
    base = summary[summary["method"] == "base"].set_index("task")
    pb = passk[passk["method"] == "base"].set_index(["task", "k"])["mean"]
    assert base.loc["math", "test_pass1"] == pb[("math", 1)]
    assert ev.main(["summary", "--tables-dir", str(out)]) == 0
    assert ev.main(["summary", "--tables-dir", str(out.parent)]) == 2  # no RL tables there
    hp = pd.read_csv(out / "rl_hparams.csv")
    assert list(hp.columns) == ["section", "parameter", "key", "math", "gsm8k", "dapo"]
    rows = hp[hp["section"] == "provenance"].set_index(
        "key"
    )  # a key/value table: provenance as rows
    assert (
        rows.loc["prov_config_hash", ["math", "gsm8k", "dapo"]] == PROVENANCE["config_hash"]
    ).all()


def test_rollout_divergence_by_hand():
    a = pd.DataFrame({"step": [1, 2, 3], "hashes": ["x y z", "p q r", "u v"]})
    b = pd.DataFrame({"step": [1, 2, 4], "hashes": ["x y z", "p Q r", "u v"]})
    r = ev.rollout_divergence(a, b)
    assert r["per_step"].values.tolist() == [
        [1, 3, 0],
        [2, 3, 1],
    ]  # step 3 / 4: only one run has it
    assert (r["steps"], r["steps_differing"], r["first_step_differing"]) == (2, 1, 2)
    assert (r["rollouts"], r["rollouts_differing"], r["frac_rollouts_differing"]) == (6, 1, 1 / 6)
    same = ev.rollout_divergence(a, a)
    assert same["first_step_differing"] is None and same["rollouts_differing"] == 0
    # a step where one run drew fewer rollouts: the missing ones count as differing
    short = ev.rollout_divergence(a.iloc[:1], pd.DataFrame({"step": [1], "hashes": ["x y"]}))
    assert (short["rollouts"], short["rollouts_differing"]) == (3, 1)


def test_weight_sketch_estimates_the_distance_of_sparse_and_dense_updates(tmp_path):
    """CountSketch of two 'trained' models against the exact L2 distances: a dense update of every
    tensor, plus a sparse one (a few embedding rows, as a batch's tokens) that only one run
    makes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = {
        "embed.weight": rng.normal(size=(5000, 64)).astype(np.float32),
        "layer.weight": rng.normal(size=(256, 256)).astype(np.float32),
        "layer.bias": rng.normal(size=256).astype(np.float32),
        "scale": np.float32(rng.normal(size=())),
    }
    dense = {k: (rng.normal(size=np.shape(v)) * 1e-3).astype(np.float32) for k, v in base.items()}
    runs = {
        "base": base,
        "a": {k: v + dense[k] for k, v in base.items()},
        "b": {k: v + dense[k] for k, v in base.items()},
    }
    runs["b"]["embed.weight"] = runs["b"]["embed.weight"].copy()
    runs["b"]["embed.weight"][[3, 77, 4000]] += 0.05  # sparse: three rows
    runs["b"]["layer.weight"] = runs["b"]["layer.weight"] + np.float32(2e-4) * rng.normal(
        size=(256, 256)
    ).astype(np.float32)
    for name, tensors in runs.items():
        (tmp_path / name).mkdir()
        save_file(
            {k: np.asarray(v) for k, v in tensors.items()}, tmp_path / name / "model.safetensors"
        )
    exact = ev.weight_divergence(
        *(ev.weight_sketch(tmp_path / r, tmp_path / "base", size=None) for r in "ab")
    )
    flat = {
        r: np.concatenate([np.asarray(runs[r][k], np.float64).ravel() for k in sorted(base)])
        for r in runs
    }
    assert exact["l2"] == pytest.approx(np.linalg.norm(flat["a"] - flat["b"]), rel=1e-12)
    assert exact["update_b"] == pytest.approx(np.linalg.norm(flat["b"] - flat["base"]), rel=1e-12)
    assert exact["rel_weights"] == pytest.approx(exact["l2"] / np.linalg.norm(flat["b"]), rel=1e-12)
    for seed in (0, 1):
        paths = []
        for r in "ab":
            paths.append(tmp_path / f"{r}-{seed}.npz")
            ev.write_weight_sketch(
                tmp_path / r, tmp_path / "base", paths[-1], size=2**12, seed=seed
            )
        est = ev.weight_divergence(*paths)
        # 2^12 buckets: relative standard deviation of a squared norm <= sqrt(2 / 2^12) = 2.2%
        for key in ("l2", "update_a", "update_b", "rel_update"):
            assert est[key] == pytest.approx(exact[key], rel=0.05), (seed, key)
    with pytest.raises(ValueError, match="differ in 'seed'"):
        ev.weight_divergence(tmp_path / "a-0.npz", tmp_path / "b-1.npz")


def test_tables_flag_a_best_json_that_disagrees_with_dev_csv(tmp_path, caplog):
    qfiles, done = make_runs(tmp_path / "runs", "degenerate")
    best = done[0].parent / "best.json"
    info = json.loads(best.read_text())
    pd.DataFrame(
        {"step": [0, 10], "dev_pass1": [0.5, 0.4], "dev_questions": 4, "dev_samples": 8}
    ).to_csv(done[0].parent / "dev.csv", index=False)
    best.write_text(json.dumps({**info, "step": 10, "dev_pass1": 0.4}))
    assert (
        ev.main(
            [
                "tables",
                "--questions",
                *map(str, qfiles),
                "--runs",
                *map(str, done),
                "--out-dir",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    rows = pd.read_csv(tmp_path / "t" / "rl_best.csv")
    assert rows["agrees_with_dev_csv"].tolist() == [False, True]
    assert "best.json says step 10" in caplog.text


# ------------------------------------------------------------------------------------------------
# the notebooks
# ------------------------------------------------------------------------------------------------
NOTEBOOKS = [
    "rl_passk",
    "rl_passk_alt",
    "rl_loglik",
    "rl_loglik_tasks",
    "rl_training",
    "rl_hparams",
]
VARIANTS = ["rich", "degenerate"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every RL notebook on the tables of every variant: {(variant, notebook): (figures folder,
    None or the error)}; the tables are in the folder next to the figures."""
    root = tmp_path_factory.mktemp("rl_notebooks")
    return nbharness.execute_all(root, VARIANTS, NOTEBOOKS, lambda d, v: build_tables(d.parent, v))


def test_rl_notebooks_are_committed_clean():
    nbharness.assert_committed_clean(NOTEBOOKS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NOTEBOOKS)
@pytest.mark.model
def test_rl_notebook_draws_figure(executed, name, variant):
    out, error = executed[variant, name]
    nbharness.assert_figure(out, name, variant, error)


# what each figure plots (``<png stem>.plotted.json``) against the tables it was drawn from
def _figure(executed, variant: str, name: str) -> tuple[list[dict], Path]:
    out, error = executed[variant, name]
    assert error is None, f"{name} failed on the {variant} tables:\n{error}"
    return nbharness.plotted(out, name), out.parent / "tables"


def _titled(panels: list[dict], title: str) -> dict:
    hits = [p for p in panels if p["title"] == title]
    assert len(hits) == 1, (title, [p["title"] for p in panels])
    return hits[0]


def _labelled(p: dict) -> dict[str, dict]:
    """The panel's labelled lines (matplotlib names the unlabelled ones ``_child<N>``)."""
    return {ln["label"]: ln for ln in p["lines"] if not ln["label"].startswith("_")}


def _curves(p: dict) -> list[tuple]:
    """Every line of the panel as (x, y), NaN as None, in a canonical order."""
    return sorted((tuple(ln["x"]), tuple(ln["y"])) for ln in p["lines"])


def _as_curve(x, y) -> tuple:
    def clean(v):
        return tuple(None if not np.isfinite(f) else float(f) for f in np.asarray(v, dtype=float))

    return clean(x), clean(y)


def _tasks_of(table: pd.DataFrame) -> list[str]:
    from repexp import plots

    return plots.rl_tasks(table)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_passk_plots_the_mean_pass_at_k(executed, variant):
    """Each task's panel: one curve per method of the table, y = the table's mean per k."""
    from repexp import plots

    panels, tables = _figure(executed, variant, "rl_passk")
    passk = pd.read_csv(tables / "rl_passk.csv")
    tasks = _tasks_of(passk)
    assert [p["title"] for p in panels] == [plots.RL_TASK_LABELS.get(t, t) for t in tasks]
    for task in tasks:
        p = _titled(panels, plots.RL_TASK_LABELS.get(task, task))
        assert (p["xlabel"], p["ylabel"]) == ("k", "pass@k")
        d = passk[passk["task"] == task]
        lines = _labelled(p)
        assert set(lines) == {plots.RL_LABELS[m] for m in d["method"]}
        for m, g in d.groupby("method"):
            g = g.sort_values("k")
            ln = lines[plots.RL_LABELS[m]]
            assert ln["x"] == g["k"].astype(float).tolist()
            assert ln["y"] == pytest.approx(g["mean"].tolist(), abs=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_passk_alt_plots_pass_at_k_and_its_difference_to_the_base_model(executed, variant):
    from repexp import plots

    panels, tables = _figure(executed, variant, "rl_passk_alt")
    passk = pd.read_csv(tables / "rl_passk.csv")
    for task in _tasks_of(passk):
        label = plots.RL_TASK_LABELS.get(task, task)
        d = passk[passk["task"] == task]
        top = _labelled(_titled(panels, label))
        assert set(top) == {plots.RL_LABELS[m] for m in d["method"]}
        base = d[d["method"] == "base"].set_index("k")["mean"]
        bottom = _titled(panels, f"{label}: difference to the base model")
        diffs = _labelled(bottom)
        assert set(diffs) == {plots.RL_LABELS[m] for m in d["method"] if m != "base"}
        for m, g in d.groupby("method"):
            g = g.sort_values("k")
            assert top[plots.RL_LABELS[m]]["y"] == pytest.approx(g["mean"].tolist(), abs=1e-12)
            if m == "base":
                continue
            ln = diffs[plots.RL_LABELS[m]]
            assert ln["x"] == g["k"].astype(float).tolist()
            want = (g["mean"] - g["k"].map(base)).tolist()
            assert ln["y"] == pytest.approx(want, abs=1e-12)
        # the dashed zero line of the base model
        assert [ln["y"] for ln in bottom["lines"] if ln["label"].startswith("_")] == [[0.0, 0.0]]


def _assert_medians(p: dict, d: pd.DataFrame, column: str, methods) -> None:
    """A log-likelihood panel: one dashed median line per method with finite values."""
    want = sorted(
        float(np.median(v[np.isfinite(v)]))
        for m in methods
        for v in [d.loc[d["method"] == m, column].to_numpy(dtype=float)]
        if np.isfinite(v).any()
    )
    got = sorted(ln["x"][0] for ln in p["lines"])
    assert all(ln["x"][0] == ln["x"][1] for ln in p["lines"])  # vertical lines
    assert got == pytest.approx(want, abs=1e-9)


LOGLIK_METHODS = ["base", "grpo", "repexp"]  # the notebooks' default


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_loglik_plots_the_medians_of_the_table(executed, variant):
    from repexp import plots

    panels, tables = _figure(executed, variant, "rl_loglik")
    loglik = pd.read_parquet(tables / "rl_loglik.parquet")
    task = "math" if "math" in set(loglik["task"]) else _tasks_of(loglik)[0]
    label = plots.RL_TASK_LABELS.get(task, task)
    d = loglik[loglik["task"] == task]
    assert len(panels) == 2
    for column, title in (("loglik_sum", "sequence"), ("loglik_mean", "per-token")):
        p = _titled(panels, f"{label}: {title} log-likelihood")
        assert p["ylabel"] == "density"
        _assert_medians(p, d, column, LOGLIK_METHODS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_loglik_tasks_plots_the_medians_of_every_task(executed, variant):
    from repexp import plots

    panels, tables = _figure(executed, variant, "rl_loglik_tasks")
    loglik = pd.read_parquet(tables / "rl_loglik.parquet")
    tasks = _tasks_of(loglik)
    assert len(panels) == 2 * len(tasks)
    for task in tasks:
        label = plots.RL_TASK_LABELS.get(task, task)
        d = loglik[loglik["task"] == task]
        for column, title in (("loglik_sum", "sequence"), ("loglik_mean", "per-token")):
            _assert_medians(
                _titled(panels, f"{label}: {title} log-likelihood"), d, column, LOGLIK_METHODS
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_training_plots_the_dev_curves_rewards_and_diagnostics(executed, variant):
    """Per task: the dev curve of every run with its chosen checkpoint circled, the rewards
    (correct; RepExp's bonus), and the shaping diagnostics (rich runs only)."""
    from repexp import plots

    panels, tables = _figure(executed, variant, "rl_training")
    dev = pd.read_csv(tables / "rl_dev.csv")
    train = pd.read_csv(tables / "rl_train.csv")
    for task in _tasks_of(dev):
        label = plots.RL_TASK_LABELS.get(task, task)
        d, t = dev[dev["task"] == task], train[train["task"] == task]
        runs = [g.sort_values("step") for _, g in d.groupby(["method", "seed"])]
        p = _titled(panels, f"{label}: dev pass@1")
        assert _curves(p) == sorted(_as_curve(g["step"], g["dev_pass1"]) for g in runs)
        chosen = sorted(
            (x, y) for pts in p["points"] for x, y in zip(pts["x"], pts["y"], strict=True)
        )
        best = d[d["best"].astype(bool)]
        assert chosen == sorted(zip(best["step"].astype(float), best["dev_pass1"], strict=True))
        assert len(best) == len(runs)  # one chosen checkpoint per run
        want_r, want_g, want_s = [], [], []
        for (method, _seed), g in t.groupby(["method", "seed"]):
            g = g.groupby("step", as_index=False).mean(numeric_only=True)
            want_r.append(_as_curve(g["step"], g["reward_correct"]))
            if g["reward_bonus"].abs().sum() > 0:
                want_r.append(_as_curve(g["step"], g["reward_bonus"]))
            if "groups_all_correct" in g:
                want_g.append(_as_curve(g["step"], g["groups_all_correct"]))
                if method != "grpo":
                    want_g.append(_as_curve(g["step"], g["groups_reordered"]))
                want_s.append(_as_curve(g["step"], g["shaping_share"]))
        title = f"{label}: training reward (solid: correct; dotted: bonus)"
        assert _curves(_titled(panels, title)) == sorted(want_r)
        assert any(m == "repexp" for m in t["method"]) == (len(want_r) > len(runs))
        groups = _titled(panels, f"{label}: groups all correct (solid), reordered (dashed)")
        share = _titled(panels, f"{label}: shaping's share of mean |A|")
        assert _curves(groups) == sorted(want_g) and _curves(share) == sorted(want_s)
        assert bool(want_g) == (variant == "rich")  # the degenerate runs predate the diagnostics


def test_degenerate_notes_are_visible(executed):
    """One seed and a missing method are said on the figure, not silently dropped."""
    from repexp import plots

    out, error = executed["degenerate", "rl_passk"]
    assert error is None
    passk = pd.read_csv(out.parent / "tables" / "rl_passk.csv")
    note = plots.rl_method_notes(passk)
    assert "no Unlikeliness" in note and "one seed per method" in note
    nb = nbformat.read(out.parent / "rl_passk.ipynb", as_version=4)
    assert "plots.rl_method_notes(passk)" in "\n".join(
        c.source for c in nb.cells
    )  # the suptitle's note
