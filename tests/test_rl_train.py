"""RL post-training on TRL (repexp.rl): the verl -> TRL batch mapping, the RepExp reward against an
independent forward pass, the policy log-probabilities of the Unlikeliness hook, and short runs of
the training CLI on the tiny random model (every method; a kill and a resume)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import arith_tables

from repexp.bonus import projection_seed, sparse_projection
from repexp.rl.rewards import RepExpReward
from repexp.rl.trainer import RLSettings, batch_layout, check_group_layout, grpo_config
from repexp.tasks import Task, build_table, get_task
from repexp.tasks.sources import TaskDataError

SETTINGS = {
    "group_size": 4,
    "train_batch_prompts": 2,
    "mini_batch_prompts": 1,
    "micro_batch_size": 4,
    "max_prompt_length": 256,
    "max_response_length": 8,
    "eval_every": 1,
    "max_steps": 2,
    "dev_samples": 2,
    "learning_rate": 0.01,
    "repexp": {"proj_dim": 16, "feature_dtype": "float32"},
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory, wheel_dir):
    return arith_tables(tmp_path_factory.mktemp("arith"), wheel_dir, n_train=16)


@pytest.fixture()
def coin_checker(monkeypatch):
    """The tiny random model is never right; score a response as correct when its length is even, so
    that groups have reward variance and the policy gradient is not zero."""
    monkeypatch.setattr(Task, "score", lambda self, answer, response: float(len(response) % 2 == 0))


def cli(tiny, tables, out, method, settings=SETTINGS, extra=()):
    from repexp.rl.train import main

    return main(
        [
            "--model",
            str(tiny),
            "--model-name",
            "tiny-random",
            "--task",
            "arith",
            "--train",
            str(tables / "train.parquet"),
            "--dev",
            str(tables / "dev.parquet"),
            "--method",
            method,
            "--seed",
            "41",
            "--settings",
            json.dumps(settings),
            "--source",
            "offline",
            "--threads",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------------------
# the stand-in task of the CPU default
# ------------------------------------------------------------------------------------------------
def test_arith_task_splits_answers_and_checker(wheel_dir):
    task = get_task("arith")
    tables = {
        s: build_table(task, s, wheel_dir=wheel_dir) for s in ("test", "train", "dev", "test_rest")
    }
    assert {s: len(t) for s, t in tables.items()} == {
        "test": 60,
        "train": 40,
        "dev": 30,
        "test_rest": 30,
    }
    assert not set(tables["train"]["qid"]) & set(tables["test"]["qid"])
    assert list(tables["dev"]["qid"]) + list(tables["test_rest"]["qid"]) == list(
        tables["test"]["qid"]
    )
    ops = set()
    for q, a in zip(tables["train"]["question"], tables["train"]["answer"], strict=True):
        x, op, y = q.rsplit(":", 1)[1].strip().rstrip("=").split()
        ops.add(op)
        assert (
            0 <= int(x) <= 9
            and 0 <= int(y) <= 9
            and int(a) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        )
    assert ops == {"+", "-"}
    msgs = json.loads(tables["dev"]["prompt"].iloc[0])
    assert msgs[0]["content"].endswith(
        '=\nLet\'s think step by step and output the final answer after "####".'
    )
    # the gsm8k checker with the last-number fallback (always on for this task)
    assert task.score("-2", "So 7 - 9 = -2.") == 1.0 and task.score("-2", "#### -2") == 1.0
    assert task.score("3", "3 + 1 = 4") == 0.0 and task.score("3", "#### 4, not 3") == 0.0
    with pytest.raises(ValueError, match="no 'hub' source"):
        get_task("arith", source="hub")


def test_arith_difficulty_is_a_task_option(wheel_dir, tmp_path):
    """``tasks.arith.chain_sum``: additions only are all 100 one-digit sums (60 test + 40 train);
    three terms of two digits are harder; bad settings fail when the task is made."""
    from repexp.tasks.__main__ import main as tasks_cli

    plus = get_task("arith", chain_sum={"operators": "+"})
    test, train = (build_table(plus, s, wheel_dir=wheel_dir) for s in ("test", "train"))
    pairs = set()
    for q, a in zip(
        [*test["question"], *train["question"]], [*test["answer"], *train["answer"]], strict=True
    ):
        x, op, y = q.rsplit(":", 1)[1].strip().rstrip("=").split()
        assert op == "+" and int(a) == int(x) + int(y)
        pairs.add((int(x), int(y)))
    assert pairs == {(x, y) for x in range(10) for y in range(10)}
    hard = build_table(
        get_task("arith", chain_sum={"terms": 3, "digits": 2}), "dev", wheel_dir=wheel_dir
    )
    for q, a in zip(hard["question"], hard["answer"], strict=True):
        expr = q.rsplit(":", 1)[1].strip().rstrip("=")
        terms = expr.split()[::2]
        assert len(terms) == 3 and all(10 <= int(t) <= 99 for t in terms) and int(a) == eval(expr)  # noqa: S307
    with pytest.raises(ValueError, match="arith only"):
        get_task("gsm8k", chain_sum={"operators": "+"})
    with pytest.raises(TaskDataError, match="operators"):
        get_task("arith", chain_sum={"operators": "*"})
    with pytest.raises(TaskDataError, match="unknown key"):
        get_task("arith", chain_sum={"term": 3})
    # the CLI of the prepare_task rule takes it as JSON
    out = tmp_path / "train.parquet"
    assert (
        tasks_cli(
            [
                "--task",
                "arith",
                "--split",
                "train",
                "--chain-sum",
                '{"operators": "+"}',
                "--wheel-dir",
                str(wheel_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert pd.read_parquet(out)["qid"].tolist() == train["qid"].tolist()


# ------------------------------------------------------------------------------------------------
# batch layout and config
# ------------------------------------------------------------------------------------------------
def test_batch_layout_maps_verl_batches_to_trl():
    paper = RLSettings.from_dict(
        {"train_batch_prompts": 1024, "mini_batch_prompts": 256, "micro_batch_size": 16}
    )
    lay = batch_layout(paper, num_processes=8)
    # 256 prompts x 8 = 2048 rollouts per update = 16 per device x 8 GPUs x 16 accumulation steps
    assert (
        lay.per_device_train_batch_size,
        lay.gradient_accumulation_steps,
        lay.steps_per_generation,
    ) == (16, 16, 64)
    assert lay.per_process_generation_batch == 1024 * 8 // 8 and paper.updates_per_step == 4
    cpu = batch_layout(
        RLSettings.from_dict(
            {"train_batch_prompts": 2, "mini_batch_prompts": 2, "micro_batch_size": 8}
        ),
        num_processes=1,
    )
    assert (
        cpu.per_device_train_batch_size,
        cpu.gradient_accumulation_steps,
        cpu.steps_per_generation,
    ) == (8, 2, 2)


def test_a_group_split_across_processes_fails_clearly():
    # 3 processes share 2 prompts x 8 rollouts: 16 is not a multiple of 3 x micro-batch 8
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        batch_layout(
            RLSettings.from_dict(
                {"train_batch_prompts": 2, "mini_batch_prompts": 2, "micro_batch_size": 8}
            ),
            num_processes=3,
        )
    # 3 prompts x 8 = 24 rollouts over 3 processes with micro-batch 4: 2 steps per generation, so
    # 8 rollouts per process = one whole group each
    batch_layout(
        RLSettings.from_dict(
            {"train_batch_prompts": 3, "mini_batch_prompts": 3, "micro_batch_size": 4}
        ),
        num_processes=3,
    )
    # the same over 2 processes: 12 rollouts each, so the second group straddles them
    with pytest.raises(ValueError, match="split\\s+across processes"):
        check_group_layout(
            per_device_train_batch_size=4, steps_per_generation=3, num_processes=2, group_size=8
        )
    with pytest.raises(ValueError, match="split"):
        batch_layout(
            RLSettings.from_dict(
                {"train_batch_prompts": 3, "mini_batch_prompts": 3, "micro_batch_size": 4}
            ),
            num_processes=2,
        )
    check_group_layout(
        per_device_train_batch_size=4, steps_per_generation=2, num_processes=2, group_size=8
    )


def test_settings_reject_unknown_keys_and_bad_batches():
    with pytest.raises(ValueError, match="unknown rl settings"):
        RLSettings.from_dict({"learning_rat": 1e-6})
    with pytest.raises(ValueError, match="multiple of"):
        RLSettings.from_dict({"train_batch_prompts": 6, "mini_batch_prompts": 4})
    # the grid keys of the rl section are accepted and ignored
    assert (
        RLSettings.from_dict({"seeds": [41], "tasks": ["arith"], "dev_task": "aime2024"}).dev_task
        == "aime2024"
    )


def test_grpo_config_has_the_paper_values(tmp_path):
    s = RLSettings.from_dict(
        {"train_batch_prompts": 16, "mini_batch_prompts": 4, "micro_batch_size": 8}
    )
    cfg = grpo_config(s, output_dir=str(tmp_path), seed=42)
    assert (
        cfg.num_generations == 8
        and cfg.beta == 0.0
        and cfg.epsilon == 0.2
        and cfg.num_iterations == 1
    )
    assert cfg.loss_type == "dapo" and cfg.scale_rewards == "group" and cfg.entropy_coef == 0.0
    assert (
        cfg.learning_rate == 1e-6 and cfg.lr_scheduler_type == "constant" and cfg.warmup_steps == 0
    )
    assert (
        cfg.weight_decay == 0.01
        and cfg.max_grad_norm == 1.0
        and (cfg.adam_beta1, cfg.adam_beta2) == (0.9, 0.999)
    )
    assert (
        cfg.temperature == 1.0
        and cfg.top_p == 1.0
        and cfg.top_k == 0
        and cfg.max_completion_length == 1024
    )
    assert cfg.max_steps == 1000 * 4 and cfg.save_steps == 20 * 4
    assert (
        cfg.per_device_train_batch_size,
        cfg.gradient_accumulation_steps,
        cfg.steps_per_generation,
    ) == (8, 4, 16)
    assert cfg.generation_batch_size == 16 * 8 and cfg.seed == 42 and cfg.data_seed == 42
    assert cfg.use_cpu and not cfg.bf16 and not cfg.use_vllm


def _paper_settings(task: str, **rl) -> RLSettings:
    from repexp.jobs import load_config, merge
    from repexp.rl.settings import train_settings

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        [repo / "config" / "paper.yaml"],
        base=repo / "config" / "config.yaml",
        schema=repo / "workflow" / "schemas" / "config.schema.yaml",
    )
    return RLSettings.from_dict(train_settings(merge(cfg["rl"], rl), task))


@pytest.mark.parametrize("task", ["math", "gsm8k", "dapo"])
def test_paper_settings_fit_eight_processes(task, tmp_path):
    """1 node x 8 GPUs (rl.gpus_per_run = 8): whole groups per process, vLLM TP 2 = 4 engines."""
    s = _paper_settings(task)
    assert (s.gpus_per_run, s.max_hours, s.use_vllm, s.vllm_tensor_parallel_size) == (
        8,
        24,
        True,
        2,
    )
    lay = batch_layout(s, num_processes=8)
    micro = 8 if task == "dapo" else 16
    # one update = mini_batch_prompts x 8 rollouts = micro x 8 GPUs x 16 accumulation steps
    assert (lay.per_device_train_batch_size, lay.gradient_accumulation_steps) == (micro, 16)
    assert (
        lay.per_device_train_batch_size * 8 * lay.steps_per_generation == s.train_batch_prompts * 8
    )
    assert lay.per_process_generation_batch % s.group_size == 0  # whole groups on every process
    assert s.updates_per_step == 4
    cfg = grpo_config(s, output_dir=str(tmp_path), seed=41, num_processes=8)
    assert cfg.use_vllm and cfg.vllm_mode == "colocate" and cfg.vllm_tensor_parallel_size == 2


def test_processes_must_fit_the_batches_and_the_vllm_engines(tmp_path):
    # TP 2 on one process: TRL's colocated engines span 2 processes each
    with pytest.raises(
        ValueError, match="vllm_tensor_parallel_size = 2 does not divide the 1 rl.gpus_per_run"
    ):
        _paper_settings("math", gpus_per_run=1)
    _paper_settings("math", gpus_per_run=1, vllm_tensor_parallel_size=1)
    _paper_settings("math", gpus_per_run=4)
    # 6 processes: 256 prompts x 8 rollouts per update do not split into micro-batches of 16
    # on 6 GPUs
    with pytest.raises(ValueError, match="x 6 process"):
        _paper_settings("math", gpus_per_run=6, vllm_tensor_parallel_size=1)
    # the launched process count is checked again when the trainer is configured
    s = RLSettings.from_dict(
        {
            "train_batch_prompts": 8,
            "mini_batch_prompts": 8,
            "micro_batch_size": 8,
            "use_vllm": True,
            "vllm_tensor_parallel_size": 2,
            "gpus_per_run": 2,
        }
    )
    with pytest.raises(ValueError, match="does not divide the 1 training processes"):
        grpo_config(s, output_dir=str(tmp_path), seed=1, num_processes=1)
    with pytest.raises(ValueError, match="max_hours"):
        RLSettings.from_dict({"max_hours": 0})


# ------------------------------------------------------------------------------------------------
# the time budget (rl.max_hours)
# ------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _budget_run(state: Path, max_hours: float | None, updates_per_step: int = 2):
    return SimpleNamespace(
        state=state,
        s=SimpleNamespace(updates_per_step=updates_per_step, max_hours=max_hours),
        is_main=True,
        stopped_by=None,
        train_seconds=0.0,
    )


def _train(budget, run, start: int, max_updates: int, clock: FakeClock, seconds_per_update: float):
    """The trainer's calls: on_train_begin, then on_step_end after every update until a stop."""
    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(max_steps=max_updates)
    state, control = TrainerState(global_step=start, max_steps=max_updates), TrainerControl()
    budget.on_train_begin(args, state, control)
    stops = []
    while state.global_step < max_updates:
        control.should_save = control.should_training_stop = False
        clock.now += seconds_per_update
        state.global_step += 1
        control = budget.on_step_end(args, state, control)
        if control.should_training_stop:
            assert control.should_save, "the stopping step must be saved (and so evaluated)"
            stops.append(state.global_step)
            break
    return state.global_step, stops


