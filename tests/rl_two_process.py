"""Run by tests/test_rl_distributed.py under ``accelerate launch --num_processes 2`` (gloo, CPU)
with a CPU copy of profiles/accelerate/fsdp.yaml, so every process has the paper's FSDP
environment (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_CPU_RAM_EFFICIENT_LOADING``, ...).
Not a test file.

1. ``sync``: the policy as the trainer gets it (``from_pretrained`` under that environment), sharded
   the way accelerate shards it for the config's ``fsdp_version`` (FSDP2: accelerate's own
   ``fsdp2_prepare_model``; FSDP1: ``FullyShardedDataParallel`` with accelerate's arguments), then
   TRL's colocated-vLLM weight sync (``VLLMGeneration.sync_weights``, the real method) into a
   stand-in engine that records what ``load_weights`` receives; then one forward/backward/SGD update
   and a second sync. Accelerate 1.15 never shards on a CPU (``AcceleratorState`` sets
   ``DistributedType.FSDP`` only for accelerator devices, accelerate/state.py), hence the direct
   calls.
2. ``train``: one RepExp step of ``python -m repexp.rl.train`` (2 processes, data parallel on CPU),
   every reward call's inputs and results written per rank for the test to recompute in one process.

Writes ``<out>/rank<r>.json`` (sync results) and ``<out>/rank<r>.pkl`` (reward calls).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace


class RecordingLLM:
    """Stands in for ``vllm.LLM`` in TRL's colocated sync: records the weights it is given."""

    def __init__(self):
        self.loaded, self.calls = {}, []
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def _load(self, weights):
        for name, tensor in weights:
            self.loaded[name] = tensor.detach().clone()

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def _compare(loaded: dict, expected: dict) -> dict:
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    diff = max(
        (
            float((loaded[k].float() - expected[k].float()).abs().max())
            for k in set(loaded) & set(expected)
        ),
        default=float("nan"),
    )
    return {"missing": missing, "extra": extra, "max_abs_diff": diff, "n_loaded": len(loaded)}


def sync_check(model_dir: str, sleep_mode: bool) -> dict:
    import torch
    import torch.distributed as dist
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoModelForCausalLM
    from trl.distributed import DistributedBackend
    from trl.generation.vllm_generation import VLLMGeneration

    from repexp.rl.rewards import own_weights

    rank, world = dist.get_rank(), dist.get_world_size()
    if os.environ.get("FSDP_VERSION") == "2":
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of the launch
    else:  # FSDP1's sync_module_states needs an accelerator (the plugin's __post_init__)
        saved = dict(os.environ)
        plugin = FullyShardedDataParallelPlugin(
            sync_module_states=False, cpu_ram_efficient_loading=False
        )
        os.environ.clear()
        os.environ.update(
            saved
        )  # the plugin wrote FSDP_CPU_RAM_EFFICIENT_LOADING; the launch's stays
    out = {
        "fsdp_version": plugin.fsdp_version,
        "cpu_ram_efficient_loading": bool(plugin.cpu_ram_efficient_loading),
    }
    with own_weights():
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32
    )  # as build_trainer loads it
    out["policy_zeroed_by_transformers"] = not any(
        bool(p.detach().any()) for p in policy.parameters()
    )
    acc = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=None),
        device=torch.device("cpu"),
        torch_device_mesh=None,
        parallelism_config=None,
        is_main_process=rank == 0,
        mixed_precision="no",
        process_index=rank,
        local_process_index=rank,
        num_processes=world,
    )
    if plugin.fsdp_version == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        wrapped = fsdp2_prepare_model(acc, policy)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        plugin.set_auto_wrap_policy(policy)
        # accelerate's FSDP1 arguments (accelerator.py, prepare_model); on a CPU only without
        # sync_module_states ("FSDP needs a non-CPU accelerator device"), so rank 0's weights first
        if rank:
            with own_weights():
                policy.load_state_dict(ref.state_dict())
        wrapped = FSDP(
            policy,
            sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
            auto_wrap_policy=plugin.auto_wrap_policy,
            use_orig_params=plugin.use_orig_params,
            device_id=torch.device("cpu"),
        )
    # TRL hands VLLMGeneration the model it was constructed with (GRPOTrainer.__init__), i.e. the
    # transformers model before accelerate prepared it: the same object under FSDP2 (fully_shard
    # works in place), the root's inner module under FSDP1
    gen = VLLMGeneration.__new__(VLLMGeneration)
    gen.model, gen.accelerator, gen._dist = policy, acc, DistributedBackend(acc)
    gen.mode, gen.enable_sleep_mode, gen._llm_weights_sleeping = "colocate", sleep_mode, sleep_mode
    gen.llm = RecordingLLM()
    expected = {
        n: p.detach().clone() for n, p in ref.named_parameters()
    }  # tied weights once, as vLLM wants
    steps = {"n_expected": len(expected)}
    try:
        gen.sync_weights()
        steps["first_sync"] = _compare(gen.llm.loaded, expected)
        # one update: the same batch on every rank, so FSDP's mean gradient is the one-process one
        torch.manual_seed(0)
        ids = torch.randint(0, ref.config.vocab_size, (2, 6))
        lr = 0.5
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        ref_loss = ref(input_ids=ids, labels=ids).loss
        ref_loss.backward()
        with torch.no_grad():
            for p in wrapped.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
            for p in ref.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
        steps["loss"], steps["ref_loss"] = float(loss), float(ref_loss)
        gen.llm.loaded.clear()
        gen.sync_weights()
        steps["second_sync"] = _compare(
            gen.llm.loaded, {n: p.detach() for n, p in ref.named_parameters()}
        )
        moved = max(
            float((p.detach() - expected[n]).abs().max()) for n, p in ref.named_parameters()
        )
        steps["update_size"] = moved
        if plugin.fsdp_version == 2:  # best/ is saved from accelerate's FSDP2 full state dict
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            opts = StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True
            )
            full = get_model_state_dict(wrapped, options=opts)  # accelerate's get_state_dict
            if rank == 0:
                steps["saved"] = _compare(full, ref.state_dict())
        with torch.no_grad():  # the model still runs after the syncs
            steps["loss_after"] = float(wrapped(input_ids=ids, labels=ids).loss)
            steps["ref_loss_after"] = float(ref(input_ids=ids, labels=ids).loss)
    except Exception as e:  # reported, so that the test names the failing stage
        steps["error"] = f"{type(e).__name__}: {e}"
        steps["traceback"] = traceback.format_exc()[-3000:]
    steps["engine_calls"] = [list(c) for c in gen.llm.calls]
    out.update(steps)
    return out


