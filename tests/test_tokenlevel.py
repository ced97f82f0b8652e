"""Token-level RepExp (paper.md §2): the settings, the candidate step on the key/value cache,
vanilla equivalence at β = 0, and the experiment's tables, against direct computations (the
centred inverse: tests/test_elliptical.py)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from repexp import tokenlevel as tl
from repexp.models import load_model, load_tokenizer
from repexp.pools import prompt_ids_of


# ------------------------------------------------------------------------------------------------
# the settings: one dataclass, the schema's defaults
# ------------------------------------------------------------------------------------------------
def test_settings_are_the_schema_section_with_its_defaults():
    import dataclasses
    from pathlib import Path

    import yaml

    from repexp import jobs

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    section = yaml.safe_load(schema.read_text())["properties"]["token_level"]["properties"]
    fields = {f.name for f in dataclasses.fields(tl.Settings)}
    # every key of the section is a field or a grid key (which jobs exist), never both
    assert fields | set(tl.GRID_KEYS) == set(section) and not fields & set(tl.GRID_KEYS)
    assert tl.Settings().to_dict() == {k: section[k]["default"] for k in fields}
    assert tl.Settings(lam=0.5, top_k=7).to_dict() == {
        **{k: section[k]["default"] for k in fields},
        "lam": 0.5,
        "top_k": 7,
    }
    # the rules' --settings: the validated section without the grid keys, every field from it
    tl_config = jobs.load_config(["config/test.yaml"])["token_level"]
    job = json.loads(tl.settings_json(tl_config))
    assert set(job) == fields
    assert tl.Settings.from_dict(job).to_dict() == {k: tl_config[k] for k in fields}
    assert tl.Settings.from_dict(tl_config) == tl.Settings.from_dict(job)  # grid keys ignored
    with pytest.raises(ValueError, match=r"unknown token_level settings \['lamda'\]"):
        tl.Settings.from_dict({"lamda": 0.1})
    with pytest.raises(ValueError, match="top_p"):
        tl.Settings(top_p=0.0)


# ------------------------------------------------------------------------------------------------
# decoding on the tiny model
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tiny_lm):
    """The tiny model, its tokenizer and one chat prompt."""
    model, tok = tiny_lm
    return model, tok, prompt_ids_of(tok, [{"role": "user", "content": "What is 2 + 3?"}])


def decoder(model, tok, **kw):
    return tl.Decoder(model, tl.eos_ids_of(model, tok), tl.Settings(**{"max_new_tokens": 12, **kw}))


def test_end_of_sequence_helpers(lm):
    """repexp.models' helpers, shared with the pools: every end id of the model and tokenizer, and
    a row cut after its first one."""
    from repexp.models import cut_at_eos, pad_id_of

    model, tok, _ = lm
    eos = model.generation_config.eos_token_id
    want = sorted({*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None})
    assert tl.eos_ids_of(model, tok) == want
    assert pad_id_of(tok, want) == tok.pad_token_id
    end = want[0]
    assert cut_at_eos([4, 5, end, 6, end], want) == ([4, 5, end], "stop")
    assert cut_at_eos([end], want) == ([end], "stop")
    assert (
        cut_at_eos([4, 5, 6], want) == ([4, 5, 6], "length") and cut_at_eos([], want)[1] == "length"
    )

    class NoPad:
        pad_token_id = None

    assert pad_id_of(NoPad(), [3, 7]) == 3  # the first (smallest) end id


def test_doctests_of_the_batched_engine_and_the_run_states():
    import doctest

    from repexp.tokenlevel import batch, state

    for module in (batch, state):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_candidate_states_on_the_cache_equal_a_full_forward(lm):
    from transformers import DynamicCache

    model, tok, prompt = lm
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


def test_vanilla_loop_equals_transformers_generate_under_the_same_seed(lm):
    from transformers import GenerationConfig

    model, tok, prompt = lm
    dec = decoder(model, tok, max_new_tokens=16)
    ours = dec.generate(prompt, generator=tl.make_generator("cpu", 5))["response_ids"]
    torch.manual_seed(5)
    cfg = GenerationConfig(
        do_sample=True,
        top_k=128,
        top_p=0.95,
        temperature=1.0,
        max_new_tokens=16,
        eos_token_id=tl.eos_ids_of(model, tok),
        pad_token_id=tok.pad_token_id,
    )
    ids = torch.tensor([prompt])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[
        0, len(prompt) :
    ]
    assert ours == ref.tolist()[: len(ours)] and len(ours) == 16


def test_beta_zero_reproduces_vanilla_token_for_token(lm):
    model, tok, prompt = lm
    dec = decoder(model, tok, candidate_batch=50)
    never = lambda text: False  # noqa: E731
    vanilla = tl.explore(dec, tok, prompt, never, k_max=4, beta=None, seed=11)
    zero = tl.explore(dec, tok, prompt, never, k_max=4, beta=0.0, seed=11)
    assert [r["response_ids"] for r in zero] == [r["response_ids"] for r in vanilla]
    assert (
        np.isnan(zero[0]["mean_candidates"]) and zero[1]["mean_candidates"] > 1
    )  # the bonus path ran
    bonus = tl.explore(dec, tok, prompt, never, k_max=4, beta=1.0, seed=11)
    assert bonus[0]["response_ids"] == vanilla[0]["response_ids"]  # response 1: plain sampling
    assert [r["response_ids"] for r in bonus[1:]] != [r["response_ids"] for r in vanilla[1:]]
    assert all(r["mean_bonus"] > 0 for r in bonus[1:])


def test_token_states_are_the_response_positions_of_a_full_forward(lm):
    model, tok, prompt = lm
    dec = decoder(model, tok, max_new_tokens=9)
    for inverse in (None, tl.CentredInverse(model.config.hidden_size, 0.1)):
        if inverse is not None:
            inverse.add(
                torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
            )
        out = dec.generate(
            prompt,
            generator=tl.make_generator("cpu", 2),
            inverse=inverse,
            beta=0.5,
            need_states=True,
        )
        resp = out["response_ids"]
        full = model.base_model(input_ids=torch.tensor([prompt + resp])).last_hidden_state[
            0, len(prompt) :
        ]
        assert out["states"].shape == (len(resp), model.config.hidden_size)
        assert torch.allclose(out["states"], full, atol=1e-5, rtol=0)


def test_explore_stops_at_the_first_correct_response(lm):
    model, tok, prompt = lm
    dec = decoder(model, tok, max_new_tokens=4)
    calls = []

    def third_is_correct(text):
        calls.append(text)
        return len(calls) == 3

    rows = tl.explore(dec, tok, prompt, third_is_correct, k_max=6, beta=1.0, seed=0)
    assert [r["response"] for r in rows] == [1, 2, 3] and [r["correct"] for r in rows] == [
        False,
        False,
        True,
    ]
    batched = tl.explore_vanilla_batched(
        model,
        tok,
        prompt,
        lambda t: False,
        k_max=5,
        settings=tl.Settings(max_new_tokens=4),
        seed=0,
        batch_size=2,
    )
    assert [r["response"] for r in batched] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------------
# the batched engine (repexp.tokenlevel.batch): the same runs as the sequential engine
# ------------------------------------------------------------------------------------------------
def crc_check(text: str) -> bool:
    """A verdict that is a fixed function of the text: about one response in three is correct."""
    return zlib.crc32(text.encode()) % 3 == 0


@pytest.fixture(scope="module")
def varied(lm):
    """A decoder whose responses end at different lengths (5% of the vocabulary counts as an end
    of sequence) and eight runs with prompts of different lengths, vanilla, beta 0, 0.5 and 1,
    with the sequential engine's rows (candidates come in batches of 50: up to three per step)."""
    model, tok, _ = lm
    rng = np.random.default_rng(0)
    eos = set(tl.eos_ids_of(model, tok)) | set(
        rng.choice(model.config.vocab_size, 7500, replace=False).tolist()
    )
    dec = tl.Decoder(model, sorted(eos), tl.Settings(max_new_tokens=8, candidate_batch=50))
    specs = []
    for i in range(8):
        msg = [{"role": "user", "content": f"What is {i} + {2 * i}?" + " Explain." * (3 * i)}]
        specs.append((prompt_ids_of(tok, msg), 100 + i, [None, 0.0, 0.5, 1.0][i % 4]))
    sequential = [tl.explore(dec, tok, p, crc_check, k_max=4, beta=b, seed=s) for p, s, b in specs]
    return dec, tok, specs, sequential