def test_time_budget_stops_at_the_first_step_boundary_after_it(tmp_path):
    from repexp.rl.callbacks import BudgetSpent, callback_classes, read_elapsed, record_elapsed

    TimeBudget = callback_classes()[2]
    state = tmp_path / "state"
    # 1 h budget, 2 updates per step, 700 s per update: 1,400 s per step -> 2,800 s at step 2
    # (update 4), 4,200 s at step 3 (update 6): the first boundary at or after 3,600 s
    run, clock = _budget_run(state, 1.0), FakeClock(1000.0)
    at, stops = _train(TimeBudget(run, clock=clock), run, 0, 20, clock, 700.0)
    assert (at, stops, run.stopped_by) == (6, [6], "max_hours")
    assert json.loads((state / "elapsed.json").read_text())["seconds"] == {
        "2": 1400.0,
        "4": 2800.0,
        "6": 4200.0,
    }
    assert run.train_seconds == 4200.0

    # killed after the checkpoint at update 4 (step 2); the earlier attempt's record at update 6 and
    # a stale one at 8 are in the file. A new process (its clock starts anywhere) resumes from
    # update 4 with the 2,800 s recorded there: 500 s per update -> 3,800 s at update 6, the stop
    record_elapsed(state, 8, 9999.0)
    run, clock = _budget_run(state, 1.0), FakeClock(50.0)
    budget = TimeBudget(run, clock=clock)
    at, stops = _train(budget, run, 4, 20, clock, 500.0)
    assert budget.base == 2800.0 and (at, stops, run.stopped_by) == (6, [6], "max_hours")
    assert json.loads((state / "elapsed.json").read_text())["seconds"] == {
        "2": 1400.0,
        "4": 2800.0,
        "6": 3800.0,
    }
    assert read_elapsed(state, 5) == 2800.0 and read_elapsed(state, 0) == 0.0

    # killed after the stopping step was saved: a rerun resumes there and trains no further (the
    # dev evaluation of that step, if it is missing, runs before: DevEvaluator.on_train_begin)
    run, clock = _budget_run(state, 1.0), FakeClock()
    with pytest.raises(BudgetSpent):
        _train(TimeBudget(run, clock=clock), run, 6, 20, clock, 500.0)
    assert run.stopped_by == "max_hours" and run.train_seconds == 3800.0

    # a longer budget on the same records goes on from 3,800 s: 7,200 s reached at update 14
    # (step 7)
    run, clock = _budget_run(state, 2.0), FakeClock()
    assert _train(TimeBudget(run, clock=clock), run, 6, 20, clock, 500.0) == (14, [14])

    # no budget: only max_steps ends the run; nor does a budget spent exactly at max_steps count
    for hours in (None, 1e-6):
        fresh = tmp_path / f"fresh-{hours}"
        run, clock = _budget_run(fresh, hours), FakeClock()
        assert _train(TimeBudget(run, clock=clock), run, 0, 2, clock, 700.0) == (2, [])
        assert run.stopped_by is None and read_elapsed(fresh, 2) == 1400.0


