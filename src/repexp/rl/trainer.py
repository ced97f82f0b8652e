"""The paper's GRPO set-up on TRL: settings, the verl -> ``GRPOConfig`` mapping, and a small trainer subclass.

Batch arithmetic (paper.md §3.2; verl's names on the left). A *step* is verl's: one generation round.

* ``train_batch_prompts`` prompts × G rollouts are generated per step (TRL: ``generation_batch_size``
  = ``per_device_train_batch_size × processes × steps_per_generation``);
* they are consumed in ``train_batch_prompts / mini_batch_prompts`` optimiser updates of
  ``mini_batch_prompts × G`` rollouts each (TRL: ``per_device_train_batch_size × processes ×
  gradient_accumulation_steps``);
* ``micro_batch_size`` rollouts per device per forward/backward (verl
  ``ppo_micro_batch_size_per_gpu``; TRL ``per_device_train_batch_size``).

So TRL's ``global_step`` (optimiser updates) = step × ``train_batch_prompts / mini_batch_prompts``;
``max_steps`` and ``eval_every`` are in steps, as in verl. The per-process generation batch
(G × ``train_batch_prompts`` / processes rollouts) must hold whole groups: TRL's ``RepeatSampler``
lays out each prompt's G copies consecutively and accelerate hands every process one consecutive
slice of ``per_device_train_batch_size × steps_per_generation`` rows, so a group is split across
processes exactly when that slice is not a multiple of G (:func:`check_group_layout`).

Why a subclass (:class:`RLTrainer`): TRL 1.16 computes the advantages inline in
``_generate_and_score_completions`` (a 600-line method), right after ``_calculate_rewards``; there is
no hook between the rewards and the advantages, and reward functions see neither the policy nor
the prompt token ids. The subclass overrides two small methods:

* ``_generate`` -- keeps the exact prompt token ids TRL generated from, and times generation;
* ``_calculate_rewards`` -- passes those ids to the reward functions (``prompt_ids=``), and for
  Unlikeliness rescales the gathered correctness per group by the policy's rank (paper.md §3.3)
  before TRL normalises it. The ranks need each completion's mean per-token log-probability under
  the policy that generated it (verl's ``old_log_prob``): TRL only computes ``old_per_token_logps``
  when the generation batch is used over several optimiser steps (``gradient_accumulation_steps``
  not a multiple of ``steps_per_generation``; always with vLLM importance sampling), and keeps it
  local to that method, so the subclass runs one no-grad forward of the policy over the batch
  (TRL's own ``_get_per_token_logps_and_entropies``; the same weights, so the same values).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields

log = logging.getLogger(__name__)

METHODS = ("grpo", "unlikeliness", "repexp")


@dataclass(frozen=True)
class RepExpSettings:
    beta: float = 0.01
    lam: float = 0.01
    proj_dim: int = 32
    zero_if_none_correct: bool = True
    feature_dtype: str = "bfloat16"


@dataclass(frozen=True)
class UnlikelinessSettings:
    beta_rank: float = 0.25


@dataclass(frozen=True)
class RLSettings:
    """The resolved ``rl`` section for one task (schema defaults = paper.md §3.2)."""

    group_size: int = 8
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    clip_ratio: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    temperature: float = 1.0
    loss_type: str = "dapo"
    train_batch_prompts: int = 1024
    mini_batch_prompts: int = 256
    micro_batch_size: int = 16
    max_prompt_length: int = 1024
    max_response_length: int = 1024
    eval_every: int = 20
    max_steps: int = 1000
    max_hours: float | None = None  # time budget: stop at the first step boundary after it (train.py)
    gpus_per_run: int = 1  # training processes (one per GPU) that the run is launched with
    accelerate_config: str | None = None  # `accelerate launch --config_file` (FSDP); None: --multi_gpu
    dev_samples: int = 128
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.5
    vllm_tensor_parallel_size: int = 1
    reward_workers: int = 1
    dev_task: str | None = None
    repexp: RepExpSettings = field(default_factory=RepExpSettings)
    unlikeliness: UnlikelinessSettings = field(default_factory=UnlikelinessSettings)

    # keys of the rl section that choose the grid, not one run (ignored here)
    GRID_KEYS = ("model", "tasks", "methods", "seeds", "test_samples", "task_overrides")

    @classmethod
    def from_dict(cls, d: dict) -> RLSettings:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - set(cls.GRID_KEYS))
        if unknown:
            raise ValueError(f"unknown rl settings {unknown}; known: {sorted(known)}")
        kw = {k: v for k, v in d.items() if k in known}
        kw["repexp"] = RepExpSettings(**(d.get("repexp") or {}))
        kw["unlikeliness"] = UnlikelinessSettings(**(d.get("unlikeliness") or {}))
        s = cls(**kw)
        s.check()
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def updates_per_step(self) -> int:
        return self.train_batch_prompts // self.mini_batch_prompts

    def check(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO needs a group), got {self.group_size}")
        if self.train_batch_prompts % self.mini_batch_prompts:
            raise ValueError(f"train_batch_prompts ({self.train_batch_prompts}) must be a multiple of "
                             f"mini_batch_prompts ({self.mini_batch_prompts})")
        if self.loss_type not in ("dapo", "bnpo", "grpo", "dr_grpo"):
            raise ValueError(f"loss_type {self.loss_type!r}: use dapo, bnpo, grpo or dr_grpo")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ValueError(f"max_hours must be > 0 (or null: no time budget), got {self.max_hours}")
        if self.gpus_per_run < 1:
            raise ValueError(f"gpus_per_run must be >= 1, got {self.gpus_per_run}")
        # the batches and vLLM's tensor-parallel groups must fit the processes the run is launched with
        batch_layout(self, self.gpus_per_run)
        check_vllm_layout(self, self.gpus_per_run, what="rl.gpus_per_run")


@dataclass(frozen=True)
class BatchLayout:
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_processes: int
    group_size: int

    @property
    def per_process_generation_batch(self) -> int:
        return self.per_device_train_batch_size * self.steps_per_generation


def check_group_layout(per_device_train_batch_size: int, steps_per_generation: int, num_processes: int,
                       group_size: int) -> None:
    """Fail unless every process's slice of a generation batch holds whole groups (see the module doc)."""
    per_process = per_device_train_batch_size * steps_per_generation
    if per_process % group_size:
        raise ValueError(
            f"each of the {num_processes} process(es) generates {per_process} rollouts per step "
            f"(per_device_train_batch_size {per_device_train_batch_size} x steps_per_generation "
            f"{steps_per_generation}), not a multiple of the group size {group_size}: a group would be split "
            f"across processes and its RepExp bonus / Unlikeliness ranks computed from part of it. "
            f"Choose rl.train_batch_prompts as a multiple of the number of processes."
        )


