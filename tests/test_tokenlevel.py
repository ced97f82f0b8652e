"""Token-level RepExp (paper.md §2): the centred inverse, the candidate step on the key/value cache,
vanilla equivalence at β = 0, and the experiment's tables, against direct computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from repexp import tokenlevel as tl
from repexp.models import load_model, load_tokenizer
from repexp.pools import prompt_ids_of


# ------------------------------------------------------------------------------------------------
# Proposition B.2
# ------------------------------------------------------------------------------------------------
def direct_centred_inverse(states: np.ndarray, lam: float) -> np.ndarray:
    c = states - states.mean(0)
    return np.linalg.inv(lam * np.eye(states.shape[1]) + c.T @ c)


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("seed", range(5))
def test_incremental_centred_inverse_equals_the_direct_inverse(seed):
    rng = np.random.default_rng(seed)
    d, lam = int(rng.integers(4, 24)), 0.1
    offset = rng.normal(0, 3, d)  # hidden states are far from centred
    inv = tl.CentredInverse(d, lam)
    seen = []
    for _ in range(int(rng.integers(2, 7))):
        resp = offset + rng.normal(0, 1, (int(rng.integers(1, 40)), d))  # responses of random lengths
        inv.add(torch.from_numpy(resp))
        seen.append(resp)
        all_states = np.concatenate(seen)
        assert rel(inv.inverse().numpy(), direct_centred_inverse(all_states, lam)) <= 1e-8
        np.testing.assert_allclose(inv.mean.numpy(), all_states.mean(0), rtol=1e-12, atol=1e-12)
        # the bonus is the square root of the quadratic form in the centred inverse
        h = offset + rng.normal(0, 1, (5, d))
        c = h - all_states.mean(0)
        want = np.sqrt(np.einsum("ij,jk,ik->i", c, direct_centred_inverse(all_states, lam), c))
        assert rel(inv.bonus(torch.from_numpy(h)).numpy(), want) <= 1e-8


def test_empty_inverse_is_identity_over_lambda_and_bad_states_fail():
    inv = tl.CentredInverse(3, 0.1)
    np.testing.assert_allclose(inv.inverse().numpy(), np.eye(3) * 10.0)
    np.testing.assert_allclose(inv.bonus(torch.tensor([[3.0, 4.0, 0.0]])).numpy(), [np.sqrt(10.0) * 5.0])
    with pytest.raises(ValueError, match="NaN/Inf"):
        inv.add(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        inv.add(torch.ones(2, 4))
    with pytest.raises(ValueError, match="lam"):
        tl.CentredInverse(3, 0.0)


# ------------------------------------------------------------------------------------------------
# decoding on the tiny model
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tiny):
    model = load_model(tiny, dtype="float32")
    tok = load_tokenizer(tiny)
    prompt = prompt_ids_of(tok, [{"role": "user", "content": "What is 2 + 3?"}])
    return model, tok, prompt


def decoder(model, tok, **kw):
    return tl.Decoder(model, tl.eos_ids_of(model, tok), tl.Settings(**{"max_new_tokens": 12, **kw}))


def test_candidate_states_on_the_cache_equal_a_full_forward(tiny_lm):
    from transformers import DynamicCache

    model, tok, prompt = tiny_lm
    dec = decoder(model, tok, candidate_batch=3)  # 7 candidates: three batches
    cands = torch.tensor([11, 5, 90000, 42, 7, 151000, 3])
    cache = DynamicCache()
    with torch.inference_mode():
        dec._forward(torch.tensor([prompt]), cache)
        states, keys, values = dec.candidate_states(cache, len(prompt), cands)
        assert cache.get_seq_length() == len(prompt)  # the cache holds the prefix only
        for j, c in enumerate(cands.tolist()):
            ref = model.base_model(input_ids=torch.tensor([prompt + [c]])).last_hidden_state[0, -1]
            assert torch.allclose(states[j], ref, atol=1e-5, rtol=0), j
        # appending a chosen candidate leaves the cache of prefix + candidate: the next token's
        # state on it equals the full forward of prefix + candidate + token
        dec._append_candidate(cache, keys, values, 4)
        nxt = dec._forward(torch.tensor([[17]]), cache)[0, -1]
        ref = model.base_model(input_ids=torch.tensor([prompt + [7, 17]])).last_hidden_state[0, -1]
        assert torch.allclose(nxt, ref, atol=1e-5, rtol=0)


def test_vanilla_loop_equals_transformers_generate_under_the_same_seed(tiny_lm):
    from transformers import GenerationConfig

    model, tok, prompt = tiny_lm
    dec = decoder(model, tok, max_new_tokens=16)
    ours = dec.generate(prompt, generator=tl.make_generator("cpu", 5))["response_ids"]
    torch.manual_seed(5)
    cfg = GenerationConfig(do_sample=True, top_k=128, top_p=0.95, temperature=1.0, max_new_tokens=16,
                           eos_token_id=tl.eos_ids_of(model, tok), pad_token_id=tok.pad_token_id)
    ids = torch.tensor([prompt])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[0, len(prompt):]
    assert ours == ref.tolist()[: len(ours)] and len(ours) == 16


def test_beta_zero_reproduces_vanilla_token_for_token(tiny_lm):
    model, tok, prompt = tiny_lm
    dec = decoder(model, tok, candidate_batch=50)
    never = lambda text: False  # noqa: E731
    vanilla = tl.explore(dec, tok, prompt, never, k_max=4, beta=None, seed=11)
    zero = tl.explore(dec, tok, prompt, never, k_max=4, beta=0.0, seed=11)
    assert [r["response_ids"] for r in zero] == [r["response_ids"] for r in vanilla]
    assert np.isnan(zero[0]["mean_candidates"]) and zero[1]["mean_candidates"] > 1  # the bonus path ran
    bonus = tl.explore(dec, tok, prompt, never, k_max=4, beta=1.0, seed=11)
    assert bonus[0]["response_ids"] == vanilla[0]["response_ids"]  # response 1: plain sampling
    assert [r["response_ids"] for r in bonus[1:]] != [r["response_ids"] for r in vanilla[1:]]
    assert all(r["mean_bonus"] > 0 for r in bonus[1:])


def test_token_states_are_the_response_positions_of_a_full_forward(tiny_lm):
    model, tok, prompt = tiny_lm
    dec = decoder(model, tok, max_new_tokens=9)
    for inverse in (None, tl.CentredInverse(model.config.hidden_size, 0.1)):
        if inverse is not None:
            inverse.add(torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0)))
        out = dec.generate(prompt, generator=tl.make_generator("cpu", 2), inverse=inverse, beta=0.5,
                           need_states=True)
        resp = out["response_ids"]
        full = model.base_model(input_ids=torch.tensor([prompt + resp])).last_hidden_state[0, len(prompt):]
        assert out["states"].shape == (len(resp), model.config.hidden_size)
        assert torch.allclose(out["states"], full, atol=1e-5, rtol=0)


def test_explore_stops_at_the_first_correct_response(tiny_lm):
    model, tok, prompt = tiny_lm
    dec = decoder(model, tok, max_new_tokens=4)
    calls = []

    def third_is_correct(text):
        calls.append(text)
        return len(calls) == 3

    rows = tl.explore(dec, tok, prompt, third_is_correct, k_max=6, beta=1.0, seed=0)
    assert [r["response"] for r in rows] == [1, 2, 3] and [r["correct"] for r in rows] == [False, False, True]
    batched = tl.explore_vanilla_batched(model, tok, prompt, lambda t: False, k_max=5,
                                         settings=tl.Settings(max_new_tokens=4), seed=0, batch_size=2)
    assert [r["response"] for r in batched] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------------
# the experiment's tables
# ------------------------------------------------------------------------------------------------
def test_hardest_solvable_orders_by_reference_pass1_and_drops_unsolved():
    scores = pd.DataFrame({"qid": ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4,
                           "sample": list(range(4)) * 4,
                           "correct": [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]})
    q = tl.hardest_solvable(scores, 2)
    assert q["qid"].tolist() == ["c", "d"] and q["rank"].tolist() == [0, 1]
    assert q["ref_pass1"].tolist() == [0.25, 0.25] and q["ref_n"].tolist() == [4, 4]
    assert tl.hardest_solvable(scores, 10)["qid"].tolist() == ["c", "d", "a"]


def test_shards_cover_every_run_once():
    runs = [r for s in range(tl.run_shards(5, 3, 4)) for r in tl.shard_runs(5, 3, 4, s)]
    assert sorted(runs) == [(q, s) for q in range(5) for s in range(3)]
    assert tl.run_shards(5, 3, 4) == 4
    with pytest.raises(ValueError, match="out of range"):
        tl.shard_runs(5, 3, 4, 4)


def runs_fixture() -> pd.DataFrame:
    """Two questions x two seeds; vanilla solves q1 at 3 (seed 0) and never (seed 1), q2 at 1 and
    2; beta1 solves q1 at 1 and 2, q2 never and at 4. k_max = 4."""
    rows = []
    plan = {("vanilla", np.nan): {("q1", 0): 3, ("q1", 1): None, ("q2", 0): 1, ("q2", 1): 2},
            ("beta1", 1.0): {("q1", 0): 1, ("q1", 1): 2, ("q2", 0): None, ("q2", 1): 4}}
    for (method, beta), runs in plan.items():
        for (qid, s), at in runs.items():
            for i in range(1, (at or 4) + 1):
                rows.append({"qid": qid, "rank": int(qid[1]) - 1, "seed_index": s, "method": method, "beta": beta,
                             "response": i, "correct": at == i})
    return pd.DataFrame(rows)


def test_pass_at_k_and_difficulty_tables_by_hand():
    per_run = tl.solved_at(runs_fixture())
    van = per_run[per_run["method"] == "vanilla"].set_index(["qid", "seed_index"])
    assert van.loc[("q1", 0), "solved_at"] == 3 and np.isnan(van.loc[("q1", 1), "solved_at"])
    assert van.loc[("q1", 1), "generations"] == 4
    passk = tl.passk_table(per_run, 4).set_index(["method", "k"])
    # vanilla: q1 solved-within-k = [0, 0, .5, .5], q2 = [.5, 1, 1, 1] -> mean [.25, .5, .75, .75]
    np.testing.assert_allclose(passk.loc["vanilla", "pass_at_k"], [0.25, 0.5, 0.75, 0.75])
    # beta1: q1 = [.5, 1, 1, 1], q2 = [0, 0, 0, .5] -> [.25, .5, .5, .75]
    np.testing.assert_allclose(passk.loc["beta1", "pass_at_k"], [0.25, 0.5, 0.5, 0.75])
    # SE over the two questions at k = 1: std([.5, 0], ddof=1)/sqrt(2) = 0.25
    assert passk.loc[("beta1", 1), "se"] == pytest.approx(0.25)
    questions = pd.DataFrame({"qid": ["q1", "q2"], "ref_pass1": [0.1, 0.3]})
    diff = tl.difficulty_table(per_run, questions, k=2, bins=2).set_index(["method", "bin"])
    # within 2 generations: vanilla q1 0, q2 1; beta1 q1 1, q2 0 -> bin 1 (q1, hardest): +1; bin 2: -1
    assert diff.loc[("beta1", 1), "improvement"] == 1.0 and diff.loc[("beta1", 2), "improvement"] == -1.0
    assert diff.loc[("vanilla", 1), "solve_rate"] == 0.0 and diff.loc[("beta1", 1), "ref_pass1_max"] == 0.1
    assert tl.difficulty_table(per_run.iloc[:0], questions, k=2, bins=2).empty


def test_run_and_summarize_commands_on_the_tiny_model(tiny, tmp_path):
    msgs = [[{"role": "user", "content": f"What is {i} + {i}? End with #### and the number."}] for i in range(3)]
    table = pd.DataFrame({"qid": [f"q{i}" for i in range(3)], "prompt": [json.dumps(m) for m in msgs],
                          "answer": [str(2 * i) for i in range(3)], "task": "gsm8k"})
    table.to_parquet(tmp_path / "test.parquet")
    pd.DataFrame({"rank": [0, 1], "qid": ["q2", "q0"], "ref_n": [8, 8], "ref_correct": [1, 2],
                  "ref_pass1": [0.125, 0.25]}).to_parquet(tmp_path / "questions.parquet")
    common = ["--model", str(tiny), "--model-name", "tiny", "--tasks", str(tmp_path / "test.parquet"),
              "--questions", str(tmp_path / "questions.parquet"), "--n-questions", "3", "--seeds", "2",
              "--runs-per-shard", "4", "--k-max", "2", "--max-new-tokens", "5", "--dtype", "float32",
              "--task", "gsm8k", "--threads", "1"]
    outs = []
    for method, beta in (("vanilla", "none"), ("beta0.5", "0.5")):
        for shard in (0, 1):
            out = tmp_path / f"{method}-{shard}.parquet"
            assert tl.main(["run", *common, "--method", method, "--beta", beta, "--shard", str(shard),
                            "--out", str(out)]) == 0
            outs.append(out)
    first = pd.read_parquet(outs[0])
    # shard 0 = runs (q rank 0..2, seed 0) + (rank 0, seed 1); rank 2 does not exist (2 questions)
    assert sorted(set(zip(first["rank"], first["seed_index"], strict=True))) == [(0, 0), (0, 1), (1, 0)]
    assert (first.groupby(["qid", "seed_index"])["response"].max() == 2).all()  # never correct: k_max each
    assert set(pd.read_parquet(outs[2])["method"]) == {"beta0.5"}
    tables = {k: tmp_path / f"{k}.csv" for k in ("passk", "difficulty", "runs")}
    assert tl.main(["summarize", "--runs", *map(str, outs), "--questions", str(tmp_path / "questions.parquet"),
                    "--model-name", "tiny", "--task", "gsm8k", "--k-max", "2", "--difficulty-bins", "2",
                    "--out-passk", str(tables["passk"]), "--out-difficulty", str(tables["difficulty"]),
                    "--out-runs", str(tables["runs"])]) == 0
    passk = pd.read_csv(tables["passk"])
    assert set(passk["method"]) == {"vanilla", "beta0.5"} and (passk["pass_at_k"] == 0).all()
    assert (passk["runs"] == 4).all() and (passk["questions"] == 2).all()
    with pytest.raises(SystemExit, match="does not match"):
        tl.main(["run", *common, "--method", "beta1", "--beta", "0.5", "--shard", "0", "--out", str(tmp_path / "x")])
