"""Inference-time RepExp on cached pools: selection per pool, result tables, the overview view.

The math lives in :mod:`repexp.select` (Algorithm 1), :mod:`repexp.selectors` (every selection
method: one pure function and one entry of ``SELECTORS``) and :mod:`repexp.metrics`; this module
reads a pool's feature shards and scores, runs the configured methods
(``inference.selection.methods``) over the trials, and writes small tables for the figures.

Every table is long: one row per question, method (and trial, or k), with a ``method`` column, so
a new selector adds rows, never columns. :func:`repexp.metrics.methods_wide` shows one column per
method and :func:`repexp.metrics.versus` one method against a baseline (STC reduction, speedup).

CLI (rules ``select_pool``, ``summarize_inference``, ``overview``)::

    python -m repexp.inference select --features F1.json F2.json --scores S1.parquet S2.parquet \\
        --pools P1.parquet P2.parquet --pooling mean \\
        --out-prefix results/inference/selection/m/t/vanilla/mean ...
    python -m repexp.inference summarize --questions ... --out-dir results/tables
    python -m repexp.inference overview --features ... --scores ... \\
        --out results/tables/overview.parquet
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
from repexp.features import layer_pooling, read_cache_poolings
from repexp.parallel import cap_threads, mp_context, start_cli
from repexp.pools import question_seed
from repexp.select import first_picks, project, repexp_orders, repexp_orders_torch

log = logging.getLogger(__name__)


def pool_shards(
    feature_manifests: list[str],
    score_files: list[str],
    pooling: str,
    pool_files: list[str] | None = None,
    *,
    inputs: Iterable[str] = (),
    task: str | None = None,
    verifiers: dict | str | None = None,
    extra_poolings: Iterable[str] = (),
) -> Iterator[tuple]:
    """Each shard of a pool in turn: (its features as :func:`repexp.features.read_cache` returns
    them, its rows with their correctness), read when the caller asks for the next one. With
    ``extra_poolings`` (cache poolings besides ``pooling``, e.g. ``mean@15`` for
    ``repexp_layer15``) each shard is a triple, the third element ``{pooling: features}`` of
    those, read from the same file in the same row order.

    ``score_files[i]`` holds the scores of ``feature_manifests[i]`` (the rules pass both in shard
    order). A shard holds whole questions: a question met in two shards is an error.

    ``inputs``: the selector inputs (:data:`repexp.selectors.INPUTS`) the rows must carry besides
    ``correct``, read from the pool shards ``pool_files`` (``pool_files[i]`` is the pool shard of
    ``feature_manifests[i]``; only the columns asked for): ``texts`` adds the column ``text``,
    ``logprob_sum`` ``logprob``, ``n_tokens`` ``n_tokens``, and ``answers`` the column ``answer``,
    each response's final answer as ``task``'s verifier (settings ``verifiers``) extracts it
    (:func:`repexp.selectors.final_answers`). Without such inputs the pool shards are not read.
    """
    if len(feature_manifests) != len(score_files):
        raise ValueError(
            f"{len(feature_manifests)} feature manifests but {len(score_files)} score tables: "
            f"pass one score table per feature shard, in the same shard order"
        )
    columns = pool_columns(inputs)
    if columns and (pool_files is None or len(pool_files) != len(feature_manifests)):
        raise ValueError(
            f"the selectors need {sorted(set(inputs) - {'features', 'correct'})}, read from the "
            f"pool shards: pass one pool shard per feature shard (--pools), in the same order; "
            f"got {0 if pool_files is None else len(pool_files)} for {len(feature_manifests)}"
        )
    if "answers" in set(inputs) and task is None:
        raise ValueError("the final answers (answer_dedup) need the task's name")
    extra_poolings = [p for p in dict.fromkeys(extra_poolings) if p != pooling]
    seen: set[str] = set()
    for i, (manifest, score_file) in enumerate(zip(feature_manifests, score_files, strict=True)):
        by_pooling, rows = read_cache_poolings(manifest, [pooling, *extra_poolings])
        feats = by_pooling.pop(pooling)
        scores = pd.read_parquet(score_file, columns=["qid", "sample", "correct"])
        merged = rows.merge(scores, on=["qid", "sample"], how="left", validate="one_to_one")
        if columns:
            merged = _with_pool_columns(
                merged,
                pool_files[i],
                columns,
                answers_of=task if "answers" in set(inputs) else None,
                verifiers=verifiers,
            )
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
        yield (feats, merged, by_pooling) if extra_poolings else (feats, merged)
        del feats, rows, merged, by_pooling  # the next shard is read only after this one is dropped


# The selector inputs read from a pool shard (repexp.pools.POOL_COLUMNS) and the row column each
# becomes; ``answers`` are extracted from the texts (the column ``answer``).
POOL_INPUTS = {"texts": "text", "logprob_sum": "logprob", "n_tokens": "n_tokens", "answers": "text"}
ROW_COLUMNS = {
    "correct": "correct",
    "texts": "text",
    "logprob_sum": "logprob",
    "n_tokens": "n_tokens",
    "answers": "answer",
}


def pool_columns(inputs: Iterable[str]) -> list[str]:
    """The pool-shard columns that give the selector ``inputs`` (none for features and labels)."""
    return sorted({POOL_INPUTS[i] for i in inputs if i in POOL_INPUTS})


def _with_pool_columns(rows, pool_file, columns, *, answers_of, verifiers):
    """``rows`` with the pool shard's ``columns`` matched on (qid, sample), and with ``answers_of``
    (a task name) the column ``answer`` of the final answers; a response missing from the pool is
    an error."""
    pool = pd.read_parquet(pool_file, columns=["qid", "sample", *columns])
    out = rows.merge(pool, on=["qid", "sample"], how="left", validate="one_to_one")
    if out[columns].isna().any().any():
        bad = out[out[columns].isna().any(axis=1)].iloc[0]
        raise ValueError(
            f"no pool row (or a missing {columns}) for question {bad.qid} sample "
            f"{bad['sample']} in {pool_file}: the pool and feature shards are out of step; "
            f"rerun cache_features for this pool"
        )
    if answers_of is not None:
        from repexp.selectors import final_answers

        out["answer"] = final_answers(answers_of, out["text"].tolist(), verifiers=verifiers)
    return out


def _has_final_answer(task: str) -> bool:
    from repexp.tasks import TASKS

    return task in TASKS and TASKS[task].final_answer is not None


def methods_for_task(methods: Iterable[str], task: str) -> tuple[tuple[str, ...], list[str]]:
    """The methods that can run on ``task``, and a note for each one left out: ``answer_dedup``
    (a selector that needs ``answers``) on a task without a final answer, i.e. a code task, whose
    "answer" is a program's behaviour (:func:`repexp.selectors.final_answers`). The select stage
    skips such a method for that task's pools and logs the note; its tables then have no rows
    of it there."""
    from repexp.selectors import SELECTORS

    kept, notes = [], []
    for m in methods:
        if "answers" in SELECTORS[m].needs and not _has_final_answer(task):
            notes.append(
                f"{m} skipped on task {task!r}: it groups responses by their final answer, and "
                f"{task!r} has none (a code task's answer is a program's behaviour)"
            )
        else:
            kept.append(m)
    return tuple(kept), notes


def method_inputs(methods: Iterable[str]) -> frozenset[str]:
    """Every input the ``methods`` read (the union of their ``needs`` in SELECTORS)."""
    from repexp.selectors import SELECTORS

    return frozenset().union(*(SELECTORS[m].needs for m in methods))


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


DEFAULT_METHODS = ("random", "repexp")
# Methods whose tables come from closed forms (no orders): random selection's STC is the
# negative-hypergeometric mean and its pass@k the unbiased estimator (repexp.metrics).
CLOSED_FORM = frozenset({"random"})
# What the select stage can give a selector (repexp.selectors.PoolContext): the projected
# features, the verifier labels (they reach only selectors that list them in `needs`), and from
# the pool shards the response texts, summed log-probs, token counts and final answers.
STAGE_INPUTS = frozenset({"features", "correct", "texts", "logprob_sum", "n_tokens", "answers"})


def check_methods(
    methods: Iterable[str],
    tasks: Iterable[str] | None = None,
    layers: dict[int, list[str]] | None = None,
) -> tuple[str, ...]:
    """The selection methods, checked against :data:`repexp.selectors.SELECTORS`: each known, once,
    and needing only inputs this stage has (:data:`STAGE_INPUTS`). With ``tasks``, a method that
    can run on none of them (``answer_dedup`` with only code tasks, :func:`methods_for_task`) is
    refused; one that runs on some of them is skipped on the others. With ``layers`` ({decoder
    block: the pools, as text, whose cache holds its ``mean@L`` pooling}), a ``repexp_layer<L>``
    method whose layer no pool caches is refused; it runs only on the pools that cache it
    (:func:`repexp.dag.pool_methods`)."""
    from repexp.selectors import SELECTORS

    methods = tuple(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"selection methods must be distinct and at least one, got {methods}")
    for name in methods:
        if name not in SELECTORS:
            raise ValueError(
                f"unknown selection method {name!r} (inference.selection.methods); known: "
                f"{SELECTORS.known()}"
            )
        missing = set(SELECTORS[name].needs) - STAGE_INPUTS
        if missing:
            raise ValueError(
                f"selection method {name!r} needs {sorted(missing)}, which the select stage does "
                f"not provide (it has {sorted(STAGE_INPUTS)}); leave it out of "
                f"inference.selection.methods"
            )
        layer = SELECTORS[name].layer
        if layers is not None and layer is not None and layer not in layers:
            cached = "; ".join(f"layer {x}: {', '.join(p)}" for x, p in sorted(layers.items()))
            raise ValueError(
                f"selection method {name!r} reads the mean state of decoder block {layer} "
                f"(cache pooling {layer_pooling(layer)}), which no pool caches "
                f"(inference.features.layers: {cached or 'none'}); add "
                f"{{model: <model>, task: <task>, layer: {layer}}} to inference.features.layers "
                f"for the pool it should run on, or leave {name} out of "
                f"inference.selection.methods"
            )
    if tasks is not None:
        tasks = tuple(tasks)
        runs = {m: [t for t in tasks if m in methods_for_task([m], t)[0]] for m in methods}
        for m, where in runs.items():
            if tasks and not where:
                raise ValueError(
                    methods_for_task([m], tasks[0])[1][0].replace(" skipped", " cannot run")
                    + f"; none of the tasks {list(tasks)} has a final answer: leave {m} out of "
                    f"inference.selection.methods"
                )
    return methods


def _order_methods(methods) -> tuple[str, ...]:
    """The methods that produce orders (every one but the closed forms)."""
    return tuple(m for m in methods if m not in CLOSED_FORM)


def _algorithm1(name: str) -> bool:
    """True for the selectors that are Algorithm 1 (``repexp`` and its ``repexp_layer<L>``
    family, whatever features they read): the select stage runs them with the configured λ and
    centring and the seeded first picks (:func:`repexp.select.first_picks`), the same for all of
    them, so that they differ only in their features."""
    from repexp.selectors import SELECTORS, repexp

    return SELECTORS[name].fn is repexp


def _layer_of(name: str) -> int | None:
    from repexp.selectors import SELECTORS

    return SELECTORS[name].layer


def method_poolings(methods: Iterable[str], pooling: str) -> list[str]:
    """The cache poolings the select job of ``pooling`` reads besides its own for ``methods``: the
    ``mean@L`` of every ``repexp_layer<L>``. Those run in the job of the ``mean`` pooling only
    (they are RepExp with the mean pooling, at another layer); in another job they are an
    error (:func:`repexp.dag.pool_methods` leaves them out there)."""
    layers = [x for x in map(_layer_of, methods) if x is not None]
    if layers and pooling != "mean":
        names = [m for m in methods if _layer_of(m) is not None]
        raise ValueError(
            f"{', '.join(names)} run in the select job of the mean pooling only (RepExp on a "
            f"middle layer's mean state), not in the job of pooling {pooling!r}: leave them out "
            f"of --methods there (repexp.dag.pool_methods does)"
        )
    return [layer_pooling(x) for x in dict.fromkeys(layers)]


def _features_of(phi, extra_phi, name):
    """The projected features method ``name`` reads: the job's own ``phi``, or for a
    ``repexp_layer<L>`` its layer's (``extra_phi``, keyed by cache pooling)."""
    layer = _layer_of(name)
    if layer is None:
        return phi
    pooling = layer_pooling(layer)
    if extra_phi is None or pooling not in extra_phi:
        raise ValueError(
            f"selection method {name!r} needs the {pooling} features: read them with "
            f"pool_shards(..., extra_poolings=[{pooling!r}]) (the select job passes them when "
            f"its --methods name {name})"
        )
    return extra_phi[pooling]