SAME = ["response", "response_ids", "n_tokens", "finish_reason", "correct", "text"]


def assert_same_rows(batched: list[dict], sequential: list[dict]):
    assert [{k: r[k] for k in SAME} for r in batched] == [
        {k: r[k] for k in SAME} for r in sequential
    ]
    np.testing.assert_array_equal(
        [r["mean_candidates"] for r in batched], [r["mean_candidates"] for r in sequential]
    )  # NaN: plain responses
    np.testing.assert_allclose(
        [r["mean_bonus"] for r in batched], [r["mean_bonus"] for r in sequential], rtol=1e-5
    )  # float32 rounding of other matrix shapes


@pytest.mark.parametrize("attention", ["per_slot", "padded"])
@pytest.mark.parametrize("slots", [1, 3, 8])
def test_batched_engine_equals_the_sequential_engine(varied, slots, attention):
    dec, tok, specs, sequential = varied
    # the scenario: runs end after 1 to 4 responses, responses end at different steps
    assert len({len(rows) for rows in sequential}) >= 3
    assert len({r["n_tokens"] for rows in sequential for r in rows}) >= 4
    assert any(r["correct"] for rows in sequential for r in rows)
    assert np.nanmax([r["mean_candidates"] for rows in sequential for r in rows]) > 100  # 3 batches
    runs = [tl.Run(p, crc_check, seed=s, beta=b) for p, s, b in specs]
    engine = tl.BatchedExplorer(dec, tok, slots, attention=attention)
    engine.explore(runs, k_max=4)
    for run, rows in zip(runs, sequential, strict=True):
        assert_same_rows(run.rows, rows)
        assert run.finished and run.next_response == len(rows) + 1
    assert engine.tokens == sum(r["n_tokens"] for rows in sequential for r in rows)


