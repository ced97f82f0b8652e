"""Token-level RepExp: representation-guided generation (paper.md §2).

For response i of a question, at every step t the next-token distribution is filtered with top-k
then top-p (the transformers warpers, in ``generate``'s order); for every surviving candidate v_j
the last-layer hidden state h_j of (prompt, y<t, v_j) is computed, and the token is sampled from

    z̃ = z + β·b,   b_j = sqrt(h̃_jᵀ Σ⁻¹ h̃_j),   h̃_j = h_j − μ,

filtered tokens staying at −∞. Σ = λI + Σ_t (h_t − μ)(h_t − μ)ᵀ runs over every generated token of
the question's *completed* responses 1..i−1 (the current one is excluded) and μ is their mean.
After a response ends its T token states are folded in by T Sherman–Morrison updates of the
uncentred inverse Σ̃⁻¹ (Σ̃ = λI + Σ_t h_t h_tᵀ), and the centred inverse is recovered with
Proposition B.2, all in float64 (:class:`CentredInverse`).

The first response has no Σ yet and is sampled plainly (the same filters, no bonus): the paper
does not say what it does, and with Σ₀ = λI and no mean the bonus would only favour tokens with
large hidden states.

Cost (issue: "the candidates share the prefix"): the candidates of a step are one batch of K
tokens on the prefix's key/value cache, laid out as a tree — every candidate sits at the same
position and attends to the prefix and to itself only (a custom 4-D attention mask) — so the
prefix is never re-run. The chosen candidate's key/value entries are then appended to the cache
and its hidden state gives the next step's logits through the LM head: a bonus step costs one
forward of K tokens, a plain step one of 1 token.

This module's :class:`Decoder` and :func:`explore` decode one run at a time (the reference). The
``run`` command uses the batched engine of :mod:`repexp.tokenbatch` (``--slots`` runs in lockstep,
the same responses under the same seeds), and splits long runs into jobs (``--part``,
``--responses-per-job``: the runs' generators and Σ̃⁻¹ are saved with ``--state-out`` and read by
the next part with ``--state-in``; the last part gathers the earlier parts' rows, ``--rows-in``).
:func:`benchmark_rate` measures its tokens per second (GPU checks).

The experiment (paper.md §2 "Setting"): the hardest *solvable* questions (lowest pass@1 > 0 in a
reference model's pools), up to ``k_max`` generations per question stopping at the first correct
one, several seeds, each β against vanilla sampling with the same filters.

CLI (the ``token_level_*`` rules)::

    python -m repexp.tokenlevel questions --scores <pool score shards> --n-questions 200 \\
        --reference-samples 1024 --seed 0 --out Q
    python -m repexp.tokenlevel run --model M --tasks T --questions Q --method beta1 --beta 1.0 \
        --slots 64 --part 0 --responses-per-job 114 ... --state-out S0 --out R0
    python -m repexp.tokenlevel summarize --runs R... --questions Q --k-max 1024 --out-passk ...
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from repexp import provenance
from repexp.atomic import write_parquet
from repexp.tokenbatch import (  # noqa: F401 (benchmark_rate: the GPU checks' entry point)
    BatchedExplorer,
    Run,
    benchmark_rate,
    load_states,
    part_range,
    restore_run,
    save_runs,
)

log = logging.getLogger(__name__)

DIFFICULTY_COLUMNS = [
    "method",
    "beta",
    "bin",
    "ref_pass1_min",
    "ref_pass1_max",
    "questions",
    "solve_rate",
    "improvement",
    "improvement_se",
    "k",
]
RUN_COLUMNS = [
    "qid",
    "rank",
    "seed_index",
    "method",
    "beta",
    "response",
    "n_tokens",
    "finish_reason",
    "correct",
    "text",
    "mean_bonus",
    "mean_candidates",
    "seconds",
]


# ------------------------------------------------------------------------------------------------
# the covariance of completed responses (float64)
# ------------------------------------------------------------------------------------------------
class CentredInverse:
    """The centred inverse Σ⁻¹ of the token states folded in so far (paper.md §2, Proposition B.2).

    Keeps the uncentred inverse Σ̃⁻¹ (Σ̃ = λI + Σ_t h_t h_tᵀ, updated by Sherman–Morrison, one
    update per token), the running sum of the states and their count H; then

        Σ⁻¹ = Σ̃⁻¹ − Σ̃⁻¹μμᵀΣ̃⁻¹ / (−1/H + μᵀΣ̃⁻¹μ),   Σ = Σ̃ − Hμμᵀ = λI + Σ_t (h_t − μ)(h_t − μ)ᵀ.

    With nothing folded in, Σ⁻¹ = λ⁻¹I and μ = 0.
    """

    def __init__(self, dim: int, lam: float, *, device="cpu"):
        import torch

        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.lam, self.dim = float(lam), int(dim)
        self.raw_inverse = torch.eye(dim, dtype=torch.float64, device=device) / lam
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, states) -> None:
        """Fold in the (T, d) states of one completed response, one rank-one update per token."""
        import torch

        h = torch.as_tensor(states).to(self.raw_inverse.device, torch.float64)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"states must be (T, {self.dim}), got {tuple(h.shape)}")
        if not torch.isfinite(h).all():
            raise ValueError(
                "a token state is NaN/Inf: the model overflowed in its dtype (use float32)"
            )
        inv = self.raw_inverse
        for row in h:
            u = inv @ row  # Σ̃⁻¹ is symmetric: Σ̃⁻¹ h hᵀ Σ̃⁻¹ = u uᵀ
            inv -= torch.outer(u, u) / (1.0 + row @ u)
        self.total += h.sum(0)
        self.count += h.shape[0]

    @property
    def mean(self):
        return self.total / self.count if self.count else self.total.clone()

    def inverse(self):
        """Σ⁻¹ of the centred states (Proposition B.2)."""
        if not self.count:
            return self.raw_inverse.clone()
        import torch

        mu = self.mean
        v = self.raw_inverse @ mu
        return self.raw_inverse - torch.outer(v, v) / (-1.0 / self.count + mu @ v)

    def bonus(self, states, inverse=None):
        """sqrt(h̃ᵀ Σ⁻¹ h̃) for each row of ``states`` (float64); pass ``inverse`` to reuse Σ⁻¹."""
        import torch

        inv = self.inverse() if inverse is None else inverse
        h = torch.as_tensor(states).to(inv.device, torch.float64) - self.mean
        return torch.sqrt(torch.clamp(((h @ inv) * h).sum(-1), min=0.0))


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Filters and sizes of token-level generation (config ``token_level``)."""

    top_p: float = 0.95
    top_k: int = 128
    lam: float = 0.1
    max_new_tokens: int = 512
    candidate_batch: int = 64

    def __post_init__(self):
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1 or self.candidate_batch < 1 or self.max_new_tokens < 1:
            raise ValueError("top_k, candidate_batch and max_new_tokens must be >= 1")