def question_inputs(rows: pd.DataFrame, inputs: Iterable[str]) -> dict:
    """The PoolContext inputs (all but ``features``) of one question's ``rows``, from their
    columns (:data:`ROW_COLUMNS`): ``correct`` as bools, ``texts`` and ``answers`` as tuples, the
    rest as arrays. A missing column is an error that names where it comes from."""
    out = {}
    for name in sorted(set(inputs) - {"features"}):
        col = ROW_COLUMNS[name]
        if col not in rows:
            raise ValueError(
                f"a selection method needs {name!r} (the rows' column {col!r}), which the pool's "
                f"rows do not carry: pass the pool shards (select --pools; "
                f"repexp.inference.pool_shards(..., inputs=...)) or add the column"
            )
        values = rows[col]
        if name == "correct":
            out[name] = values.to_numpy() > 0
        elif name in ("texts", "answers"):
            out[name] = tuple(None if v is None or v is pd.NA else v for v in values)
        else:
            out[name] = values.to_numpy()
    return out


def selector_orders(
    phi: np.ndarray,
    inputs: dict,
    name: str,
    k: int,
    seeds: Iterable[int],
    *,
    budget: int | None,
) -> np.ndarray:
    """The (trials, k) orders of selector ``name`` (:func:`repexp.selectors.run_selector`) on one
    question: projected features ``phi`` (N × d) and the question's other ``inputs``
    (:func:`question_inputs`: labels, texts, log-probs, ...), one trial per seed (each its own
    ``numpy.random.default_rng(seed)``), each full order cut to its first ``k`` picks. ``budget``
    is the selector's ``k`` (None: no budget, the whole order). ``run_selector`` hands the
    selector only the inputs its ``needs`` name."""
    from repexp.selectors import PoolContext, run_selector

    ctx = PoolContext(len(phi), features=phi, **inputs)
    return np.stack([run_selector(name, ctx, np.random.default_rng(s), budget)[:k] for s in seeds])


