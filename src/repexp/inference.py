"""Inference-time RepExp on cached pools: selection per pool, result tables, the overview view.

The math lives in :mod:`repexp.select` (Algorithm 1) and :mod:`repexp.metrics`; this module reads
a pool's feature shards and scores, runs the trials, and writes small tables for the figures.

CLI (rules ``select_pool``, ``summarize_inference``, ``overview``)::

    python -m repexp.inference select --features F1.json F2.json --scores S1.parquet S2.parquet \\
        --pooling mean --out-prefix results/inference/selection/m/t/vanilla/mean ...
    python -m repexp.inference summarize --questions ... --out-dir results/tables
    python -m repexp.inference overview --features ... --scores ... --out results/tables/overview.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from repexp import metrics, provenance
from repexp.atomic import atomic_path, write_parquet
from repexp.features import read_cache
from repexp.parallel import cap_threads, mp_context
from repexp.pools import question_seed
from repexp.select import first_picks, project, repexp_orders, repexp_orders_torch

log = logging.getLogger(__name__)


def pool_shards(
    feature_manifests: list[str], score_files: list[str], pooling: str
) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """Each shard of a pool in turn: (its features as :func:`repexp.features.read_cache` returns
    them, its rows with their correctness), read when the caller asks for the next one.

    ``score_files[i]`` holds the scores of ``feature_manifests[i]`` (the rules pass both in shard
    order). A shard holds whole questions: a question met in two shards is an error.
    """
    if len(feature_manifests) != len(score_files):
        raise ValueError(
            f"{len(feature_manifests)} feature manifests but {len(score_files)} score tables: "
            f"pass one score table per feature shard, in the same shard order"
        )
    seen: set[str] = set()
    for manifest, score_file in zip(feature_manifests, score_files, strict=True):
        feats, rows = read_cache(manifest, pooling)
        scores = pd.read_parquet(score_file, columns=["qid", "sample", "correct"])
        merged = rows.merge(scores, on=["qid", "sample"], how="left", validate="one_to_one")
        if merged["correct"].isna().any():
            bad = merged[merged["correct"].isna()].iloc[0]
            raise ValueError(
                f"no score for question {bad.qid} sample {bad['sample']} in {score_file} (the "
                f"scores of {manifest}): the score and feature shards are out of step; rerun "
                f"score_pool for this pool"
            )
        qids = pd.unique(merged["qid"])
        again = seen.intersection(qids)
        if again:
            raise ValueError(
                f"question {sorted(again)[0]} of {manifest} is also in an earlier shard: a pool "
                f"shard must hold whole questions; rerun cache_features for this pool"
            )
        seen.update(qids)
        yield feats, merged
        del feats, rows, merged  # the next shard is read only after this one is dropped


def load_pool(feature_manifests: list[str], score_files: list[str], pooling: str):
    """Features (float64, rows in shard order) and the aligned correctness of a whole pool.

    Holds every shard at once: for small pools and tests. The ``select`` and ``overview`` CLIs read
    one shard at a time (:func:`pool_shards`)."""
    feats, rows = [], []
    for x, r in pool_shards(feature_manifests, score_files, pooling):
        feats.append(np.asarray(x, dtype=np.float64))
        rows.append(r)
    return np.concatenate(feats), pd.concat(rows, ignore_index=True)


def pass_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n (and n itself)."""
    ks = [2**i for i in range(int(np.log2(n)) + 1)]
    return ks if ks[-1] == n else [*ks, n]


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _orders_batched(phi, groups, k_of, firsts_of, *, lam, center, device, batch):
    """Many questions x trials at once with the torch path (a GPU). Questions are batched with
    others of the same order length k; pools of different sizes are padded (``valid`` mask).
    ``phi``: the projected features of the questions' rows (one shard, or a whole pool)."""
    import torch

    out = {}
    by_k: dict[int, list] = {}
    for qid, g in groups:
        by_k.setdefault(k_of[qid], []).append((qid, g))
    for k, same in by_k.items():
        for start in range(0, len(same), batch):
            chunk = same[start : start + batch]
            n_max, d = max(len(g) for _, g in chunk), phi.shape[1]
            feats = torch.zeros((len(chunk), n_max, d), dtype=torch.float64)
            valid = torch.zeros((len(chunk), n_max), dtype=torch.bool)
            for b, (_, g) in enumerate(chunk):
                feats[b, : len(g)] = torch.from_numpy(phi[g.index.to_numpy()])
                valid[b, : len(g)] = True
            firsts = torch.tensor(np.stack([firsts_of[qid] for qid, _ in chunk]))
            orders = (
                repexp_orders_torch(
                    feats.to(device),
                    k,
                    firsts.to(device),
                    lam=lam,
                    center=center,
                    valid=valid.to(device),
                )
                .cpu()
                .numpy()
            )
            out.update({qid: orders[b] for b, (qid, _) in enumerate(chunk)})
    return out


