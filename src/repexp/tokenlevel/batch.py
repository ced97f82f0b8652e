"""The batched token-level engine: many (question, seed) runs decoded in lockstep in one process.

The sequential engine (:class:`repexp.tokenlevel.Decoder`, :func:`repexp.tokenlevel.explore`)
decodes one response of one run at a time; on a GPU one sequence leaves the device almost idle.
Here ``slots`` runs share every forward pass (continuous batching):

* Each slot holds one run: its prompt, its own random generator (created from the run's seed, as
  the sequential engine does, and called in the same order), its own centred inverse Σ⁻¹
  (:class:`repexp.elliptical.CentredInverse`, float64) and its completed responses.
* At every step each slot submits its query tokens, all at the slot's next position: the
  candidates of a bonus step (each seeing the slot's prefix and itself: the tree of the sequential
  engine) or the one sampled token of a plain step. The queries of all slots are *packed* into one
  sequence: the linear layers see no padding; only the attention takes them back per slot.
  ``candidate_batch`` bounds the candidates per slot and forward, as in the sequential engine.
* When a response ends its token states are folded into the slot's Σ⁻¹ and the slot starts its
  next response (the prompt's keys/values stay in the slot's cache), or takes the next run once
  its run is solved, reaches ``k_max`` or reaches the last response of this call (``until``:
  a job's part of the run, see :func:`repexp.tokenlevel.state.save_runs`).

Same results: with the same seeds every run's responses and verdicts equal the sequential
engine's. The arithmetic is the same per slot (the same warpers, softmax and ``multinomial`` on the
slot's row, the same float64 algebra); only the shapes of the matrix products and of the
attention differ (packed rows, padded keys), which changes float32 results in the last bits; a
token can differ only where a draw falls within that rounding of a boundary of the sampling
distribution (tests/test_tokenlevel.py checks the tokens on the tiny model).

Key/value cache layout (:class:`SlotCache`): per layer one (slots, kv_heads, capacity, head_dim)
buffer; slot b's prefix is positions [0, length[b]), the rest is scratch. The attention
(:class:`_Step`) either runs once per slot, over the slot's prefix and its queries' keys written
right after it (the sequential engine's shapes; the default on a CPU), or once for all slots
(``padded``, the default on a GPU: few large kernels): the queries in a (slots, width) grid, their
keys in the scratch columns [frontier, frontier + width) after the longest prefix, and a (slots, 1,
width, frontier + width) mask. The chosen token's key/value is then copied to position length[b].
The attention is a registered transformers attention function (``repexp_slots_<inner>``) that
falls back to the model's own implementation (``sdpa``) for every other forward, so the model keeps
working for the sequential engine and for ``generate``.

GPU memory per slot (:func:`slot_bytes`): Σ̃⁻¹ and Σ⁻¹ in float64 (2 · 8 · hidden² bytes: 206 MB at
hidden 3,584) plus the key/value cache (2 · layers · kv_heads · head_dim · dtype bytes per token).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from repexp.elliptical import CentredInverse
from repexp.models import cut_at_eos
from repexp.tokenlevel.decode import make_generator

log = logging.getLogger(__name__)

ATTENTION = "repexp_slots"
PROGRESS_SECONDS = 600.0  # a progress line (tokens/s) in the job's log this often


# ------------------------------------------------------------------------------------------------
# the attention of a packed step
# ------------------------------------------------------------------------------------------------
def _slot_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    *,
    inner,
    scaling=None,
    dropout=0.0,
    repexp_step=None,
    **kwargs,
):
    if repexp_step is None:  # any other forward: the model's own attention
        return inner(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return repexp_step.attend(module.layer_idx, query, key, value, scaling)


def use_slot_attention(model) -> str:
    """Route ``model``'s attention through :func:`_slot_attention` (idempotent); returns its name.
    Forwards without a packed step keep the model's implementation (bit for bit the same call)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = model.config._attn_implementation
    if current.startswith(ATTENTION + "_"):
        return current
    if current not in ALL_ATTENTION_FUNCTIONS or current not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise NotImplementedError(
            f"the batched token-level engine wraps a registered attention implementation; "
            f"the model uses {current!r}: load it with attn_implementation='sdpa' (the default)"
        )
    name = f"{ATTENTION}_{current}"
    ALL_ATTENTION_FUNCTIONS.register(
        name, functools.partial(_slot_attention, inner=ALL_ATTENTION_FUNCTIONS[current])
    )
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.set_attn_implementation(name)
    return name