class Decoder:
    """One model, decoding one sequence at a time on a key/value cache, with or without the bonus.

    ``model`` is a causal LM (``repexp.models.load_model``); its base model gives the last-layer
    states (after the final norm) and its output embedding the logits.
    """

    def __init__(self, model, eos_ids, settings: Settings):
        from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

        self.model, self.settings = model, settings
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eos_ids = set(int(e) for e in eos_ids)
        # generate()'s order: top-k, then top-p; filtered tokens are -inf
        self.warpers = LogitsProcessorList(
            [TopKLogitsWarper(settings.top_k), TopPLogitsWarper(settings.top_p)]
        )

    # ---------------------------------------------------------------- cache helpers
    @staticmethod
    def _layers(cache):
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = cache.layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            bad = {type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer}
            if bad & {DynamicSlidingWindowLayer.__name__}:
                raise NotImplementedError(
                    "token-level RepExp needs full-attention layers (no sliding window)"
                )
            raise NotImplementedError(
                f"token-level RepExp does not support cache layers {sorted(bad)}"
            )
        return layers

    def _forward(self, ids, cache, **kw):
        return self.base(
            input_ids=ids, past_key_values=cache, use_cache=True, **kw
        ).last_hidden_state

    def logits(self, state):
        """Next-token logits (float32, (1, V)) from a last-layer state (d,)."""
        return self.head(state[None]).float()

    def candidate_states(self, cache, prefix_len: int, candidates):
        """Last-layer states (K, d) of (prefix, v_j) for every candidate v_j, in batches of
        ``candidate_batch`` on the prefix's cache; returns them with each layer's candidate keys and
        values (the cache is left holding the prefix only)."""
        import torch

        states, keys, values = [], [], []
        min_value = torch.finfo(self.dtype).min
        for start in range(0, len(candidates), self.settings.candidate_batch):
            chunk = candidates[start : start + self.settings.candidate_batch]
            k = len(chunk)
            mask = torch.full(
                (1, 1, k, prefix_len + k), min_value, dtype=self.dtype, device=self.device
            )
            mask[..., :prefix_len] = 0
            mask[0, 0, torch.arange(k), prefix_len + torch.arange(k)] = (
                0  # each candidate sees itself
            )
            pos = torch.full((1, k), prefix_len, dtype=torch.long, device=self.device)
            h = self._forward(chunk[None], cache, attention_mask=mask, position_ids=pos)[0]
            states.append(h)
            layers = self._layers(cache)
            keys.append([layer.keys[..., prefix_len:, :] for layer in layers])
            values.append([layer.values[..., prefix_len:, :] for layer in layers])
            for layer in layers:
                layer.keys, layer.values = (
                    layer.keys[..., :prefix_len, :],
                    layer.values[..., :prefix_len, :],
                )
        return torch.cat(states), keys, values

    def _append_candidate(self, cache, keys, values, j: int) -> None:
        import torch

        batch, row = divmod(j, self.settings.candidate_batch)
        for layer, k, v in zip(self._layers(cache), keys[batch], values[batch], strict=True):
            layer.keys = torch.cat([layer.keys, k[..., row : row + 1, :]], dim=-2)
            layer.values = torch.cat([layer.values, v[..., row : row + 1, :]], dim=-2)

    # ---------------------------------------------------------------- one response
    def generate(
        self,
        prompt_ids: list[int],
        *,
        generator,
        inverse: CentredInverse | None = None,
        beta: float = 0.0,
        need_states: bool = False,
    ) -> dict:
        """One response. With ``inverse`` (Σ of the completed responses) every step computes the
        candidates' states and adds β·bonus to their logits; without it, plain sampling.

        Returns ``response_ids``, ``finish_reason``, the (T, d) float32 token ``states`` (when
        ``inverse`` is given or ``need_states``), ``mean_bonus`` and ``mean_candidates``.
        """
        import torch
        from transformers import DynamicCache

        s = self.settings
        bonus_on = inverse is not None
        sigma_inv = inverse.inverse() if bonus_on else None
        cache = DynamicCache()
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.device)
            h = self._forward(ids, cache)[0, -1]
            logits = self.logits(h)
            response, states, bonuses, n_cands = [], [], [], []
            for _ in range(s.max_new_tokens):
                scores = self.warpers(ids, logits)
                if bonus_on:
                    cands = torch.nonzero(torch.isfinite(scores[0])).squeeze(1)
                    c_states, c_keys, c_values = self.candidate_states(cache, ids.shape[1], cands)
                    b = inverse.bonus(c_states, sigma_inv)
                    scores = scores.clone()
                    scores[0, cands] = scores[0, cands] + (beta * b).to(scores.dtype)
                    probs = torch.softmax(scores, dim=-1)
                    token = torch.multinomial(probs, num_samples=1, generator=generator)
                    j = int(torch.nonzero(cands == token[0, 0])[0, 0])
                    self._append_candidate(cache, c_keys, c_values, j)
                    h = c_states[j]
                    states.append(h)
                    bonuses.append(float(b[j]))
                    n_cands.append(len(cands))
                    logits = self.logits(h)
                else:
                    probs = torch.softmax(scores, dim=-1)
                    token = torch.multinomial(probs, num_samples=1, generator=generator)
                t = int(token[0, 0])
                response.append(t)
                ids = torch.cat([ids, token], dim=1)
                done = t in self.eos_ids or len(response) == s.max_new_tokens
                if bonus_on:  # the chosen candidate's state is already known
                    if done:
                        break
                    continue
                if done and not need_states:
                    break
                h = self._forward(token, cache)[0, -1]  # the state at the new token's position
                if need_states:
                    states.append(h)
                if done:
                    break
                logits = self.logits(h)
        out = {
            "response_ids": response,
            "finish_reason": "stop" if response and response[-1] in self.eos_ids else "length",
            "mean_bonus": float(np.mean(bonuses)) if bonuses else float("nan"),
            "mean_candidates": float(np.mean(n_cands)) if n_cands else float("nan"),
        }
        if states:
            out["states"] = torch.stack(states).float().cpu()
        return out


