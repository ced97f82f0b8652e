"""Rewards of RL post-training, in TRL's reward-function style (paper.md §3.1, §3.3).

TRL 1.16 calls every reward function once per generation batch *per process* as
``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
log_metric=..., **dataset_columns)`` (``GRPOTrainer._calculate_rewards``), with the G completions of
a prompt in
consecutive rows, and expects one float per completion. Both rewards here are small picklable
classes (the model is loaded lazily and not pickled):

* :class:`CorrectnessReward` -- the extrinsic reward r* ∈ {0, 1} from the task's checker (GRPO; and
  Unlikeliness, whose scaling needs the policy and so lives in
  :class:`repexp.rl.trainer.RLTrainer`);
* :class:`RepExpReward` -- r* + β·bonus, the bonus being the leverage of the rollout's features in
  its group (:mod:`repexp.bonus`), computed from a **frozen copy of the base model** over the exact
  prompt + completion token ids the policy used.

RepExp is one reward function, not two (correctness with weight 1 and bonus with weight β): the
bonus is gated on the group's correctness (zero when no rollout is correct), so it needs r*
anyway, and one function scores each completion once. Its parts are logged with TRL's
``log_metric`` as ``reward_correct`` and ``reward_bonus`` (TRL's own ``reward`` is the total).

Pure helpers: :func:`unlikeliness_ranks`, :func:`unlikeliness_scale`, :func:`check_whole_groups`.

Multi-GPU runs (``accelerate launch`` with ``profiles/accelerate/fsdp.yaml``): accelerate exports
``FSDP_CPU_RAM_EFFICIENT_LOADING=true`` and transformers 5.17 then replaces every weight of *any*
``from_pretrained`` on a local rank > 0 by zeros
(``modeling_utils._move_missing_keys_from_meta_to_device`` under ``is_fsdp_enabled()``,
``transformers/distributed/fsdp.py``), expecting FSDP to broadcast rank 0's weights into it. The
policy gets that broadcast (accelerate's FSDP preparation); the frozen base model of the bonus does
not, so it is loaded under :func:`own_weights`, and :func:`assert_nonzero_model` /
:func:`assert_nonzero_rows` stop a run whose model or features are zeros (without them RepExp
silently becomes GRPO on 7 of 8 processes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from repexp.verifiers.settings import VerifierSettings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# the frozen model under FSDP
# ------------------------------------------------------------------------------------------------
FSDP_LOADING_ENV = "FSDP_CPU_RAM_EFFICIENT_LOADING"
ZERO_FIX = (
    "Under `accelerate launch` with fsdp_cpu_ram_efficient_loading "
    "(profiles/accelerate/fsdp.yaml), transformers zeroes every from_pretrained model on local "
    "ranks > 0 and waits for FSDP to broadcast rank 0's weights, which a model outside the trainer "
    "never gets. Load it inside "
    "repexp.rl.rewards.own_weights() (RepExpReward.load does), or launch without "
    f"{FSDP_LOADING_ENV}."
)


@contextmanager
def own_weights():
    """Every process reads the checkpoint's weights itself while inside this block.

    transformers' ``is_fsdp_enabled()`` is ``ACCELERATE_USE_FSDP`` and
    ``FSDP_CPU_RAM_EFFICIENT_LOADING`` (and a process group); when it holds, ``from_pretrained``
    zeroes the model on local ranks > 0.
    The variable is set to ``false`` for the block and restored after (the policy, loaded before,
    keeps accelerate's rank-0 loading).
    """
    old = os.environ.get(FSDP_LOADING_ENV)
    if old is None:
        yield
        return
    os.environ[FSDP_LOADING_ENV] = "false"
    try:
        yield
    finally:
        os.environ[FSDP_LOADING_ENV] = old


def assert_nonzero_model(model, what: str = "model") -> None:
    """Fail unless every floating-point weight matrix (≥ 2-D parameter) of ``model`` has a
    non-zero entry: a loaded or randomly initialised model never has an all-zero matrix, a model
    that transformers zeroed for FSDP (:func:`own_weights`) has nothing else."""
    mats = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2 and p.is_floating_point()]
    if any(p.is_meta for _, p in mats):
        raise RuntimeError(f"{what}: weights on the meta device (never loaded). {ZERO_FIX}")
    zero = [n for n, p in mats if not bool(p.detach().any())]
    if zero:
        raise RuntimeError(
            f"{what}: {len(zero)} of {len(mats)} weight matrices are all zeros "
            f"({', '.join(zero[:3])}{', ...' if len(zero) > 3 else ''}). {ZERO_FIX}"
        )


def assert_nonzero_rows(x, what: str = "features") -> None:
    """Fail if a row of ``x`` (one rollout's features) is all zeros: a real model's mean last-layer
    state (after the final norm) never is; a zeroed model's always is."""
    x = np.asarray(x)
    zero = np.flatnonzero(~x.any(axis=tuple(range(1, x.ndim))))
    if len(zero):
        raise RuntimeError(
            f"{what}: {len(zero)} of {len(x)} rows are all zeros (rows "
            f"{zero[:8].tolist()}): the base model is zeroed or was never loaded. "
            f"{ZERO_FIX}"
        )


# ------------------------------------------------------------------------------------------------
# groups
# ------------------------------------------------------------------------------------------------
def check_whole_groups(keys: Sequence, group_size: int) -> None:
    """Fail clearly unless ``keys`` (one per row, e.g. question ids) are whole consecutive groups.

    TRL puts the G completions of a prompt in consecutive rows; a per-group bonus is only right if
    every group this process sees is complete (paper.md §3.1: centring and Σ use the whole group).
    """
    n = len(keys)
    if n % group_size:
        raise ValueError(
            f"{n} completions is not a multiple of the group size {group_size}: a group is split "
            "across "
            f"processes (or micro-batches). Make the per-process generation batch "
            f"(per_device_train_batch_size x steps_per_generation) a multiple of the group size."
        )
    for start in range(0, n, group_size):
        block = list(keys[start : start + group_size])
        if any(k != block[0] for k in block):
            raise ValueError(
                f"rows {start}..{start + group_size - 1} are not whole groups (keys {block}): the "
                "G completions "
                f"of a prompt must be consecutive and on one process."
            )


# ------------------------------------------------------------------------------------------------
# Unlikeliness (He, Fried & Welleck 2025; paper.md §3.3)
# ------------------------------------------------------------------------------------------------
def unlikeliness_ranks(mean_logprobs) -> np.ndarray:
    """Ascending ranks 0..G−1 of the rollouts' mean per-token log-probabilities (0 = least likely).

    Ties get distinct ordinal ranks in row order (a stable sort: the earlier row ranks lower).
    He et al. use ``argsort(argsort(.))``, whose tie order torch leaves unspecified; exact ties of
    two float means happen only for identical completions.
    """
    lp = np.asarray(mean_logprobs, dtype=np.float64)
    ranks = np.empty(len(lp), dtype=np.int64)
    ranks[np.argsort(lp, kind="stable")] = np.arange(len(lp))
    return ranks


def unlikeliness_scale(
    rewards, mean_logprobs, beta_rank: float, group_size: int | None = None
) -> np.ndarray:
    """r̃_i = R_i · (1 − β_rank · rank_i / G), per group (paper.md §3.3).

    ``rewards`` and ``mean_logprobs`` are rows of consecutive groups of ``group_size`` (default: all
    rows are one group). Incorrect rollouts stay 0; the least likely correct one keeps R; the most
    likely is scaled by 1 − β_rank (G−1)/G. The usual GRPO normalisation is applied afterwards.
    """
    r = np.asarray(rewards, dtype=np.float64)
    lp = np.asarray(mean_logprobs, dtype=np.float64)
    if r.shape != lp.shape or r.ndim != 1:
        raise ValueError(f"rewards {r.shape} and mean_logprobs {lp.shape} must be equal 1-D shapes")
    G = len(r) if group_size is None else int(group_size)
    if G < 1 or len(r) % G:
        raise ValueError(f"{len(r)} rows is not a multiple of the group size {G}")
    out = np.empty_like(r)
    for s in range(0, len(r), G):
        out[s : s + G] = r[s : s + G] * (1.0 - beta_rank * unlikeliness_ranks(lp[s : s + G]) / G)
    return out


# ------------------------------------------------------------------------------------------------
# reward functions
# ------------------------------------------------------------------------------------------------
def completion_texts(completions) -> list[str]:
    """Plain text of TRL completions (strings, or conversational ``[{"role": "assistant",
    ...}]``)."""
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c)
        else:
            out.append("".join(m["content"] for m in c if m.get("role") == "assistant"))
    return out


class CorrectnessReward:
    """r*(x, y) ∈ {0, 1}: the task's checker on the completion text against the ``answer`` column.

    ``verifiers`` are the checker switches of the RL stage
    (:meth:`~repexp.verifiers.settings.VerifierSettings.for_stage` ``(section, "rl")``; default:
    :class:`~repexp.verifiers.settings.VerifierSettings`' defaults). ``workers > 1`` scores in that
    many processes (one timeout per item, ``repexp.tasks.score_many``), worth it for math-verify on
    large GPU batches; 1 scores in this process (the checker's own process-level timeout still
    guards math-verify).
    """

    __name__ = "correct"

    def __init__(
        self,
        task: str,
        *,
        source: str = "offline",
        verifiers: VerifierSettings | None = None,
        workers: int = 1,
    ):
        self.task_name, self.source = task, source
        self.verifiers = VerifierSettings() if verifiers is None else verifiers
        self.workers = int(workers)
        self._task = None

    @property
    def task(self):
        if self._task is None:
            from repexp.tasks import get_task

            self._task = get_task(self.task_name, source=self.source, verifiers=self.verifiers)
        return self._task

    def __getstate__(self):
        return {**self.__dict__, "_task": None}

    def scores(self, completions, answer) -> np.ndarray:
        texts = completion_texts(completions)
        if len(answer) != len(texts):
            raise ValueError(f"{len(texts)} completions but {len(answer)} answers")
        if self.workers > 1:
            from repexp.tasks import score_many

            return score_many(self.task, list(answer), texts, workers=self.workers)
        return np.array(
            [self.task.score(a, t) for a, t in zip(answer, texts, strict=True)], dtype=np.float64
        )

    def __call__(
        self, prompts=None, completions=None, answer=None, log_metric=None, **kwargs
    ) -> list[float]:
        r = self.scores(completions, answer)
        if log_metric is not None:
            log_metric("reward_correct", float(r.mean()))
        return r.tolist()


class RepExpReward:
    """RepExp's reward r*_i + β·b_i (paper.md §3.1), the bonus from a frozen copy of the base model.

    Per call (one generation batch of this process):

    1. r* from :class:`CorrectnessReward`;
    2. features h̄_i = mean of the base model's last hidden state (after the final norm; the model
       is loaded without its LM head) over the response positions, the end-of-sequence token
       included when present, from the exact prompt ids (``prompt_ids``, passed by
       :class:`repexp.rl.trainer.RLTrainer`; else re-tokenised with the chat template exactly as
       TRL does) followed by ``completion_ids``;
    3. a fresh very sparse projection to ``proj_dim`` dims, seeded by (``seed``, the trainer's
       global step), shared by all groups of the batch; centring per group; leverage with λ; zero
       for a
       group without a correct rollout (:func:`repexp.bonus.group_bonuses`).

    Groups are the consecutive blocks of ``group_size`` rows; a block that is not one question
    (``qid`` column) is an error (:func:`check_whole_groups`), so a split group can never get a
    bonus computed from part of it.

    The model is loaded on the first call (after the trainer has sharded the policy, so a
    process never holds both on the host) under :func:`own_weights`, and checked
    (:func:`assert_nonzero_model`; every feature batch: :func:`assert_nonzero_rows`). ``offload``
    (on a GPU): the model waits on the host and is moved to the GPU only for its forward, as
    verl's reward model (``param_offload=True``), so it takes no GPU memory during rollouts and
    updates (config/README.md, "RL memory per GPU").
    """

    __name__ = "repexp"

    def __init__(
        self,
        base_model: str,
        *,
        task: str,
        group_size: int,
        beta: float = 0.01,
        lam: float = 0.01,
        proj_dim: int = 32,
        seed: int = 0,
        zero_if_none_correct: bool = True,
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_tokens: int = 4096,
        source: str = "offline",
        verifiers: VerifierSettings | None = None,
        workers: int = 1,
        offload: bool = False,
    ):
        self.base_model = str(base_model)
        self.correctness = CorrectnessReward(
            task, source=source, verifiers=verifiers, workers=workers
        )
        self.group_size, self.beta, self.lam, self.proj_dim = (
            int(group_size),
            float(beta),
            float(lam),
            int(proj_dim),
        )
        self.seed, self.zero_if_none_correct = int(seed), bool(zero_if_none_correct)
        self.dtype, self.device, self.batch_tokens = dtype, device, int(batch_tokens)
        self.offload = bool(offload)
        self._model = self._tok = None
        self._where = None  # the device the model computes on
        self._calls = 0
        self.last = {}  # the parts of the last call (tests, benchmark)

    def __getstate__(self):
        return {**self.__dict__, "_model": None, "_tok": None}

    def load(self):
        """The frozen base model (eval mode, no gradients) and its tokenizer, loaded once.

        Every process reads the weights itself (:func:`own_weights`); the model is checked for
        zeros. With ``offload`` on a GPU it is kept on the host (see :meth:`features`)."""
        if self._model is None:
            import torch

            from repexp.models import load_model, load_tokenizer

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if device == "cuda":
                device = f"cuda:{torch.cuda.current_device()}"
            self._where = device
            home = "cpu" if self.offload else device
            with own_weights():
                model = load_model(self.base_model, dtype=self.dtype, device=home, lm_head=False)
            model.requires_grad_(False)
            assert_nonzero_model(model, f"the frozen base model {self.base_model} (RepExp)")
            self._model = model
            self._tok = load_tokenizer(self.base_model)
        return self._model, self._tok

    def prompt_ids_of(self, prompts) -> list[list[int]]:
        """Token ids of ``prompts`` as TRL's ``_tokenize_prompts`` makes them (chat template,
        generation prompt)."""
        _, tok = self.load()
        if prompts and not isinstance(prompts[0], str):
            out = tok.apply_chat_template(
                conversation=list(prompts),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
            return [list(map(int, ids)) for ids in out["input_ids"]]
        return [list(map(int, ids)) for ids in tok(text=list(prompts))["input_ids"]]

    def features(self, prompt_ids, completion_ids) -> np.ndarray:
        """Mean last-layer states of the base model over each completion's positions, (n × D)
        float32. With ``offload`` the model is moved to its GPU for the forward and back to the
        host after."""
        from repexp.features import pooled_states

        model, tok = self.load()
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        moved = self.offload and str(next(model.parameters()).device) != str(self._where)
        if moved:
            model.to(self._where)
        try:
            feats = pooled_states(
                model,
                [list(p) for p in prompt_ids],
                [list(c) for c in completion_ids],
                batch_tokens=self.batch_tokens,
                poolings=("mean",),
                pad_id=pad,
            )["mean"]
        finally:
            if moved:
                import torch

                model.to("cpu")
                torch.cuda.empty_cache()  # back to the driver: vLLM allocates outside torch's cache
        assert_nonzero_rows(feats, f"RepExp features of {len(feats)} rollouts")
        return feats

    def __call__(
        self,
        prompts=None,
        completions=None,
        completion_ids=None,
        answer=None,
        prompt_ids=None,
        qid=None,
        trainer_state=None,
        log_metric=None,
        **kwargs,
    ) -> list[float]:
        from repexp.bonus import group_bonuses, projection_seed, sparse_projection

        n = len(completion_ids)
        check_whole_groups(qid if qid is not None else [str(p) for p in prompts], self.group_size)
        t_load = time.perf_counter()
        self.load()  # the first call loads the model (not counted as the forward's time)
        t_load = time.perf_counter() - t_load
        correct = self.correctness.scores(completions, answer)
        if prompt_ids is None:
            prompt_ids = self.prompt_ids_of(prompts)
        else:  # the trainer's ids; the chat template must agree with them (first row checked)
            mine = self.prompt_ids_of(prompts[:1])[0]
            if list(prompt_ids[0]) != mine:
                raise RuntimeError(
                    "the prompt ids TRL generated from differ from the chat template's: "
                    f"{list(prompt_ids[0])[:20]}... vs {mine[:20]}..."
                )
        t0 = time.perf_counter()
        feats = self.features(prompt_ids, completion_ids)
        t_forward = time.perf_counter() - t0
        step = trainer_state.global_step if trainer_state is not None else self._calls
        self._calls += 1
        R = sparse_projection(feats.shape[1], self.proj_dim, projection_seed(self.seed, step))
        groups = np.repeat(np.arange(n // self.group_size), self.group_size)
        bonus = group_bonuses(
            feats,
            groups,
            correct,
            lam=self.lam,
            proj_matrix=R,
            zero_if_none_correct=self.zero_if_none_correct,
        )
        total = correct + self.beta * bonus
        self.last = {
            "correct": correct,
            "bonus": bonus,
            "total": total,
            "features": feats,
            "step": step,
            "forward_seconds": t_forward,
            "load_seconds": t_load,
        }
        if log_metric is not None:
            log_metric("reward_correct", float(correct.mean()))
            log_metric("reward_bonus", float(bonus.mean()))
            log_metric("timing/bonus_forward", t_forward)
        log.debug(
            "repexp reward step %d: correct %.3f bonus %.4f (forward %.2fs)",
            step,
            correct.mean(),
            bonus.mean(),
            t_forward,
        )
        return total.tolist()
