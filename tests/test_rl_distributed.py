"""Multi-GPU RL launch details, checked on CPU: FSDP2 and TRL's colocated-vLLM weight sync, RepExp's
frozen base model under the FSDP environment, the rollout seeds TRL gives vLLM, the rendezvous
port of each run.

The two-process test runs ``accelerate launch --num_processes 2`` (gloo) with a CPU copy of
profiles/accelerate/fsdp.yaml (tests/rl_two_process.py): accelerate exports the config's FSDP
variables to both processes exactly as on the GPU node. What cannot run on a CPU: accelerate's
``Accelerator.prepare`` never shards there (accelerate/state.py sets ``DistributedType.FSDP`` only
in the accelerator-device branch; a CPU launch is ``MULTI_CPU``, i.e. DDP), so the sharding is done
by accelerate's own ``fsdp2_prepare_model`` in the helper, and vLLM itself is replaced by a
recorder of what TRL's ``sync_weights`` hands its ``load_weights``.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import arith_tables

from repexp.rl.distributed import launch_env, main_process_port, reseed_rollouts, rollout_seed
from repexp.rl.rewards import RepExpReward, assert_nonzero_model, assert_nonzero_rows, own_weights
from repexp.tasks import Task

REPO = Path(__file__).resolve().parents[1]
FSDP_YAML = REPO / "profiles" / "accelerate" / "fsdp.yaml"
SETTINGS = {  # 2 processes x (1 prompt x 4 rollouts) per step: one whole group per process
    "group_size": 4,
    "train_batch_prompts": 2,
    "mini_batch_prompts": 2,
    "micro_batch_size": 2,
    "max_prompt_length": 256,
    "max_response_length": 8,
    "eval_every": 1,
    "max_steps": 1,
    "dev_samples": 1,
    "learning_rate": 0.01,
    "gpus_per_run": 2,
    "repexp": {"proj_dim": 16, "feature_dtype": "float32", "beta": 0.5},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# the frozen base model under the FSDP environment (one process)
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def fsdp_rank1(monkeypatch):
    """This process as local rank 1 of an FSDP launch: transformers' ``is_fsdp_enabled()`` needs a
    process group and the two variables, ``is_local_dist_rank_0()`` reads LOCAL_RANK."""
    import torch.distributed as dist

    for k, v in launch_env(str(FSDP_YAML), 2).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_transformers_zeroes_models_on_rank_1_but_not_the_reward_model(tiny, fsdp_rank1):
    import torch
    from transformers import AutoModel
    from transformers.distributed.fsdp import is_fsdp_enabled

    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and is_fsdp_enabled()
    # the library behaviour the fix works around: every weight of a plain from_pretrained is zero
    plain = AutoModel.from_pretrained(tiny, dtype=torch.float32)
    assert not any(bool(p.any()) for p in plain.parameters())
    with pytest.raises(RuntimeError, match="all zeros.*fsdp_cpu_ram_efficient_loading"):
        assert_nonzero_model(plain, "plain")
    with own_weights():
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false" and not is_fsdp_enabled()
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    # the reward's model: the checkpoint's weights, and the features of a full forward
    reward = RepExpReward(str(tiny), task="arith", group_size=2, dtype="float32")
    model, _ = reward.load()
    from safetensors.torch import load_file

    disk = load_file(str(Path(tiny) / "model.safetensors"))
    emb = next(v for k, v in disk.items() if k.endswith("embed_tokens.weight"))
    assert torch.equal(model.embed_tokens.weight, emb)
    feats = reward.features([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]])
    assert feats.shape == (2, 64) and np.abs(feats).min(axis=1).max() > 0


def test_guards_name_the_cause_and_fix():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert_nonzero_model(model)  # random weights; the LayerNorm's zero bias is 1-D and allowed
    with torch.no_grad():
        model[0].weight.zero_()
    with pytest.raises(
        RuntimeError, match=r"1 of 1 weight matrices are all zeros \(0.weight\).*own_weights"
    ):
        assert_nonzero_model(model, "m")
    assert_nonzero_rows(np.array([[0.0, 1e-30], [2.0, 0.0]]))
    with pytest.raises(
        RuntimeError, match=r"1 of 3 rows are all zeros \(rows \[1\]\).*FSDP|1 of 3 rows"
    ):
        assert_nonzero_rows(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, -1.0]]))


def test_offloaded_reward_model_gives_the_same_bonus(tiny):
    """``offload`` (the paper config) only moves the model between calls; on a CPU it stays put and
    gives exactly the features of the model kept in place."""
    kept = RepExpReward(str(tiny), task="arith", group_size=2, dtype="float32")
    moved = RepExpReward(str(tiny), task="arith", group_size=2, dtype="float32", offload=True)
    args = ([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]])
    np.testing.assert_array_equal(kept.features(*args), moved.features(*args))
    assert str(next(moved.load()[0].parameters()).device) == "cpu"


# ------------------------------------------------------------------------------------------------
# seeds and ports
# ------------------------------------------------------------------------------------------------
def test_rollout_seeds_differ_between_runs_and_engines_but_not_within_a_tp_group():
    import torch

    # TRL seeds engine e of every run with e (process_index // tp); ours with (run seed, e)
    seeds = {(s, p): rollout_seed(s, p, 2) for s in (41, 42, 43) for p in range(8)}
    for s in (41, 42, 43):
        for p in range(0, 8, 2):
            assert seeds[s, p] == seeds[s, p + 1]  # one TP-2 engine: both ranks sample alike
    engines = {seeds[s, p] for s in (41, 42, 43) for p in range(0, 8, 2)}
    assert len(engines) == 12  # 3 runs x 4 engines, all different
    assert rollout_seed(41, 3, 1) != rollout_seed(41, 2, 1) and rollout_seed(
        41, 3, 1
    ) == rollout_seed(41, 3, 1)
    # the global generators (vLLM samples unseeded requests from torch's default generator)
    reseed_rollouts(41, 0, 2)
    a = torch.rand(4)
    reseed_rollouts(41, 1, 2)
    b = torch.rand(4)
    reseed_rollouts(42, 0, 2)
    c = torch.rand(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_trainer_reseeds_after_trl_built_vllm(monkeypatch):
    """RLTrainer re-seeds once GRPOTrainer.__init__ (which builds the colocated engine) returns."""
    import trl

    from repexp.rl import distributed
    from repexp.rl.trainer import rl_trainer_class

    cls = rl_trainer_class()
    calls = []

    def fake_init(self, *a, **kw):  # what RLTrainer reads of a built GRPOTrainer
        self.use_vllm, self.vllm_mode = kw.pop("use_vllm"), "colocate"
        self.args = SimpleNamespace(seed=43, vllm_tensor_parallel_size=2)
        self.accelerator = SimpleNamespace(process_index=5)
        self.scale_rewards, self.multi_objective_aggregation = "group", "sum_then_normalize"
        self.reward_funcs = []

    monkeypatch.setattr(trl.GRPOTrainer, "__init__", fake_init)
    monkeypatch.setattr(distributed, "reseed_rollouts", lambda *a: calls.append(a))
    cls(use_vllm=True)
    cls(use_vllm=False)
    assert calls == [(43, 5, 2)]


def test_every_run_of_the_paper_grid_gets_its_own_port():
    rl = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["rl"]
    ports = {
        (t, m, s): main_process_port(rl, t, m, s)
        for t in rl["tasks"]
        for m in rl["methods"]
        for s in rl["seeds"]
    }
    assert len(set(ports.values())) == len(ports) == 27
    assert (
        min(ports.values()) == 29501 and max(ports.values()) == 29527
    )  # not accelerate's default 29500
    outside = main_process_port(rl, "gsm8k", "grpo", 7)
    assert outside not in ports.values() and 30500 <= outside < 31500
    assert outside == main_process_port(rl, "gsm8k", "grpo", 7)


def test_paper_rl_settings_sleep_vllm_and_offload_the_frozen_model(tmp_path):
    """The memory choices of config/README.md ("RL memory per GPU") reach TRL's config."""
    from repexp.jobs import load_config, merge
    from repexp.rl.settings import train_settings
    from repexp.rl.trainer import RLSettings, grpo_config

    cfg = load_config(
        [REPO / "config" / "paper.yaml"],
        base=REPO / "config" / "config.yaml",
        schema=REPO / "workflow" / "schemas" / "config.schema.yaml",
    )
    for task, util in (("math", 0.6), ("gsm8k", 0.6), ("dapo", 0.5)):
        s = RLSettings.from_dict(train_settings(merge(cfg["rl"], {}), task))
        assert s.vllm_enable_sleep_mode and s.repexp.offload_base and s.gradient_checkpointing
        c = grpo_config(s, output_dir=str(tmp_path), seed=41, num_processes=8)
        assert c.vllm_enable_sleep_mode and c.vllm_gpu_memory_utilization == util