def _repeat_kv(x, groups: int):
    """(b, kv_heads, n, d) -> (b, kv_heads * groups, n, d), each head repeated (transformers')."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


class SlotCache:
    """Keys and values of ``slots`` sequences: per layer a (slots, kv_heads, capacity, head_dim)
    buffer, slot b's prefix at positions [0, length[b])."""

    def __init__(self, slots: int):
        self.slots = slots
        self.keys: list = []
        self.values: list = []
        self.length = [0] * slots
        self.capacity = 0

    def ensure(self, capacity: int) -> None:
        """Grow every buffer to at least ``capacity`` positions (by half again, in steps of 64)."""
        if capacity <= self.capacity:
            return
        new = 64 * math.ceil(max(capacity, self.capacity * 3 // 2) / 64)
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                grown = buf.new_zeros((*buf.shape[:2], new, buf.shape[-1]))
                grown[:, :, : self.capacity] = buf
                store[i] = grown
        self.capacity = new

    def load(self, slot: int, keys: list, values: list) -> None:
        """Put a prompt's per-layer (1, kv_heads, P, head_dim) keys/values into ``slot``."""
        n = keys[0].shape[-2]
        if not self.keys:
            self.keys = [k.new_zeros((self.slots, k.shape[1], 0, k.shape[-1])) for k in keys]
            self.values = [v.new_zeros((self.slots, v.shape[1], 0, v.shape[-1])) for v in values]
        self.ensure(n + 1)
        for buf, k in zip(self.keys, keys, strict=True):
            buf[slot, :, :n] = k[0]
        for buf, v in zip(self.values, values, strict=True):
            buf[slot, :, :n] = v[0]
        self.length[slot] = n

    def append(self, slots, keys: list, values: list) -> None:
        """Append one position to each of ``slots``: per layer (len(slots), kv_heads, head_dim)."""
        import torch

        device = self.keys[0].device
        idx = torch.tensor(slots, device=device)
        pos = torch.tensor([self.length[b] for b in slots], device=device)
        for buf, k in zip(self.keys, keys, strict=True):
            buf[idx, :, pos] = k
        for buf, v in zip(self.values, values, strict=True):
            buf[idx, :, pos] = v
        for b in slots:
            self.length[b] += 1


class _Step:
    """One packed forward of the queries of ``slots`` (``sizes[i]`` tokens each, slot-major):
    keeps every layer's new keys/values (N, kv_heads, head_dim).

    ``padded``: one attention over a (all slots, width) grid of the queries against the keys
    [0, frontier + width), the queries' own keys in the scratch columns [frontier, frontier +
    width). Otherwise one attention per slot over its prefix and its queries' keys, written right
    after the prefix: the sequential engine's shapes (no padding; more, smaller calls)."""

    def __init__(
        self, cache: SlotCache, slots: list[int], sizes: list[int], *, padded: bool, dtype, device
    ):
        import torch

        self.cache, self.slots, self.sizes, self.padded = cache, slots, sizes, padded
        self.lengths = [cache.length[b] for b in slots]
        self.new_keys: dict = {}
        self.new_values: dict = {}
        low = torch.finfo(dtype).min
        if padded:
            self.frontier = max(cache.length[b] for b in range(cache.slots))
            self.width = max(sizes)
            n_keys = self.frontier + self.width
            self.q_slot = torch.tensor(
                [b for b, n in zip(slots, sizes, strict=True) for _ in range(n)], device=device
            )
            self.q_col = torch.cat([torch.arange(n, device=device) for n in sizes])
            lens = torch.zeros(cache.slots, dtype=torch.long, device=device)
            lens[slots] = torch.tensor(self.lengths, device=device)
            key = torch.arange(n_keys, device=device)
            seen = key[None, None, :] < lens[:, None, None]  # (slots, 1, keys)
            own = key[None, :] == self.frontier + torch.arange(self.width, device=device)[:, None]
            allowed = (seen | own[None])[:, None]  # (slots, 1, width, keys)
            self.mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
                ~allowed, low
            )
            cache.ensure(n_keys)
        else:  # the sequential engine's masks: the prefix, then each query sees itself
            self.masks = []
            for n, length in zip(sizes, self.lengths, strict=True):
                if n == 1:  # one token sees every key: no mask, as a plain decoding step
                    self.masks.append(None)
                    continue
                m = torch.full((1, 1, n, length + n), low, dtype=dtype, device=device)
                m[..., :length] = 0
                m[0, 0, torch.arange(n), length + torch.arange(n)] = 0
                self.masks.append(m)
            cache.ensure(max(length + n for n, length in zip(sizes, self.lengths, strict=True)))

    def attend(self, layer: int, query, key, value, scaling):
        import torch

        sdpa = torch.nn.functional.scaled_dot_product_attention
        k_new, v_new = key[0].transpose(0, 1), value[0].transpose(0, 1)  # (N, kv_heads, d)
        self.new_keys[layer], self.new_values[layer] = k_new, v_new
        kb, vb = self.cache.keys[layer], self.cache.values[layer]
        groups = query.shape[1] // kb.shape[1]
        if self.padded:
            pos = self.frontier + self.q_col
            kb[self.q_slot, :, pos] = k_new  # scratch: every slot's prefix ends before it
            vb[self.q_slot, :, pos] = v_new
            end = self.frontier + self.width
            k, v = _repeat_kv(kb[:, :, :end], groups), _repeat_kv(vb[:, :, :end], groups)
            q = query.new_zeros((kb.shape[0], query.shape[1], self.width, query.shape[-1]))
            q[self.q_slot, :, self.q_col] = query[0].transpose(0, 1)
            out = sdpa(q, k, v, attn_mask=self.mask, scale=scaling)
            return out[self.q_slot, :, self.q_col][None], None  # (1, N, heads, d)
        outs, o = [], 0
        for b, n, length, mask in zip(
            self.slots, self.sizes, self.lengths, self.masks, strict=True
        ):
            end = length + n
            kb[b, :, length:end] = key[0, :, o : o + n]  # scratch right after the slot's prefix
            vb[b, :, length:end] = value[0, :, o : o + n]
            k = _repeat_kv(kb[b : b + 1, :, :end], groups)
            v = _repeat_kv(vb[b : b + 1, :, :end], groups)
            outs.append(sdpa(query[:, :, o : o + n], k, v, attn_mask=mask, scale=scaling))
            o += n
        return torch.cat(outs, dim=2).transpose(1, 2), None  # (1, N, heads, d)


# ------------------------------------------------------------------------------------------------
# runs and slots
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One (question, seed) run and everything needed to continue it.

    ``beta`` None: vanilla (plain sampling); otherwise token-level RepExp (response 1 plain, then
    the bonus). ``generator`` and ``inverse`` are created from ``seed`` on first use;
    ``next_response`` is the 1-based index of the next response; ``rows`` the completed responses
    (the sequential :func:`repexp.tokenlevel.explore`'s rows)."""

    prompt_ids: list[int]
    check: Callable[[str], bool]
    seed: int
    beta: float | None = None
    key: object = None
    next_response: int = 1
    finished: bool = False
    generator: object = None
    inverse: object = None
    rows: list = field(default_factory=list)


@dataclass
class _Slot:
    run: Run
    prompt_len: int
    h_prompt: object
    h: object = None
    response: list = field(default_factory=list)
    states: list = field(default_factory=list)
    bonuses: list = field(default_factory=list)
    n_cands: list = field(default_factory=list)
    bonus_on: bool = False
    need_states: bool = False
    sigma_inv: object = None
    t0: float = 0.0
    done: bool = False
    cands: object = None
    scores: object = None


class BatchedExplorer:
    """Token-level runs on ``slots`` slots of one :class:`repexp.tokenlevel.Decoder` (its model,
    filters and settings). :meth:`explore` takes any number of runs."""

    def __init__(self, decoder, tok, slots: int, *, attention: str = "auto"):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if attention not in ("auto", "padded", "per_slot"):
            raise ValueError(f"attention must be auto, padded or per_slot, got {attention!r}")
        self.dec, self.tok, self.slots = decoder, tok, int(slots)
        # auto: one padded attention on a GPU (few large kernels), one per slot on a CPU (no
        # padded work: with a small hidden size the attention is a large share of the step)
        self.padded = attention == "padded" or (
            attention == "auto" and decoder.device.type != "cpu"
        )
        use_slot_attention(decoder.model)
        self.tokens = 0  # generated tokens, all calls together
        self.steps = 0  # lockstep steps, all calls together
        self.fill_seconds = 0.0  # spent starting runs (their prompts' forwards), all calls together

    # ---------------------------------------------------------------- public
    def explore(
        self,
        runs: list[Run],
        *,
        k_max: int,
        until: int | None = None,
        stop_at_correct: bool = True,
        max_steps: int | None = None,
    ) -> list[Run]:
        """Continue every run up to response ``until`` (default ``k_max``): a run ends at its first
        correct response (``stop_at_correct``) or at ``k_max`` (``finished``); at ``until`` it
        pauses. ``max_steps`` stops after that many lockstep steps, leaving responses unfinished
        (benchmarks only). Returns ``runs``, updated in place."""
        import torch

        until = k_max if until is None else min(until, k_max)
        dec = self.dec
        for r in runs:
            if r.generator is None:
                r.generator = make_generator(dec.device, r.seed)
            if r.beta is not None and r.inverse is None:
                r.inverse = CentredInverse(
                    dec.base.config.hidden_size, dec.settings.lam, device=dec.device
                )
        self.k_max, self.until, self.stop_at_correct = k_max, until, stop_at_correct
        self.queue = deque(r for r in runs if not r.finished and r.next_response <= until)
        self.slot: list[_Slot | None] = [None] * self.slots
        self.cache = SlotCache(self.slots)
        steps, tokens, t0 = 0, self.tokens, time.perf_counter()
        last_log = t0
        with torch.inference_mode():
            while True:
                self._fill()
                active = [b for b in range(self.slots) if self.slot[b] is not None]
                if not active or (max_steps is not None and steps >= max_steps):
                    break
                self._step(active)
                steps += 1
                if time.perf_counter() - last_log > PROGRESS_SECONDS:
                    last_log = time.perf_counter()
                    log.info(
                        "%d steps, %d tokens, %.1f tok/s; %d of %d runs to go, %d on %d slots",
                        steps, self.tokens - tokens, (self.tokens - tokens) / (last_log - t0),
                        len(self.queue) + len(active), len(runs), len(active), self.slots,
                    )  # fmt: skip
        self.steps += steps
        self.slot, self.cache = [None] * self.slots, None  # free the caches
        return runs

    # ---------------------------------------------------------------- slots
    def _fill(self) -> None:
        import torch
        from transformers import DynamicCache

        if not self.queue or all(sl is not None for sl in self.slot):
            return
        t0 = time.perf_counter()
        for b in range(self.slots):
            if self.slot[b] is not None or not self.queue:
                continue
            run = self.queue.popleft()
            cache = DynamicCache()
            h = self.dec._forward(torch.tensor([run.prompt_ids], device=self.dec.device), cache)[
                0, -1
            ]
            layers = self.dec._layers(cache)
            self.cache.load(b, [la.keys for la in layers], [la.values for la in layers])
            self.slot[b] = _Slot(run=run, prompt_len=len(run.prompt_ids), h_prompt=h)
            self._start_response(b)
        if self.dec.device.type == "cuda":
            torch.cuda.synchronize()
        self.fill_seconds += time.perf_counter() - t0

    def _start_response(self, b: int) -> None:
        sl = self.slot[b]
        inv = sl.run.inverse
        sl.bonus_on = inv is not None and inv.count > 0
        sl.need_states = inv is not None
        sl.sigma_inv = inv.inverse() if sl.bonus_on else None
        sl.h = sl.h_prompt
        sl.response, sl.states, sl.bonuses, sl.n_cands = [], [], [], []
        sl.done = False
        sl.t0 = time.perf_counter()
        self.cache.length[b] = sl.prompt_len

    def _finish_response(self, b: int) -> None:
        import torch

        sl = self.slot[b]
        run = sl.run
        if run.inverse is not None:
            run.inverse.add(torch.stack(sl.states).float())
        ids = sl.response
        text = self.tok.decode(ids, skip_special_tokens=True)
        correct = bool(run.check(text))
        i = run.next_response
        run.rows.append(
            {
                "response": i,
                "response_ids": ids,
                "n_tokens": len(ids),
                "finish_reason": cut_at_eos(ids, self.dec.eos_ids)[1],
                "correct": correct,
                "text": text,
                "mean_bonus": float(np.mean(sl.bonuses)) if sl.bonuses else float("nan"),
                "mean_candidates": float(np.mean(sl.n_cands)) if sl.n_cands else float("nan"),
                "seconds": time.perf_counter() - sl.t0,
            }
        )
        run.next_response = i + 1
        if (correct and self.stop_at_correct) or i >= self.k_max:
            run.finished = True
            self.slot[b], self.cache.length[b] = None, 0
        elif i >= self.until:
            self.slot[b], self.cache.length[b] = None, 0
        else:
            self._start_response(b)

    # ---------------------------------------------------------------- one lockstep step
    def _step(self, active: list[int]) -> None:
        import torch

        dec, s = self.dec, self.dec.settings
        logits = dec.head(torch.stack([self.slot[b].h for b in active])).float()
        scores = dec.warpers(None, logits)
        queries: dict[int, object] = {}
        ended = []
        for i, b in enumerate(active):
            sl = self.slot[b]
            if sl.bonus_on:
                sl.scores = scores[i : i + 1]
                sl.cands = torch.nonzero(torch.isfinite(sl.scores[0])).squeeze(1)
                queries[b] = sl.cands
                continue
            probs = torch.softmax(scores[i : i + 1], dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=sl.run.generator)
            sl.response.append(int(token[0, 0]))
            sl.done = sl.response[-1] in dec.eos_ids or len(sl.response) == s.max_new_tokens
            if sl.done and not sl.need_states:
                ended.append(b)  # the last token's state is not needed: no forward
            else:
                queries[b] = token[0]
        states, rows, new_keys, new_values = self._forward(queries)
        chosen: dict[int, int] = {}
        for b, st in states.items():
            sl = self.slot[b]
            if sl.bonus_on:
                bonus = sl.run.inverse.bonus(st, sl.sigma_inv)
                sc = sl.scores.clone()
                sc[0, sl.cands] = sc[0, sl.cands] + (sl.run.beta * bonus).to(sc.dtype)
                probs = torch.softmax(sc, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=sl.run.generator)
                j = int(torch.nonzero(sl.cands == token[0, 0])[0, 0])
                sl.response.append(int(token[0, 0]))
                sl.bonuses.append(float(bonus[j]))
                sl.n_cands.append(len(sl.cands))
                sl.done = sl.response[-1] in dec.eos_ids or len(sl.response) == s.max_new_tokens
                sl.h = st[j]
                sl.states.append(sl.h)
            else:
                j = 0
                sl.h = st[0]
                if sl.need_states:
                    sl.states.append(sl.h)
            chosen[b] = rows[b][j]
            if sl.done:
                ended.append(b)
        self.tokens += len(active)
        keep = [b for b in chosen if not self.slot[b].done]  # a finished response's cache is reset
        if keep:
            idx = torch.tensor([chosen[b] for b in keep], device=dec.device)
            self.cache.append(keep, [k[idx] for k in new_keys], [v[idx] for v in new_values])
        for b in sorted(ended):
            self._finish_response(b)

    def _forward(self, queries: dict):
        """Last-layer states of every slot's query tokens, each at the slot's next position seeing
        the slot's prefix and itself; at most ``candidate_batch`` per slot and forward. Returns
        {slot: (n, d) states}, {slot: its rows in the step's keys/values}, and per layer the
        step's (N, kv_heads, head_dim) keys and values."""
        import torch

        if not queries:
            return {}, {}, [], []
        dec, cb = self.dec, self.dec.settings.candidate_batch
        device, cache = dec.device, self.cache
        out = {b: [] for b in queries}
        rows = {b: [] for b in queries}
        keys, values, offset = [], [], 0
        n_chunks = max(-(-len(t) // cb) for t in queries.values())
        for c in range(n_chunks):
            parts = [(b, t[c * cb : (c + 1) * cb]) for b, t in queries.items() if len(t) > c * cb]
            slots, sizes = [b for b, _ in parts], [len(t) for _, t in parts]
            step = _Step(cache, slots, sizes, padded=self.padded, dtype=dec.dtype, device=device)
            pos = torch.tensor(
                [cache.length[b] for b, n in zip(slots, sizes, strict=True) for _ in range(n)],
                device=device,
            )
            ids = torch.cat([t for _, t in parts])[None]
            h = dec.base(
                input_ids=ids, position_ids=pos[None], use_cache=False, repexp_step=step
            ).last_hidden_state[0]
            o = 0
            for b, n in zip(slots, sizes, strict=True):
                out[b].append(h[o : o + n])
                rows[b].extend(range(offset + o, offset + o + n))
                o += n
            offset += o
            layers = len(step.new_keys)
            keys.append([step.new_keys[i] for i in range(layers)])
            values.append([step.new_values[i] for i in range(layers)])
        if n_chunks > 1:
            keys = [torch.cat(ks) for ks in zip(*keys, strict=True)]
            values = [torch.cat(vs) for vs in zip(*values, strict=True)]
        else:
            keys, values = keys[0], values[0]
        return {b: torch.cat(v) for b, v in out.items()}, rows, keys, values


def slot_bytes(
    hidden: int, layers: int, kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int = 2
) -> int:
    """Device memory of one slot: Σ̃⁻¹ and Σ⁻¹ (float64, hidden²) and the key/value cache of
    ``tokens`` positions (prompt + max_new_tokens + candidate_batch of scratch).

    >>> round(slot_bytes(3584, 28, 4, 128, 200 + 512 + 64) / 2**20)  # Qwen2.5-7B: 196 + 42 MiB
    238
    """
    return 2 * 8 * hidden * hidden + 2 * layers * kv_heads * head_dim * dtype_bytes * tokens
