"""One training run on several GPUs of one node: launch details that TRL and accelerate leave open.

* :func:`main_process_port` -- every run of the grid gets its own rendezvous port
  (``accelerate launch --main_process_port``): accelerate's default is 29500 for every launch,
  so two runs on one node would race for it (accelerate 1.15 falls back to a "standalone-like"
  mode when it sees the port taken, ``accelerate/utils/launch.py``, but two launches starting
  together both see it free).
* :func:`rollout_seed` / :func:`reseed_rollouts` -- TRL 1.16 builds its colocated vLLM engine with
  ``seed=accelerator.process_index // tensor_parallel_size`` (``trl/generation/vllm_generation.py``,
  ``_init_vllm``), and vLLM 0.31's worker calls ``set_random_seed(model_config.seed)`` at start-up
  (``vllm/v1/worker/gpu_worker.py``), which re-seeds the process's global torch/CUDA generators;
  unseeded requests then sample from the global CUDA generator (``random_sample`` in
  ``vllm/v1/sample/ops/topk_topp_sampler.py``). So every run had the same sampling noise whatever
  its ``--seed``. :class:`repexp.rl.trainer.RLTrainer` re-seeds the global generators once vLLM is
  built, from (run seed, engine index): equal within a tensor-parallel group (its ranks must
  sample the same tokens), different between groups and between runs.
* :func:`launch_env` -- the environment ``accelerate launch --config_file`` gives the training
  processes (FSDP variables included), computed by accelerate's own launcher code; the tests and
  ``benchmarks/gpu_check.py`` use it to run checks under the paper's FSDP environment.
"""

from __future__ import annotations

import zlib

PORT_BASE = 29500  # accelerate's default; the grid's runs get PORT_BASE + 1 + their index
PORT_SPAN = 2000  # ports of runs outside the configured grid: PORT_BASE + 1000 + hash % 1000


def main_process_port(rl: dict, task: str, method: str, seed: int) -> int:
    """The rendezvous port of one training run: unique among the runs of the ``rl`` config section
    (tasks × methods × seeds, in config order); a run outside that grid gets a port from a hash of
    its name, above the grid's range."""
    tasks, methods, seeds = (
        list(rl.get("tasks") or []),
        list(rl.get("methods") or []),
        list(rl.get("seeds") or []),
    )
    if task in tasks and method in methods and int(seed) in [int(s) for s in seeds]:
        index = (tasks.index(task) * len(methods) + methods.index(method)) * len(seeds) + [
            int(s) for s in seeds
        ].index(int(seed))
        if index < 1000:
            return PORT_BASE + 1 + index
    return PORT_BASE + 1000 + zlib.crc32(f"{task}/{method}/{seed}".encode()) % (PORT_SPAN - 1000)


def rollout_seed(seed: int, process_index: int, tensor_parallel_size: int) -> int:
    """Seed of the global generators of one training process once its colocated vLLM engine exists:
    a function of the run's seed and the engine (``process_index // tensor_parallel_size``) only."""
    import numpy as np

    engine = int(process_index) // int(tensor_parallel_size)
    return int(np.random.SeedSequence([int(seed), engine, 0x76_6C_6C_6D]).generate_state(1)[0])


def reseed_rollouts(seed: int, process_index: int, tensor_parallel_size: int) -> int:
    """Re-seed python, numpy and torch (CPU and every CUDA device) with :func:`rollout_seed`, as
    vLLM's ``set_random_seed`` does with TRL's seed; returns the seed."""
    import random

    import numpy as np
    import torch

    s = rollout_seed(seed, process_index, tensor_parallel_size)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)  # also seeds every CUDA device
    return s


def launch_env(
    config_file: str, num_processes: int, *, main_process_port: int | None = None
) -> dict[str, str]:
    """The variables ``accelerate launch --config_file <config_file> --num_processes N`` adds to the
    environment of its processes (``ACCELERATE_USE_FSDP``, ``FSDP_*``, ...), from accelerate's own
    ``_validate_launch_command`` and ``prepare_multi_gpu_env``; only those that differ from
    ``os.environ``."""
    import os

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", str(config_file), "--num_processes", str(num_processes)]
    if main_process_port is not None:
        argv += ["--main_process_port", str(main_process_port)]
    args = launch_command_parser().parse_args([*argv, "unused.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}