def check_vllm_layout(s: RLSettings, num_processes: int, what: str = "training processes") -> None:
    """Fail unless TRL's colocated vLLM can split the processes into tensor-parallel groups.

    In ``vllm_mode="colocate"`` every training process hosts a share of a vLLM engine: TRL groups
    consecutive ranks into engines of ``vllm_tensor_parallel_size`` GPUs each (8 processes, TP 2:
    4 engines on ranks [0, 1], [2, 3], ...), so the number of processes must be a multiple of it
    (TRL checks this too, but only after loading the model)."""
    tp = s.vllm_tensor_parallel_size
    if s.use_vllm and num_processes % tp:
        raise ValueError(
            f"rl.vllm_tensor_parallel_size = {tp} does not divide the {num_processes} {what}: TRL's colocated "
            f"vLLM runs one engine per {tp} consecutive training processes (one per GPU). Set "
            f"rl.gpus_per_run to a multiple of {tp} (the paper: 8 GPUs, TP 2) or lower "
            f"rl.vllm_tensor_parallel_size."
        )


def batch_layout(s: RLSettings, num_processes: int = 1) -> BatchLayout:
    """TRL batch sizes that reproduce verl's train / mini / micro batches (module doc), or a clear error."""
    G, micro = s.group_size, s.micro_batch_size
    mini, train = s.mini_batch_prompts * G, s.train_batch_prompts * G
    for name, rollouts in (("mini_batch_prompts", mini), ("train_batch_prompts", train)):
        if rollouts % (micro * num_processes):
            raise ValueError(
                f"rl.{name} x group_size = {rollouts} rollouts is not a multiple of micro_batch_size "
                f"{micro} x {num_processes} process(es)"
            )
    layout = BatchLayout(per_device_train_batch_size=micro, gradient_accumulation_steps=mini // (micro * num_processes),
                         steps_per_generation=train // (micro * num_processes), num_processes=num_processes,
                         group_size=G)
    check_group_layout(micro, layout.steps_per_generation, num_processes, G)
    return layout


