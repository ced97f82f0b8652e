"""Hidden-state cache: pooled last-layer states of each response (paper.md §0, Fig. 4).

The base model is run *without its LM head* (``AutoModel``: ``last_hidden_state`` is taken after
the final norm, as in the authors' code) over the exact saved prompt + response token ids. Per
response three poolings of the response positions ``[P, P + T)`` (P prompt tokens, T response
tokens) are kept:

* ``mean``: the mean over all T response positions, the paper's feature h̄(x, y). When the response
  ended with an end-of-sequence token, that token is one of the T positions (as in the authors'
  code, whose mean runs over the attention mask of the response, EOS included);
* ``last``: the state at position P + T − 1 (the last response token);
* ``penultimate``: the state at position P + T − 2 (the last one when T = 1).

Responses are sorted by length and packed into batches of at most ``batch_tokens`` padded
tokens, so padding wastes little work; right padding with an attention mask keeps every real
position's state identical to an unpadded forward pass. Projection happens downstream, so any
projection seed reuses the cache.

Output per shard: ``<out>.safetensors`` (float32/float16 tensors ``mean``, ``last``,
``penultimate``, rows in the shard's order) and ``<out>.json`` (model, layer, poolings, dims,
dtype, row -> question/sample, sha256 of the tensor file). A NaN or Inf is an error naming the
shard.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp.assets import sha256_file
from repexp.atomic import atomic_path

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last", "penultimate")


class FeatureError(RuntimeError):
    """A feature cache is invalid (NaN/Inf, checksum mismatch, rows out of step)."""


def length_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length whose padded size is <= ``batch_tokens``."""
    order = np.argsort(lengths, kind="stable")[::-1]  # longest first: memory peaks early
    batches, cur, width = [], [], 0
    for i in order:
        if cur and width * (len(cur) + 1) > batch_tokens:
            batches.append(np.array(cur))
            cur = []
        if not cur:
            width = int(lengths[i])  # the longest of the batch, as lengths come longest first
        cur.append(i)
    if cur:
        batches.append(np.array(cur))
    return batches


def pooled_states(base_model, prompt_ids: list[list[int]], response_ids: list[list[int]], *,
                  batch_tokens: int = 2048, poolings=POOLINGS, pad_id: int = 0,
                  share_prompts: bool = True) -> dict[str, np.ndarray]:
    """Pooled last-layer states of every response: ``{pooling: (n, hidden) float32}``.

    With ``share_prompts`` (default), responses to the same prompt (a question's pool) are run on
    the prompt's key/value cache, computed once, so the prompt is not re-encoded for every
    response; the response positions' states are those of a full forward pass (checked by the
    tests). Responses are packed by length into batches of at most ``batch_tokens`` tokens and
    right-padded; padding never changes a real position's state (causal attention).
    """
    import torch
    from transformers import DynamicCache

    n = len(prompt_ids)
    if n != len(response_ids):
        raise ValueError("prompt_ids and response_ids differ in length")
    if any(len(r) == 0 for r in response_ids):
        raise FeatureError("a response has no tokens: nothing to pool")
    hidden = base_model.config.hidden_size
    out = {p: np.zeros((n, hidden), dtype=np.float32) for p in poolings}
    device = next(base_model.parameters()).device

    def pool(i, resp):  # resp: (T, hidden) states of response i
        if "mean" in out:
            out["mean"][i] = resp.mean(0).cpu().numpy()
        if "last" in out:
            out["last"][i] = resp[-1].cpu().numpy()
        if "penultimate" in out:
            out["penultimate"][i] = resp[-2 if len(resp) >= 2 else -1].cpu().numpy()

    def padded(seqs, width, prefix=0):
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, prefix: prefix + len(seq)] = 1
        return ids.to(device), mask.to(device)

    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(tuple(p) if share_prompts else (i,), []).append(i)
    singles = [i for members in groups.values() if len(members) == 1 for i in members]
    with torch.inference_mode():
        for key, members in groups.items():
            if len(members) == 1:
                continue
            prompt = list(key)
            cache = DynamicCache()
            base_model(input_ids=torch.tensor([prompt], device=device), past_key_values=cache, use_cache=True)
            lengths = np.array([len(response_ids[i]) for i in members])
            for local in length_batches(lengths, batch_tokens):
                idx = [members[j] for j in local]
                ids, mask = padded([response_ids[i] for i in idx], int(lengths[local].max()), prefix=len(prompt))
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(idx))
                h = base_model(input_ids=ids, attention_mask=mask, past_key_values=batch_cache,
                               use_cache=True).last_hidden_state.float()
                for row, i in enumerate(idx):
                    pool(i, h[row, : len(response_ids[i])])
        lengths = np.array([len(prompt_ids[i]) + len(response_ids[i]) for i in singles])
        for local in length_batches(lengths, batch_tokens) if singles else []:
            idx = [singles[j] for j in local]
            ids, mask = padded([prompt_ids[i] + response_ids[i] for i in idx], int(lengths[local].max()))
            h = base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            for row, i in enumerate(idx):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                pool(i, h[row, p: p + t])
    return out