def test_runs_split_into_parts_continue_exactly(varied, tmp_path):
    """Responses 1, 2-3, 4 in three calls with the state saved to a file and restored between them
    (a job per part) give the sequential runs; finished runs keep no state."""
    dec, tok, specs, sequential = varied
    hidden = dec.model.config.hidden_size
    states = None
    done = {i: [] for i in range(len(specs))}
    for part, until in enumerate([1, 3, 4]):
        runs = {i: tl.Run(p, crc_check, seed=s, beta=b) for i, (p, s, b) in enumerate(specs)}
        if states is not None:
            for i, run in runs.items():
                tl.restore_run(
                    run, states[i], device=dec.device, hidden=hidden, lam=dec.settings.lam
                )
        tl.BatchedExplorer(dec, tok, 3).explore(list(runs.values()), k_max=4, until=until)
        for i, run in runs.items():
            assert all(r["response"] <= until for r in run.rows)
            done[i] += run.rows
        tl.save_runs(runs, tmp_path / f"part-{part}.pt")
        states = tl.load_states(tmp_path / f"part-{part}.pt")
    for i, rows in enumerate(sequential):
        assert_same_rows(done[i], rows)
        assert states[i] == {"next_response": len(rows) + 1, "finished": True}
    with pytest.raises(ValueError, match="part 3 is empty"):
        tl.part_range(3, 2, 6)
    assert tl.part_range(2, 2, 5) == (5, 5)


def test_slot_attention_leaves_other_forwards_unchanged(tiny):
    """After the switch to the batched engine's attention, a plain forward of the model (the
    sequential engine, generate) is bit for bit the same."""
    model = load_model(tiny, dtype="float32")
    ids = torch.tensor([[5, 17, 300, 42, 9, 1000]])
    mask = torch.zeros(1, 1, 2, 6)
    mask[0, 0, 0, 5] = torch.finfo(torch.float32).min
    with torch.inference_mode():
        before = [
            model(input_ids=ids).logits,
            model.base_model(input_ids=ids[:, :2], attention_mask=mask[..., :2]).last_hidden_state,
        ]
        name = tl.use_slot_attention(model)
        after = [
            model(input_ids=ids).logits,
            model.base_model(input_ids=ids[:, :2], attention_mask=mask[..., :2]).last_hidden_state,
        ]
    assert name == "repexp_slots_sdpa" and tl.use_slot_attention(model) == name
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_slot_memory_by_hand():
    # Qwen2.5-7B: hidden 3,584, 28 layers, 4 key/value heads of 128, bf16; 776 positions
    inverses = 2 * 8 * 3584**2  # Σ̃⁻¹ and Σ⁻¹, float64
    kv = 776 * 28 * 2 * 4 * 128 * 2  # keys and values of every layer
    assert tl.slot_bytes(3584, 28, 4, 128, 776) == inverses + kv == 250_019_840


