"""The paper's GRPO set-up on TRL: settings, the verl -> ``GRPOConfig`` mapping, and a small trainer
subclass.

Batch arithmetic (paper.md §3.2; verl's names on the left). A *step* is verl's: one generation
round.

* ``train_batch_prompts`` prompts × G rollouts are generated per step (TRL:
  ``generation_batch_size`` = ``per_device_train_batch_size × processes × steps_per_generation``);
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
``_generate_and_score_completions`` (a 600-line method), right after ``_calculate_rewards``; there
is no hook between the rewards and the advantages, and reward functions see neither the policy nor
the prompt token ids. The subclass overrides these methods:

* ``_generate`` -- keeps the exact prompt token ids TRL generated from, and times generation;
* ``_calculate_rewards`` -- passes those ids to the reward functions (``prompt_ids=``), and for
  Unlikeliness rescales the gathered correctness per group by the policy's rank (paper.md §3.3)
  before TRL normalises it. The ranks need each completion's mean per-token log-probability under
  the policy that generated it (verl's ``old_log_prob``): TRL only computes ``old_per_token_logps``
  when the generation batch is used over several optimiser steps (``gradient_accumulation_steps``
  not a multiple of ``steps_per_generation``; always with vLLM importance sampling), and keeps it
  local to that method, so the subclass runs one no-grad forward of the policy over the batch
  (TRL's own ``_get_per_token_logps_and_entropies``; the same weights, so the same values).
* ``_generate_and_score_completions`` -- replaces TRL's advantages by verl's
  (:func:`grpo_advantages`), computed in float64 from the exact rewards, and logs the per-step
  diagnostics of the reward
  shaping (:func:`advantage_diagnostics`) and a hash of every rollout (:func:`rollout_hash`).

Advantages (paper.md §3.2; verl ``compute_grpo_outcome_advantage`` with ``norm_adv_by_std_in_grpo``,
the recipe's setting). Per group of G rollouts of a prompt: A_i = (r_i − mean(r)) / (std(r) + ε),
with ``torch.std``'s **unbiased** (Bessel-corrected, n − 1) standard deviation of the group and
verl's ε = 1e-6 (``rl.adv_eps``). TRL 1.16 (``scale_rewards="group"``, ``sum_then_normalize``) has
the same formula with the same unbiased std (``trl.trainer.utils.nanstd``) but a hard-coded ε =
1e-4. That difference is no detail for RepExp: with λ = 0.01 every rollout's leverage is close to
(G − 1)/G, so within a group where every rollout is correct the reward r* + β·bonus varies only by
β·1e-4 .. β·8e-4 (std ~1e-6 .. 1e-5), and the bonus is the only signal there. verl's ε keeps
|A| ~ 0.4-0.7 in such a group; TRL's divides by ~1e-4 and shrinks it 10-50x. verl keeps rewards
and advantages in float32; the subclass keeps each reward function's exact (float64) values and
normalises in float64, because a within-group spread of ~1e-6 on top of r ≈ 1 is only ~10 float32
steps; the advantages go to the loss in float32 (as in TRL and verl). verl's conventions for groups
of one rollout (mean 0, std 1) never arise (``group_size`` >= 2); a rollout without a reward (every
function returned None, TRL's "unscorable") gets advantage 0 and is left out of its group's mean and
std, as in TRL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from repexp.rl.settings import GRID_KEYS as SECTION_GRID_KEYS

log = logging.getLogger(__name__)

# Two advantages closer than this (in units of the group's std) count as tied when the diagnostics
# compare orderings (advantage_diagnostics): a difference below 1e-3 changes a rollout's weight in
# the policy gradient by less than 0.1%.
ORDER_TOL = 1e-3


@dataclass(frozen=True)
class RepExpSettings:
    beta: float = 0.01
    lam: float = 0.01
    proj_dim: int = 32
    zero_if_none_correct: bool = True
    feature_dtype: str = "bfloat16"
    offload_base: bool = True  # the frozen model waits on the host between reward calls (verl)


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
    adv_eps: float = (
        1e-6  # ε of the group normalisation (r - mean) / (std + ε): verl's; TRL hard-codes 1e-4
    )
    train_batch_prompts: int = 1024
    mini_batch_prompts: int = 256
    micro_batch_size: int = 16
    max_prompt_length: int = 1024
    max_response_length: int = 1024
    eval_every: int = 20
    max_steps: int = 1000
    max_hours: float | None = (
        None  # time budget: stop at the first step boundary after it (train.py)
    )
    gpus_per_run: int = 1  # training processes (one per GPU) that the run is launched with
    accelerate_config: str | None = (
        None  # `accelerate launch --config_file` (FSDP); None: --multi_gpu
    )
    dev_samples: int = 128
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.5
    vllm_tensor_parallel_size: int = 1
    vllm_enable_sleep_mode: bool = (
        True  # vLLM frees its weights and KV cache between rollouts (verl)
    )
    reward_workers: int = 1
    dev_task: str | None = None
    repexp: RepExpSettings = field(default_factory=RepExpSettings)
    unlikeliness: UnlikelinessSettings = field(default_factory=UnlikelinessSettings)

    # keys of the rl section that are not one run's settings (ignored here): the grid keys
    # (repexp.rl.settings.GRID_KEYS, the one list of them) and ``task_overrides``, which a run's
    # --settings no longer holds (train_settings applies it) but a whole rl section still does
    GRID_KEYS = (*SECTION_GRID_KEYS, "task_overrides")

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
            raise ValueError(
                f"train_batch_prompts ({self.train_batch_prompts}) must be a multiple of "
                f"mini_batch_prompts ({self.mini_batch_prompts})"
            )
        if self.loss_type not in ("dapo", "bnpo", "grpo", "dr_grpo"):
            raise ValueError(f"loss_type {self.loss_type!r}: use dapo, bnpo, grpo or dr_grpo")
        if not self.adv_eps >= 0:
            raise ValueError(f"adv_eps must be >= 0 (verl: 1e-6), got {self.adv_eps}")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ValueError(
                f"max_hours must be > 0 (or null: no time budget), got {self.max_hours}"
            )
        if self.gpus_per_run < 1:
            raise ValueError(f"gpus_per_run must be >= 1, got {self.gpus_per_run}")
        # the batches and vLLM's tensor-parallel groups must fit the processes the run is launched
        # with
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


def check_group_layout(
    per_device_train_batch_size: int, steps_per_generation: int, num_processes: int, group_size: int
) -> None:
    """Fail unless every process's slice of a generation batch holds whole groups (see the module
    doc)."""
    per_process = per_device_train_batch_size * steps_per_generation
    if per_process % group_size:
        raise ValueError(
            f"each of the {num_processes} process(es) generates {per_process} rollouts per step "
            f"(per_device_train_batch_size {per_device_train_batch_size} x steps_per_generation "
            f"{steps_per_generation}), not a multiple of the group size {group_size}: a group "
            "would be split "
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
            f"rl.vllm_tensor_parallel_size = {tp} does not divide the {num_processes} {what}: "
            "TRL's colocated "
            f"vLLM runs one engine per {tp} consecutive training processes (one per GPU). Set "
            f"rl.gpus_per_run to a multiple of {tp} (the paper: 8 GPUs, TP 2) or lower "
            f"rl.vllm_tensor_parallel_size."
        )


def batch_layout(s: RLSettings, num_processes: int = 1) -> BatchLayout:
    """TRL batch sizes that reproduce verl's train / mini / micro batches (module doc), or a
    clear error."""
    G, micro = s.group_size, s.micro_batch_size
    mini, train = s.mini_batch_prompts * G, s.train_batch_prompts * G
    for name, rollouts in (("mini_batch_prompts", mini), ("train_batch_prompts", train)):
        if rollouts % (micro * num_processes):
            raise ValueError(
                f"rl.{name} x group_size = {rollouts} rollouts is not a multiple of "
                "micro_batch_size "
                f"{micro} x {num_processes} process(es)"
            )
    layout = BatchLayout(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=mini // (micro * num_processes),
        steps_per_generation=train // (micro * num_processes),
        num_processes=num_processes,
        group_size=G,
    )
    check_group_layout(micro, layout.steps_per_generation, num_processes, G)
    return layout


def grpo_config(
    s: RLSettings,
    *,
    output_dir: str,
    seed: int,
    num_processes: int = 1,
    cuda: bool = False,
    save_steps: int | None = None,
    **overrides,
):
    """The ``GRPOConfig`` of paper.md §3.2 (verl recipe values; config/README.md has the mapping
    table)."""
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
        # vLLM colocated generation (GPU only); verl recomputes old log-probs with the actor and has
        # no
        # vLLM importance-sampling correction, so TRL's is off
        use_vllm=s.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=s.vllm_tensor_parallel_size,
        vllm_enable_sleep_mode=s.vllm_enable_sleep_mode,
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
# advantages, their diagnostics, rollout hashes (pure; used by RLTrainer)
# ------------------------------------------------------------------------------------------------
def grpo_advantages(rewards, group_size: int, eps: float) -> np.ndarray:
    """verl's GRPO advantages of consecutive groups of ``group_size`` rewards, in float64 (module
    doc).

    A_i = (r_i − mean_g) / (std_g + ``eps``), std_g unbiased (n − 1), over the group's rewards that
    are not NaN; a NaN reward (no reward function scored the rollout) gets advantage 0, and so does
    every rollout of a group with fewer than two scored rollouts (no baseline).
    """
    r = np.asarray(rewards, dtype=np.float64)
    G = int(group_size)
    if r.ndim != 1 or G < 1 or len(r) % G:
        raise ValueError(f"{r.shape} rewards are not consecutive groups of {G}")
    g = r.reshape(-1, G)
    scored = ~np.isnan(g)
    n = scored.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(scored, g, 0.0).sum(1, keepdims=True) / n
        dev = np.where(scored, g - mean, 0.0)
        std = np.sqrt((dev**2).sum(1, keepdims=True) / (n - 1))
        adv = np.where(
            dev == 0, 0.0, dev / (std + eps)
        )  # a group of equal rewards: 0 (also for eps 0)
    adv = np.where(scored & (n >= 2), adv, 0.0)
    return adv.reshape(-1)


def advantage_diagnostics(
    correct, rewards, group_size: int, eps: float, tol: float = ORDER_TOL
) -> dict:
    """Per-step diagnostics of the reward shaping (RepExp's bonus, Unlikeliness's rank scaling).

    ``correct`` is r* ∈ {0, 1} of each rollout, ``rewards`` the shaped reward the advantages come
    from (r* + β·bonus; r̃ = r*·(1 − β_rank·rank/G); r* itself for GRPO), both in consecutive groups.
    A_shaped and A_correct are :func:`grpo_advantages` of the two.

    * ``groups_all_correct``: fraction of groups whose rollouts are all correct (GRPO's advantages
      are all 0 there, so only the shaping moves the policy on them);
    * ``groups_reordered``: fraction of groups where the shaping changes the order of the
      advantages: some pair of rollouts ordered one way by A_correct is tied or reversed by
      A_shaped, or the
      other way round; two advantages within ``tol`` count as tied;
    * ``shaping_share``: the shaping's share of the mean |advantage|, Σ|A_shaped − A_correct| /
      Σ|A_shaped| (1 when only the shaping gives a signal; NaN when every advantage is 0);
    * ``adv_abs``: mean |A_shaped| over all rollouts; ``adv_abs_all_correct``: the same over the
      rollouts of all-correct groups (NaN when there is none), where ε matters (module doc).

    For GRPO the shaped and the correctness rewards are equal: 0 reordered groups, share 0.
    """
    c = np.asarray(correct, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if c.shape != r.shape:
        raise ValueError(f"correct {c.shape} and rewards {r.shape} differ in shape")
    G = int(group_size)
    a_shaped = grpo_advantages(r, G, eps).reshape(-1, G)
    a_correct = grpo_advantages(c, G, eps).reshape(-1, G)

    def order(a):  # sign(a_i − a_j) with a tolerance, per group: (groups, G, G)
        d = a[:, :, None] - a[:, None, :]
        return np.where(np.abs(d) <= tol, 0, np.sign(d))

    reordered = (order(a_shaped) != order(a_correct)).any(axis=(1, 2))
    all_correct = (c.reshape(-1, G) > 0).all(axis=1)
    total = np.abs(a_shaped).sum()
    return {
        "groups_all_correct": float(all_correct.mean()),
        "groups_reordered": float(reordered.mean()),
        "shaping_share": float(np.abs(a_shaped - a_correct).sum() / total)
        if total > 0
        else float("nan"),
        "adv_abs": float(np.abs(a_shaped).mean()),
        "adv_abs_all_correct": float(np.abs(a_shaped[all_correct]).mean())
        if all_correct.any()
        else float("nan"),
    }


def rollout_hash(prompt_ids, completion_ids) -> str:
    """16 hex digits (blake2b-64) of a rollout's prompt and completion token ids: two runs drew the
    same rollout at the same position iff the hashes agree
    (``repexp.rl.evaluate.rollout_divergence``)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(list(prompt_ids), dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.asarray(list(completion_ids), dtype=np.int64).tobytes())
    return h.hexdigest()