def grpo_config(s: RLSettings, *, output_dir: str, seed: int, num_processes: int = 1, cuda: bool = False,
                save_steps: int | None = None, **overrides):
    """The ``GRPOConfig`` of paper.md §3.2 (verl recipe values; config/README.md has the mapping table)."""
    from trl import GRPOConfig

    lay = batch_layout(s, num_processes)
    check_vllm_layout(s, num_processes)
    kw = dict(
        output_dir=output_dir,
        seed=seed,
        data_seed=seed,
        # batches (module doc)
        per_device_train_batch_size=lay.per_device_train_batch_size,
        gradient_accumulation_steps=lay.gradient_accumulation_steps,
        steps_per_generation=lay.steps_per_generation,
        num_generations=s.group_size,
        max_steps=s.max_steps * s.updates_per_step,
        # optimiser: verl's actor defaults (AdamW, wd 0.01, constant lr, no warm-up, clip 1.0)
        learning_rate=s.learning_rate,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=s.weight_decay,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=s.max_grad_norm,
        # GRPO objective
        beta=s.kl_coef,
        epsilon=s.clip_ratio,
        num_iterations=s.ppo_epochs,
        loss_type=s.loss_type,
        scale_rewards="group",
        entropy_coef=s.entropy_coef,
        mask_truncated_completions=False,
        # sampling: temperature, top-p 1, no top-k / min-p
        temperature=s.temperature,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=s.max_response_length,
        # precision / devices: fp32 master weights; bf16 autocast on GPUs
        use_cpu=not cuda,
        bf16=cuda,
        fp16=False,
        gradient_checkpointing=s.gradient_checkpointing,
        # vLLM colocated generation (GPU only); verl recomputes old log-probs with the actor and has no
        # vLLM importance-sampling correction, so TRL's is off
        use_vllm=s.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=s.vllm_tensor_parallel_size,
        vllm_importance_sampling_correction=False,
        # bookkeeping
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps or s.eval_every * s.updates_per_step,
        save_total_limit=1,
        save_only_model=False,
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=False,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return GRPOConfig(**kw)


# ------------------------------------------------------------------------------------------------
# the trainer subclass
# ------------------------------------------------------------------------------------------------
def _trainer_class():
    """Defined lazily so that importing this module does not import TRL (slow)."""
    import numpy as np
    import torch
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import pad

    class RLTrainer(GRPOTrainer):
        """``GRPOTrainer`` + exact prompt ids for the rewards + Unlikeliness (module doc says why)."""

        def __init__(self, *args, beta_rank: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.beta_rank = beta_rank
            self._last_prompt_ids = None

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self._last_prompt_ids = out[0]
            if self.model.training:
                self._metrics["train"]["timing/generation"].append(time.perf_counter() - t0)
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            t0 = time.perf_counter()
            if self._last_prompt_ids is not None and len(self._last_prompt_ids) == len(inputs):
                for x, ids in zip(inputs, self._last_prompt_ids, strict=True):
                    x["prompt_ids"] = [int(i) for i in ids]
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.beta_rank is not None and self.model.training:
                rewards = self._unlikeliness(rewards, completion_ids_list)
            if self.model.training:
                self._metrics["train"]["timing/reward"].append(time.perf_counter() - t0)
            return rewards

        def mean_logprobs(self, prompt_ids, completion_ids) -> torch.Tensor:
            """Mean per-token log-probability of each completion under the current policy (no grad)."""
            device = self.accelerator.device
            p = pad([torch.tensor(x) for x in prompt_ids], padding_value=self._tokenizer.pad_token_id,
                    padding_side="left").to(device)
            pm = pad([torch.ones(len(x), dtype=torch.long) for x in prompt_ids], padding_value=0,
                     padding_side="left").to(device)
            c = pad([torch.tensor(x) for x in completion_ids], padding_value=self._tokenizer.pad_token_id,
                    padding_side="right").to(device)
            cm = pad([torch.ones(len(x), dtype=torch.long) for x in completion_ids], padding_value=0,
                     padding_side="right").to(device)
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, torch.cat([p, c], 1), torch.cat([pm, cm], 1), c.size(1),
                    batch_size=self.args.per_device_train_batch_size)
            return (logps * cm).sum(1) / cm.sum(1).clamp(min=1)

        def _unlikeliness(self, rewards, completion_ids_list):
            """Scale the (gathered) correctness column by 1 − β_rank·rank/G within each group."""
            from accelerate.utils import gather

            from repexp.rl.rewards import unlikeliness_scale

            t0 = time.perf_counter()
            local = self.mean_logprobs(self._last_prompt_ids, completion_ids_list)
            lp = gather(local.float()).cpu().numpy()
            self._metrics["train"]["timing/unlikeliness_forward"].append(time.perf_counter() - t0)
            r = rewards[:, 0].cpu().numpy().astype(np.float64)
            scaled = unlikeliness_scale(r, lp, self.beta_rank, group_size=self.num_generations)
            if (r > 0).any():
                self._metrics["train"]["unlikeliness_scale"].append(float((scaled[r > 0] / r[r > 0]).mean()))
            self._metrics["train"]["policy_mean_logprob"].append(float(lp.mean()))
            rewards = rewards.clone()
            rewards[:, 0] = torch.as_tensor(scaled, dtype=rewards.dtype, device=rewards.device)
            return rewards

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self._metrics["train"]["timing/generate_and_score"].append(time.perf_counter() - t0)
            return out

    return RLTrainer


_RLTRAINER = None


def rl_trainer_class():
    """:class:`RLTrainer` (a ``trl.GRPOTrainer`` subclass), built on first use."""
    global _RLTRAINER
    if _RLTRAINER is None:
        _RLTRAINER = _trainer_class()
    return _RLTRAINER