# ------------------------------------------------------------------------------------------------
# the job model of the batched engine (repexp.jobs)
# ------------------------------------------------------------------------------------------------
@pytest.mark.workflow
def test_paper_token_level_jobs_by_hand():
    """Qwen2.5-7B (7.62B parameters) on MATH (450 tokens), 64 slots, hf_step_s 0.03, 1 ms per slot,
    64 candidates per bonus step at 400 TFLOP/s, 4 h per job with 10 min of start-up."""
    from repexp import jobs

    cfg = jobs.load_config(["config/paper.yaml"])
    per_token = 2 * 7.62e9 / 400e12
    bonus, plain = 0.03 + 64 * (0.001 + 64 * per_token), 0.03 + 64 * (0.001 + per_token)
    assert jobs.token_level_step_s(cfg, True, 64) == pytest.approx(bonus)
    assert jobs.token_level_step_s(cfg, False, 64) == pytest.approx(plain)
    # responses per job: floor((4 h - 10 min) / (450 x step)), then even parts of 1,024
    fit_bonus = int((4 - 1 / 6) * 3600 / (450 * bonus))  # 122
    fit_plain = int((4 - 1 / 6) * 3600 / (450 * plain))  # 317.99
    assert (fit_bonus, fit_plain) == (122, 317)
    assert (
        jobs.token_level_parts(cfg, "beta1") == 9
        and jobs.token_level_responses_per_job(cfg, "beta1") == 114
    )
    assert (
        jobs.token_level_parts(cfg, "vanilla") == 4
        and jobs.token_level_responses_per_job(cfg, "vanilla") == 256
    )
    tl_jobs = [j for j in jobs.jobs_of(cfg) if j.rule == "token_level_run"]
    assert len(tl_jobs) == 16 * (4 + 9 + 9)  # 1,000 runs per method in shards of 64
    assert max(j.hours for j in tl_jobs) <= 4.0
    # the shortest: a vanilla part (256 responses) of the last shard, 40 runs on 40 slots
    last = 0.03 + 40 * (0.001 + per_token)
    assert min(j.hours for j in tl_jobs) == pytest.approx(1 / 6 + 256 * 450 * last / 3600)
    # the sequential engine's estimate (one run per job; a bonus token 2 x 0.03 s, vanilla
    # generate() in batches of 64): 2,000 x 7.85 h + 1,000 x 0.23 h = 15,920 GPU-hours
    sequential = 2000 * (1 / 6 + 1024 * 450 * 0.06 / 3600) + 1000 * (
        1 / 6 + 1024 * 450 * 0.03 / 64 / 3600
    )
    assert round(sequential) == 15920
    assert sum(j.hours for j in tl_jobs) * 10 <= sequential
    assert "**warning**" not in jobs.token_level_note(
        cfg, tl_jobs, [], jobs.RuntimeModel.from_config(cfg)
    )


def test_part_files_name_the_chain():
    from repexp import jobs

    cfg = jobs.load_config(["config/test.yaml"])
    cfg["token_level"].update(k_max=5, responses_per_job=2)  # parts: responses 1-2, 3-4, 5
    base = "results/token_level/m/t/beta1/shard-4"
    first = jobs.token_level_part_files(cfg, "m", "t", "beta1", "4.part-0")
    assert (first["shard"], first["part"], first["state"], first["rows"], first["cli"]) == (
        4,
        0,
        None,
        [],
        "",
    )
    second = jobs.token_level_part_files(cfg, "m", "t", "beta1", "4.part-1")
    assert second["state"] == f"{base}.part-0.state.pt" and second["rows"] == []
    last = jobs.token_level_part_files(cfg, "m", "t", "beta1", "4")
    assert last["part"] == 2 and last["state"] == f"{base}.part-1.state.pt"
    assert last["rows"] == [f"{base}.part-0.parquet", f"{base}.part-1.parquet"]
    assert (
        last["cli"] == f"--state-in {base}.part-1.state.pt "
        f"--rows-in {base}.part-0.parquet {base}.part-1.parquet"
    )
    for bad in ("4.part-2", "4.part-x", "x"):
        with pytest.raises(ValueError, match="no token-level job"):
            jobs.token_level_part_files(cfg, "m", "t", "beta1", bad)
    cfg["token_level"]["responses_per_job"] = (
        None  # sized by the runtime model, which lacks tiny-random
    )
    with pytest.raises(
        jobs.JobModelError, match=r"token_level\.responses_per_job .*params_b\.tiny-random"
    ):
        jobs.token_level_parts(cfg, "beta1")
    cfg["token_level"]["responses_per_job"] = 2
    cfg["token_level"]["vanilla_batch_size"] = 4  # transformers generate(): whole runs
    assert jobs.token_level_parts(cfg, "vanilla") == 1 and jobs.token_level_parts(cfg, "beta1") == 3


