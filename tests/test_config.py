"""Configuration: the shipped configs are valid; each kind of bad value fails with the key named."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO
from snakemake.utils import update_config

from repexp.config import ConfigError, check_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(*names: str) -> dict:
    """The config Snakemake sees for `--configfile <names>` (merged over config/config.yaml)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for n in names:
        update_config(cfg, yaml.safe_load((REPO / "config" / n).read_text()))
    return cfg


@pytest.mark.parametrize("extra", [(), ("test.yaml",), ("paper.yaml",)])
def test_shipped_configs_are_valid(extra):
    check_config(load(*extra), SCHEMA)


def test_defaults_are_filled():
    cfg = {
        "models": {"m": {"source": "hub", "repo_id": "Qwen/Qwen2.5-7B-Instruct"}},
        "tasks": {"game24": {}},
    }
    check_config(cfg, SCHEMA)
    assert cfg["tasks"]["game24"] == {
        "source": "offline",
        "n_questions": None,
        "subset_seed": 0,
        "qids": None,
        "splits": ["test"],
        "template": None,
        "pool_n": None,
        "max_new_tokens": None,
        "top_p": None,
        "chain_sum": None,
    }
    assert cfg["inference"]["selection"]["lam"] == 1.0
    assert cfg["inference"]["selection"]["proj_dim"] == 512
    assert cfg["rl"]["repexp"] == {
        "beta": 0.01,
        "lam": 0.01,
        "proj_dim": 32,
        "zero_if_none_correct": True,
        "feature_dtype": "auto",
        "offload_base": True,
    }
    assert cfg["models"]["m"]["revision"] == "main"


def test_task_from_config_carries_the_verifier_switches():
    from repexp.tasks import task_from_config

    cfg = load()
    cfg["verifiers"] = {"gsm8k_last_number_fallback": True, "code_timeout_s": 3.0}
    check_config(cfg, SCHEMA)
    task = task_from_config("gsm8k", cfg)
    assert task.source == "offline" and task.verifiers.gsm8k_last_number_fallback is True
    assert task.verifiers.code_timeout_s == 3.0 and task.verifiers.math_timeout_s == 5.0
    assert task.score("72", "so it is 72") == 1.0  # the fallback is on
    # math_reward (default recipe) is the RL stage's MATH scorer; inference keeps math-verify
    assert cfg["verifiers"]["math_reward"] == "recipe"
    assert task.verifiers.math_reward == "math_verify"
    assert task_from_config("math", cfg, stage="rl").verifiers.math_reward == "recipe"
    assert task_from_config("math", cfg).score("1000", "\\boxed{1,000}") == 1.0  # math-verify
    assert task_from_config("math", cfg, stage="rl").score("1000", "\\boxed{1,000}") == 0.0


def test_verifier_settings_defaults_are_the_schemas():
    """The dataclass defaults (for Python callers that pass nothing) equal the schema's, except
    math_reward: the schema's is the RL stage's scorer, the dataclass's the inference one."""
    from repexp.verifiers.settings import VerifierSettings

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["verifiers"]["properties"]
    defaults = {k: v["default"] for k, v in schema.items()}
    assert VerifierSettings.for_stage(defaults, "rl") == VerifierSettings(math_reward="recipe")
    assert VerifierSettings.for_stage(defaults, "inference") == VerifierSettings()
    with pytest.raises(ValueError, match="unknown verifier setting"):
        VerifierSettings.from_dict({"math_timeout": 1.0})
    with pytest.raises(ValueError, match="math_reward"):
        VerifierSettings(math_reward="lighteval")


def test_paper_grid_matches_the_paper():
    cfg = check_config(load("paper.yaml"), SCHEMA)
    inf = cfg["inference"]
    assert len(inf["models"]) == 10 and set(inf["tasks"]) == {
        "math",
        "gsm8k",
        "mbppplus",
        "game24",
        "aime",
    }
    assert {t: cfg["tasks"][t]["pool_n"] for t in inf["tasks"]} == {
        "math": 6400,
        "gsm8k": 6400,
        "mbppplus": 6400,
        "game24": 6400,
        "aime": 8192,
    }
    assert (
        cfg["tasks"]["mbppplus"]["top_p"] == 0.95
        and cfg["tasks"]["mbppplus"]["max_new_tokens"] == 768
    )
    # nothing of the embedded default's subsets leaks into the paper grid through the merge
    # (arith, the CPU default's RL stand-in, exists offline only and is not in the paper grid)
    assert all(
        cfg["tasks"][t]["qids"] is None and cfg["tasks"][t]["source"] == "hub"
        for t in cfg["tasks"]
        if t != "arith"
    )
    assert "arith" not in cfg["rl"]["tasks"] and "arith" not in inf["tasks"]
    assert all(
        cfg["tasks"][t]["n_questions"] is None for t in cfg["tasks"] if t not in ("dapo", "arith")
    )
    assert inf["samplers"]["minp0.05"] == {
        "temperature": 1.5,
        "top_p": 1.0,
        "min_p": 0.05,
        "top_k": 0,
    }
    assert inf["selection"]["proj_dim"] == 512 and inf["selection"]["lam"] == 1.0
    assert cfg["token_level"]["lam"] == 0.1 and cfg["token_level"]["betas"] == [0.5, 1.0]
    # the hardest questions are ranked on 1,024 reference samples per question, as the paper's
    assert cfg["token_level"]["reference_samples"] == 1024
    # the RL stage rewards MATH with the recipe's string rule; inference pools keep math-verify
    assert cfg["verifiers"]["math_reward"] == "recipe"
    rl = cfg["rl"]
    assert (rl["group_size"], rl["learning_rate"], rl["seeds"]) == (8, 1e-6, [41, 42, 43])
    assert rl["task_overrides"]["dapo"]["proj_dim"] == 128
    assert cfg["tasks"]["dapo"]["n_questions"] == 4096


