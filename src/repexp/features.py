"""Hidden-state cache: pooled last-layer states of each response (paper.md §0, Fig. 4).

The base model is run *without its LM head* (``AutoModel``: ``last_hidden_state`` is taken after
the final norm, as in the authors' code) over the exact saved prompt + response token ids. Per
response up to three poolings of the response positions ``[P, P + T)`` (P prompt tokens, T response
tokens) of the last layer are kept, plus any middle-layer means:

* ``mean``: the mean over all T response positions, the paper's feature h̄(x, y). When the response
  ended with an end-of-sequence token, that token is one of the T positions (as in the authors'
  code, whose mean runs over the attention mask of the response, EOS included);
* ``last``: the state at position P + T − 1 (the last response token);
* ``penultimate``: the state at position P + T − 2 (the last one when T = 1);
* ``mean@L`` (:func:`layer_pooling`; beyond the paper, the ``repexp_layer<L>`` selector): the mean
  over the same T positions of the output of decoder block L, 1 <= L < the model's number of
  blocks: ``hidden_states[L]`` in Hugging Face's convention (``hidden_states[0]`` = the
  embeddings), the residual stream *before* the final norm. It is read during the same forward pass
  (a hook on block L pools each row as the block returns, :class:`LayerMeans`), so it costs no
  second forward and no extra activation memory beyond one row's float32 copy.

Batching. Responses to one prompt (a question's pool) run on the prompt's key/value cache, computed
once and shared by every row of a batch without being copied per row (:class:`SharedPrefixLayer`);
the response tokens' keys and values are not kept after their layer. Responses are sorted by length
and packed greedily (longest first) into batches; a batch of R rows of width T (the longest of its
responses) after a prompt of P tokens is allowed when

* ``R × (P + T) <= batch_tokens`` (the context tokens of the batch, the prompt counted per row: each
  row attends to it), when ``batch_tokens`` is set; and
* weights + prompt cache + activations <= the stated GPU memory, when a :class:`ForwardMemory`
  model is given (the ``cache_features`` job on a GPU: ``inference.features.gpu_memory_gb``). The
  memory model and its formulas are in :class:`ForwardMemory`.

Right padding with an attention mask keeps every real position's state identical to an unpadded
forward pass (causal attention; checked by the tests).

Cache format per shard: ``<out>.safetensors`` (one tensor per pooling, rows in the shard's order)
and ``<out>.json`` (model, layer, layers (the decoder block of each ``mean@L`` pooling), poolings,
dims, dtype, row -> question/sample, sha256 of the tensor file). Cache dtypes
(``inference.features.dtype``): ``float32``, ``float16``, ``bfloat16`` and ``uint8``: 8-bit affine
quantisation per question and hidden dimension (:func:`quantize_groups`; the tensors
``<pooling>.lo`` and ``<pooling>.scale`` hold each question's offset and step, float32).
:func:`read_cache` always returns float64, so the selection does not depend on the cache dtype, and
projection happens downstream: any projection seed reuses the cache. A NaN or Inf is an error naming
the shard.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from repexp.assets import sha256_file
from repexp.atomic import atomic_path
from repexp.parallel import start_cli

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last", "penultimate")  # of the last layer (after the final norm)
# a middle layer's mean: "mean@<L>", the output of decoder block L (hidden_states[L])
LAYER_POOLING = re.compile(r"mean@([1-9][0-9]*)")
CACHE_DTYPES = ("float32", "float16", "bfloat16", "uint8")
# bytes per stored feature value
CACHE_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint8": 1}
# uint8 caches also store two float32 vectors (offset, step) per question and pooling
QUANT_GROUP_BYTES = 8


class FeatureError(RuntimeError):
    """A feature cache is invalid (NaN/Inf, checksum mismatch, rows out of step) or cannot be
    built."""


def layer_pooling(layer: int) -> str:
    """The cache pooling of the mean response state of decoder block ``layer``.

    >>> layer_pooling(15), pooling_layer("mean@15"), pooling_layer("mean")
    ('mean@15', 15, None)
    """
    if isinstance(layer, bool) or int(layer) != layer or layer < 1:
        raise ValueError(f"a layer is a decoder block number >= 1, got {layer!r}")
    return f"mean@{int(layer)}"


def pooling_layer(pooling: str) -> int | None:
    """The decoder block of a ``mean@L`` pooling; None for a last-layer pooling (``mean``, ``last``,
    ``penultimate``); ValueError for anything else."""
    if pooling in POOLINGS:
        return None
    m = LAYER_POOLING.fullmatch(pooling)
    if m is None:
        raise ValueError(
            f"unknown pooling {pooling!r}: one of {', '.join(POOLINGS)}, or mean@<L> (the mean "
            f"state of decoder block L >= 1)"
        )
    return int(m[1])


def check_layers(poolings: Sequence[str], num_layers: int) -> list[int]:
    """The decoder blocks of the ``mean@L`` poolings, each checked to be a middle block:
    1 <= L <= ``num_layers`` - 1 (block ``num_layers``'s output is the last layer, which the
    ``mean`` pooling already holds after the final norm)."""
    layers = [x for x in map(pooling_layer, poolings) if x is not None]
    bad = [x for x in layers if not 1 <= x <= num_layers - 1]
    if bad:
        raise FeatureError(
            f"pooling {layer_pooling(bad[0])}: this model has {num_layers} decoder blocks, so a "
            f"middle layer is 1..{num_layers - 1} (the middle one: {num_layers // 2}); fix "
            f"`layer` in inference.features.layers"
        )
    return layers


# ------------------------------------------------------------------------------------------------
# memory model and batch planning
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForwardMemory:
    """GPU memory of the feature forward pass (bytes), from the model's architecture.

    ``b`` = bytes per value of the model dtype; a batch has R rows of width T (padded response
    tokens, or whole sequences when there is no shared prompt) after a shared prompt of P tokens
    (0 without one); C = P + T is the context a row attends to.

    * weights: ``weight_bytes`` (parameters + buffers of the base model, no LM head; measured on the
      loaded model);
    * prompt cache (:meth:`prompt_cache`), one copy per question whatever the batch size:
      ``2 × layers × kv_heads × head_dim × P × b``;
    * activations of one batch (:meth:`activations`), the largest live set during the forward:

      - per row and query token, the residual stream, the hidden state and RoPE's cos/sin
        ``(2·H + 2·d)·b``, the normed input of the current sub-layer ``H·b``, and the larger of the
        attention block ``(3·heads·d + 3·kv_heads·d + H)·b`` (q and its rotated copy, k and its
        rotated copy, v, the attention output, o_proj's output) and the MLP block
        ``(3·I + H)·b`` (gate, up, their product; down_proj's output);
      - per row and context token, the layer's keys and values with the prompt prepended,
        ``2·kv_heads·d·b``, and their copies repeated to every attention head (SDPA with a padding
        mask repeats grouped key/value heads) ``2·heads·d·b`` when ``heads > kv_heads``;
      - per row, query and context token, the boolean attention mask (1 byte);
      - the output ``last_hidden_state``, ``R·T·H·b``.

    The response tokens' keys and values are not kept across layers (:class:`SharedPrefixLayer`),
    so activations do not grow with the number of layers; attention scores are never materialised
    on a GPU (SDPA's memory-efficient kernel takes the mask). Allocator fragmentation and the CUDA
    context are left to the headroom ``1 - inference.features.gpu_memory_fraction``.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    dtype_bytes: int
    weight_bytes: int = 0

    @classmethod
    def of_config(cls, config, *, dtype_bytes: int, weight_bytes: int = 0) -> ForwardMemory:
        """From a Hugging Face model config (``hidden_size``, ``num_hidden_layers``, ...)."""
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=int(config.hidden_size),
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            intermediate=int(config.intermediate_size),
            dtype_bytes=int(dtype_bytes),
            weight_bytes=int(weight_bytes),
        )

    @classmethod
    def of_model(cls, model) -> ForwardMemory:
        """From a loaded model: its config, its dtype and the bytes of its parameters and
        buffers."""
        tensors = [*model.parameters(), *model.buffers()]
        weight = sum(t.numel() * t.element_size() for t in tensors)
        return cls.of_config(
            model.config, dtype_bytes=next(model.parameters()).element_size(), weight_bytes=weight
        )

    def prompt_cache(self, prompt_len: int) -> int:
        """Keys and values of a prompt of ``prompt_len`` tokens, all layers, one copy."""
        return 2 * self.layers * self.kv_heads * self.head_dim * prompt_len * self.dtype_bytes

    def activations(self, rows: int, width: int, prefix: int = 0) -> int:
        """Peak activation bytes of one forward of ``rows`` × ``width`` tokens after ``prefix``."""
        b, h, d = self.dtype_bytes, self.hidden, self.head_dim
        ctx = prefix + width
        attn = (3 * self.heads * d + 3 * self.kv_heads * d + h) * b
        mlp = (3 * self.intermediate + h) * b
        per_query = (2 * h + 2 * d) * b + h * b + max(attn, mlp) + h * b  # + the output
        repeated = self.heads if self.heads > self.kv_heads else 0
        per_ctx = 2 * d * b * (self.kv_heads + repeated)
        return rows * (width * per_query + ctx * per_ctx + width * ctx)

    def batch(self, rows: int, width: int, prefix: int = 0) -> int:
        """Everything on the GPU during one batch: weights + prompt cache + activations."""
        return self.weight_bytes + self.prompt_cache(prefix) + self.activations(rows, width, prefix)


def length_batches(
    lengths: np.ndarray,
    batch_tokens: int | None = None,
    *,
    prefix: int = 0,
    fits: Callable[[int, int], bool] | None = None,
) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, longest first.

    A batch of R rows whose longest entry is ``width`` is allowed when ``R × (prefix + width) <=
    batch_tokens`` (``batch_tokens`` None: no cap) and ``fits(R, width)`` (None: always); a single
    row is always its own batch, even over the cap (the caller checks that it fits).
    """
    order = np.argsort(lengths, kind="stable")[::-1]  # longest first: memory peaks early
    batches, cur, width = [], [], 0

    def ok(rows):
        cap = batch_tokens is None or rows * (prefix + width) <= batch_tokens
        return cap and (fits is None or fits(rows, width))

    for i in order:
        if cur and not ok(len(cur) + 1):
            batches.append(np.array(cur))
            cur = []
        if not cur:
            width = int(lengths[i])  # the longest of the batch, as lengths come longest first
        cur.append(i)
    if cur:
        batches.append(np.array(cur))
    return batches


def memory_fit(memory: ForwardMemory | None, budget: int | None, prefix: int):
    """``fits(rows, width)`` for :func:`length_batches` under ``budget`` bytes (None: no model)."""
    if memory is None or budget is None:
        return None
    return lambda rows, width: memory.batch(rows, width, prefix) <= budget


def check_fits(memory: ForwardMemory | None, budget: int | None, width: int, prefix: int) -> None:
    """A clear error when not even one row of ``width`` tokens after ``prefix`` fits the budget."""
    if memory is None or budget is None or memory.batch(1, width, prefix) <= budget:
        return
    need = memory.batch(1, width, prefix)
    raise FeatureError(
        f"one sequence of {width} tokens after a cached prompt of {prefix} tokens needs "
        f"{need / 1e9:.1f} GB on the GPU (weights {memory.weight_bytes / 1e9:.1f} GB), over the "
        f"budget of {budget / 1e9:.1f} GB "
        "(inference.features.gpu_memory_gb × gpu_memory_fraction). "
        f"Run this model's feature jobs on a GPU with more memory and raise "
        f"inference.features.gpu_memory_gb, or lower the task's max_new_tokens."
    )


# ------------------------------------------------------------------------------------------------
# the forward pass
# ------------------------------------------------------------------------------------------------
def _shared_prefix_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SharedPrefixLayer(DynamicLayer):
        """One layer's prompt keys/values (batch 1), shared by every row of a batch: ``update``
        returns them expanded to the batch, followed by the new tokens' keys/values, and stores
        nothing, so neither the prompt nor the responses are copied per row beyond the layer."""

        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            rows = key_states.shape[0]
            return (
                torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
                torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2),
            )

    return SharedPrefixLayer


def shared_prefix_cache(prompt_cache):
    """A read-only cache over a batch-1 prompt cache, for any number of rows (see above)."""
    from transformers.cache_utils import Cache

    layer = _shared_prefix_layer_class()
    return Cache(layers=[layer(lay.keys, lay.values) for lay in prompt_cache.layers])


class LayerMeans:
    """Forward hooks that pool middle layers during the feature forward (``mean@L`` poolings).

    A hook on decoder block L (``base_model.layers[L - 1]``) takes the block's output, the residual
    stream after block L (``hidden_states[L]``, no final norm), and writes the mean over each row's
    response positions into ``out["mean@L"]`` as soon as the block returns, so the block's output
    is not kept beyond its normal life. Before each forward the caller sets :attr:`spans`: for
    every row of the batch, (pool index i, first position, end position) of its response in the
    batch's sequence axis; an empty list (the prompt's own forward) pools nothing. Use as a
    context manager (the hooks are removed on exit).
    """

    def __init__(self, base_model, layers: Sequence[int], out: dict[str, np.ndarray]):
        blocks = getattr(base_model, "layers", None)
        if blocks is None:
            raise FeatureError(
                f"{type(base_model).__name__} has no `layers` (its decoder blocks): the mean@L "
                f"poolings need a decoder-only base model (Llama, Qwen2, Mistral, Phi-3 shape)"
            )
        check_layers([layer_pooling(x) for x in layers], len(blocks))
        self.out, self.spans = out, []
        self.handles = [
            blocks[x - 1].register_forward_hook(self._hook(layer_pooling(x))) for x in layers
        ]

    def _hook(self, name: str):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output  # (rows, width, hidden)
            for row, (i, start, stop) in enumerate(self.spans):
                self.out[name][i] = h[row, start:stop].float().mean(0).cpu().numpy()

        return hook

    def __enter__(self) -> LayerMeans:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def pooled_states(
    base_model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    batch_tokens: int | None = 2048,
    poolings=POOLINGS,
    pad_id: int = 0,
    share_prompts: bool = True,
    memory: ForwardMemory | None = None,
    memory_budget: int | None = None,
    stats: dict | None = None,
) -> dict[str, np.ndarray]:
    """Pooled states of every response: ``{pooling: (n, hidden) float32}``.

    ``poolings``: any of :data:`POOLINGS` (the last layer, after the final norm) and ``mean@L``
    (:func:`layer_pooling`: decoder block L's output before the final norm, pooled in the same
    forward by :class:`LayerMeans`; 1 <= L < the model's ``num_hidden_layers``, else an error).

    With ``share_prompts`` (default), responses to the same prompt (a question's pool) are run on
    the prompt's key/value cache, computed once and shared by the rows of every batch, so the
    prompt is neither re-encoded nor copied per response; the response positions' states are those
    of a full forward pass (checked by the tests). Batches: :func:`length_batches` under
    ``batch_tokens`` (prompt + response tokens per row) and, with ``memory`` and ``memory_budget``
    (bytes), the memory model. Token ids may be lists or integer arrays. ``stats`` (a dict) gets
    ``batches`` and, with a memory model, ``modelled_peak`` (bytes: the largest planned batch).
    """
    import torch
    from transformers import DynamicCache

    n = len(prompt_ids)
    if n != len(response_ids):
        raise ValueError("prompt_ids and response_ids differ in length")
    if any(len(r) == 0 for r in response_ids):
        raise FeatureError("a response has no tokens: nothing to pool")
    hidden = base_model.config.hidden_size
    layers = check_layers(poolings, int(base_model.config.num_hidden_layers))
    out = {p: np.zeros((n, hidden), dtype=np.float32) for p in poolings}
    device = next(base_model.parameters()).device

    def pool(i, resp):  # resp: (T, hidden) states of response i, model dtype
        if "mean" in out:
            out["mean"][i] = resp.float().mean(0).cpu().numpy()
        if "last" in out:
            out["last"][i] = resp[-1].float().cpu().numpy()
        if "penultimate" in out:
            out["penultimate"][i] = resp[-2 if len(resp) >= 2 else -1].float().cpu().numpy()

    def padded(seqs, width, prefix=0):
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(np.asarray(seq, dtype=np.int64))
            mask[row, prefix : prefix + len(seq)] = 1
        return ids.to(device), mask.to(device)

    groups: dict[bytes | int, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(
            np.asarray(p, dtype=np.int64).tobytes() if share_prompts else i, []
        ).append(i)
    singles = [i for members in groups.values() if len(members) == 1 for i in members]
    stats = {} if stats is None else stats
    stats.update(batches=0, modelled_peak=0)

    def planned(rows, width, prefix):
        stats["batches"] += 1
        if memory is not None:
            stats["modelled_peak"] = max(stats["modelled_peak"], memory.batch(rows, width, prefix))

    with torch.inference_mode(), LayerMeans(base_model, layers, out) as taps:
        for members in groups.values():
            if len(members) == 1:
                continue
            prompt = np.asarray(prompt_ids[members[0]], dtype=np.int64)
            check_fits(memory, memory_budget, len(prompt), 0)  # the prompt's own forward
            taps.spans = []  # the prompt's forward pools nothing
            cache = DynamicCache()
            base_model(
                input_ids=torch.tensor(prompt)[None].to(device),
                past_key_values=cache,
                use_cache=True,
            )
            shared = shared_prefix_cache(cache)
            lengths = np.array([len(response_ids[i]) for i in members])
            check_fits(memory, memory_budget, int(lengths.max()), len(prompt))
            fits = memory_fit(memory, memory_budget, len(prompt))
            for local in length_batches(lengths, batch_tokens, prefix=len(prompt), fits=fits):
                idx = [members[j] for j in local]
                ids, mask = padded(
                    [response_ids[i] for i in idx], int(lengths[local].max()), prefix=len(prompt)
                )
                planned(len(idx), ids.shape[1], len(prompt))
                taps.spans = [(i, 0, len(response_ids[i])) for i in idx]
                h = base_model(
                    input_ids=ids, attention_mask=mask, past_key_values=shared, use_cache=True
                ).last_hidden_state
                for row, i in enumerate(idx):
                    pool(i, h[row, : len(response_ids[i])])
                del h
            del cache, shared
        lengths = np.array([len(prompt_ids[i]) + len(response_ids[i]) for i in singles])
        if singles:
            check_fits(memory, memory_budget, int(lengths.max()), 0)
        for local in (
            length_batches(lengths, batch_tokens, fits=memory_fit(memory, memory_budget, 0))
            if singles
            else []
        ):
            idx = [singles[j] for j in local]
            seqs = [
                np.concatenate(
                    [
                        np.asarray(prompt_ids[i], dtype=np.int64),
                        np.asarray(response_ids[i], dtype=np.int64),
                    ]
                )
                for i in idx
            ]
            ids, mask = padded(seqs, int(lengths[local].max()))
            planned(len(idx), ids.shape[1], 0)
            taps.spans = [
                (i, len(prompt_ids[i]), len(prompt_ids[i]) + len(response_ids[i])) for i in idx
            ]
            h = base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(idx):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                pool(i, h[row, p : p + t])
            del h
    return out


# ------------------------------------------------------------------------------------------------
# the cache files
# ------------------------------------------------------------------------------------------------
def quantize_groups(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit affine quantisation of the rows of ``x`` per group (question) and column (dimension).

    For group g and column j, ``lo = min`` and ``step = (max - min) / 255`` over the group's rows
    (step 1 where the column is constant); ``q = round((x - lo) / step)`` in 0..255. Returns
    ``(q uint8 (n, D), lo float32 (G, D), step float32 (G, D))``; :func:`dequantize_groups` gives
    ``lo + q × step``, within ``step / 2`` of ``x`` (plus float32 rounding). The selection centres
    each question's features on their mean, so the error that matters is relative to a question's
    own spread, which is what the per-question range tracks.
    """
    x = np.asarray(x, dtype=np.float32)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    lo = np.zeros((n_groups, x.shape[1]), np.float32)
    step = np.ones((n_groups, x.shape[1]), np.float32)
    q = np.zeros(x.shape, np.uint8)
    for g in range(n_groups):
        rows = groups == g
        block = x[rows]
        lo[g] = block.min(0)
        span = block.max(0) - lo[g]
        step[g] = np.where(span > 0, span / 255, 1.0)
        q[rows] = np.clip(np.rint((block - lo[g]) / step[g]), 0, 255).astype(np.uint8)
    return q, lo, step


def dequantize_groups(
    q: np.ndarray, lo: np.ndarray, step: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    """float64 ``lo[g] + q × step[g]`` for every row (its group g)."""
    return lo[groups].astype(np.float64) + q.astype(np.float64) * step[groups].astype(np.float64)


def cache_groups(qids) -> np.ndarray:
    """The quantisation group of every row: its question, numbered in order of appearance."""
    return pd.factorize(pd.Series(list(qids), dtype=object))[0].astype(np.int64)


def write_cache(
    out: str | os.PathLike,
    feats: dict[str, np.ndarray],
    rows: pd.DataFrame,
    *,
    model: str,
    dtype: str,
    shard_name: str,
) -> None:
    """The shard's tensors and manifest, each written atomically (manifest last)."""
    import torch
    from safetensors.torch import save_file

    if dtype not in CACHE_DTYPES:
        raise FeatureError(f"unknown cache dtype {dtype!r}; use one of {', '.join(CACHE_DTYPES)}")
    out = Path(out)
    for name, arr in feats.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            r = int(np.argwhere(bad)[0][0])
            raise FeatureError(
                f"{shard_name}: {int(bad.any(1).sum())} response(s) have NaN/Inf {name} features "
                f"(first: question {rows['qid'].iloc[r]} sample {rows['sample'].iloc[r]}). "
                "The model "
                f"overflowed in its dtype; rerun this shard with the model's dtype float32."
            )
    tensors = {}
    groups = cache_groups(rows["qid"]) if dtype == "uint8" else None
    for name, arr in feats.items():
        if dtype == "uint8":
            q, lo, step = quantize_groups(arr, groups)
            tensors |= {
                name: torch.from_numpy(q),
                f"{name}.lo": torch.from_numpy(lo),
                f"{name}.scale": torch.from_numpy(step),
            }
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            tensors[name] = t.to(getattr(torch, dtype)).contiguous()
    path = out.with_suffix(".safetensors")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    layers = {p: pooling_layer(p) for p in sorted(feats) if pooling_layer(p) is not None}
    manifest = {
        "model": model,
        "layer": "last (after the final norm; base model without LM head)"
        + (
            "; mean@L: the output of decoder block L (hidden_states[L]), before the final norm"
            if layers
            else ""
        ),
        "layers": layers,
        "poolings": sorted(feats),
        "dim": int(next(iter(feats.values())).shape[1]),
        "dtype": dtype,
        "rows": [[str(q), int(s)] for q, s in zip(rows["qid"], rows["sample"], strict=True)],
        "tensors": path.name,
        "sha256": sha256_file(path),
        "shard": shard_name,
    }
    if dtype == "uint8":
        manifest["quantization"] = (
            "affine 8-bit per question and dimension: x = lo + q * scale "
            "(tensors <pooling>.lo, <pooling>.scale; one row per question, in "
            "order of first appearance)"
        )
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(manifest) + "\n")


def read_cache(
    manifest_path: str | os.PathLike, pooling: str = "mean"
) -> tuple[np.ndarray, pd.DataFrame]:
    """(features (n, dim) float64, rows with qid/sample) of one shard, checksum verified; any cache
    dtype (float32/float16/bfloat16, or uint8 dequantised)."""
    feats, rows = read_cache_poolings(manifest_path, [pooling])
    return feats[pooling], rows


def read_cache_poolings(
    manifest_path: str | os.PathLike, poolings: Sequence[str]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """:func:`read_cache` of several poolings of one shard, the file read and verified once:
    ({pooling: features (n, dim) float64}, rows)."""
    from safetensors.torch import load_file

    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    tensors = manifest_path.with_name(manifest["tensors"])
    if sha256_file(tensors) != manifest["sha256"]:
        raise FeatureError(
            f"{tensors} does not match its manifest's checksum: the file changed on disk. "
            f"Delete {tensors} and {manifest_path}, then rerun the same snakemake command: rule "
            f"cache_features rebuilds them."
        )
    arr = load_file(str(tensors))
    for pooling in poolings:
        if pooling in arr:
            continue
        have = sorted(k for k in arr if "." not in k)
        why = (
            f"only the pools listed in inference.features.layers cache {pooling}: add this "
            f"pool's model and task with layer {pooling_layer(pooling)} there"
            if LAYER_POOLING.fullmatch(pooling)
            else "pools outside inference.features.ablation_models cache only the mean"
        )
        raise FeatureError(f"{tensors} has no {pooling!r} features; it has {have}: {why}.")
    rows = pd.DataFrame(manifest["rows"], columns=["qid", "sample"])
    out = {}
    for pooling in poolings:
        if manifest.get("dtype") == "uint8":
            out[pooling] = dequantize_groups(
                arr[pooling].numpy(),
                arr[f"{pooling}.lo"].numpy(),
                arr[f"{pooling}.scale"].numpy(),
                cache_groups(rows["qid"]),
            )
        else:
            out[pooling] = arr[pooling].double().numpy()
    return out, rows


def cache_bytes(rows: int, questions: int, dim: int, poolings: int, dtype: str) -> int:
    """Bytes of one shard's tensors: ``rows × dim`` values per pooling, plus the uint8 offsets and
    steps (two float32 per question and dimension). The manifest is small and not counted.

    >>> cache_bytes(6400, 1, 3584, 1, "float32"), cache_bytes(6400, 1, 3584, 1, "uint8")
    (91750400, 22966272)
    """
    extra = questions * dim * QUANT_GROUP_BYTES if dtype == "uint8" else 0
    return poolings * (rows * dim * CACHE_DTYPE_BYTES[dtype] + extra)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def gpu_budget(device, gpu_memory_gb: float | None, fraction: float) -> int | None:
    """Bytes the feature forward may use on ``device``: ``gpu_memory_gb × 1e9 × fraction`` on a
    GPU (an error when the GPU is smaller than stated), None on a CPU or without a stated size."""
    import torch

    if gpu_memory_gb is None or torch.device(device).type != "cuda":
        return None
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if total < gpu_memory_gb * 1e9 * fraction:
        raise FeatureError(
            f"this GPU has {total / 1e9:.1f} GB, less than inference.features.gpu_memory_gb = "
            f"{gpu_memory_gb:g} × gpu_memory_fraction {fraction:g}: "
            "set gpu_memory_gb to this GPU's size "
            f"(the batches depend on it) or run on the GPUs the config states"
        )
    return int(gpu_memory_gb * 1e9 * fraction)


def _pooling_arg(value: str) -> str:
    try:
        pooling_layer(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.features", description="Cache one shard's features."
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--pool", required=True, help="the pool shard (Parquet)")
    ap.add_argument(
        "--poolings",
        nargs="+",
        default=list(POOLINGS),
        type=_pooling_arg,
        help=f"{', '.join(POOLINGS)} (last layer) and mean@<L> (decoder block L's mean)",
    )
    ap.add_argument("--dtype", default="float32", choices=CACHE_DTYPES, help="cache dtype")
    ap.add_argument("--model-dtype", default="bfloat16")
    ap.add_argument(
        "--batch-tokens",
        type=int,
        default=2048,
        help="prompt + response tokens per batch at most (0: no cap)",
    )
    ap.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=0,
        help="the GPU memory (1e9 bytes) the batches are planned for, on a GPU "
        "(0: no memory model)",
    )
    ap.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="the manifest path (.json)")
    args = ap.parse_args(argv)
    start_cli(args.threads, torch=True)  # torch, BLAS and OpenMP threads = the rule's threads
    import torch

    from repexp.models import load_model, load_tokenizer

    pool = pd.read_parquet(args.pool)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        budget = gpu_budget(device, args.gpu_memory_gb or None, args.gpu_memory_fraction)
        base = load_model(args.model, dtype=args.model_dtype, device=device, lm_head=False)
        memory = ForwardMemory.of_model(base) if budget is not None else None
        if memory is not None:
            log.info(
                "GPU budget %.1f GB: weights %.1f GB, the rest for prompt caches and activations",
                budget / 1e9,
                memory.weight_bytes / 1e9,
            )
        pad = load_tokenizer(args.model).pad_token_id or 0
        t0, stats = time.perf_counter(), {}
        feats = pooled_states(
            base,
            pool["prompt_ids"].tolist(),
            pool["response_ids"].tolist(),
            batch_tokens=args.batch_tokens or None,
            poolings=args.poolings,
            pad_id=pad,
            memory=memory,
            memory_budget=budget,
            stats=stats,
        )
        dt = time.perf_counter() - t0
        log.info(
            "%s: %d responses, %d response tokens in %.1fs (%.0f tok/s), %d batches",
            args.pool,
            len(pool),
            int(pool["n_tokens"].sum()),
            dt,
            pool["n_tokens"].sum() / max(dt, 1e-9),
            stats["batches"],
        )
        if device == "cuda":  # recalibrate the memory model from these two numbers
            log.info(
                "peak GPU memory %.1f GB allocated (memory model: %.1f GB)",
                torch.cuda.max_memory_allocated() / 1e9,
                stats["modelled_peak"] / 1e9,
            )
        write_cache(
            args.out, feats, pool, model=args.model_name, dtype=args.dtype, shard_name=args.pool
        )
    except FeatureError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