def test_fsdp_config_is_fsdp2_and_launch_exports_it():
    cfg = yaml.safe_load(FSDP_YAML.read_text())
    env = launch_env(str(FSDP_YAML), 8)
    assert cfg["fsdp_config"]["fsdp_version"] == 2 and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert (
        env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
        and env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    )


# ------------------------------------------------------------------------------------------------
# two processes under `accelerate launch` with the FSDP config
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tables(tmp_path_factory, wheel_dir):
    return arith_tables(tmp_path_factory.mktemp("arith2"), wheel_dir, n_train=8)


def untied_copy(tiny: Path, dest: Path) -> Path:
    """The tiny model with a separate lm_head (Qwen2.5-7B's layout: its own output matrix)."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    m.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(1)
    m.lm_head.weight = torch.nn.Parameter(torch.randn(m.lm_head.weight.shape, generator=g) * 0.02)
    m.save_pretrained(dest)
    return dest


@pytest.fixture()
def launched(tiny, tables, tmp_path_factory):
    d = tmp_path_factory.mktemp("two_process")
    cfg = yaml.safe_load(FSDP_YAML.read_text())
    cfg.update(use_cpu=True, mixed_precision="no")  # the CPU copy; fsdp_config as the paper's
    (d / "fsdp_cpu.yaml").write_text(yaml.safe_dump(cfg))
    untied = untied_copy(tiny, d / "untied")
    (d / "out").mkdir()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(d / "fsdp_cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "tests" / "rl_two_process.py"),
        "--model",
        str(tiny),
        "--sync-models",
        str(tiny),
        str(untied),
        "--tables",
        str(tables),
        "--settings",
        json.dumps(SETTINGS),
        "--sleep-mode",
        "--out",
        str(d / "out"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSDP_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    ranks = [json.loads((d / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    calls = [pickle.loads((d / "out" / f"rank{r}.pkl").read_bytes()) for r in (0, 1)]
    print(f"two-process launch: {seconds:.0f} s")
    return SimpleNamespace(ranks=ranks, calls=calls, tiny=str(tiny), untied=str(untied))


def _check_environment(launched):
    version = str(yaml.safe_load(FSDP_YAML.read_text())["fsdp_config"]["fsdp_version"])
    for r in launched.ranks:
        env = r["env"]
        assert env["ACCELERATE_USE_FSDP"] == "true", env
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_VERSION"] == version


def _check_sync(launched, which):
    """TRL's colocated sync on the policy sharded as profiles/accelerate/fsdp.yaml says: every
    parameter (embeddings, final norm and lm_head included) reaches the engine with the training
    weights, before and after an update, and the model still runs. Under FSDP1 (the old config)
    the root's parameters are missing and the forward after the sync fails."""
    model = getattr(launched, which)
    for rank, r in enumerate(launched.ranks):
        s = r["sync"][model]
        if "first_sync" in s:  # FSDP1: the root's parameters are missing
            assert s["first_sync"]["missing"] == [], (which, rank, s["first_sync"]["missing"])
        assert "error" not in s, f"{which}, rank {rank}: {s.get('error')}\n{s.get('traceback')}"
        for sync in ("first_sync", "second_sync"):
            assert s[sync]["missing"] == [] and s[sync]["extra"] == [], (which, rank, sync, s[sync])
        assert s["first_sync"]["n_loaded"] == s["n_expected"]
        assert s["first_sync"]["max_abs_diff"] == 0.0  # rank 0's weights on both ranks
        # the update reached the engine
        assert s["second_sync"]["max_abs_diff"] < 1e-5 < s["update_size"], s
        assert abs(s["loss"] - s["ref_loss"]) < 1e-5, s
        assert abs(s["loss_after"] - s["ref_loss_after"]) < 1e-5, s
        # sleep mode: the weights are woken before loading, the prefix cache reset after
        assert s["engine_calls"][:1] == [["wake_up", ["weights"]]], s["engine_calls"]
        assert ["reset_prefix_cache"] in s["engine_calls"]
    # the full state dict that best/ is saved from (rank 0): every key, the updated values
    saved = launched.ranks[0]["sync"][model]["saved"]
    assert saved["missing"] == [] and saved["extra"] == [] and saved["max_abs_diff"] < 1e-5, saved
    # transformers zeroed the policy on rank 1 (cpu_ram_efficient_loading); accelerate's FSDP2
    # preparation broadcast rank 0's weights into the shards (first_sync equal above)
    zeroed = [r["sync"][model]["policy_zeroed_by_transformers"] for r in launched.ranks]
    assert zeroed == [False, True]