def train_step(args) -> list:
    """One RepExp step of the training CLI; returns this rank's reward calls."""
    import numpy as np

    from repexp.rl import rewards
    from repexp.rl.train import main
    from repexp.tasks import Task

    Task.score = lambda self, answer, response: (
        1.0
    )  # every rollout correct: the bonus is never gated off
    calls = []
    original = rewards.RepExpReward.__call__

    def recording(
        self,
        prompts=None,
        completions=None,
        completion_ids=None,
        answer=None,
        prompt_ids=None,
        qid=None,
        trainer_state=None,
        log_metric=None,
        **kw,
    ):
        total = original(
            self,
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            answer=answer,
            prompt_ids=prompt_ids,
            qid=qid,
            trainer_state=trainer_state,
            log_metric=log_metric,
            **kw,
        )
        calls.append(
            {
                "prompts": prompts,
                "completions": completions,
                "answer": list(answer),
                "completion_ids": [list(map(int, c)) for c in completion_ids],
                "prompt_ids": None
                if prompt_ids is None
                else [list(map(int, p)) for p in prompt_ids],
                "qid": list(qid),
                "step": self.last["step"],
                "total": np.asarray(total),
                "bonus": self.last["bonus"],
                "features": self.last["features"],
            }
        )
        return total

    rewards.RepExpReward.__call__ = recording
    main(
        [
            "--model",
            args.model,
            "--model-name",
            "tiny-random",
            "--task",
            "arith",
            "--train",
            str(Path(args.tables) / "train.parquet"),
            "--dev",
            str(Path(args.tables) / "dev.parquet"),
            "--method",
            "repexp",
            "--seed",
            "41",
            "--settings",
            args.settings,
            "--source",
            "offline",
            "--threads",
            "2",
            "--out",
            str(Path(args.out) / "run"),
        ]
    )
    return calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sync-models", nargs="+", required=True)
    ap.add_argument("--tables", required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--sleep-mode", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)  # gloo process group of the launch
    rank = state.process_index
    out = Path(args.out)
    result = {
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))
        },
        "sync": {m: sync_check(m, args.sleep_mode) for m in args.sync_models},
    }
    state.wait_for_everyone()
    try:
        calls = train_step(args)
    except Exception as e:
        result["train_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        calls = []
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    with open(out / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(calls, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