def question_method_orders(
    features: np.ndarray,
    inputs: dict,
    k: int,
    firsts: np.ndarray,
    seeds: dict[str, list[int]],
    *,
    methods: tuple[str, ...],
    proj_dim: int,
    projection_seed: int,
    lam: float,
    center: bool,
    budget: int | None,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """{method: (trials, k) orders} of one question for every order-producing method: ``repexp``
    and ``repexp_layer<L>`` by :func:`repexp.select.repexp_orders` (Algorithm 1 with the seeded
    first picks ``firsts``, as :func:`question_orders`), any other by :func:`selector_orders` with
    that method's trial ``seeds`` and the question's ``inputs`` (:func:`question_inputs`). A
    ``repexp_layer<L>`` reads ``extra["mean@L"]`` (the question's rows of that cache pooling)
    instead of ``features``. The unit of work of the CPU path, in this process or in a worker;
    each pooling's features are projected once, with the same projection."""
    phi = project(features, proj_dim, projection_seed)
    extra_phi = {p: project(x, proj_dim, projection_seed) for p, x in (extra or {}).items()}
    out = {}
    for name in methods:
        x = _features_of(phi, extra_phi, name)
        if _algorithm1(name):
            out[name] = repexp_orders(x, k, firsts, lam=lam, center=center)
        else:
            out[name] = selector_orders(x, inputs, name, k, seeds[name], budget=budget)
    return out


def select_shards(
    shards: Iterable[tuple],
    *,
    proj_dim: int,
    lam: float,
    trials: int,
    k_max: int | None,
    center: bool,
    projection_seed: int,
    seed: int,
    seed_parts: tuple[str, ...],
    methods: Iterable[str] = DEFAULT_METHODS,
    device: str | None = "cpu",
    batch_questions: int = 32,
    workers: int = 1,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """:func:`select_pool`, one shard at a time: yields the (trials, questions, passk) tables of
    each ``(features, rows)`` shard in turn, or ``(features, rows, extra)`` with ``extra`` the
    shard's other cache poolings ``{pooling: features}`` that ``repexp_layer<L>`` methods read
    (:func:`pool_shards` with ``extra_poolings``). Every question is projected on its own with the
    pool's one projection matrix, so the tables equal :func:`select_pool`'s on the concatenated
    pool.

    ``workers`` > 1 (CPU path): the questions run in that many processes, each with one BLAS
    thread, at most ``workers + 2`` of them submitted at once (each as a copy of its rows); the next
    shard is read as soon as every question of this one is submitted. The orders do not depend on
    ``workers``.

    Memory: one shard as ``shards`` yields it, plus (with workers) ``workers + 2`` questions' rows
    in this process and one question per worker; never the whole pool.
    """
    methods = check_methods(methods)
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
        methods=methods,
    )
    if device != "cpu" or workers <= 1:
        for shard in shards:
            features, rows, extra = _unpack(shard)
            tables = _shard_tables(
                *_shard_orders(
                    features,
                    rows,
                    extra=extra,
                    device=device,
                    batch_questions=batch_questions,
                    **common,
                ),
                methods=methods,
            )
            del features, rows, extra, shard
            yield tables
        return
    pool, window = _executor(workers), workers + 2
    order_methods = _order_methods(methods)
    needs = method_inputs(order_methods) | {"correct"}
    try:
        # (groups, k_of, futures) of shards whose questions are submitted
        done_shards: deque = deque()
        inflight: deque = deque()  # futures in submission order
        for shard in shards:
            features, rows, extra = _unpack(shard)
            del shard
            groups, k_of, firsts_of, seeds_of = _shard_plan(rows, **common)
            futures = {}
            for qid, g in groups:
                while len(inflight) >= window:
                    inflight.popleft().result()  # the oldest question (re-raises its error)
                    while done_shards and all(f.done() for f in done_shards[0][2].values()):
                        yield _shard_tables(*done_shards.popleft(), methods=methods)
                idx = g.index.to_numpy()
                part = np.array(_rows_of(features, idx))  # a copy: the shard can go
                part_extra = {p: np.array(_rows_of(x, idx)) for p, x in extra.items()}
                futures[qid] = pool.submit(
                    question_method_orders,
                    part,
                    question_inputs(g, needs),
                    k_of[qid],
                    firsts_of[qid],
                    seeds_of[qid],
                    methods=order_methods,
                    proj_dim=proj_dim,
                    projection_seed=projection_seed,
                    lam=lam,
                    center=center,
                    budget=None if k_max is None else k_of[qid],
                    extra=part_extra,
                )
                inflight.append(futures[qid])
                del part, part_extra
            done_shards.append((groups, k_of, futures))
            del features, rows, extra
        while done_shards:
            yield _shard_tables(*done_shards.popleft(), methods=methods)
    finally:
        pool.shutdown(cancel_futures=True)


def _unpack(shard) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """(features, rows, extra poolings) of a ``(features, rows)`` or ``(features, rows, extra)``
    shard."""
    if len(shard) == 2:
        return shard[0], shard[1], {}
    features, rows, extra = shard
    return features, rows, dict(extra)


def _shard_plan(rows, *, trials, k_max, seed, seed_parts, methods, **_):
    """The questions of a shard (in shard order), their order lengths, their seeded first picks
    (RepExp) and the seeds of each other selector's trials."""
    groups = list(rows.groupby("qid", sort=False))
    firsts_of = {
        qid: first_picks(len(g), trials, question_seed(seed, *seed_parts, str(qid), "first-picks"))
        for qid, g in groups
    }
    others = [m for m in _order_methods(methods) if not _algorithm1(m)]
    seeds_of = {
        qid: {
            m: [question_seed(seed, *seed_parts, str(qid), m, str(t)) for t in range(trials)]
            for m in others
        }
        for qid, _ in groups
    }
    k_of = {qid: len(g) if k_max is None else min(k_max, len(g)) for qid, g in groups}
    return groups, k_of, firsts_of, seeds_of


def _shard_orders(
    features,
    rows,
    *,
    extra=None,
    proj_dim,
    lam,
    trials,
    k_max,
    center,
    projection_seed,
    seed,
    seed_parts,
    methods,
    device,
    batch_questions,
):
    """The orders of one shard's questions in this process: numpy one question at a time (CPU), or
    Algorithm 1 (``repexp``, ``repexp_layer<L>`` on ``extra``'s pooling) by the batched torch
    path on ``device`` (the other selectors on the CPU)."""
    groups, k_of, firsts_of, seeds_of = _shard_plan(
        rows, trials=trials, k_max=k_max, seed=seed, seed_parts=seed_parts, methods=methods
    )
    order_methods = _order_methods(methods)
    needs = method_inputs(order_methods) | {"correct"}
    settings = dict(proj_dim=proj_dim, projection_seed=projection_seed, lam=lam, center=center)
    extra = extra or {}
    if device != "cpu":
        phi = project(features, proj_dim, projection_seed)
        extra_phi = {p: project(x, proj_dim, projection_seed) for p, x in extra.items()}
        batched = {
            m: _orders_batched(
                _features_of(phi, extra_phi, m),
                groups,
                k_of,
                firsts_of,
                lam=lam,
                center=center,
                device=device,
                batch=batch_questions,
            )
            for m in order_methods
            if _algorithm1(m)
        }
        orders_of = {}
        for qid, g in groups:
            idx = g.index.to_numpy()
            orders_of[qid] = {
                m: batched[m][qid]
                if m in batched
                else selector_orders(
                    _features_of(phi, extra_phi, m)[idx],
                    question_inputs(g, needs),
                    m,
                    k_of[qid],
                    seeds_of[qid][m],
                    budget=None if k_max is None else k_of[qid],
                )
                for m in order_methods
            }
    else:
        orders_of = {
            qid: question_method_orders(
                _rows_of(features, g.index.to_numpy()),
                question_inputs(g, needs),
                k_of[qid],
                firsts_of[qid],
                seeds_of[qid],
                methods=order_methods,
                budget=None if k_max is None else k_of[qid],
                extra={p: _rows_of(x, g.index.to_numpy()) for p, x in extra.items()},
                **settings,
            )
            for qid, g in groups
        }
    return groups, k_of, orders_of


def _shard_tables(groups, k_of, orders_of, *, methods):
    """The long tables of one shard: trials (qid, method, trial, first, order, stc) of the methods
    with orders; questions (qid, method, n, c, pass1, stc); passk (qid, method, k, pass_at_k)."""
    trial_rows, q_rows, pk_rows = [], [], []
    for qid, grp in groups:
        samples, correct = grp["sample"].to_numpy(), grp["correct"].to_numpy() > 0
        n, c = len(samples), int(correct.sum())
        solved = c > 0
        k, orders_by = k_of[qid], orders_of[qid]
        if isinstance(orders_by, Future):
            orders_by = orders_by.result()
        ks = [x for x in pass_ks(n) if x <= k]
        for method in methods:
            if method in CLOSED_FORM:  # random selection: the closed forms
                stc = metrics.random_samples_to_correct(n, c) if solved else np.nan
                curve = metrics.pass_at_k_curve(n, c, ks)
            else:
                orders, stcs = orders_by[method], []
                for t, order in enumerate(orders):
                    s = metrics.samples_to_correct(order, correct)
                    stcs.append(np.nan if s is None else float(s))
                    trial_rows.append(
                        {
                            "qid": qid,
                            "method": method,
                            "trial": t,
                            "first": int(samples[order[0]]),
                            "order": samples[order].tolist(),
                            "stc": stcs[-1],
                        }
                    )
                # with k_max < n a trial may stop before a correct pick: its STC is unknown (NaN)
                stc = float(np.mean(stcs)) if solved and not np.isnan(stcs).any() else np.nan
                curve = np.mean([metrics.order_pass_at_k(o, correct, ks) for o in orders], axis=0)
            q_rows.append(
                {"qid": qid, "method": method, "n": n, "c": c, "pass1": c / n, "stc": stc}
            )
            pk_rows += [
                {"qid": qid, "method": method, "k": kk, "pass_at_k": float(v)}
                for kk, v in zip(ks, curve, strict=True)
            ]
    columns = (
        ["qid", "method", "trial", "first", "order", "stc"],
        ["qid", "method", "n", "c", "pass1", "stc"],
        ["qid", "method", "k", "pass_at_k"],
    )
    return tuple(
        pd.DataFrame(r, columns=cols)
        for r, cols in zip((trial_rows, q_rows, pk_rows), columns, strict=True)
    )


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
    methods: Iterable[str] = DEFAULT_METHODS,
    device: str | None = "cpu",
    batch_questions: int = 32,
    workers: int = 1,
    extra: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The selection ``methods`` (names of :data:`repexp.selectors.SELECTORS`) on every question of
    one pool, as three long tables (a ``method`` column):

    * ``trials``: one row per question, method and trial with its order (sample ids, ``k_max``
      long) and samples-to-correct; only methods with orders (not the closed forms);
    * ``questions``: one row per question and method: n, c, pass@1 and the STC (mean over trials;
      NaN on an unsolved question, or when a trial stops before a correct pick);
    * ``passk``: one row per question, method and k = 1, 2, 4, ... ≤ ``k_max``: the fraction of
      trials whose first k picks hold a correct response.

    ``random`` uses the closed forms (STC (n + 1)/(c + 1), pass@k the unbiased estimator of
    :func:`repexp.metrics.pass_at_k`); ``repexp`` is Algorithm 1 with distinct seeded first picks
    per trial (:func:`repexp.select.first_picks`), and so is ``repexp_layer<L>`` with the same
    first picks on ``extra["mean@L"]`` (the pool's rows of that cache pooling, in the order of
    ``features``); any other selector runs through
    :func:`repexp.selectors.run_selector` on the question's projected features and the inputs it
    needs from ``rows``' columns (:data:`ROW_COLUMNS`: ``correct``, and for the text, likelihood
    and answer selectors ``text``, ``logprob``, ``n_tokens``, ``answer``, which
    :func:`pool_shards` adds from the pool shards), one seeded generator per trial.

    One projection (``proj_dim``, ``projection_seed``) for the whole pool. ``device``: ``"cpu"``
    (numpy, one question at a time, the trials sharing each pass over the features; ``workers``
    processes), a torch device such as ``"cuda"`` (RepExp: ``batch_questions`` questions x trials
    at once), or None for CUDA when available. For a pool too large for memory use
    :func:`select_shards`.
    """
    parts = list(
        select_shards(
            [(features, rows, extra or {})],
            proj_dim=proj_dim,
            lam=lam,
            trials=trials,
            k_max=k_max,
            center=center,
            projection_seed=projection_seed,
            seed=seed,
            seed_parts=seed_parts,
            methods=methods,
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


def _method_order(methods: Iterable[str]) -> dict[str, int]:
    return {m: i for i, m in enumerate(dict.fromkeys(methods))}


def summarize(
    questions: pd.DataFrame,
    passk: pd.DataFrame,
    *,
    exclude_unsolved: bool = True,
    reference_model: str | None = None,
    difficulty: pd.DataFrame | None = None,
    pool_stats: pd.DataFrame | None = None,
):
    """Dataset-level long tables from the per-question ones (each carrying the KEYS columns and a
    ``method`` column; methods keep the order in which they first appear).

    * ``stc``: per model/task/sampler/pooling and method: questions, unsolved (c = 0), ``used``
      (the questions every method has a finite STC for: the comparison is paired), the mean STC
      over those (with ``exclude_unsolved=False`` an unsolved question counts n + 1 for every
      method), pass@1, model rank, and ``format_miss``: the fraction of the pool's responses
      without the answer format the prompt asks for (from ``pool_stats``; NaN without them).
      Relative improvements are not stored: :func:`repexp.metrics.versus` computes them;
    * ``deciles``: mean STC per difficulty decile and method, vanilla sampler and mean pooling.
      Questions are binned by the reference model's random STC (n + 1)/(c + 1) on its vanilla pool
      of the task (``pool_stats`` rows of ``reference_model``, which need not be an inference model;
      else its rows of ``questions``), an unsolved question counting n + 1 (the hardest); without a
      reference pool, by the dataset's difficulty field. ``reference`` names what binned the task
      (the model, or ``difficulty``); ``self_referenced`` marks the reference model's own rows,
      binned by its own STC (the same draws decide bin and STC, so its bins are biased);
    * ``passk``: mean pass@k per method over all questions.

    ``pool_stats``: per pool and question ``model, task, sampler, qid, n, c, format_ok``
    (``python -m repexp.score stats``).
    """
    q = questions.reset_index(drop=True)  # rows are addressed by index below
    rank = _method_order(q["method"])
    if not exclude_unsolved:
        unsolved = q["c"] == 0
        q.loc[unsolved, "stc"] = q.loc[unsolved, "n"] + 1
    qkeys = [*KEYS, "qid"]
    # a question enters the STC means when every method has a finite STC for it
    q["_complete"] = ~q["stc"].isna().groupby([q[k] for k in qkeys]).transform("any")
    per_q = q.drop_duplicates(qkeys)  # the method-free facts of each question: n, c, pass@1
    rows = []
    by_pool = dict(list(q.groupby(KEYS, sort=True)))
    for key, g in per_q.groupby(KEYS, sort=True):
        mine = by_pool[key]
        used = mine[mine["_complete"]]
        common = {
            **dict(zip(KEYS, key, strict=True)),
            "questions": len(g),
            "unsolved": int((g["c"] == 0).sum()),
            "used": int(used["qid"].nunique()),
            "pool_n": int(g["n"].max()),
            "pass1": g["pass1"].mean(),
        }
        for method in sorted(set(mine["method"]), key=rank.get):
            rows.append(
                {
                    **common,
                    "method": method,
                    "stc": used.loc[used["method"] == method, "stc"].mean(),
                }
            )
    stc = pd.DataFrame(
        rows, columns=[*KEYS, "questions", "unsolved", "used", "pool_n", "pass1", "method", "stc"]
    )
    stc = stc[[*KEYS, "method", "questions", "unsolved", "used", "pool_n", "pass1", "stc"]]
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

    # difficulty deciles: bins of the questions (method-free), then the STC of every method
    q_base = per_q[(per_q["sampler"] == "vanilla") & (per_q["pooling"] == "mean")].copy()
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
    binned = q.merge(
        q_base[[*qkeys, "decile", "reference"]].dropna(subset=["decile"]), on=qkeys, how="inner"
    )
    binned = binned[binned["_complete"]].assign(_rank=binned["method"].map(rank))
    deciles = (
        binned.groupby(["model", "task", "decile", "_rank", "method"], as_index=False, sort=True)
        .agg(
            questions=("qid", "size"),
            stc=("stc", "mean"),
            reference=("reference", "first"),
        )
        .drop(columns="_rank")
    )
    deciles["self_referenced"] = deciles["model"] == deciles["reference"]
    pk = (
        passk.assign(_rank=passk["method"].map(_method_order(passk["method"])))
        .groupby([*KEYS, "_rank", "method", "k"], as_index=False, sort=True)
        .agg(pass_at_k=("pass_at_k", "mean"), questions=("qid", "size"))
        .drop(columns="_rank")
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
    RepExp's first ``picks`` picks and ``picks`` uniformly random picks (the overview figure).

    Long: one row per response and method (``repexp``, ``random``) with the response's ``x``,
    ``y``, ``correct`` and its ``pick`` (1 = first; NaN when not among the first ``picks``)."""
    from sklearn.decomposition import PCA

    qid = overview_question(rows.groupby("qid", sort=False)["correct"].agg(["sum", "size"]))
    grp = rows[rows["qid"] == qid]
    phi = project(features[grp.index.to_numpy()], proj_dim, projection_seed)
    phi = phi - phi.mean(0)
    xy = PCA(n_components=2, random_state=0).fit_transform(phi)
    k = min(picks, len(grp))
    rng = np.random.default_rng(question_seed(seed, str(qid), "overview"))
    first = int(rng.integers(len(grp)))
    chosen = {
        "repexp": repexp_orders(phi, k, [first], lam=lam, center=False)[0],
        "random": rng.permutation(len(grp))[:k],
    }
    view = pd.DataFrame(
        {
            "qid": qid,
            "sample": grp["sample"].to_numpy(),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "correct": grp["correct"].to_numpy() > 0,
        }
    )
    parts = []
    for method, order in chosen.items():
        pick = np.full(len(grp), np.nan)
        pick[order] = np.arange(1, k + 1)
        parts.append(view.assign(method=method, pick=pick))
    return pd.concat(parts, ignore_index=True)


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
    """Shard by shard: each shard's tables are appended to the three outputs (written under
    temporary names, renamed when every shard is done), so memory does not grow with the pool."""
    t0 = time.perf_counter()
    a.methods = check_methods(a.methods)  # before any output is opened
    a.methods, notes = methods_for_task(a.methods, a.task)
    for note in notes:
        log.warning("%s: no rows of it in this pool's tables", note)
    if not a.methods:
        raise ValueError(f"no selection method can run on task {a.task!r}: {'; '.join(notes)}")
    cap_threads(a.threads)
    keys = {"model": a.model, "task": a.task, "sampler": a.sampler, "pooling": a.pooling}
    inputs = method_inputs(_order_methods(a.methods))
    parts = select_shards(
        pool_shards(
            a.features,
            a.scores,
            a.pooling,
            a.pools or None,
            inputs=inputs,
            task=a.task,
            verifiers=a.verifiers or None,
            extra_poolings=method_poolings(a.methods, a.pooling),
        ),
        proj_dim=a.proj_dim,
        lam=a.lam,
        trials=a.trials,
        k_max=a.k_max,
        center=not a.no_center,
        projection_seed=a.projection_seed,
        seed=a.seed,
        seed_parts=(a.model, a.task, a.sampler, a.pooling),
        methods=a.methods,
        device=None if a.device == "auto" else a.device,
        workers=a.threads,
    )
    n_q, n_solved, stc_sum = 0, 0, dict.fromkeys(a.methods, 0.0)
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
            q = tables[1]
            shard_q = q["qid"].nunique()
            n_q, n_solved = n_q + shard_q, n_solved + int(q.drop_duplicates("qid")["c"].gt(0).sum())
            for method, total in q[q["c"] > 0].groupby("method")["stc"].sum().items():
                stc_sum[method] += total
            log.info(
                "shard %d/%d: %d questions, %.1fs so far",
                shard + 1,
                len(a.features),
                shard_q,
                time.perf_counter() - t0,
            )
    log.info(
        "%s/%s/%s/%s: %d questions (%d solved) in %.1fs; mean STC over solved questions: %s",
        a.model,
        a.task,
        a.sampler,
        a.pooling,
        n_q,
        n_solved,
        time.perf_counter() - t0,
        ", ".join(f"{m} {v / max(n_solved, 1):.2f}" for m, v in stc_sum.items()),
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
            metrics.versus(stc[stc["pooling"] == "mean"]).round(3).to_string(index=False),
        )
    return 0