# ------------------------------------------------------------------------------------------------
# the experiment's tables
# ------------------------------------------------------------------------------------------------
def test_hardest_solvable_orders_by_reference_pass1_and_drops_unsolved():
    scores = pd.DataFrame(
        {
            "qid": ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4,
            "sample": list(range(4)) * 4,
            "correct": [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        }
    )
    q = tl.hardest_solvable(scores, 2)
    assert q["qid"].tolist() == ["c", "d"] and q["rank"].tolist() == [0, 1]
    assert q["ref_pass1"].tolist() == [0.25, 0.25] and q["ref_n"].tolist() == [4, 4]
    assert tl.hardest_solvable(scores, 10)["qid"].tolist() == ["c", "d", "a"]


def reference_scores() -> pd.DataFrame:
    """Five questions, pools of 8 (d: 3) responses: a and e 1/8 correct, b 2/8, c 4/8, d 1/3;
    rows in shard order (reversed samples), as a concatenation of shards may give them."""
    plan = {"a": (8, [0]), "b": (8, [0, 1]), "c": (8, [0, 1, 2, 3]), "d": (3, [0]), "e": (8, [7])}
    rows = [
        {"qid": q, "sample": s, "correct": float(s in hit)}
        for q, (n, hit) in plan.items()
        for s in reversed(range(n))
    ]
    return pd.DataFrame(rows)


def brute_force_hardest(
    scores: pd.DataFrame, n_questions: int, samples: int, seed: int
) -> list[tuple]:
    """The documented rule, question by question in plain Python: the responses in sample order,
    a draw of `samples` of them (all if fewer) from the question's own generator, then the
    solvable questions sorted by (pass@1, qid)."""
    from repexp.pools import question_seed

    found = []
    for qid in sorted(set(scores["qid"])):
        mine = scores.loc[scores["qid"] == qid, ["sample", "correct"]].to_numpy()
        rows = sorted((int(s), float(c)) for s, c in mine)
        if len(rows) > samples:
            rng = np.random.default_rng(question_seed(seed, "reference-subsample", qid))
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=samples, replace=False))]
        c = sum(1 for _, ok in rows if ok > 0)
        if c:
            found.append((c / len(rows), qid, len(rows), c))
    return sorted(found)[:n_questions]


def test_reference_subsample_changes_the_ranking_and_equals_brute_force():
    scores = reference_scores()
    full = tl.hardest_solvable(scores, 10)
    assert full["qid"].tolist() == ["a", "e", "b", "d", "c"]  # 1/8, 1/8, 2/8, 1/3, 4/8
    sub = tl.hardest_solvable(scores, 10, samples=4, seed=0)
    # seed 0 keeps neither a's nor e's one correct response, and no correct one of c's four
    assert sub["qid"].tolist() == ["b", "d"] and sub["ref_n"].tolist() == [4, 3]
    assert sub["pool_n"].tolist() == [8, 3] and sub["pool_correct"].tolist() == [2, 1]
    for seed in range(6):
        for n_q in (2, 10):
            got = tl.hardest_solvable(scores, n_q, samples=4, seed=seed)
            want = brute_force_hardest(scores, n_q, 4, seed)
            cols = ["ref_pass1", "qid", "ref_n", "ref_correct"]
            assert list(got[cols].itertuples(index=False, name=None)) == want
            assert got["rank"].tolist() == list(range(len(want)))
    # a subsample at least as large as every pool is the pool; the row order never matters
    pd.testing.assert_frame_equal(tl.hardest_solvable(scores, 10, samples=8, seed=3), full)
    shuffled = scores.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(tl.hardest_solvable(shuffled, 10, samples=4, seed=0), sub)


