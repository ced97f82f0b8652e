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
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp import metrics, provenance
from repexp.atomic import write_parquet
from repexp.features import read_cache
from repexp.pools import question_seed
from repexp.select import first_picks, project, repexp_orders, repexp_orders_torch

log = logging.getLogger(__name__)


def load_pool(feature_manifests: list[str], score_files: list[str], pooling: str):
    """Features (float64, rows in shard order) and the aligned correctness of one pool."""
    feats, rows = [], []
    for f in feature_manifests:
        x, r = read_cache(f, pooling)
        feats.append(x)
        rows.append(r)
    rows = pd.concat(rows, ignore_index=True)
    scores = pd.concat([pd.read_parquet(s) for s in score_files], ignore_index=True)
    merged = rows.merge(scores, on=["qid", "sample"], how="left", validate="one_to_one")
    if merged["correct"].isna().any():
        bad = merged[merged["correct"].isna()].iloc[0]
        raise ValueError(f"no score for question {bad.qid} sample {bad['sample']}: the score and feature "
                         f"shards are out of step; rerun score_pool for this pool")
    return np.concatenate(feats), merged


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
    others of the same order length k; pools of different sizes are padded (``valid`` mask)."""
    import torch

    out = {}
    by_k: dict[int, list] = {}
    for qid, g in groups:
        by_k.setdefault(k_of[qid], []).append((qid, g))
    for k, same in by_k.items():
        for start in range(0, len(same), batch):
            chunk = same[start:start + batch]
            n_max, d = max(len(g) for _, g in chunk), phi.shape[1]
            feats = torch.zeros((len(chunk), n_max, d), dtype=torch.float64)
            valid = torch.zeros((len(chunk), n_max), dtype=torch.bool)
            for b, (_, g) in enumerate(chunk):
                feats[b, : len(g)] = torch.from_numpy(phi[g.index.to_numpy()])
                valid[b, : len(g)] = True
            firsts = torch.tensor(np.stack([firsts_of[qid] for qid, _ in chunk]))
            orders = repexp_orders_torch(feats.to(device), k, firsts.to(device), lam=lam, center=center,
                                         valid=valid.to(device)).cpu().numpy()
            out.update({qid: orders[b] for b, (qid, _) in enumerate(chunk)})
    return out


def select_pool(features: np.ndarray, rows: pd.DataFrame, *, proj_dim: int, lam: float, trials: int,
                k_max: int | None, center: bool, projection_seed: int, seed: int,
                seed_parts: tuple[str, ...], device: str | None = "cpu",
                batch_questions: int = 32) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """RepExp and random selection for every question of one pool.

    Returns (trials, questions, passk): one row per question and trial with its RepExp order (sample
    ids) and samples-to-correct; one row per question with n, c, pass@1, STC of random (closed form)
    and of RepExp (mean over trials); pass@k per question for k = 1, 2, 4, ... (random: the unbiased
    estimator; RepExp: the fraction of trials whose first k picks hold a correct response).

    ``device``: ``"cpu"`` (numpy, one question at a time, the trials sharing each pass over the
    features), a torch device such as ``"cuda"`` (``batch_questions`` questions x trials at once), or
    None for CUDA when available.
    """
    phi = project(features, proj_dim, projection_seed)  # one projection for the whole pool
    groups = list(rows.groupby("qid", sort=False))
    firsts_of = {qid: first_picks(len(g), trials, question_seed(seed, *seed_parts, str(qid), "first-picks"))
                 for qid, g in groups}
    k_of = {qid: len(g) if k_max is None else min(k_max, len(g)) for qid, g in groups}
    if device is None:
        device = "cuda" if _cuda() else "cpu"
    if device == "cpu":
        orders_of = {qid: repexp_orders(phi[g.index.to_numpy()], k_of[qid], firsts_of[qid], lam=lam, center=center)
                     for qid, g in groups}
    else:
        orders_of = _orders_batched(phi, groups, k_of, firsts_of, lam=lam, center=center, device=device,
                                    batch=batch_questions)
    trial_rows, q_rows, pk_rows = [], [], []
    for qid, grp in groups:
        idx = grp.index.to_numpy()
        samples, correct = grp["sample"].to_numpy(), grp["correct"].to_numpy() > 0
        n, c = len(idx), int(correct.sum())
        k, orders = k_of[qid], orders_of[qid]
        stcs = []
        for t, order in enumerate(orders):
            stc = metrics.samples_to_correct(order, correct)
            stcs.append(np.nan if stc is None else float(stc))
            trial_rows.append({"qid": qid, "trial": t, "first": int(samples[order[0]]),
                               "order": samples[order].tolist(), "stc": stcs[-1]})
        solved = c > 0
        q_rows.append({
            "qid": qid, "n": n, "c": c, "pass1": c / n,
            "stc_random": metrics.random_samples_to_correct(n, c) if solved else np.nan,
            # with k_max < n a trial may stop before a correct pick: its STC is unknown (NaN)
            "stc_repexp": float(np.mean(stcs)) if solved and not np.isnan(stcs).any() else np.nan,
        })
        ks = [x for x in pass_ks(n) if x <= k]
        rep = np.mean([metrics.order_pass_at_k(o, correct, ks) for o in orders], axis=0)
        rnd = metrics.pass_at_k_curve(n, c, ks)
        pk_rows += [{"qid": qid, "k": kk, "random": float(r), "repexp": float(e)}
                    for kk, r, e in zip(ks, rnd, rep, strict=True)]
    return pd.DataFrame(trial_rows), pd.DataFrame(q_rows), pd.DataFrame(pk_rows)


# ------------------------------------------------------------------------------------------------
# result tables
# ------------------------------------------------------------------------------------------------
KEYS = ["model", "task", "sampler", "pooling"]


def summarize(questions: pd.DataFrame, passk: pd.DataFrame, *, exclude_unsolved: bool = True,
              reference_model: str | None = None, difficulty: pd.DataFrame | None = None):
    """Dataset-level tables from the per-question ones (each carrying the KEYS columns).

    * ``stc``: per model/task/sampler/pooling: questions, unsolved (c = 0), mean STC of random and
      RepExp over the solved questions (or over all with ``exclude_unsolved=False``, where an
      unsolved question counts n + 1 for both), both relative improvements, pass@1, model rank;
    * ``deciles``: mean STC per difficulty decile (reference model's random STC, else the dataset's
      difficulty field), vanilla sampler and mean pooling;
    * ``passk``: mean pass@k over all questions.
    """
    q = questions.copy()
    if not exclude_unsolved:
        unsolved = q["c"] == 0
        for col in ("stc_random", "stc_repexp"):
            q.loc[unsolved, col] = q.loc[unsolved, "n"] + 1
    rows = []
    for key, g in q.groupby(KEYS, sort=True):
        used = g.dropna(subset=["stc_random", "stc_repexp"])
        r, e = used["stc_random"].mean(), used["stc_repexp"].mean()
        rel = metrics.relative_improvement(r, e) if len(used) else {"reduction": np.nan, "speedup": np.nan}
        rows.append({**dict(zip(KEYS, key, strict=True)), "questions": len(g), "unsolved": int((g["c"] == 0).sum()),
                     "used": len(used), "pool_n": int(g["n"].max()), "pass1": g["pass1"].mean(),
                     "stc_random": r, "stc_repexp": e, **rel})
    stc = pd.DataFrame(rows)
    stc["model_rank"] = np.nan
    base = (stc["sampler"] == "vanilla") & (stc["pooling"] == "mean")
    for _task, g in stc[base].groupby("task"):
        ranks = metrics.rank_models(dict(zip(g["model"], g["pass1"], strict=True)))
        stc.loc[g.index, "model_rank"] = g["model"].map(ranks).to_numpy()

    # difficulty deciles
    q_base = q[(q["sampler"] == "vanilla") & (q["pooling"] == "mean")].copy()
    q_base["hardness"] = np.nan
    for task, g in q_base.groupby("task"):
        ref = None
        if reference_model is not None:
            r = g[g["model"] == reference_model].set_index("qid")
            if len(r):  # unsolved by the reference = hardest: STC n + 1
                ref = r["stc_random"].fillna(r["n"] + 1)
        if ref is None and difficulty is not None:
            d = difficulty[difficulty["task"] == task].set_index("qid")["difficulty"]
            ref = d if d.notna().any() else None
        if ref is not None:
            q_base.loc[g.index, "hardness"] = g["qid"].map(ref).to_numpy()
    q_base["decile"] = np.nan
    for _key, g in q_base.dropna(subset=["hardness"]).groupby(["model", "task"]):
        uniq = g.drop_duplicates("qid")
        bins = metrics.difficulty_deciles(uniq["hardness"].to_numpy(), n_bins=min(10, len(uniq)))
        q_base.loc[g.index, "decile"] = g["qid"].map(dict(zip(uniq["qid"], bins, strict=True))).to_numpy()
    deciles = (q_base.dropna(subset=["decile", "stc_random", "stc_repexp"])
               .groupby(["model", "task", "decile"], as_index=False)
               .agg(questions=("qid", "size"), stc_random=("stc_random", "mean"), stc_repexp=("stc_repexp", "mean")))
    pk = passk.groupby([*KEYS, "k"], as_index=False).agg(random=("random", "mean"), repexp=("repexp", "mean"),
                                                         questions=("qid", "size"))
    return stc, deciles, pk


def overview(features: np.ndarray, rows: pd.DataFrame, *, proj_dim: int, lam: float, picks: int,
             projection_seed: int, seed: int) -> pd.DataFrame:
    """A 2-D view (PCA of the projected, centred features) of the pool of one question, with
    RepExp's first ``picks`` picks and ``picks`` uniformly random picks (the overview figure)."""
    from sklearn.decomposition import PCA

    stats = rows.groupby("qid", sort=False)["correct"].agg(["mean", "size"])
    mixed = stats[(stats["mean"] > 0) & (stats["mean"] < 1)]
    # the question closest to half correct (most informative picture); ties: first in the pool
    qid = (mixed if len(mixed) else stats)["mean"].sub(0.5).abs().idxmin()
    grp = rows[rows["qid"] == qid]
    phi = project(features[grp.index.to_numpy()], proj_dim, projection_seed)
    phi = phi - phi.mean(0)
    xy = PCA(n_components=2, random_state=0).fit_transform(phi)
    k = min(picks, len(grp))
    rng = np.random.default_rng(question_seed(seed, str(qid), "overview"))
    first = int(rng.integers(len(grp)))
    order = repexp_orders(phi, k, [first], lam=lam, center=False)[0]
    rand = rng.permutation(len(grp))[:k]
    out = pd.DataFrame({"qid": qid, "sample": grp["sample"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1],
                        "correct": grp["correct"].to_numpy() > 0, "repexp_pick": np.nan, "random_pick": np.nan})
    out.loc[order, "repexp_pick"] = np.arange(1, k + 1)
    out.loc[rand, "random_pick"] = np.arange(1, k + 1)
    return out


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _cmd_select(a) -> int:
    t0 = time.perf_counter()
    feats, rows = load_pool(a.features, a.scores, a.pooling)
    trials, questions, passk = select_pool(
        feats, rows, proj_dim=a.proj_dim, lam=a.lam, trials=a.trials, k_max=a.k_max, center=not a.no_center,
        projection_seed=a.projection_seed, seed=a.seed, seed_parts=(a.model, a.task, a.sampler, a.pooling),
        device=None if a.device == "auto" else a.device)
    keys = {"model": a.model, "task": a.task, "sampler": a.sampler, "pooling": a.pooling}
    for name, df in (("trials", trials), ("questions", questions), ("passk", passk)):
        write_parquet(df.assign(**keys), f"{a.out_prefix}.{name}.parquet", **keys)
    solved = questions.dropna(subset=["stc_random"])
    log.info("%s/%s/%s/%s: %d questions (%d solved) in %.1fs; mean STC random %.2f, RepExp %.2f", a.model, a.task,
             a.sampler, a.pooling, len(questions), len(solved), time.perf_counter() - t0,
             solved["stc_random"].mean(), solved["stc_repexp"].mean())
    return 0