def test_the_stopping_step_is_evaluated():
    """DevEvaluator.on_save evaluates the step the budget stopped at, like max_steps."""
    from transformers import TrainerControl, TrainerState

    from repexp.rl.callbacks import callback_classes

    DevEvaluator = callback_classes()[0]
    calls = []
    run = SimpleNamespace(
        s=SimpleNamespace(updates_per_step=2, eval_every=20),
        stopped_by=None,
        has_dev=lambda step: False,
        evaluate=lambda trainer, step, update: calls.append(step),
    )
    cb = DevEvaluator(run)
    args = SimpleNamespace(max_steps=100)
    cb.on_save(args, TrainerState(global_step=6), TrainerControl())
    assert calls == []  # step 3: no evaluation due
    run.stopped_by = "max_hours"
    cb.on_save(args, TrainerState(global_step=6), TrainerControl())
    assert calls == [3]


@pytest.mark.parametrize(
    "configfile,target,launcher,gpu",
    [
        (
            "config/paper.yaml",
            "results/rl/qwen2.5-7b-instruct/dapo/repexp/seed41/done.json",
            "accelerate launch --config_file profiles/accelerate/fsdp.yaml --num_processes 8 "
            "--main_process_port 29525 "
            "-m repexp.rl.train ",
            "8",
        ),
        (
            "config/test.yaml",
            "results/rl/tiny-random/gsm8k/grpo/seed41/done.json",
            "python -m repexp.rl.train ",
            "1",
        ),
    ],
    ids=["paper", "test"],
)
@pytest.mark.workflow
def test_rl_train_launches_one_process_per_gpu(configfile, target, launcher, gpu):
    """The dry run's rl_train job: `accelerate launch` with the FSDP config on rl.gpus_per_run = 8
    GPUs of one node and the run's own rendezvous port (dapo/repexp/seed41 is run 24 of the grid)
    for the paper, one `python` process for the CPU test configuration."""
    import os
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "-F", target, "--configfile", configfile],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    block = out.stdout[out.stdout.index("rule rl_train:") :]
    shell = next(line for line in block.splitlines() if "repexp.rl.train" in line)
    assert shell.strip().removeprefix("Shell command: ").startswith(launcher), shell
    assert shell.count("repexp.rl.train") == 1, shell
    assert re.search(rf"resources: .*\bgpu={gpu}\b", block.split("\n\n")[0]), block[:2000]
    assert re.search(r"resources: .*\bnodes=1\b", block.split("\n\n")[0]), block[:2000]  # one node