def test_questions_cli_subsamples_with_the_master_seed(tmp_path):
    scores = reference_scores()
    shards = [tmp_path / "shard-0.scores.parquet", tmp_path / "shard-1.scores.parquet"]
    scores.iloc[:24].to_parquet(shards[0])  # questions a, b, c
    scores.iloc[24:].to_parquet(shards[1])  # d, e
    out = tmp_path / "questions.parquet"
    args = ["questions", "--scores", *map(str, shards), "--out", str(out)]
    sub4 = json.dumps({"n_questions": 3, "reference_samples": 4})
    assert tl.main([*args, "--settings", sub4, "--seed", "0"]) == 0
    want = tl.hardest_solvable(scores, 3, samples=4, seed=0)
    pd.testing.assert_frame_equal(pd.read_parquet(out), want)
    whole = json.dumps({"n_questions": 3, "reference_samples": None})  # null: the whole pool
    assert tl.main([*args, "--settings", whole]) == 0
    assert pd.read_parquet(out)["qid"].tolist() == ["a", "e", "b"]
    with pytest.raises(SystemExit, match="several score shards"):
        tl.main(["questions", "--scores", *map(str, shards[:1] * 2), "--out", str(out)])


def test_reference_subsample_is_uniform_without_replacement():
    """Each response of a 10-response pool is in a 4-subsample with probability 0.4 over seeds."""
    scores = pd.DataFrame({"qid": "q", "sample": np.arange(10), "correct": 0.0})
    hits = np.zeros(10)
    for seed in range(2000):
        picked = tl.reference_subsample(scores, 4, seed)["sample"].to_numpy()
        assert len(set(picked)) == 4
        hits[picked] += 1
    # binomial(2000, 0.4): SD 21.9; 5 SD bounds
    assert np.all(np.abs(hits - 800) < 5 * np.sqrt(2000 * 0.4 * 0.6)), hits
    pd.testing.assert_frame_equal(tl.reference_subsample(scores, None, 0), scores)


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
    plan = {
        ("vanilla", np.nan): {("q1", 0): 3, ("q1", 1): None, ("q2", 0): 1, ("q2", 1): 2},
        ("beta1", 1.0): {("q1", 0): 1, ("q1", 1): 2, ("q2", 0): None, ("q2", 1): 4},
    }
    for (method, beta), runs in plan.items():
        for (qid, s), at in runs.items():
            for i in range(1, (at or 4) + 1):
                rows.append(
                    {
                        "qid": qid,
                        "rank": int(qid[1]) - 1,
                        "seed_index": s,
                        "method": method,
                        "beta": beta,
                        "response": i,
                        "correct": at == i,
                    }
                )
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
    # within 2 generations: vanilla q1 0, q2 1; beta1 q1 1, q2 0
    # -> bin 1 (q1, hardest): +1; bin 2: -1
    assert (
        diff.loc[("beta1", 1), "improvement"] == 1.0
        and diff.loc[("beta1", 2), "improvement"] == -1.0
    )
    assert (
        diff.loc[("vanilla", 1), "solve_rate"] == 0.0
        and diff.loc[("beta1", 1), "ref_pass1_max"] == 0.1
    )
    assert tl.difficulty_table(per_run.iloc[:0], questions, k=2, bins=2).empty