def overview_pool(feature_manifests: list[str], score_files: list[str], **kw) -> pd.DataFrame:
    """:func:`overview` of a pool on disk, reading only the shard of the chosen question: the
    question comes from the score tables (per-question counts, shard by shard), then that one
    shard's features."""
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
    s = sub.add_parser("select", help="the selection methods on one pool and pooling")
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
    s.add_argument(
        "--pools",
        nargs="*",
        default=[],
        help="pool shards (.parquet), one per feature shard in the same order: the texts, "
        "log-probs and token counts of the selectors that read them (read only for those)",
    )
    s.add_argument(
        "--verifiers",
        default="",
        help="the task's verifier settings as JSON (VerifierSettings.to_json): answer_dedup "
        "groups by the final answer as the verifier extracts it",
    )
    s.add_argument("--sampler", required=True)
    s.add_argument("--pooling", default="mean")
    s.add_argument("--trials", type=int, default=5)
    s.add_argument("--k-max", type=lambda x: None if x == "all" else int(x), default=None)
    s.add_argument("--no-center", action="store_true")
    s.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="selection methods, names of repexp.selectors.SELECTORS (inference.selection.methods)",
    )
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
    start_cli()
    return {"select": _cmd_select, "summarize": _cmd_summarize, "overview": _cmd_overview}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