def _cmd_summarize(a) -> int:
    questions = pd.concat([pd.read_parquet(f) for f in a.questions], ignore_index=True)
    passk = pd.concat([pd.read_parquet(f) for f in a.passk], ignore_index=True)
    difficulty = pd.concat([pd.read_parquet(f, columns=["qid", "task", "difficulty"]) for f in a.task_tables],
                           ignore_index=True) if a.task_tables else None
    stc, deciles, pk = summarize(questions, passk, exclude_unsolved=not a.include_unsolved,
                                 reference_model=a.reference_model or None, difficulty=difficulty)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance.from_cli(a.provenance)
    provenance.stamp(stc, prov).to_csv(out / "stc.csv", index=False)
    provenance.stamp(deciles, prov).to_csv(out / "deciles.csv", index=False)
    provenance.stamp(pk, prov).to_csv(out / "passk.csv", index=False)
    write_parquet(provenance.stamp(questions, prov), out / "questions.parquet")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log.info("STC (solved questions):\n%s", stc[stc["pooling"] == "mean"].round(3).to_string(index=False))
    return 0


def _cmd_overview(a) -> int:
    feats, rows = load_pool(a.features, a.scores, "mean")
    df = overview(feats, rows, proj_dim=a.proj_dim, lam=a.lam, picks=a.picks, projection_seed=a.projection_seed,
                  seed=a.seed)
    write_parquet(provenance.stamp(df.assign(model=a.model, task=a.task), provenance.from_cli(a.provenance)), a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.inference", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select", help="RepExp and random selection for one pool and pooling")
    o = sub.add_parser("overview", help="the 2-D view of one pool for the overview figure")
    for p in (s, o):
        p.add_argument("--features", nargs="+", required=True, help="feature manifests (.json), all shards")
        p.add_argument("--scores", nargs="+", required=True, help="score tables, all shards")
        p.add_argument("--model", required=True)
        p.add_argument("--task", required=True)
        p.add_argument("--proj-dim", type=int, default=512)
        p.add_argument("--lam", type=float, default=1.0)
        p.add_argument("--projection-seed", type=int, default=0)
        p.add_argument("--seed", type=int, default=0)
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
    m.add_argument("--reference-model", default="")
    m.add_argument("--include-unsolved", action="store_true")
    m.add_argument("--out-dir", required=True)
    provenance.add_argument(m)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return {"select": _cmd_select, "summarize": _cmd_summarize, "overview": _cmd_overview}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