def test_run_and_summarize_commands_on_the_tiny_model(tiny, tmp_path):
    msgs = [
        [{"role": "user", "content": f"What is {i} + {i}? End with #### and the number."}]
        for i in range(3)
    ]
    table = pd.DataFrame(
        {
            "qid": [f"q{i}" for i in range(3)],
            "prompt": [json.dumps(m) for m in msgs],
            "answer": [str(2 * i) for i in range(3)],
            "task": "gsm8k",
        }
    )
    table.to_parquet(tmp_path / "test.parquet")
    pd.DataFrame(
        {
            "rank": [0, 1],
            "qid": ["q2", "q0"],
            "ref_n": [8, 8],
            "ref_correct": [1, 2],
            "ref_pass1": [0.125, 0.25],
        }
    ).to_parquet(tmp_path / "questions.parquet")
    settings = {"n_questions": 3, "seeds": 2, "runs_per_shard": 4, "k_max": 2, "max_new_tokens": 5}
    common = [
        "--model",
        str(tiny),
        "--model-name",
        "tiny",
        "--tasks",
        str(tmp_path / "test.parquet"),
        "--questions",
        str(tmp_path / "questions.parquet"),
        "--settings",
        json.dumps(settings),
        "--dtype",
        "float32",
        "--task",
        "gsm8k",
        "--threads",
        "1",
    ]
    outs = []
    for method, beta in (("vanilla", "none"), ("beta0.5", "0.5")):
        for shard in (0, 1):
            out = tmp_path / f"{method}-{shard}.parquet"
            assert (
                tl.main(
                    [
                        "run",
                        *common,
                        "--method",
                        method,
                        "--beta",
                        beta,
                        "--shard",
                        str(shard),
                        "--out",
                        str(out),
                    ]
                )
                == 0
            )
            outs.append(out)
    first = pd.read_parquet(outs[0])
    # shard 0 = runs (q rank 0..2, seed 0) + (rank 0, seed 1); rank 2 does not exist (2 questions)
    assert sorted(set(zip(first["rank"], first["seed_index"], strict=True))) == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert (
        first.groupby(["qid", "seed_index"])["response"].max() == 2
    ).all()  # never correct: k_max each
    assert set(pd.read_parquet(outs[2])["method"]) == {"beta0.5"}
    tables = {k: tmp_path / f"{k}.csv" for k in ("passk", "difficulty", "runs")}
    assert (
        tl.main(
            [
                "summarize",
                "--runs",
                *map(str, outs),
                "--questions",
                str(tmp_path / "questions.parquet"),
                "--model-name",
                "tiny",
                "--task",
                "gsm8k",
                "--settings",
                json.dumps({"k_max": 2, "difficulty_bins": 2}),
                "--out-passk",
                str(tables["passk"]),
                "--out-difficulty",
                str(tables["difficulty"]),
                "--out-runs",
                str(tables["runs"]),
            ]
        )
        == 0
    )
    passk = pd.read_csv(tables["passk"])
    assert set(passk["method"]) == {"vanilla", "beta0.5"} and (passk["pass_at_k"] == 0).all()
    assert (passk["runs"] == 4).all() and (passk["questions"] == 2).all()
    with pytest.raises(SystemExit, match="does not match"):
        tl.main(
            [
                "run",
                *common,
                "--method",
                "beta1",
                "--beta",
                "0.5",
                "--shard",
                "0",
                "--out",
                str(tmp_path / "x"),
            ]
        )