def write_cache(out: str | os.PathLike, feats: dict[str, np.ndarray], rows: pd.DataFrame, *, model: str,
                dtype: str, shard_name: str) -> None:
    """The shard's tensors and manifest, each written atomically (manifest last)."""
    from safetensors.numpy import save_file

    out = Path(out)
    for name, arr in feats.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            r = int(np.argwhere(bad)[0][0])
            raise FeatureError(
                f"{shard_name}: {int(bad.any(1).sum())} response(s) have NaN/Inf {name} features "
                f"(first: question {rows['qid'].iloc[r]} sample {rows['sample'].iloc[r]}). The model "
                f"overflowed in its dtype; rerun this shard with features.dtype/model dtype float32."
            )
    tensors = out.with_suffix(".safetensors")
    np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
    with atomic_path(tensors) as tmp:
        save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in feats.items()}, str(tmp))
    manifest = {
        "model": model, "layer": "last (after the final norm; base model without LM head)",
        "poolings": sorted(feats), "dim": int(next(iter(feats.values())).shape[1]), "dtype": dtype,
        "rows": [[str(q), int(s)] for q, s in zip(rows["qid"], rows["sample"], strict=True)],
        "tensors": tensors.name, "sha256": sha256_file(tensors), "shard": shard_name,
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(manifest) + "\n")


def read_cache(manifest_path: str | os.PathLike, pooling: str = "mean") -> tuple[np.ndarray, pd.DataFrame]:
    """(features (n, dim) float64, rows with qid/sample) of one shard, checksum verified."""
    from safetensors.numpy import load_file

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
    if pooling not in arr:
        raise FeatureError(f"{tensors} has no {pooling!r} features; it has {sorted(arr)}")
    rows = pd.DataFrame(manifest["rows"], columns=["qid", "sample"])
    return arr[pooling].astype(np.float64), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.features", description="Cache one shard's features.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--pool", required=True, help="the pool shard (Parquet)")
    ap.add_argument("--poolings", nargs="+", default=list(POOLINGS), choices=POOLINGS)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="cache dtype")
    ap.add_argument("--model-dtype", default="bfloat16")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="the manifest path (.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from repexp.models import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    pool = pd.read_parquet(args.pool)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_model(args.model, dtype=args.model_dtype, device=device, lm_head=False)
    pad = load_tokenizer(args.model).pad_token_id or 0
    t0 = time.perf_counter()
    feats = pooled_states(base, [list(p) for p in pool["prompt_ids"]], [list(r) for r in pool["response_ids"]],
                          batch_tokens=args.batch_tokens, poolings=args.poolings, pad_id=pad)
    dt = time.perf_counter() - t0
    log.info("%s: %d responses, %d response tokens in %.1fs (%.0f tok/s)", args.pool, len(pool),
             int(pool["n_tokens"].sum()), dt, pool["n_tokens"].sum() / max(dt, 1e-9))
    try:
        write_cache(args.out, feats, pool, model=args.model_name, dtype=args.dtype, shard_name=args.pool)
    except FeatureError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