def eos_ids_of(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    ids.discard(None)
    return sorted(ids)


def make_generator(device, seed: int):
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


# ------------------------------------------------------------------------------------------------
# one run: up to k_max generations of one question, stopping at the first correct one
# ------------------------------------------------------------------------------------------------
def explore(
    decoder: Decoder,
    tok,
    prompt_ids: list[int],
    check: Callable[[str], bool],
    *,
    k_max: int,
    beta: float | None,
    seed: int,
    stop_at_correct: bool = True,
) -> list[dict]:
    """Sequential responses to one prompt. ``beta=None``: vanilla (plain sampling, no Σ);
    otherwise token-level RepExp (response 1 plain, then the bonus on Σ of the earlier ones)."""
    gen = make_generator(decoder.device, seed)
    inverse = (
        None
        if beta is None
        else CentredInverse(
            decoder.base.config.hidden_size, decoder.settings.lam, device=decoder.device
        )
    )
    rows = []
    for i in range(1, k_max + 1):
        t0 = time.perf_counter()
        use = inverse if (inverse is not None and inverse.count) else None
        r = decoder.generate(
            prompt_ids,
            generator=gen,
            inverse=use,
            beta=beta or 0.0,
            need_states=inverse is not None,
        )
        if inverse is not None:
            inverse.add(r["states"])
        text = tok.decode(r["response_ids"], skip_special_tokens=True)
        correct = bool(check(text))
        rows.append(
            {
                "response": i,
                "response_ids": r["response_ids"],
                "n_tokens": len(r["response_ids"]),
                "finish_reason": r["finish_reason"],
                "correct": correct,
                "text": text,
                "mean_bonus": r["mean_bonus"],
                "mean_candidates": r["mean_candidates"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if correct and stop_at_correct:
            break
    return rows


def explore_vanilla_batched(
    model,
    tok,
    prompt_ids: list[int],
    check: Callable[[str], bool],
    *,
    k_max: int,
    settings: Settings,
    seed: int,
    batch_size: int,
) -> list[dict]:
    """Vanilla runs in batches of ``batch_size`` with transformers ``generate`` (same filters);
    responses are checked in order and the run stops at the first correct one, as the sequential
    runs do (a batch may generate up to ``batch_size - 1`` responses that are never counted)."""
    from repexp.pools import Sampler, generate_hf, question_seed

    sampler = Sampler(temperature=1.0, top_p=settings.top_p, top_k=settings.top_k)
    rows = []
    for start in range(0, k_max, batch_size):
        t0 = time.perf_counter()
        b = min(batch_size, k_max - start)
        batch = generate_hf(
            model,
            tok,
            prompt_ids,
            n=b,
            sampler=sampler,
            max_new_tokens=settings.max_new_tokens,
            seed=question_seed(seed, "batch", str(start)),
            batch_size=b,
        )
        secs = (time.perf_counter() - t0) / b
        for r in batch:
            correct = bool(check(r["text"]))
            rows.append(
                {
                    "response": start + r["sample"] + 1,
                    "response_ids": r["response_ids"],
                    "n_tokens": len(r["response_ids"]),
                    "finish_reason": r["finish_reason"],
                    "correct": correct,
                    "text": r["text"],
                    "mean_bonus": float("nan"),
                    "mean_candidates": float("nan"),
                    "seconds": secs,
                }
            )
            if correct:
                return rows
    return rows


# ------------------------------------------------------------------------------------------------
# the experiment's pieces (pure functions over tables)
# ------------------------------------------------------------------------------------------------
def reference_subsample(scores: pd.DataFrame, samples: int | None, seed: int) -> pd.DataFrame:
    """The reference responses that rank the questions: per question, ``samples`` of its responses
    drawn uniformly without replacement (all of them when it has at most ``samples``, or when
    ``samples`` is None).

    The paper estimates pass@1 from 1,024 samples per question, so its floor is 1/1,024; a larger
    pool (the paper grid's 6,400) would rank by a finer, lower floor and pick a harder set. The draw
    of a question is ``numpy.random.default_rng(question_seed(seed, "reference-subsample", qid))``
    over its responses in ``sample`` order: it depends on neither the shards nor the other
    questions."""
    if samples is None:
        return scores
    from repexp.pools import question_seed

    keep = []
    for qid, g in scores.groupby("qid", sort=False):
        g = g.sort_values("sample", kind="stable")
        if len(g) > samples:
            rng = np.random.default_rng(question_seed(seed, "reference-subsample", str(qid)))
            g = g.iloc[np.sort(rng.choice(len(g), size=samples, replace=False))]
        keep.append(g)
    return pd.concat(keep) if keep else scores.iloc[:0]


def reference_counts(scores: pd.DataFrame, samples: int | None, seed: int) -> pd.DataFrame:
    """Per question of ``scores`` (``qid, sample, correct``): ``ref_n``, ``ref_correct`` of its
    :func:`reference_subsample` and ``pool_n``, ``pool_correct`` of all its responses. A question
    only needs its own rows, so a pool can be counted shard by shard."""
    pool = scores.groupby("qid")["correct"].agg(pool_n="size", pool_correct="sum")
    sub = reference_subsample(scores, samples, seed)
    per_q = sub.groupby("qid")["correct"].agg(ref_n="size", ref_correct="sum")
    return per_q.join(pool).reset_index()


def hardest_from_counts(counts: pd.DataFrame, n_questions: int) -> pd.DataFrame:
    """The ``n_questions`` questions of :func:`reference_counts` with the lowest ``ref_pass1`` > 0
    (ties: by question id), ranked from 0 (hardest)."""
    per_q = counts.assign(ref_pass1=counts["ref_correct"] / counts["ref_n"])
    solvable = per_q[per_q["ref_correct"] > 0].sort_values(["ref_pass1", "qid"], kind="stable")
    out = solvable.head(n_questions).reset_index(drop=True)
    out.insert(0, "rank", np.arange(len(out)))
    out = out.astype({"ref_correct": int, "pool_correct": int})
    return out[["rank", "qid", "ref_n", "ref_correct", "ref_pass1", "pool_n", "pool_correct"]]


def hardest_solvable(
    scores: pd.DataFrame, n_questions: int, *, samples: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The ``n_questions`` questions with the lowest reference pass@1 > 0 (ties: by question id).

    ``scores``: ``qid, sample, correct`` of the reference model's pools. pass@1 is estimated on
    :func:`reference_subsample` (``samples`` responses per question, seeded by ``seed``), so a
    question the subsample never solves is not solvable here. Returns ``rank`` (0 = hardest),
    ``qid``, ``ref_n``, ``ref_correct``, ``ref_pass1`` (of the subsample) and ``pool_n``,
    ``pool_correct`` (of the whole pool).
    """
    return hardest_from_counts(reference_counts(scores, samples, seed), n_questions)


def run_shards(n_questions: int, seeds: int, runs_per_shard: int) -> int:
    return -(-n_questions * seeds // runs_per_shard)


def shard_runs(
    n_questions: int, seeds: int, runs_per_shard: int, shard: int
) -> list[tuple[int, int]]:
    """(question rank, seed index) of the runs of one shard; runs are ordered seed-major so that a
    shard of a short run list still covers several questions."""
    runs = [(rank, s) for s in range(seeds) for rank in range(n_questions)]
    if not 0 <= shard < run_shards(n_questions, seeds, runs_per_shard):
        raise ValueError(
            f"shard {shard} out of range for {len(runs)} runs, {runs_per_shard} per shard"
        )
    return runs[shard * runs_per_shard : (shard + 1) * runs_per_shard]


def method_name(beta: float | None) -> str:
    return "vanilla" if beta is None else f"beta{beta:g}"


def solved_at(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (qid, seed_index, method, beta): ``solved_at`` = 1-based index of the first
    correct generation (NaN if none within the run), ``generations``."""
    keys = ["qid", "rank", "seed_index", "method", "beta"]
    g = runs.assign(hit=np.where(runs["correct"], runs["response"], np.nan)).groupby(
        keys, dropna=False
    )
    return g.agg(solved_at=("hit", "min"), generations=("response", "max")).reset_index()


def passk_table(per_run: pd.DataFrame, k_max: int) -> pd.DataFrame:
    """pass@k for k = 1..k_max per method: per question the fraction of its runs solved within k
    generations, then the mean over questions, with the standard error over questions."""
    ks = np.arange(1, k_max + 1)
    rows = []
    for (method, beta), df in per_run.groupby(["method", "beta"], dropna=False):
        solved = df["solved_at"].to_numpy()[:, None] <= ks[None, :]  # NaN compares False
        per_q = pd.DataFrame(solved, index=df["qid"].to_numpy()).groupby(level=0).mean()
        n = len(per_q)
        se = per_q.std(ddof=1).to_numpy() / np.sqrt(n) if n > 1 else np.full(len(ks), np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "method": method,
                    "beta": beta,
                    "k": ks,
                    "pass_at_k": per_q.mean().to_numpy(),
                    "se": se,
                    "questions": n,
                    "runs": len(df),
                }
            )
        )
    return (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["method", "beta", "k", "pass_at_k", "se", "questions", "runs"])
    )


def difficulty_table(
    per_run: pd.DataFrame, questions: pd.DataFrame, *, k: int, bins: int
) -> pd.DataFrame:
    """Solve rate within ``k`` generations per difficulty bin and method, and each β's
    improvement over vanilla (paired by question; SE over the bin's questions).

    Bins are quantiles of the reference pass@1 (bin 1 = hardest), as equal in size as possible.
    """
    from repexp.metrics import difficulty_deciles

    q = questions.set_index("qid")
    n_bins = max(1, min(bins, len(q)))
    # difficulty_deciles: bin 0 = lowest STC (easiest); here the value is pass@1, lowest = hardest
    bin_of = pd.Series(difficulty_deciles(-q["ref_pass1"].to_numpy(), n_bins), index=q.index)
    bin_of = n_bins - bin_of  # 1 = hardest
    rate = (
        per_run.assign(solved=per_run["solved_at"] <= k)
        .groupby(["method", "beta", "qid"], dropna=False)["solved"]
        .mean()
        .reset_index()
    )
    rate["bin"] = rate["qid"].map(bin_of)
    lo = q["ref_pass1"].groupby(bin_of).min()
    hi = q["ref_pass1"].groupby(bin_of).max()
    vanilla = rate[rate["method"] == "vanilla"].set_index("qid")["solved"]
    rows = []
    if rate.empty:
        return pd.DataFrame(columns=DIFFICULTY_COLUMNS)
    for (method, beta, b), df in rate.groupby(["method", "beta", "bin"], dropna=False):
        diff = (df.set_index("qid")["solved"] - vanilla.reindex(df["qid"]).to_numpy()).dropna()
        rows.append(
            {
                "method": method,
                "beta": beta,
                "bin": int(b),
                "ref_pass1_min": lo[b],
                "ref_pass1_max": hi[b],
                "questions": len(df),
                "solve_rate": df["solved"].mean(),
                "improvement": diff.mean() if len(diff) else np.nan,
                "improvement_se": diff.std(ddof=1) / np.sqrt(len(diff))
                if len(diff) > 1
                else np.nan,
                "k": k,
            }
        )
    return pd.DataFrame(rows, columns=DIFFICULTY_COLUMNS)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _cmd_questions(a) -> int:
    # shard by shard (a paper pool holds millions of responses); a question is in one shard
    counts = pd.concat(
        [
            reference_counts(
                pd.read_parquet(f, columns=["qid", "sample", "correct"]),
                a.reference_samples,
                a.seed,
            )
            for f in a.scores
        ],
        ignore_index=True,
    )
    if counts["qid"].duplicated().any():
        raise SystemExit(
            f"question {counts.loc[counts['qid'].duplicated(), 'qid'].iloc[0]} is in "
            f"several score shards: the reference pool's shards overlap"
        )
    q = hardest_from_counts(counts, a.n_questions)
    used = a.reference_samples or "all"
    if len(q) < a.n_questions:
        log.warning(
            "only %d of %d pool questions are solvable (pass@1 > 0 on %s responses each); "
            "the experiment uses %d, not %d",
            len(q),
            len(counts),
            used,
            len(q),
            a.n_questions,
        )
    pool_n = int(q["pool_n"].max()) if len(q) else 0
    write_parquet(
        q,
        a.out,
        n_questions=a.n_questions,
        reference_pool_size=pool_n,
        reference_samples=a.reference_samples,
        seed=a.seed,
    )
    log.info(
        "%d hardest solvable questions, reference pass@1 %.4f..%.4f (%s of each question's %d "
        "responses)",
        len(q),
        q["ref_pass1"].min() if len(q) else float("nan"),
        q["ref_pass1"].max() if len(q) else float("nan"),
        used,
        pool_n,
    )
    return 0


def _cmd_run(a) -> int:
    import json

    import torch

    from repexp.models import load_model, load_tokenizer
    from repexp.pools import prompt_ids_of, question_seed
    from repexp.score import task_from_args

    if a.threads:
        from repexp.parallel import cap_threads

        cap_threads(a.threads)  # torch, BLAS and OpenMP threads = the rule's threads
    beta = None if a.beta in (None, "none") else float(a.beta)
    if method_name(beta) != a.method:
        raise SystemExit(
            f"--method {a.method} does not match --beta {a.beta} (expected {method_name(beta)})"
        )
    settings = Settings(
        top_p=a.top_p,
        top_k=a.top_k,
        lam=a.lam,
        max_new_tokens=a.max_new_tokens,
        candidate_batch=a.candidate_batch,
    )
    questions = pd.read_parquet(a.questions)
    table = pd.read_parquet(a.tasks).set_index("qid")
    task = task_from_args(a)
    planned = shard_runs(a.n_questions, a.seeds, a.runs_per_shard, a.shard)
    runs = [(rank, s) for rank, s in planned if rank < len(questions)]
    if len(runs) < len(planned):
        log.warning(
            "shard %d: %d run(s) skipped, fewer solvable questions than n_questions",
            a.shard,
            len(planned) - len(runs),
        )
    per_job = a.responses_per_job or a.k_max
    first, last = part_range(a.part, per_job, a.k_max)
    hf_vanilla = beta is None and a.vanilla_batch_size > 1
    if hf_vanilla and (first, last) != (1, a.k_max):
        raise SystemExit(
            "--vanilla-batch-size > 1 generates whole runs: use --responses-per-job >= --k-max"
        )
    if a.part and not a.state_in:
        raise SystemExit(
            f"part {a.part} continues the runs of part {a.part - 1}: pass its --state-in"
        )
    if a.state_in and not a.part:
        raise SystemExit("part 0 starts every run: no --state-in")
    states = load_states(a.state_in) if a.state_in else {}
    rows, todo = [], {}
    if runs:
        device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = load_tokenizer(a.model)
        model = load_model(a.model, dtype=a.dtype, device=device)
        decoder = Decoder(model, eos_ids_of(model, tok), settings)
        t_all = time.perf_counter()
        for rank, s in runs:
            qid = str(questions["qid"].iloc[rank])
            q = table.loc[qid]

            def check(text, answer=q["answer"]):
                return task.score(answer, text) == 1.0

            seed = question_seed(a.seed, a.model_name, task.name, "token_level", qid, str(s))
            run = Run(
                prompt_ids_of(tok, json.loads(q["prompt"])),
                check,
                seed=seed,
                beta=beta,
                key=(qid, rank, s),
            )
            key = f"{rank}/{s}"
            if a.part:
                if key not in states:
                    raise SystemExit(
                        f"{a.state_in} has no run {key} (rank/seed): it is not the "
                        f"previous part of shard {a.shard}"
                    )
                restore_run(
                    run,
                    states[key],
                    device=decoder.device,
                    hidden=model.config.hidden_size,
                    lam=a.lam,
                )
                if not run.finished and run.next_response != first:
                    raise SystemExit(
                        f"{a.state_in}: run {key} continues at response "
                        f"{run.next_response}, part {a.part} starts at {first} "
                        f"(another --responses-per-job?)"
                    )
            todo[key] = run
        if hf_vanilla:
            for run in todo.values():
                run.rows = explore_vanilla_batched(
                    model,
                    tok,
                    run.prompt_ids,
                    run.check,
                    k_max=a.k_max,
                    settings=settings,
                    seed=run.seed,
                    batch_size=a.vanilla_batch_size,
                )
                run.finished = True
        else:
            slots = min(a.slots, sum(not r.finished for r in todo.values())) or 1
            engine = BatchedExplorer(decoder, tok, slots)
            engine.explore(list(todo.values()), k_max=a.k_max, until=last)
            secs = time.perf_counter() - t_all
            log.info(
                "shard %d part %d (responses %d-%d): %d runs on %d slots, %d tokens in %d steps, "
                "%.1fs (%.1f tok/s)",
                a.shard,
                a.part,
                first,
                last,
                len(todo),
                slots,
                engine.tokens,
                engine.steps,
                secs,
                engine.tokens / max(secs, 1e-9),
            )
        for run in todo.values():
            qid, rank, s = run.key
            solved = next((r["response"] for r in run.rows if r["correct"]), None)
            status = (
                f"solved at {solved}" if solved else ("unsolved" if run.finished else "continues")
            )
            log.info(
                "question %s (rank %d) seed %d: %s, %d generations in this part, %d tokens",
                qid,
                rank,
                s,
                status,
                len(run.rows),
                sum(r["n_tokens"] for r in run.rows),
            )
            for r in run.rows:
                r.pop("response_ids")
                rows.append(
                    {
                        "qid": qid,
                        "rank": rank,
                        "seed_index": s,
                        "method": a.method,
                        "beta": np.nan if beta is None else beta,
                        **r,
                    }
                )
    if a.state_out:  # what the next part continues from
        save_runs(todo, a.state_out)
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if a.rows_in:  # the last part: the shard's earlier parts too
        df = pd.concat([*(pd.read_parquet(f) for f in a.rows_in), df], ignore_index=True)
        df = df.sort_values(["seed_index", "rank", "response"], kind="stable").reset_index(
            drop=True
        )
    write_parquet(
        df,
        a.out,
        method=a.method,
        settings=asdict(settings),
        k_max=a.k_max,
        shard=a.shard,
        part=a.part,
        responses_per_job=per_job,
        slots=a.slots,
        model=a.model_name,
        task=task.name,
        seed=a.seed,
    )
    return 0


def _cmd_summarize(a) -> int:
    from repexp.atomic import atomic_path

    runs = pd.concat([pd.read_parquet(f) for f in a.runs], ignore_index=True)
    questions = pd.read_parquet(a.questions)
    per_run = (
        solved_at(runs)
        if len(runs)
        else pd.DataFrame(
            columns=["qid", "rank", "seed_index", "method", "beta", "solved_at", "generations"]
        )
    )
    per_run = per_run.merge(questions[["qid", "ref_pass1"]], on="qid", how="left")
    passk = passk_table(per_run, a.k_max)
    difficulty = difficulty_table(per_run, questions, k=a.k_max, bins=a.difficulty_bins)
    prov = provenance.from_cli(a.provenance)
    for df, out in ((passk, a.out_passk), (difficulty, a.out_difficulty), (per_run, a.out_runs)):
        df.insert(0, "task", a.task)
        df.insert(0, "model", a.model_name)
        with atomic_path(out) as tmp:
            provenance.stamp(df, prov).to_csv(tmp, index=False)
    last = passk[passk["k"] == a.k_max]
    for _, r in last.iterrows():
        log.info(
            "%s: pass@%d = %.3f (SE %.3f) over %d questions, %d runs",
            r["method"],
            a.k_max,
            r["pass_at_k"],
            r["se"],
            r["questions"],
            r["runs"],
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from repexp.score import add_verifier_args

    ap = argparse.ArgumentParser(
        prog="python -m repexp.tokenlevel", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser(
        "questions", help="the hardest solvable questions from a reference model's pools"
    )
    q.add_argument("--scores", nargs="+", required=True, help="the reference pool's score shards")
    q.add_argument("--n-questions", type=int, required=True)
    q.add_argument(
        "--reference-samples",
        type=lambda x: None if x == "all" else int(x),
        default=None,
        help="responses per question that estimate pass@1 (a seeded "
        "subsample; 'all' = the whole pool)",
    )
    q.add_argument("--seed", type=int, default=0, help="the master seed (seeds the subsample)")
    q.add_argument("--out", required=True)
    r = sub.add_parser("run", help="one shard of runs of one method")
    r.add_argument("--model", required=True)
    r.add_argument("--model-name", required=True)
    r.add_argument("--tasks", required=True, help="the task table (test split)")
    r.add_argument("--questions", required=True)
    r.add_argument("--method", required=True)
    r.add_argument("--beta", default=None, help="the bonus weight; 'none' for vanilla")
    r.add_argument("--shard", type=int, required=True)
    r.add_argument("--n-questions", type=int, required=True)
    r.add_argument("--seeds", type=int, required=True)
    r.add_argument("--runs-per-shard", type=int, required=True)
    r.add_argument("--k-max", type=int, required=True)
    r.add_argument("--lam", type=float, default=0.1)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--top-k", type=int, default=128)
    r.add_argument("--candidate-batch", type=int, default=64)
    r.add_argument("--max-new-tokens", type=int, default=512)
    r.add_argument("--vanilla-batch-size", type=int, default=1)
    r.add_argument(
        "--slots", type=int, default=16, help="runs decoded in lockstep (the batched engine)"
    )
    r.add_argument(
        "--part", type=int, default=0, help="which job of the shard's runs (0 = the first)"
    )
    r.add_argument(
        "--responses-per-job",
        type=int,
        default=None,
        help="responses of each run per part (default: all k_max in one part)",
    )
    r.add_argument("--state-in", default=None, help="the previous part's run states (part > 0)")
    r.add_argument(
        "--state-out", default=None, help="where to save the runs' states for the next part"
    )
    r.add_argument(
        "--rows-in", nargs="*", default=[], help="the earlier parts' responses (the last part)"
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None)
    add_verifier_args(r)
    r.add_argument("--out", required=True)
    s = sub.add_parser("summarize", help="pass@k and difficulty tables from every shard")
    s.add_argument("--runs", nargs="+", required=True)
    s.add_argument("--questions", required=True)
    s.add_argument("--model-name", required=True)
    s.add_argument("--task", required=True)
    s.add_argument("--k-max", type=int, required=True)
    s.add_argument("--difficulty-bins", type=int, default=5)
    s.add_argument("--out-passk", required=True)
    s.add_argument("--out-difficulty", required=True)
    s.add_argument("--out-runs", required=True)
    provenance.add_argument(s)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return {"questions": _cmd_questions, "run": _cmd_run, "summarize": _cmd_summarize}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