def _check_repexp_step(launched):
    """One RepExp GRPO step on 2 processes under the FSDP environment: each rank's frozen model
    gives non-zero features, and the bonuses equal a one-process computation on the same
    rollouts."""
    for r in launched.ranks:
        assert "train_error" not in r, r.get("train_error")
    rs = SETTINGS["repexp"]
    for rank, calls in enumerate(launched.calls):
        assert len(calls) == 1, f"rank {rank}: {len(calls)} reward calls"  # 1 generation round
        c = calls[0]
        assert len(c["completion_ids"]) == SETTINGS["group_size"] and len(set(c["qid"])) == 1
        assert np.abs(c["features"]).sum(axis=1).min() > 0, f"rank {rank}: zero features"
        assert (c["bonus"] > 0).all(), f"rank {rank}: bonuses {c['bonus']}"
        one = RepExpReward(
            launched.tiny,
            task="arith",
            group_size=SETTINGS["group_size"],
            beta=rs["beta"],
            proj_dim=rs["proj_dim"],
            seed=41,
            dtype=rs["feature_dtype"],
        )
        total = one(
            prompts=c["prompts"],
            completions=c["completions"],
            completion_ids=c["completion_ids"],
            answer=c["answer"],
            prompt_ids=c["prompt_ids"],
            qid=c["qid"],
            trainer_state=SimpleNamespace(global_step=c["step"]),
        )
        np.testing.assert_allclose(c["features"], one.last["features"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c["bonus"], one.last["bonus"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(c["total"], total, rtol=1e-6)
    # the two ranks scored different prompts
    assert launched.calls[0][0]["qid"][0] != launched.calls[1][0]["qid"][0]


@pytest.mark.distributed
def test_two_processes_under_the_fsdp_config(launched, monkeypatch):
    """One test, so that ``pytest -n`` starts the two-process launch once: the FSDP environment
    on both ranks; TRL's weight sync of the tied tiny model and of an untied copy (Qwen2.5-7B's
    layout); one RepExp step against a one-process computation."""
    _check_environment(launched)
    for which in ("tiny", "untied"):
        _check_sync(launched, which)
    monkeypatch.setattr(Task, "score", lambda self, answer, response: 1.0)  # as in the launched run
    _check_repexp_step(launched)