BAD = [
    # (what, edit, the text that must appear in the message)
    (
        "unknown task",
        lambda c: c["tasks"].update({"gsm8kk": {}}),
        ["'gsm8kk'", "under `tasks`", "allowed:", "gsm8k", "mbppplus"],
    ),
    (
        "unknown task in the rl overrides",
        lambda c: c["rl"].setdefault("task_overrides", {}).update({"mathh": {"proj_dim": 8}}),
        ["'mathh'", "under `rl.task_overrides`", "allowed:", "dapo", "gsm8k"],
    ),
    (
        "unknown task in the response lengths",
        lambda c: c.setdefault("cluster", {}).update({"response_tokens": {"gsm9k": 100}}),
        ["'gsm9k'", "under `cluster.response_tokens`", "allowed:", "gsm8k"],
    ),
    (
        "a source the task lacks",
        lambda c: c["tasks"]["arith"].update({"source": "hub"}),
        ["`tasks.arith.source`", "'hub'", "allowed for arith: 'offline'"],
    ),
    (
        "a data option of another task",
        lambda c: c["tasks"]["game24"].update({"chain_sum": {"terms": 3}}),
        ["`tasks.game24.chain_sum`", "arith only"],
    ),
    (
        "unknown model",
        lambda c: c["inference"].update({"models": ["qwen-9000"]}),
        ["`inference.models.0`", "'qwen-9000'", "smollm2-135m-instruct"],
    ),
    (
        "unknown model source",
        lambda c: c["models"]["smollm2-135m-instruct"].update({"source": "ollama"}),
        ["`models.smollm2-135m-instruct.source`", "'ollama'", "'gguf_wheel'", "'hub'"],
    ),
    (
        "N <= 0",
        lambda c: c["inference"]["pool"].update({"n": 0}),
        ["`inference.pool.n`", "value 0", "> 0"],
    ),
    (
        "negative subset",
        lambda c: c["tasks"]["game24"].update({"n_questions": -3}),
        ["`tasks.game24.n_questions`", "-3", "null", "> 0"],
    ),
    (
        "lambda <= 0",
        lambda c: c["inference"]["selection"].update({"lam": 0}),
        ["`inference.selection.lam`", "value 0", "> 0"],
    ),
    (
        "rl lambda <= 0",
        lambda c: c["rl"].update({"repexp": {"lam": -1.0}}),
        ["`rl.repexp.lam`", "-1.0", "> 0"],
    ),
    (
        "typo in a key",
        lambda c: c["inference"]["selection"].update({"lamda": 1.0}),
        ["'lamda'", "`inference.selection`", "lam", "proj_dim"],
    ),
    (
        "typo at the top",
        lambda c: c.update({"infrence": {}}),
        ["'infrence'", "top level", "inference"],
    ),
    (
        "split a task lacks",
        lambda c: c["tasks"]["game24"].update({"splits": ["train"]}),
        ["`tasks.game24.splits`", "'train'", "test"],
    ),
    (
        "hub model without id",
        lambda c: c["models"].update({"q": {"source": "hub"}}),
        ["`models.q`", "repo_id"],
    ),
    (
        "token level without reference",
        lambda c: c["token_level"].update({"reference_model": None}),
        ["`token_level.model`", "`token_level.reference_model`", "token_level.model: null"],
    ),
    (
        "token level task without test split",
        lambda c: (
            c.update({"token_level": {**c["token_level"], "task": "gsm8k"}})
            or c["tasks"]["gsm8k"].update({"splits": ["train"]})
        ),
        ["`tasks.gsm8k.splits`", "'test'", "token_level.task"],
    ),
    (
        "repeated beta",
        lambda c: c["token_level"].update({"betas": [1.0, 1.0]}),
        ["`token_level.betas`", "without repeated items"],
    ),
    (
        "unknown math reward",
        lambda c: c["verifiers"].update({"math_reward": "lighteval"}),
        ["`verifiers.math_reward`", "'lighteval'", "'recipe'", "'math_verify'"],
    ),
    (
        "reference subsample of 0",
        lambda c: c["token_level"].update({"reference_samples": 0}),
        ["`token_level.reference_samples`", "null", "> 0"],
    ),
]


@pytest.mark.parametrize("what,edit,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_key_value_and_allowed(what, edit, needles):
    cfg = load()
    edit(cfg)
    with pytest.raises(ConfigError) as e:
        check_config(cfg, SCHEMA)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{what}: {needle!r} not in\n{msg}"


def test_all_problems_are_reported_at_once():
    cfg = load()
    cfg["inference"]["pool"]["n"] = -1
    cfg["inference"]["selection"]["lam"] = 0
    with pytest.raises(ConfigError) as e:
        check_config(copy.deepcopy(cfg), SCHEMA)
    assert "`inference.pool.n`" in str(e.value) and "`inference.selection.lam`" in str(e.value)