@pytest.mark.parametrize("method,beta", [("vanilla", "none"), ("beta1", "1.0")])
def test_run_command_in_parts_equals_one_job(tiny, tmp_path, method, beta):
    """A shard's runs in three jobs (responses 1, 2, 3; run states and earlier responses handed on)
    write the same responses as one job; a part without the previous state, or with another
    split, is refused."""
    msgs = [[{"role": "user", "content": f"What is {i} * {i}?"}] for i in range(2)]
    pd.DataFrame(
        {
            "qid": ["a", "b"],
            "prompt": [json.dumps(m) for m in msgs],
            "answer": ["0", "1"],
            "task": "gsm8k",
        }
    ).to_parquet(tmp_path / "test.parquet")
    pd.DataFrame(
        {
            "rank": [0, 1],
            "qid": ["b", "a"],
            "ref_n": [8, 8],
            "ref_correct": [1, 2],
            "ref_pass1": [0.125, 0.25],
        }
    ).to_parquet(tmp_path / "questions.parquet")
    settings = {
        "n_questions": 2,
        "seeds": 2,
        "runs_per_shard": 4,
        "k_max": 3,
        "max_new_tokens": 5,
        "slots": 3,
    }
    run = [
        "run",
        *("--model", str(tiny), "--model-name", "tiny", "--task", "gsm8k"),
        *("--tasks", str(tmp_path / "test.parquet")),
        *("--questions", str(tmp_path / "questions.parquet")),
        *("--settings", json.dumps(settings), "--dtype", "float32", "--threads", "1"),
        *("--shard", "0", "--method", method, "--beta", beta),
    ]
    exact = [
        "qid",
        "rank",
        "seed_index",
        "method",
        "response",
        "n_tokens",
        "finish_reason",
        "correct",
        "text",
    ]
    assert tl.main([*run, "--out", str(tmp_path / "one.parquet")]) == 0
    for part in range(3):  # each part hands its state on; the last one gathers the rows
        handed = ["--state-in", str(tmp_path / f"s{part - 1}.pt")] if part else []
        if part < 2:
            handed += ["--state-out", str(tmp_path / f"s{part}.pt")]
        else:
            handed += ["--rows-in", str(tmp_path / "p0.parquet"), str(tmp_path / "p1.parquet")]
        out = tmp_path / ("last.parquet" if part == 2 else f"p{part}.parquet")
        part_args = ["--responses-per-job", "1", "--part", str(part)]
        assert tl.main([*run, *part_args, *handed, "--out", str(out)]) == 0
    one, last = (
        pd.read_parquet(tmp_path / "one.parquet"),
        pd.read_parquet(tmp_path / "last.parquet"),
    )
    assert len(one) == 4 * 3 and set(pd.read_parquet(tmp_path / "p1.parquet")["response"]) == {2}
    pd.testing.assert_frame_equal(last[exact], one[exact])
    np.testing.assert_allclose(last["mean_bonus"], one["mean_bonus"], rtol=1e-5)
    x = ["--out", str(tmp_path / "x.parquet")]
    with pytest.raises(SystemExit, match="pass its --state-in"):
        tl.main([*run, "--responses-per-job", "1", "--part", "1", *x])
    with pytest.raises(SystemExit, match="continues at response 2"):
        s0 = ["--state-in", str(tmp_path / "s0.pt")]
        tl.main([*run, "--responses-per-job", "2", "--part", "1", *s0, *x])


@pytest.mark.workflow
def test_dry_run_chains_the_parts(tmp_path):
    """With 1 response per job (k_max 2: two parts per shard), the DAG holds the jobs the job table
    counts, and each part gets the files of the one before."""
    import yaml
    from test_jobs import dry_run

    from repexp import jobs

    overlay = tmp_path / "parts.yaml"
    overlay.write_text(yaml.safe_dump({"token_level": {"responses_per_job": 1}}))
    cfg = jobs.load_config(["config/test.yaml", overlay])
    assert jobs.job_counts(cfg)["token_level_run"] == 3 * 2  # vanilla, beta0.5, beta1; one shard
    out = dry_run("--configfile", "config/test.yaml", str(overlay), "-p", "-F")
    assert jobs.parse_job_stats(out) == jobs.job_counts(cfg)
    commands = [c for c in out.splitlines() if "repexp.tokenlevel run" in c]
    base = "results/token_level/tiny-random/gsm8k/beta1/shard-0"
    first = next(c for c in commands if f"--out {base}.part-0.parquet" in c)
    last = next(c for c in commands if f"--out {base}.parquet" in c)
    assert (
        "--part 0 " in first
        and "--state-in" not in first
        and f"--state-out {base}.part-0.state.pt" in first
    )
    assert (
        f"--part 1 --responses-per-job 1 --state-in {base}.part-0.state.pt "
        f"--rows-in {base}.part-0.parquet" in last
    )


def test_benchmark_rate_counts_one_token_per_slot_and_step(tiny):
    """The GPU checks' entry point: B slots for `steps` lockstep steps generate B x steps tokens."""
    settings = tl.Settings(max_new_tokens=6, candidate_batch=64)
    out = tl.benchmark_rate(str(tiny), 3, 4, dtype="float32", device="cpu", settings=settings)
    assert (out["engine"], out["slots"], out["tokens"]) == ("batched", 3, 12)
    assert out["tok_s"] == pytest.approx(12 / out["seconds"]) and out["step_s"] == pytest.approx(
        out["seconds"] / 4
    )
    model, tok = load_model(tiny, dtype="float32"), load_tokenizer(tiny)
    seq = tl.benchmark_rate(model, 3, 4, tok=tok, settings=settings, beta=None, engine="sequential")
    assert seq["slots"] == 1 and 4 <= seq["tokens"] <= 4 + 6  # whole responses of at most 6 tokens
    with pytest.raises(ValueError, match="engine"):
        tl.benchmark_rate(str(tiny), 1, 1, dtype="float32", device="cpu", engine="other")