# ------------------------------------------------------------------------------------------------
# the RepExp reward against an independent computation
# ------------------------------------------------------------------------------------------------
def test_repexp_reward_equals_an_independent_forward_and_inverse(tiny):
    import torch

    from repexp.models import load_model, load_tokenizer

    G, k, beta, lam = 4, 16, 0.5, 0.01
    reward = RepExpReward(
        str(tiny),
        task="arith",
        group_size=G,
        beta=beta,
        lam=lam,
        proj_dim=k,
        seed=41,
        dtype="float32",
    )
    tok = load_tokenizer(tiny)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}]] * G + [
        [{"role": "user", "content": "1 - 7 ="}]
    ] * G
    answers = ["5"] * G + ["-6"] * G
    texts = [
        "#### 5",
        "4",
        "so 5",
        "x",
        "#### 2",
        "no",
        "-6?",
        "7",
    ]  # group 1: 2 correct, group 2: 1 correct
    rng = np.random.default_rng(0)
    eos = tok.eos_token_id
    completion_ids = [
        list(rng.integers(100, 5000, size=n)) + ([eos] if n % 2 else [])
        for n in (3, 5, 2, 7, 4, 1, 6, 3)
    ]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    state = SimpleNamespace(global_step=3)
    got = np.array(
        reward(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            answer=answers,
            qid=["a"] * G + ["b"] * G,
            trainer_state=state,
        )
    )
    # reference: one full forward per sequence, mean over the completion positions, projection,
    # brute-force inverse
    base = load_model(tiny, dtype="float32", lm_head=False)
    feats = []
    for p, c in zip(prompts, completion_ids, strict=True):
        ids = tok.apply_chat_template(
            p, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        with torch.no_grad():
            h = base(input_ids=torch.tensor([list(ids) + c])).last_hidden_state[0]
        feats.append(h[len(ids) :].mean(0).numpy())
    phi = np.array(feats) @ sparse_projection(64, k, projection_seed(41, 3))
    correct = np.array([1, 0, 1, 0, 0, 0, 1, 0], dtype=float)
    expect = correct.copy()
    for rows in (slice(0, G), slice(G, 2 * G)):
        x = phi[rows] - phi[rows].mean(0)
        inv = np.linalg.inv(lam * np.eye(k) + x.T @ x)
        expect[rows] += beta * np.einsum("id,de,ie->i", x, inv, x)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(reward.last["correct"], correct)
    assert (reward.last["bonus"] > 0).all() and (reward.last["bonus"] < 1).all()
    # the exact prompt ids from the trainer give the same; ids that are not the chat template's are
    # an error
    ids = reward.prompt_ids_of(prompts)
    again = reward(
        prompts=prompts,
        completions=completions,
        completion_ids=completion_ids,
        answer=answers,
        prompt_ids=ids,
        trainer_state=state,
    )
    np.testing.assert_allclose(again, got, rtol=1e-6)
    with pytest.raises(RuntimeError, match="differ"):
        reward(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            answer=answers,
            prompt_ids=[i[1:] for i in ids],
            trainer_state=state,
        )
    # no correct rollout in a group: no bonus; a new step draws a new projection
    wrong = reward(
        prompts=prompts,
        completions=completions,
        completion_ids=completion_ids,
        answer=["9"] * 8,
        trainer_state=SimpleNamespace(global_step=4),
    )
    np.testing.assert_array_equal(wrong, np.zeros(8))
    # picklable without its model
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._model is None and clone.proj_dim == k


def test_repexp_reward_refuses_a_split_group():
    reward = RepExpReward("unused", task="arith", group_size=4)
    with pytest.raises(ValueError, match="not whole|split"):
        reward(
            prompts=["p"] * 6,
            completions=["x"] * 6,
            completion_ids=[[1]] * 6,
            answer=["1"] * 6,
            qid=["a"] * 4 + ["b"] * 2,
        )
    with pytest.raises(ValueError, match="not whole"):
        reward(
            prompts=["p"] * 8,
            completions=["x"] * 8,
            completion_ids=[[1]] * 8,
            answer=["1"] * 8,
            qid=["a"] * 3 + ["b"] * 5,
        )


# ------------------------------------------------------------------------------------------------
# the Unlikeliness hook's policy log-probabilities
# ------------------------------------------------------------------------------------------------
def test_policy_mean_logprobs_match_a_direct_computation(tiny, tables, tmp_path):
    import torch

    from repexp.rl.train import build_trainer, parse_args

    args = parse_args(
        [
            "--model",
            str(tiny),
            "--model-name",
            "t",
            "--task",
            "arith",
            "--train",
            str(tables / "train.parquet"),
            "--dev",
            str(tables / "dev.parquet"),
            "--method",
            "unlikeliness",
            "--seed",
            "1",
            "--settings",
            "{}",
            "--out",
            str(tmp_path),
        ]
    )
    args.dev_task = None
    trainer, _ = build_trainer(args, RLSettings.from_dict(SETTINGS))
    assert trainer.beta_rank == 0.25
    prompts = [[5, 6, 7], [8, 9]]
    completions = [[10, 11, 12, 13], [14]]
    got = trainer.mean_logprobs(prompts, completions).cpu().numpy()
    model = trainer.model
    for p, c, g in zip(prompts, completions, got, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float()
        lp = (
            torch.log_softmax(logits[len(p) - 1 : -1], -1)
            .gather(1, torch.tensor(c)[:, None])
            .mean()
        )
        assert g == pytest.approx(float(lp), abs=1e-4)


# ------------------------------------------------------------------------------------------------
# verl's advantages, computed by the trainer
# ------------------------------------------------------------------------------------------------
def verl_grpo_advantages(scores, group_size, epsilon):
    """verl's compute_grpo_outcome_advantage (norm_adv_by_std_in_grpo=True), step by step as verl
    does it, in float64: per group torch.mean and torch.std (unbiased), (score - mean) / (std +
    epsilon)."""
    import torch

    scores = torch.tensor(scores, dtype=torch.float64)
    out = scores.clone()
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        out[start : start + group_size] = (group - torch.mean(group)) / (torch.std(group) + epsilon)
    return out.numpy()


class HandMadeReward:
    """Fixed rewards r* + beta * bonus in the parts RepExpReward exposes (``last``)."""

    __name__ = "hand_made"

    def __init__(self, correct, bonus, beta):
        self.correct, self.bonus, self.beta = (
            np.asarray(correct, float),
            np.asarray(bonus, float),
            beta,
        )
        self.last = {}

    def __call__(self, prompts=None, completions=None, **kwargs):
        assert len(completions) == len(self.correct)
        self.last = {"correct": self.correct, "bonus": self.bonus}
        return (self.correct + self.beta * self.bonus).tolist()


def test_trainer_advantages_are_verls(tiny, tables, tmp_path):
    """Hand-made groups of G = 8 through RLTrainer's own scoring path (TRL's generation, the reward
    tap, the advantage replacement): all correct with a leverage spread of ~1e-4 (the RepExp case
    issue 11 measured), mixed, all wrong."""
    from repexp.rl.train import build_trainer, parse_args

    G, beta = 8, 0.01
    rng = np.random.default_rng(3)
    correct = np.array([1.0] * G + [1, 0, 1, 1, 0, 0, 0, 1] + [0.0] * G)
    # leverage with lambda = 0.01 is close to (G - 1) / G; within a group it varies by ~1e-4 .. 8e-4
    bonus = (G - 1) / G + rng.uniform(-4e-4, 4e-4, size=3 * G)
    bonus[2 * G :] = 0.0  # no correct rollout: no bonus
    settings = {
        **SETTINGS,
        "group_size": G,
        "train_batch_prompts": 3,
        "mini_batch_prompts": 3,
        "micro_batch_size": 8,
    }
    args = parse_args(
        [
            "--model",
            str(tiny),
            "--model-name",
            "t",
            "--task",
            "arith",
            "--train",
            str(tables / "train.parquet"),
            "--dev",
            str(tables / "dev.parquet"),
            "--method",
            "grpo",
            "--seed",
            "1",
            "--settings",
            json.dumps(settings),
            "--out",
            str(tmp_path),
        ]
    )
    args.dev_task = None
    trainer, _ = build_trainer(args, RLSettings.from_dict(settings))
    assert trainer.adv_eps == 1e-6  # the schema's / verl's default
    trainer.reward_funcs[0].func = HandMadeReward(correct, bonus, beta)
    trainer.model.train()
    rows = pd.read_parquet(tables / "train.parquet").head(3)
    inputs = [
        {"prompt": json.loads(r.prompt), "answer": r.answer, "qid": r.qid}
        for r in rows.itertuples()
        for _ in range(G)
    ]
    rewards = correct + beta * bonus  # the reward function's floats, as TRL receives them
    for eps in (1e-6, 1e-4):
        trainer.adv_eps = eps
        out = trainer._generate_and_score_completions([dict(x) for x in inputs])
        got = trainer.last_scores["advantages"]
        want = verl_grpo_advantages(rewards, G, eps)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        # what the loss sees: the same advantages in float32 (TRL's dtype), for this process's rows
        assert str(out["advantages"].dtype) == "torch.float32"
        np.testing.assert_array_equal(out["advantages"].cpu().numpy(), want.astype(np.float32))
        np.testing.assert_array_equal(trainer.last_scores["rewards"], rewards)
        # the mixed and all-wrong groups do not depend on eps at this scale; all-correct does
        a_all, a_mixed = np.abs(want[:G]).mean(), np.abs(want[G : 2 * G]).mean()
        if eps == 1e-6:
            assert 0.4 < a_all < 0.8 and 0.9 < a_mixed < 1.0
        else:
            # TRL's own epsilon: its (float32) advantages agree, and the bonus signal is ~30x
            # smaller
            trl = trainer.last_scores["trl_advantages"]
            np.testing.assert_allclose(trl[G:], want[G:], atol=1e-5)
            np.testing.assert_allclose(trl[:G], want[:G], atol=3e-3)
            assert a_all < 0.06
        np.testing.assert_array_equal(want[2 * G :], 0.0)
        # the diagnostics: one group of three is all correct; only there does the bonus reorder the
        # advantages (in the mixed group it moves them by ~1e-5 < ORDER_TOL); its share of |A|
        a_correct = verl_grpo_advantages(correct, G, eps)
        scores = trainer.last_scores
        assert scores["groups_all_correct"] == pytest.approx(1 / 3) and scores[
            "groups_reordered"
        ] == pytest.approx(1 / 3)
        share = np.abs(want - a_correct).sum() / np.abs(want).sum()
        assert scores["shaping_share"] == pytest.approx(share, rel=1e-9)
        assert scores["adv_abs_all_correct"] == pytest.approx(a_all, rel=1e-9)
        assert scores["adv_abs"] == pytest.approx(np.abs(want).mean(), rel=1e-9)
    # every generation round leaves one hash per rollout
    assert [len(r["hashes"]) for r in trainer.rollout_log] == [3 * G, 3 * G]


def test_advantage_diagnostics_by_hand():
    from repexp.rl.trainer import advantage_diagnostics, grpo_advantages

    # G = 2: (r - mean) / (std + eps) = ±(d/2) / (|d|/sqrt(2) + eps) = ±1/sqrt(2) for eps -> 0
    np.testing.assert_allclose(
        grpo_advantages([1.0, 3.0, 5.0, 5.0], 2, 0.0), [-(2**-0.5), 2**-0.5, 0, 0]
    )
    np.testing.assert_allclose(
        grpo_advantages([1.0, np.nan, 0.0, 1.0], 2, 0.0), [0, 0, -(2**-0.5), 2**-0.5]
    )
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    # group 1: the shaping orders two correct rollouts; group 2: it reverses them (Unlikeliness
    # can't, but the check must see it); group 3: a shaping within ORDER_TOL; group 4: none
    shaped = [1.0, 0.9, 0.2, 0.9, 1.0 + 1e-9, 0.0, 0.0, 0.0]
    d = advantage_diagnostics(correct, shaped, 2, 1e-6)
    assert d["groups_all_correct"] == 0.25 and d["groups_reordered"] == 0.5
    a_s, a_c = grpo_advantages(shaped, 2, 1e-6), grpo_advantages(correct, 2, 1e-6)
    assert d["shaping_share"] == pytest.approx(np.abs(a_s - a_c).sum() / np.abs(a_s).sum())
    assert d["adv_abs_all_correct"] == pytest.approx(2**-0.5, rel=1e-4)
    # GRPO: the shaped reward is r* itself, no signal in an all-correct group; none at all: NaN
    g = advantage_diagnostics(correct, correct, 2, 1e-6)
    assert g["groups_reordered"] == 0 and g["shaping_share"] == 0 and g["adv_abs_all_correct"] == 0
    assert np.isnan(advantage_diagnostics([0, 0], [0, 0], 2, 1e-6)["adv_abs_all_correct"])


# ------------------------------------------------------------------------------------------------
# the training CLI
# ------------------------------------------------------------------------------------------------
def check_outputs(out: Path, method: str, tiny: Path, steps=(0, 1, 2)) -> dict:
    from safetensors.numpy import load_file

    from repexp.models import load_model, load_tokenizer

    done = json.loads((out / "done.json").read_text())
    assert (
        done["method"] == method
        and done["seed"] == 41
        and done["steps"] == 2
        and done["updates"] == 4
    )
    dev = pd.read_csv(out / "dev.csv")
    assert (
        dev["step"].tolist() == list(steps)
        and (dev["dev_samples"] == 2).all()
        and (dev["dev_questions"] == 2).all()
    )
    assert dev["dev_pass1"].between(0, 1).all()
    log = pd.read_csv(out / "train_log.csv")
    assert log["step"].tolist() == [1, 2] and (log["updates"] == 2).all()
    assert log["reward_correct"].between(0, 1).all() and log["reward_correct"].gt(0).any()
    assert np.isfinite(
        log[
            [
                "loss",
                "grad_norm",
                "lr",
                "reward_total",
                "seconds_generation",
                "seconds_update",
                "seconds_step",
            ]
        ].to_numpy()
    ).all()
    if method == "repexp":
        assert (log["reward_bonus"] > 0).all() and (log["seconds_bonus_forward"] > 0).all()
    else:
        assert (log["reward_bonus"] == 0).all()
    if method == "unlikeliness":
        assert log["unlikeliness_scale"].between(1 - 0.25 * 3 / 4, 1).all()
    # the shaping diagnostics (fractions of groups; GRPO's shaping is none)
    for col in ("groups_all_correct", "groups_reordered"):
        assert (
            log[col].between(0, 1).all() and (log[col] * 2).round(9).mod(1).eq(0).all()
        )  # of 2 groups
    assert (log["adv_abs"] > 0).all()
    if method == "grpo":
        assert (log["groups_reordered"] == 0).all() and (log["shaping_share"].fillna(0) == 0).all()
    # one hash per rollout and step (2 prompts x 4), generated at the step's first update
    rollouts = pd.read_csv(out / "rollouts.csv")
    assert rollouts["step"].tolist() == [1, 2] and rollouts["update"].tolist() == [0, 2]
    assert (rollouts["rollouts"] == 8).all() and [len(h.split()) for h in rollouts["hashes"]] == [
        8,
        8,
    ]
    sketch = np.load(out / "weights_sketch.npz")
    assert len(sketch["final"]) == sketch["size"] == 2**18 and not np.array_equal(
        sketch["final"], sketch["base"]
    )
    # the best checkpoint: strict > over an initial 0, step 0 = the base model
    best = json.loads((out / "best.json").read_text())
    want, at = 0.0, 0
    for s, p in zip(dev["step"], dev["dev_pass1"], strict=True):
        if p > want:
            want, at = p, s
    assert best["step"] == at and best["method"] == method and best["task"] == "arith"
    assert load_tokenizer(out / "best") is not None
    load_model(out / "best", dtype="float32")
    # training changed the parameters (the last checkpoint against the base model)
    ckpt = sorted((out / "checkpoints").glob("checkpoint-*"))[-1]
    trained, base = load_file(ckpt / "model.safetensors"), load_file(tiny / "model.safetensors")
    changed = [k for k in base if k in trained and not np.array_equal(trained[k], base[k])]
    assert changed, "no parameter changed"
    return done


def test_cli_runs_two_steps(tiny, tables, tmp_path, coin_checker):
    out = tmp_path / "unlikeliness"
    assert cli(tiny, tables, out, "unlikeliness", extra=["--keep-checkpoints"]) == 0
    check_outputs(out, "unlikeliness", tiny)


def test_cli_same_seed_runs_differ_only_after_the_first_update(
    tiny, tables, tmp_path, coin_checker
):
    """GRPO and RepExp with one seed draw the same first rollouts (same weights, same RNG); then the
    bonus changes the update, and the weights (and usually the next rollouts) differ."""
    from repexp.rl.evaluate import (
        divergence_table,
        rollout_divergence,
        weight_divergence,
        weight_sketch,
    )

    for method in ("grpo", "repexp"):
        assert cli(tiny, tables, tmp_path / method, method, extra=["--keep-checkpoints"]) == 0
        check_outputs(tmp_path / method, method, tiny)
    r = rollout_divergence(tmp_path / "repexp" / "rollouts.csv", tmp_path / "grpo" / "rollouts.csv")
    assert r["steps"] == 2 and r["rollouts"] == 16
    assert r["per_step"]["differing"].tolist()[0] == 0 and r["first_step_differing"] in (2, None)
    w = weight_divergence(
        tmp_path / "repexp" / "weights_sketch.npz", tmp_path / "grpo" / "weights_sketch.npz"
    )
    assert w["l2"] > 0 and 0 < w["rel_update"] and w["update_a"] > 0 and w["update_b"] > 0
    # the sketch's estimate against the exact distance of the final weights (the last checkpoints)
    last = {
        m: sorted((tmp_path / m / "checkpoints").glob("checkpoint-*"))[-1]
        for m in ("grpo", "repexp")
    }
    exact = weight_divergence(
        weight_sketch(last["repexp"], tiny, size=None), weight_sketch(last["grpo"], tiny, size=None)
    )
    # (a CountSketch of 2^18 buckets: relative standard deviation <= sqrt(2 / 2^18) = 0.3%)
    for key in ("l2", "update_a", "update_b", "rel_update"):
        assert w[key] == pytest.approx(exact[key], rel=0.03), key
    table = divergence_table([tmp_path / "grpo", tmp_path / "repexp"])
    assert table[["method", "versus", "steps", "rollouts"]].values.tolist() == [
        ["repexp", "grpo", 2, 16]
    ]
    assert table["weights_l2"].iloc[0] == pytest.approx(w["l2"])


def test_last_checkpoint_skips_and_removes_one_cut_off_while_saved(tmp_path):
    from repexp.rl.checkpoints import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    ckpt = tmp_path / "checkpoints"
    for step, complete in ((2, True), (9, True), (10, False), (12, False)):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        (ckpt / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete:
            (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    # numeric order (10 > 9), the newest complete one; the incomplete newer ones are gone
    assert last_checkpoint(tmp_path) == str(ckpt / "checkpoint-9")
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-2", "checkpoint-9"]


def test_cli_resumes_after_a_kill(tiny, tables, tmp_path, coin_checker, monkeypatch):
    from repexp.rl import train as rl_train

    class Killed(Exception):
        pass

    evaluate = rl_train.Run.evaluate

    def dies_at_step_1(self, trainer, step, update):
        if step == 1:
            raise Killed
        return evaluate(self, trainer, step, update)

    out = tmp_path / "grpo"
    monkeypatch.setattr(rl_train.Run, "evaluate", dies_at_step_1)
    with pytest.raises(Killed):
        cli(tiny, tables, out, "grpo")
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "done.json").exists()
    # nothing is published before the end (Snakemake deletes a killed job's outputs anyway)
    assert pd.read_csv(out / "state" / "dev.csv")["step"].tolist() == [0]
    assert not any(
        (out / name).exists() for name in ("dev.csv", "train_log.csv", "best.json", "best")
    )
    monkeypatch.setattr(rl_train.Run, "evaluate", evaluate)
    assert cli(tiny, tables, out, "grpo", extra=["--keep-checkpoints"]) == 0
    done = check_outputs(out, "grpo", tiny)
    assert done["resumed_from"].endswith("checkpoint-2")
    assert done["stopped_by"] == "max_steps" and done["train_seconds"] > 0
    # killed after its last checkpoint (before done.json): a rerun trains no further update
    (out / "done.json").unlink()
    assert cli(tiny, tables, out, "grpo", extra=["--keep-checkpoints"]) == 0
    again = json.loads((out / "done.json").read_text())
    assert (again["updates"], again["stopped_by"]) == (4, "max_steps") and again[
        "resumed_from"
    ].endswith("-4")
    assert pd.read_csv(out / "dev.csv")["step"].tolist() == [0, 1, 2]
    # without --keep-checkpoints a finished run removes them
    out2 = tmp_path / "grpo-nokeep"
    one_step = {**SETTINGS, "max_steps": 1, "train_batch_prompts": 1}
    assert cli(tiny, tables, out2, "grpo", settings=one_step) == 0
    assert not (out2 / "checkpoints").exists() and (out2 / "done.json").is_file()


def test_cli_stops_at_the_time_budget(tiny, tables, tmp_path, coin_checker):
    """A budget of 0.36 ms: the run stops after its first step (of max_steps 2), saves and evaluates
    it although eval_every is 2; a rerun resumes from that checkpoint and trains no further."""
    out = tmp_path / "budget"
    budget = {**SETTINGS, "eval_every": 2, "max_hours": 1e-7}
    assert cli(tiny, tables, out, "grpo", settings=budget, extra=["--keep-checkpoints"]) == 0
    done = json.loads((out / "done.json").read_text())
    assert (done["stopped_by"], done["steps"], done["updates"]) == ("max_hours", 1, 2)
    assert done["train_seconds"] > 0 and done["settings"]["max_hours"] == 1e-7
    assert pd.read_csv(out / "dev.csv")["step"].tolist() == [0, 1]
    assert pd.read_csv(out / "train_log.csv")["step"].tolist() == [1]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    assert list(json.loads((out / "state" / "elapsed.json").read_text())["seconds"]) == ["2"]
    # rerun (the job killed after its last checkpoint, say): no further training, the same tables
    (out / "done.json").unlink()
    assert cli(tiny, tables, out, "grpo", settings=budget, extra=["--keep-checkpoints"]) == 0
    again = json.loads((out / "done.json").read_text())
    assert (again["stopped_by"], again["updates"], again["train_seconds"]) == (
        "max_hours",
        2,
        done["train_seconds"],
    )
    assert again["resumed_from"].endswith("checkpoint-2")
    assert pd.read_csv(out / "dev.csv")["step"].tolist() == [0, 1]


def test_paper_fsdp_config_is_a_valid_accelerate_config():
    """The FSDP file the paper's runs are launched with parses as an accelerate config: full
    sharding, bf16 compute, a full state dict on save (best/ must load with transformers)."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    repo = Path(__file__).resolve().parents[1]
    paper = yaml.safe_load((repo / "config" / "paper.yaml").read_text())["rl"]
    path = repo / paper["accelerate_config"]
    cfg = load_config_from_file(str(path))
    assert str(cfg.distributed_type).endswith("FSDP") and str(cfg.mixed_precision).endswith("bf16")
    assert (
        cfg.fsdp_config["fsdp_version"] == 2
        and cfg.fsdp_config["fsdp_reshard_after_forward"] is True
    )  # FULL_SHARD
    assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert cfg.num_machines == 1 and paper["gpus_per_run"] == 8


# ------------------------------------------------------------------------------------------------
# a new RL method through the table alone (CONTRIBUTING.md): config, DAG, trainer, tables
# ------------------------------------------------------------------------------------------------
BONUS = 0.1


class ConstantBonus:
    """A throwaway method's reward: r* + 0.1 for every rollout (TRL's reward-function protocol)."""

    __name__ = "constant_bonus"

    def __init__(self, correctness):
        self.correctness = correctness
        self.last: dict = {}

    def __call__(self, prompts=None, completions=None, answer=None, log_metric=None, **kwargs):
        r = np.asarray(self.correctness(prompts, completions, answer, log_metric, **kwargs))
        self.last = {"correct": r, "bonus": np.full(len(r), BONUS)}
        if log_metric is not None:
            log_metric("reward_bonus", BONUS)
        return (r + BONUS).tolist()


def constant_bonus_reward(ctx):
    from repexp.rl.methods import correctness_reward

    return ConstantBonus(correctness_reward(ctx))


@pytest.fixture()
def bonus_method(monkeypatch):
    """Registers the method `bonus` in repexp.rl.methods.METHODS (and only there)."""
    from repexp.rl.methods import METHODS, RLMethod

    m = RLMethod("bonus", constant_bonus_reward, "Constant bonus", "#123456", bonus=True)
    monkeypatch.setitem(METHODS, "bonus", m)
    return m


def test_a_new_method_passes_the_config_check_and_the_wildcards(bonus_method):
    import re

    from repexp.config import check_config, reference_errors
    from repexp.rl.methods import METHODS, run_pattern, wildcard_pattern

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml_load(repo / "config" / "config.yaml")
    cfg["rl"]["methods"] = ["grpo", "bonus"]
    check_config(cfg, repo / "workflow" / "schemas" / "config.schema.yaml")  # no schema edit
    cfg["rl"]["methods"] = ["bonus", "ppo"]
    assert reference_errors(cfg) == [
        "config key `rl.methods.1` has value 'ppo'; allowed: one of 'grpo', 'unlikeliness', "
        "'repexp', 'bonus' (repexp.rl.methods.METHODS)"
    ]
    # rl.smk's constraints: the method wildcard and the evaluated policies' run names
    assert re.fullmatch(wildcard_pattern(), "bonus") and not re.fullmatch(wildcard_pattern(), "b")
    for run in ("base", "bonus/seed41", "grpo/seed0"):
        assert re.fullmatch(run_pattern(), run)
    for run in ("bonus", "bonus/seed", "ppo/seed41", "base/seed1"):
        assert not re.fullmatch(run_pattern(), run)
    assert list(METHODS)[-1] == "bonus"


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.workflow
def test_a_new_method_reaches_the_dag(tmp_path):
    """`snakemake -n` with the method registered in the workflow's own process (a test-only entry
    point: the table entry, then Snakemake's CLI) and listed in `rl.methods`: its training, test
    pool and question table are jobs, and the RL tables read its runs."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    extra = tmp_path / "bonus.yaml"
    extra.write_text("rl:\n  methods: [grpo, bonus]\n  seeds: [41]\n")
    entry = (
        "import sys\n"
        "from repexp.rl import methods as m\n"
        "m.METHODS['bonus'] = m.RLMethod('bonus', m.correctness_reward, 'Constant bonus', "
        "'#123456', bonus=True)\n"
        "from snakemake.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    target = "results/tables/rl_passk.csv"
    args = ["-n", "-p", "-F", target, "--configfile", "config/test.yaml", str(extra)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        [sys.executable, "-c", entry, *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = "results/rl/tiny-random/gsm8k/bonus/seed41"
    assert f"{run}/done.json" in out.stdout and "--method bonus --seed 41" in out.stdout
    assert f"{run}/test/questions.parquet" in out.stdout
    assert "repexp.rl.evaluate tables" in out.stdout
    tables = out.stdout[out.stdout.index("rule rl_tables:") :].split("\n\n")[0]
    assert f"{run}/test/questions.parquet" in tables and f"{run}/done.json" in tables
    # without the table entry the same config is refused before any job is scheduled
    plain = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert plain.returncode != 0 and "`rl.methods.1` has value 'bonus'" in (
        plain.stdout + plain.stderr
    )


def test_a_new_method_reaches_the_trainer_and_the_job_models(bonus_method):
    from repexp import memory
    from repexp.rl.methods import method
    from repexp.rl.settings import task_settings
    from repexp.rl.train import parse_args, reward_functions

    argv = ["--model", "m", "--model-name", "m", "--task", "arith", "--train", "t"]
    argv += ["--dev", "d", "--method", "bonus", "--seed", "3", "--settings", "{}", "--out", "o"]
    args = parse_args(argv)
    (reward,) = reward_functions(args, RLSettings(), {})
    assert isinstance(reward, ConstantBonus) and reward.correctness.task_name == "arith"
    task = get_task("arith")
    rows = build_table(task, "test", n_questions=2)
    answers = [str(a) for a in rows["answer"]]
    completions = [[{"role": "assistant", "content": f"The answer is {answers[0]}."}], "no"]
    r = reward(completions=completions, answer=answers)
    assert r == [1.0 + BONUS, 0.0 + BONUS]
    assert np.array_equal(reward.last["correct"], [1.0, 0.0])
    assert method("bonus").extra_forwards == 0  # neither ranks nor a frozen model
    # the job-time and memory models: no frozen model, no rank forward, so GRPO's costs
    from snakemake.utils import update_config

    from repexp import jobs
    from repexp.config import check_config

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml_load(repo / "config" / "config.yaml")
    update_config(cfg, yaml_load(repo / "config" / "paper.yaml"))
    cfg = check_config(cfg, repo / "workflow" / "schemas" / "config.schema.yaml")
    shape = memory.model_shape(cfg, cfg["rl"]["model"])
    s = task_settings(cfg["rl"], "math")
    phases = {m: memory.rl_gpu_phases(shape, s, m, gpus=8) for m in ("bonus", "grpo", "repexp")}
    assert phases["bonus"] == phases["grpo"] != phases["repexp"]
    host = {m: memory.rl_host(shape, s, m, gpus=1, on_gpu=False) for m in ("bonus", "grpo")}
    assert host["bonus"] == host["grpo"]
    hours = {m: jobs.rl_train_hours(cfg, "math", m) for m in ("bonus", "grpo", "repexp")}
    assert hours["bonus"] == hours["grpo"] < hours["repexp"]


def test_cli_trains_a_new_method(tiny, tables, tmp_path, coin_checker, bonus_method):
    """Two steps of the throwaway method: its reward reaches TRL and the log (r* + 0.1 per rollout;
    a constant shifts no group's advantages, so the shaping is none, as GRPO's)."""
    out = tmp_path / "bonus"
    assert cli(tiny, tables, out, "bonus") == 0
    done = json.loads((out / "done.json").read_text())
    assert (done["method"], done["steps"], done["updates"]) == ("bonus", 2, 4)
    log = pd.read_csv(out / "train_log.csv")
    # logged through TRL's metrics (float32)
    assert log["reward_bonus"].tolist() == pytest.approx([BONUS, BONUS], abs=1e-7)
    assert (log["reward_total"] - log["reward_correct"]).tolist() == pytest.approx(
        [BONUS, BONUS], abs=1e-6
    )  # TRL's float32 mean of r* + 0.1
    assert log["unlikeliness_scale"].isna().all()  # no rank scaling
    assert (log["seconds_bonus_forward"] == 0).all() and (
        log["seconds_unlikeliness_forward"] == 0
    ).all()
    assert (log["groups_reordered"] == 0).all() and (log["shaping_share"].fillna(0) < 1e-9).all()
    assert json.loads((out / "best.json").read_text())["method"] == "bonus"


def test_a_new_method_reaches_the_tables_and_figures(bonus_method):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from repexp import plots
    from repexp.rl import evaluate as ev

    rows = [
        {"task": "gsm8k", "method": m, "seed": s, "qid": f"q{i}", "n": 4, "c": c}
        for m, s, cs in [("base", None, [2, 0]), ("bonus", 41, [4, 1]), ("repexp", 41, [3, 1])]
        for i, c in enumerate(cs)
    ]
    q = pd.DataFrame(rows).astype({"seed": "Int64"})
    passk = ev.passk_table(q)
    assert list(dict.fromkeys(passk["method"])) == ["base", "repexp", "bonus"]  # the table's order
    bonus = passk[passk["method"] == "bonus"]
    # pass@k by hand: q0 (c = 4 of 4) always; q1 (c = 1): 1/4, 1 - C(3,2)/C(4,2) = 1/2, 1
    assert bonus["k"].tolist() == [1, 2, 4]
    assert bonus["mean"].tolist() == pytest.approx([(1 + 1 / 4) / 2, (1 + 1 / 2) / 2, 1.0])
    eff = ev.efficiency_table(passk).set_index("baseline")
    assert list(eff.index) == ["base", "grpo", "unlikeliness", "bonus"]  # RepExp against it too
    # RepExp: 0.5, 0.75, 1 at k = 1, 2, 4; the bonus's pass@4 = 1 is first reached at k* = 4
    assert (eff.loc["bonus", "k_star"], eff.loc["bonus", "factor"]) == (4.0, 1.0)
    assert eff.loc["grpo", "note"] == "no grpo curve"
    assert plots.rl_methods(passk) == ["base", "repexp", "bonus"]
    assert plots.rl_labels()["bonus"] == "Constant bonus"
    assert plots.rl_colors()["bonus"] == mcolors.to_rgb("#123456")
    fig, ax = plt.subplots()
    assert plots.rl_curve(ax, bonus, "bonus")
    (drawn,) = plots.plotted(fig)[0]["lines"]
    plt.close(fig)
    assert drawn["label"] == "Constant bonus" and drawn["x"] == [1.0, 2.0, 4.0]
    assert drawn["y"] == pytest.approx(bonus["mean"].tolist())