class RewardTap:
    """A reward function that keeps the exact (float64) values it returned, and the parts of a
    function that exposes them (``RepExpReward.last``: ``correct``, ``bonus``). TRL stores rewards
    in float32 (``_calculate_rewards``); :class:`RLTrainer` normalises these instead."""

    def __init__(self, func):
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.values: np.ndarray | None = None
        self.parts: dict = {}

    def __call__(self, *args, **kwargs):
        out = self.func(*args, **kwargs)
        self.values = np.array([np.nan if v is None else float(v) for v in out], dtype=np.float64)
        last = getattr(self.func, "last", None)
        self.parts = {}
        if isinstance(last, dict):
            for key in ("correct", "bonus"):
                if key in last and len(last[key]) == len(out):
                    self.parts[key] = np.asarray(last[key], dtype=np.float64)
        return out


# ------------------------------------------------------------------------------------------------
# the trainer subclass
# ------------------------------------------------------------------------------------------------
def _trainer_class():
    """Defined lazily so that importing this module does not import TRL (slow)."""
    import torch
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import is_async_callable, pad

    class RLTrainer(GRPOTrainer):
        """``GRPOTrainer`` + exact prompt ids for the rewards + Unlikeliness + verl's advantages
        (module doc)."""

        def __init__(self, *args, beta_rank: float | None = None, adv_eps: float = 1e-6, **kwargs):
            super().__init__(*args, **kwargs)
            if (
                self.scale_rewards != "group"
                or self.multi_objective_aggregation != "sum_then_normalize"
            ):
                raise ValueError(
                    "RLTrainer computes verl's per-group advantages: it needs "
                    "scale_rewards='group' and "
                    "multi_objective_aggregation='sum_then_normalize' (got "
                    f"{self.scale_rewards!r}, "
                    f"{self.multi_objective_aggregation!r}); build the config with "
                    "repexp.rl.trainer.grpo_config"
                )
            self.beta_rank = beta_rank
            self.adv_eps = float(adv_eps)
            self._last_prompt_ids = None
            self._scored = None
            # plain reward functions report their exact values (reward models stay TRL's float32)
            self.reward_funcs = [
                f if isinstance(f, torch.nn.Module) or is_async_callable(f) else RewardTap(f)
                for f in self.reward_funcs
            ]
            # the last training batch (gathered): rewards, advantages, ...
            self.last_scores: dict = {}
            self.rollout_log: list[
                dict
            ] = []  # main process: {"update", "hashes"} per generation round
            if (
                self.use_vllm and self.vllm_mode == "colocate"
            ):  # TRL seeds vLLM without the run's seed
                from repexp.rl.distributed import reseed_rollouts

                reseed_rollouts(
                    self.args.seed,
                    self.accelerator.process_index,
                    self.args.vllm_tensor_parallel_size,
                )

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
            if not self.model.training:
                return rewards
            r64, correct, bonus = self._exact_rewards(rewards, len(prompts))
            if self.beta_rank is not None:
                r64[:, 0] = self._unlikeliness(r64[:, 0], completion_ids_list)
                rewards = rewards.clone()
                rewards[:, 0] = torch.as_tensor(
                    r64[:, 0], dtype=rewards.dtype, device=rewards.device
                )
            self._scored = {"rewards": r64, "correct": correct, "bonus": bonus}
            self._log_rollouts(completion_ids_list)
            self._metrics["train"]["timing/reward"].append(time.perf_counter() - t0)
            return rewards

        def _exact_rewards(self, rewards32, n_local: int):
            """The gathered rewards per function in float64 (from the taps; TRL's float32 values for
            a reward model), the correctness r* of each rollout and RepExp's bonus (NaN without
            one)."""
            from accelerate.utils import gather

            device = self.accelerator.device
            local = np.full((n_local, len(self.reward_funcs)), np.nan)
            parts = {"correct": np.full(n_local, np.nan), "bonus": np.full(n_local, np.nan)}
            for i, f in enumerate(self.reward_funcs):
                if isinstance(f, RewardTap) and f.values is not None and len(f.values) == n_local:
                    local[:, i] = f.values
                    if i == 0:  # r* is the first function's (the only one in this project)
                        parts["correct"] = f.parts.get("correct", f.values)
                        parts["bonus"] = f.parts.get("bonus", parts["bonus"])
            stacked = np.concatenate(
                [local, parts["correct"][:, None], parts["bonus"][:, None]], axis=1
            )
            stacked = (
                gather(torch.as_tensor(stacked, dtype=torch.float64, device=device)).cpu().numpy()
            )
            r64 = stacked[:, :-2]
            exact = ~np.isnan(r64)
            theirs = rewards32.detach().double().cpu().numpy()  # gathered by TRL
            r64 = np.where(exact | np.isnan(theirs), r64, theirs)
            correct = np.where(np.isnan(stacked[:, -2]), theirs[:, 0], stacked[:, -2])
            return r64, correct, stacked[:, -1]

        def _log_rollouts(self, completion_ids_list):
            from accelerate.utils import gather_object

            prompts = self._last_prompt_ids or [[] for _ in completion_ids_list]
            hashes = gather_object(
                [rollout_hash(p, c) for p, c in zip(prompts, completion_ids_list, strict=True)]
            )
            if self.accelerator.is_main_process:
                self.rollout_log.append(
                    {"update": int(self.state.global_step), "hashes": list(hashes)}
                )

        def mean_logprobs(self, prompt_ids, completion_ids) -> torch.Tensor:
            """Mean per-token log-probability of each completion under the current policy (no
            grad)."""
            device = self.accelerator.device
            p = pad(
                [torch.tensor(x) for x in prompt_ids],
                padding_value=self._tokenizer.pad_token_id,
                padding_side="left",
            ).to(device)
            pm = pad(
                [torch.ones(len(x), dtype=torch.long) for x in prompt_ids],
                padding_value=0,
                padding_side="left",
            ).to(device)
            c = pad(
                [torch.tensor(x) for x in completion_ids],
                padding_value=self._tokenizer.pad_token_id,
                padding_side="right",
            ).to(device)
            cm = pad(
                [torch.ones(len(x), dtype=torch.long) for x in completion_ids],
                padding_value=0,
                padding_side="right",
            ).to(device)
            with (
                torch.no_grad(),
                disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            ):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([p, c], 1),
                    torch.cat([pm, cm], 1),
                    c.size(1),
                    batch_size=self.args.per_device_train_batch_size,
                )
            return (logps * cm).sum(1) / cm.sum(1).clamp(min=1)

        def _unlikeliness(self, r, completion_ids_list) -> np.ndarray:
            """The (gathered) correctness ``r`` scaled by 1 − β_rank·rank/G within each group."""
            from accelerate.utils import gather

            from repexp.rl.rewards import unlikeliness_scale

            t0 = time.perf_counter()
            local = self.mean_logprobs(self._last_prompt_ids, completion_ids_list)
            lp = gather(local.float()).cpu().numpy()
            self._metrics["train"]["timing/unlikeliness_forward"].append(time.perf_counter() - t0)
            scaled = unlikeliness_scale(r, lp, self.beta_rank, group_size=self.num_generations)
            if (r > 0).any():
                self._metrics["train"]["unlikeliness_scale"].append(
                    float((scaled[r > 0] / r[r > 0]).mean())
                )
            self._metrics["train"]["policy_mean_logprob"].append(float(lp.mean()))
            return scaled

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if self.model.training and self._scored is not None:
                self._verl_advantages(out)
                self._metrics["train"]["timing/generate_and_score"].append(time.perf_counter() - t0)
            return out

        def _verl_advantages(self, out) -> None:
            """Replace TRL's advantages (float32 rewards, ε = 1e-4) by verl's (float64,
            ``adv_eps``)."""
            scored, self._scored = self._scored, None
            r64 = scored["rewards"]
            weights = self.reward_weights.detach().double().cpu().numpy()
            total = np.where(np.isnan(r64), 0.0, r64 * weights).sum(1)
            total[np.isnan(r64).all(1)] = np.nan  # unscorable rollouts (TRL's convention)
            G = self.num_generations
            adv = grpo_advantages(total, G, self.adv_eps)
            n_local = out["advantages"].shape[0]
            start = self.accelerator.process_index * n_local
            trl = out["advantages"]
            out["advantages"] = torch.as_tensor(
                adv[start : start + n_local], dtype=trl.dtype, device=trl.device
            )
            correct = scored["correct"]
            shaped = np.where(np.isnan(total), correct, total)
            diag = advantage_diagnostics(correct, shaped, G, self.adv_eps)
            for key, value in diag.items():
                self._metrics["train"][key].append(value)
            self.last_scores = {
                "rewards": total,
                "correct": correct,
                "bonus": scored["bonus"],
                "advantages": adv,
                "trl_advantages": trl.detach().double().cpu().numpy(),
                "process_slice": slice(start, start + n_local),
                **diag,
            }

    return RLTrainer


_RLTRAINER = None


def rl_trainer_class():
    """:class:`RLTrainer` (a ``trl.GRPOTrainer`` subclass), built on first use."""
    global _RLTRAINER
    if _RLTRAINER is None:
        _RLTRAINER = _trainer_class()
    return _RLTRAINER