def question_orders(
    features: np.ndarray,
    k: int,
    firsts: np.ndarray,
    *,
    proj_dim: int,
    projection_seed: int,
    lam: float,
    center: bool,
) -> np.ndarray:
    """The (trials, k) RepExp orders of one question: its raw features (N × hidden, any float dtype)
    projected (:func:`repexp.select.project`), then :func:`repexp.select.repexp_orders`. The unit of
    work of the CPU path, in this process or in a worker."""
    phi = project(features, proj_dim, projection_seed)
    return repexp_orders(phi, k, firsts, lam=lam, center=center)


def _rows_of(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``features[idx]``; a view, not a copy, when the rows are contiguous (a question's responses
    are, in a pool shard)."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size and (np.diff(idx) == 1).all():
        return features[idx[0] : idx[-1] + 1]
    return features[idx]


def _worker_init() -> None:
    cap_threads(1)  # one BLAS thread per worker process: the job's threads are its workers


def _executor(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=workers, mp_context=mp_context(), initializer=_worker_init
    )


def select_shards(
    shards: Iterable[tuple[np.ndarray, pd.DataFrame]],
    *,
    proj_dim: int,
    lam: float,
    trials: int,
    k_max: int | None,
    center: bool,
    projection_seed: int,
    seed: int,
    seed_parts: tuple[str, ...],
    device: str | None = "cpu",
    batch_questions: int = 32,
    workers: int = 1,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """:func:`select_pool`, one shard at a time: yields the (trials, questions, passk) tables of each
    ``(features, rows)`` shard in turn. Every question is projected on its own with the pool's one
    projection matrix, so the tables equal :func:`select_pool`'s on the concatenated pool.

    ``workers`` > 1 (CPU path): the questions run in that many processes, each with one BLAS
    thread, at most ``workers + 2`` of them submitted at once (each as a copy of its rows); the next
    shard is read as soon as every question of this one is submitted. The orders do not depend on
    ``workers``.

    Memory: one shard as ``shards`` yields it, plus (with workers) ``workers + 2`` questions' rows in
    this process and one question per worker; never the whole pool.
    """
    if device is None:
        device = "cuda" if _cuda() else "cpu"
    common = dict(
        proj_dim=proj_dim,
        lam=lam,
        trials=trials,
        k_max=k_max,
        center=center,
        projection_seed=projection_seed,
        seed=seed,
        seed_parts=seed_parts,
    )
    if device != "cpu" or workers <= 1:
        for features, rows in shards:
            tables = _shard_tables(
                *_shard_orders(
                    features, rows, device=device, batch_questions=batch_questions, **common
                )
            )
            del features, rows
            yield tables
        return
    pool, window = _executor(workers), workers + 2
    try:
        done_shards: deque = (
            deque()
        )  # (groups, k_of, futures) of shards whose questions are submitted
        inflight: deque = deque()  # futures in submission order
        for features, rows in shards:
            groups, k_of, firsts_of = _shard_plan(rows, **common)
            futures = {}
            for qid, g in groups:
                while len(inflight) >= window:
                    inflight.popleft().result()  # the oldest question (re-raises its error)
                    while done_shards and all(f.done() for f in done_shards[0][2].values()):
                        yield _shard_tables(*done_shards.popleft())
                part = np.array(_rows_of(features, g.index.to_numpy()))  # a copy: the shard can go
                futures[qid] = pool.submit(
                    question_orders,
                    part,
                    k_of[qid],
                    firsts_of[qid],
                    proj_dim=proj_dim,
                    projection_seed=projection_seed,
                    lam=lam,
                    center=center,
                )
                inflight.append(futures[qid])
                del part
            done_shards.append((groups, k_of, futures))
            del features, rows
        while done_shards:
            yield _shard_tables(*done_shards.popleft())
    finally:
        pool.shutdown(cancel_futures=True)


def _shard_plan(rows, *, trials, k_max, seed, seed_parts, **_):
    """The questions of a shard (in shard order), their order lengths and their seeded first picks."""
    groups = list(rows.groupby("qid", sort=False))
    firsts_of = {
        qid: first_picks(len(g), trials, question_seed(seed, *seed_parts, str(qid), "first-picks"))
        for qid, g in groups
    }
    k_of = {qid: len(g) if k_max is None else min(k_max, len(g)) for qid, g in groups}
    return groups, k_of, firsts_of


def _shard_orders(
    features,
    rows,
    *,
    proj_dim,
    lam,
    trials,
    k_max,
    center,
    projection_seed,
    seed,
    seed_parts,
    device,
    batch_questions,
):
    """The orders of one shard's questions in this process: numpy one question at a time (CPU), or the
    batched torch path on ``device``."""
    groups, k_of, firsts_of = _shard_plan(
        rows, trials=trials, k_max=k_max, seed=seed, seed_parts=seed_parts
    )
    if device != "cpu":
        phi = project(features, proj_dim, projection_seed)
        orders_of = _orders_batched(
            phi,
            groups,
            k_of,
            firsts_of,
            lam=lam,
            center=center,
            device=device,
            batch=batch_questions,
        )
    else:
        orders_of = {
            qid: question_orders(
                _rows_of(features, g.index.to_numpy()),
                k_of[qid],
                firsts_of[qid],
                proj_dim=proj_dim,
                projection_seed=projection_seed,
                lam=lam,
                center=center,
            )
            for qid, g in groups
        }
    return groups, k_of, orders_of


def _shard_tables(groups, k_of, orders_of):
    trial_rows, q_rows, pk_rows = [], [], []
    for qid, grp in groups:
        idx = grp.index.to_numpy()
        samples, correct = grp["sample"].to_numpy(), grp["correct"].to_numpy() > 0
        n, c = len(idx), int(correct.sum())
        k, orders = k_of[qid], orders_of[qid]
        if isinstance(orders, Future):
            orders = orders.result()
        stcs = []
        for t, order in enumerate(orders):
            stc = metrics.samples_to_correct(order, correct)
            stcs.append(np.nan if stc is None else float(stc))
            trial_rows.append(
                {
                    "qid": qid,
                    "trial": t,
                    "first": int(samples[order[0]]),
                    "order": samples[order].tolist(),
                    "stc": stcs[-1],
                }
            )
        solved = c > 0
        q_rows.append(
            {
                "qid": qid,
                "n": n,
                "c": c,
                "pass1": c / n,
                "stc_random": metrics.random_samples_to_correct(n, c) if solved else np.nan,
                # with k_max < n a trial may stop before a correct pick: its STC is unknown (NaN)
                "stc_repexp": float(np.mean(stcs))
                if solved and not np.isnan(stcs).any()
                else np.nan,
            }
        )
        ks = [x for x in pass_ks(n) if x <= k]
        rep = np.mean([metrics.order_pass_at_k(o, correct, ks) for o in orders], axis=0)
        rnd = metrics.pass_at_k_curve(n, c, ks)
        pk_rows += [
            {"qid": qid, "k": kk, "random": float(r), "repexp": float(e)}
            for kk, r, e in zip(ks, rnd, rep, strict=True)
        ]
    return pd.DataFrame(trial_rows), pd.DataFrame(q_rows), pd.DataFrame(pk_rows)


def select_pool(
    features: np.ndarray,
    rows: pd.DataFrame,
    *,
    proj_dim: int,
    lam: float,
    trials: int,
    k_max: int | None,
    center: bool,
    projection_seed: int,
    seed: int,
    seed_parts: tuple[str, ...],
    device: str | None = "cpu",
    batch_questions: int = 32,
    workers: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """RepExp and random selection for every question of one pool.

    Returns (trials, questions, passk): one row per question and trial with its RepExp order (sample
    ids) and samples-to-correct; one row per question with n, c, pass@1, STC of random (closed form)
    and of RepExp (mean over trials); pass@k per question for k = 1, 2, 4, ... (random: the unbiased
    estimator; RepExp: the fraction of trials whose first k picks hold a correct response).

    One projection (``proj_dim``, ``projection_seed``) for the whole pool. ``device``: ``"cpu"``
    (numpy, one question at a time, the trials sharing each pass over the features; ``workers``
    processes), a torch device such as ``"cuda"`` (``batch_questions`` questions x trials at once),
    or None for CUDA when available. For a pool too large for memory use :func:`select_shards`.
    """
    parts = list(
        select_shards(
            [(features, rows)],
            proj_dim=proj_dim,
            lam=lam,
            trials=trials,
            k_max=k_max,
            center=center,
            projection_seed=projection_seed,
            seed=seed,
            seed_parts=seed_parts,
            device=device,
            batch_questions=batch_questions,
            workers=workers,
        )
    )
    return parts[0]


# ------------------------------------------------------------------------------------------------
# result tables
# ------------------------------------------------------------------------------------------------
KEYS = ["model", "task", "sampler", "pooling"]


def summarize(
    questions: pd.DataFrame,
    passk: pd.DataFrame,
    *,
    exclude_unsolved: bool = True,
    reference_model: str | None = None,
    difficulty: pd.DataFrame | None = None,
    pool_stats: pd.DataFrame | None = None,
):
    """Dataset-level tables from the per-question ones (each carrying the KEYS columns).

    * ``stc``: per model/task/sampler/pooling: questions, unsolved (c = 0), mean STC of random and
      RepExp over the solved questions (or over all with ``exclude_unsolved=False``, where an
      unsolved question counts n + 1 for both), both relative improvements, pass@1, model rank,
      and ``format_miss``: the fraction of the pool's responses without the answer format the
      prompt asks for (from ``pool_stats``; NaN without them);
    * ``deciles``: mean STC per difficulty decile, vanilla sampler and mean pooling. Questions are
      binned by the reference model's random STC (n + 1)/(c + 1) on its vanilla pool of the task
      (``pool_stats`` rows of ``reference_model``, which need not be an inference model; else its
      rows of ``questions``), an unsolved question counting n + 1 (the hardest); without a
      reference pool, by the dataset's difficulty field. ``reference`` names what binned the task
      (the model, or ``difficulty``); ``self_referenced`` marks the reference model's own rows,
      binned by its own STC (the same draws decide bin and STC, so its bins are biased);
    * ``passk``: mean pass@k over all questions.

    ``pool_stats``: per pool and question ``model, task, sampler, qid, n, c, format_ok``
    (``python -m repexp.score stats``).
    """
    q = questions.reset_index(drop=True)  # rows are addressed by index below
    if not exclude_unsolved:
        unsolved = q["c"] == 0
        for col in ("stc_random", "stc_repexp"):
            q.loc[unsolved, col] = q.loc[unsolved, "n"] + 1
    rows = []
    for key, g in q.groupby(KEYS, sort=True):
        used = g.dropna(subset=["stc_random", "stc_repexp"])
        r, e = used["stc_random"].mean(), used["stc_repexp"].mean()
        rel = (
            metrics.relative_improvement(r, e)
            if len(used)
            else {"reduction": np.nan, "speedup": np.nan}
        )
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "questions": len(g),
                "unsolved": int((g["c"] == 0).sum()),
                "used": len(used),
                "pool_n": int(g["n"].max()),
                "pass1": g["pass1"].mean(),
                "stc_random": r,
                "stc_repexp": e,
                **rel,
            }
        )
    stc = pd.DataFrame(rows)
    stc["model_rank"] = np.nan
    base = (stc["sampler"] == "vanilla") & (stc["pooling"] == "mean")
    for _task, g in stc[base].groupby("task"):
        ranks = metrics.rank_models(dict(zip(g["model"], g["pass1"], strict=True)))
        stc.loc[g.index, "model_rank"] = g["model"].map(ranks).to_numpy()
    pool_keys = ["model", "task", "sampler"]
    if pool_stats is not None and len(pool_stats):
        per_pool = pool_stats.groupby(pool_keys)[["n", "format_ok"]].sum()
        miss = (1 - per_pool["format_ok"] / per_pool["n"]).rename("format_miss").reset_index()
        stc = stc.merge(miss, on=pool_keys, how="left")
    else:
        stc["format_miss"] = np.nan

    # difficulty deciles
    q_base = q[(q["sampler"] == "vanilla") & (q["pooling"] == "mean")].copy()
    q_base["hardness"] = np.nan
    q_base["reference"] = None
    for task, g in q_base.groupby("task"):
        ref, name = None, None
        if reference_model is not None:
            r = None
            if pool_stats is not None:
                ps = pool_stats
                r = ps[
                    (ps["model"] == reference_model)
                    & (ps["task"] == task)
                    & (ps["sampler"] == "vanilla")
                ].set_index("qid")
            if r is None or not len(r):
                r = g[g["model"] == reference_model].set_index("qid")
            if len(r):  # closed-form random STC; unsolved = hardest, n + 1
                ref, name = (r["n"] + 1) / (r["c"] + 1), reference_model
        if ref is None and difficulty is not None:
            d = difficulty[difficulty["task"] == task].set_index("qid")["difficulty"]
            ref, name = (d, "difficulty") if d.notna().any() else (None, None)
        if ref is not None:
            q_base.loc[g.index, "hardness"] = g["qid"].map(ref).to_numpy()
            q_base.loc[g.index, "reference"] = name
    q_base["decile"] = np.nan
    for _key, g in q_base.dropna(subset=["hardness"]).groupby(["model", "task"]):
        uniq = g.drop_duplicates("qid")
        bins = metrics.difficulty_deciles(uniq["hardness"].to_numpy(), n_bins=min(10, len(uniq)))
        q_base.loc[g.index, "decile"] = (
            g["qid"].map(dict(zip(uniq["qid"], bins, strict=True))).to_numpy()
        )
    deciles = (
        q_base.dropna(subset=["decile", "stc_random", "stc_repexp"])
        .groupby(["model", "task", "decile"], as_index=False)
        .agg(
            questions=("qid", "size"),
            stc_random=("stc_random", "mean"),
            stc_repexp=("stc_repexp", "mean"),
            reference=("reference", "first"),
        )
    )
    deciles["self_referenced"] = deciles["model"] == deciles["reference"]
    pk = passk.groupby([*KEYS, "k"], as_index=False).agg(
        random=("random", "mean"), repexp=("repexp", "mean"), questions=("qid", "size")
    )
    return stc, deciles, pk


def overview_question(stats: pd.DataFrame) -> str:
    """The question of the overview figure from per-question ``sum`` (correct responses) and
    ``size`` (responses), in pool order: the one closest to half correct among those neither all
    wrong nor all right (the most informative picture); ties: the first in the pool."""
    mean = stats["sum"] / stats["size"]
    mixed = mean[(mean > 0) & (mean < 1)]
    return (mixed if len(mixed) else mean).sub(0.5).abs().idxmin()


def overview(
    features: np.ndarray,
    rows: pd.DataFrame,
    *,
    proj_dim: int,
    lam: float,
    picks: int,
    projection_seed: int,
    seed: int,
) -> pd.DataFrame:
    """A 2-D view (PCA of the projected, centred features) of the pool of one question, with
    RepExp's first ``picks`` picks and ``picks`` uniformly random picks (the overview figure)."""
    from sklearn.decomposition import PCA

    qid = overview_question(rows.groupby("qid", sort=False)["correct"].agg(["sum", "size"]))
    grp = rows[rows["qid"] == qid]
    phi = project(features[grp.index.to_numpy()], proj_dim, projection_seed)
    phi = phi - phi.mean(0)
    xy = PCA(n_components=2, random_state=0).fit_transform(phi)
    k = min(picks, len(grp))
    rng = np.random.default_rng(question_seed(seed, str(qid), "overview"))
    first = int(rng.integers(len(grp)))
    order = repexp_orders(phi, k, [first], lam=lam, center=False)[0]
    rand = rng.permutation(len(grp))[:k]
    out = pd.DataFrame(
        {
            "qid": qid,
            "sample": grp["sample"].to_numpy(),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "correct": grp["correct"].to_numpy() > 0,
            "repexp_pick": np.nan,
            "random_pick": np.nan,
        }
    )
    out.loc[order, "repexp_pick"] = np.arange(1, k + 1)
    out.loc[rand, "random_pick"] = np.arange(1, k + 1)
    return out


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
class _ParquetParts:
    """A Parquet table written part by part (one row group per part) to ``path``, with
    :func:`repexp.atomic.write_parquet`'s metadata (``meta`` as JSON under ``repexp``, the
    environment under ``repexp_provenance``); it reads back as one table."""

    def __init__(self, path: Path, **meta):
        self.path, self.meta, self.writer, self.schema = path, meta, None, None

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            schema = pa.Table.from_pandas(df, preserve_index=False).schema
            extra = {
                b"repexp_provenance": json.dumps(provenance.environment(), sort_keys=True).encode()
            }
            if self.meta:
                extra[b"repexp"] = json.dumps(self.meta, sort_keys=True).encode()
            self.schema = schema.with_metadata({**(schema.metadata or {}), **extra})
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self.writer.write_table(pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _cmd_select(a) -> int:
    """Shard by shard: each shard's tables are appended to the three outputs (written under temporary
    names, renamed when every shard is done), so memory does not grow with the pool."""
    t0 = time.perf_counter()
    cap_threads(a.threads)
    keys = {"model": a.model, "task": a.task, "sampler": a.sampler, "pooling": a.pooling}
    parts = select_shards(
        pool_shards(a.features, a.scores, a.pooling),
        proj_dim=a.proj_dim,
        lam=a.lam,
        trials=a.trials,
        k_max=a.k_max,
        center=not a.no_center,
        projection_seed=a.projection_seed,
        seed=a.seed,
        seed_parts=(a.model, a.task, a.sampler, a.pooling),
        device=None if a.device == "auto" else a.device,
        workers=a.threads,
    )
    n_q, n_solved, stc_r, stc_e = 0, 0, 0.0, 0.0
    with ExitStack() as stack:
        sinks = []
        for name in ("trials", "questions", "passk"):
            sinks.append(
                _ParquetParts(
                    stack.enter_context(atomic_path(f"{a.out_prefix}.{name}.parquet")), **keys
                )
            )
            stack.callback(sinks[-1].close)  # runs before the rename (callbacks unwind first)
        for shard, tables in enumerate(parts):
            for sink, df in zip(sinks, tables, strict=True):
                sink.write(df.assign(**keys))
            solved = tables[1].dropna(subset=["stc_random"])
            n_q, n_solved = n_q + len(tables[1]), n_solved + len(solved)
            stc_r, stc_e = stc_r + solved["stc_random"].sum(), stc_e + solved["stc_repexp"].sum()
            log.info(
                "shard %d/%d: %d questions, %.1fs so far",
                shard + 1,
                len(a.features),
                len(tables[1]),
                time.perf_counter() - t0,
            )
    log.info(
        "%s/%s/%s/%s: %d questions (%d solved) in %.1fs; mean STC random %.2f, RepExp %.2f",
        a.model,
        a.task,
        a.sampler,
        a.pooling,
        n_q,
        n_solved,
        time.perf_counter() - t0,
        stc_r / max(n_solved, 1),
        stc_e / max(n_solved, 1),
    )
    return 0


def _cmd_summarize(a) -> int:
    questions = pd.concat([pd.read_parquet(f) for f in a.questions], ignore_index=True)
    passk = pd.concat([pd.read_parquet(f) for f in a.passk], ignore_index=True)
    difficulty = (
        pd.concat(
            [pd.read_parquet(f, columns=["qid", "task", "difficulty"]) for f in a.task_tables],
            ignore_index=True,
        )
        if a.task_tables
        else None
    )
    stats = (
        pd.concat([pd.read_parquet(f) for f in a.pool_stats], ignore_index=True)
        if a.pool_stats
        else None
    )
    stc, deciles, pk = summarize(
        questions,
        passk,
        exclude_unsolved=not a.include_unsolved,
        reference_model=a.reference_model or None,
        difficulty=difficulty,
        pool_stats=stats,
    )
    if a.reference_model and set(deciles["reference"]) - {a.reference_model}:
        log.warning(
            "no pool of the reference model %s for some task: those deciles use the "
            "dataset's difficulty field (deciles.csv, column reference)",
            a.reference_model,
        )
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance.from_cli(a.provenance)
    provenance.stamp(stc, prov).to_csv(out / "stc.csv", index=False)
    provenance.stamp(deciles, prov).to_csv(out / "deciles.csv", index=False)
    provenance.stamp(pk, prov).to_csv(out / "passk.csv", index=False)
    write_parquet(provenance.stamp(questions, prov), out / "questions.parquet")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log.info(
            "STC (solved questions):\n%s",
            stc[stc["pooling"] == "mean"].round(3).to_string(index=False),
        )
    return 0


def overview_pool(feature_manifests: list[str], score_files: list[str], **kw) -> pd.DataFrame:
    """:func:`overview` of a pool on disk, reading only the shard of the chosen question: the question
    comes from the score tables (per-question counts, shard by shard), then that one shard's features."""
    stats, shard_of = [], {}
    for i, score_file in enumerate(score_files):
        s = pd.read_parquet(score_file, columns=["qid", "correct"]).groupby("qid", sort=False)[
            "correct"
        ]
        stats.append(s.agg(["sum", "size"]))
        shard_of.update(dict.fromkeys(stats[-1].index, i))
    qid = overview_question(pd.concat(stats))
    shard = shard_of[qid]
    features, rows = next(pool_shards([feature_manifests[shard]], [score_files[shard]], "mean"))
    keep = rows.index[rows["qid"] == qid].to_numpy()
    return overview(_rows_of(features, keep), rows.loc[keep].reset_index(drop=True), **kw)


def _cmd_overview(a) -> int:
    cap_threads(a.threads)
    if len(a.features) != len(a.scores):
        raise ValueError(
            f"{len(a.features)} feature manifests but {len(a.scores)} score tables: pass one score "
            f"table per feature shard, in the same shard order"
        )
    df = overview_pool(
        a.features,
        a.scores,
        proj_dim=a.proj_dim,
        lam=a.lam,
        picks=a.picks,
        projection_seed=a.projection_seed,
        seed=a.seed,
    )
    write_parquet(
        provenance.stamp(df.assign(model=a.model, task=a.task), provenance.from_cli(a.provenance)),
        a.out,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.inference", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select", help="RepExp and random selection for one pool and pooling")
    o = sub.add_parser("overview", help="the 2-D view of one pool for the overview figure")
    for p in (s, o):
        p.add_argument(
            "--features", nargs="+", required=True, help="feature manifests (.json), all shards"
        )
        p.add_argument("--scores", nargs="+", required=True, help="score tables, all shards")
        p.add_argument("--model", required=True)
        p.add_argument("--task", required=True)
        p.add_argument("--proj-dim", type=int, default=512)
        p.add_argument("--lam", type=float, default=1.0)
        p.add_argument("--projection-seed", type=int, default=0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--threads",
            type=int,
            default=1,
            help="CPU threads of the job (its rule's threads): BLAS threads; for select also "
            "the worker processes, one question each",
        )
    s.add_argument("--sampler", required=True)
    s.add_argument("--pooling", default="mean")
    s.add_argument("--trials", type=int, default=5)
    s.add_argument("--k-max", type=lambda x: None if x == "all" else int(x), default=None)
    s.add_argument("--no-center", action="store_true")
    s.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    s.add_argument("--out-prefix", required=True)
    o.add_argument("--picks", type=int, default=8)
    o.add_argument("--out", required=True)
    provenance.add_argument(o)
    m = sub.add_parser("summarize", help="dataset-level tables for the figures")
    m.add_argument("--questions", nargs="+", required=True)
    m.add_argument("--passk", nargs="+", required=True)
    m.add_argument("--task-tables", nargs="*", default=[])
    m.add_argument(
        "--pool-stats",
        nargs="*",
        default=[],
        help="per-question n, c, format_ok of every pool and of the reference's "
        "(python -m repexp.score stats)",
    )
    m.add_argument("--reference-model", default="")
    m.add_argument("--include-unsolved", action="store_true")
    m.add_argument("--out-dir", required=True)
    provenance.add_argument(m)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return {"select": _cmd_select, "summarize": _cmd_summarize, "overview": _cmd_overview}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
