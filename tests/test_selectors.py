"""Selectors of issue 13 (repexp.selectors) against independent references on hand-made pools:
brute force, exhaustive search and hand-computed orders."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from repexp.metrics import random_samples_to_correct, samples_to_correct
from repexp.select import repexp_order
from repexp.selectors import (
    SELECTORS,
    PoolContext,
    answer_dedup,
    dpp,
    dpp_greedy_map,
    final_answers,
    kmeans_rr,
    leave_one_out_bonus,
    maxmin,
    ngram,
    ngram_sets,
    oracle,
    random_order,
    repexp,
    repexp_loo,
    run_selector,
)

WORDS = "the a of to is we so then answer number sum total plus minus times equals".split()


def full_context(n=40, d=6, seed=0, correct=None) -> PoolContext:
    """A pool with every input, random but fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 15)))) for _ in range(n)]
    answers = [
        None if u < 0.15 else str(int(v))
        for u, v in zip(rng.random(n), rng.geometric(0.4, size=n), strict=True)
    ]
    if correct is None:
        correct = rng.random(n) < 0.2
    return PoolContext(
        n=n,
        features=rng.standard_normal((n, d)) * 3 + 1,
        logprob_sum=-rng.gamma(2.0, 20.0, size=n),
        n_tokens=rng.integers(1, 50, size=n),
        answers=answers,
        texts=texts,
        correct=correct,
    )


def is_permutation(order, n) -> bool:
    order = np.asarray(order)
    return (
        order.dtype == np.int64
        and order.shape == (n,)
        and np.array_equal(np.sort(order), np.arange(n))
    )


# --------------------------------------------------------------------------------------------
# Every selector: a seeded permutation, labels hidden


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_returns_a_seeded_permutation(name):
    ctx = full_context()
    a = run_selector(name, ctx, np.random.default_rng(3), k=5)
    b = run_selector(name, ctx, np.random.default_rng(3), k=5)
    c = run_selector(name, ctx, np.random.default_rng(3))  # k = None
    assert is_permutation(a, ctx.n) and is_permutation(c, ctx.n)
    assert np.array_equal(a, b)
    # a pool of one, and the raw function (not through run_selector) on the restricted context
    one = full_context(n=1)
    assert run_selector(name, one, np.random.default_rng(0)).tolist() == [0]
    sel = SELECTORS[name]
    assert is_permutation(sel.fn(ctx.restricted(sel.needs), np.random.default_rng(1), None), ctx.n)


@pytest.mark.parametrize("name", [n for n, s in SELECTORS.items() if not s.uses_labels])
def test_selectors_other_than_oracle_cannot_see_the_labels(name):
    rng = np.random.default_rng(5)
    ctx = full_context(correct=rng.random(40) < 0.5)
    flipped = dataclasses.replace(ctx, correct=~ctx.correct)
    assert "correct" not in SELECTORS[name].needs
    assert np.array_equal(
        run_selector(name, ctx, np.random.default_rng(2)),
        run_selector(name, flipped, np.random.default_rng(2)),
    )


def test_only_oracle_uses_labels_and_restriction_hides_inputs():
    assert [n for n, s in SELECTORS.items() if s.uses_labels] == ["oracle"]
    ctx = full_context()
    r = ctx.restricted({"features"})
    assert r.correct is None and r.texts is None and r.features is not None
    with pytest.raises(ValueError, match="needs 'correct'"):
        r.require("correct")
    with pytest.raises(ValueError, match="needs 'texts'"):
        ngram(r, np.random.default_rng(0))


def test_run_selector_and_context_errors():
    ctx = full_context()
    with pytest.raises(ValueError, match="unknown selector"):
        run_selector("nope", ctx, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        run_selector("maxmin", ctx, np.random.default_rng(0), k=0)
    with pytest.raises(ValueError, match="shape"):
        PoolContext(n=3, features=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_tokens must be >= 1"):
        PoolContext(n=2, n_tokens=[3, 0])
    with pytest.raises(ValueError, match="NaN"):
        PoolContext(n=2, logprob_sum=[0.0, np.nan])
    with pytest.raises(ValueError, match="3 entries"):
        PoolContext(n=2, answers=["1", "2", "3"])


# --------------------------------------------------------------------------------------------
# random


def test_random_order_matches_the_closed_form_stc():
    """Monte Carlo over seeded random orders against (n + 1)/(c + 1) (negative hypergeometric)."""
    n, correct = 10, np.zeros(10, dtype=bool)
    correct[[2, 7]] = True
    ctx = PoolContext(n=n)
    rng = np.random.default_rng(0)
    stc = [samples_to_correct(random_order(ctx, rng), correct) for _ in range(20000)]
    # STC here has sd ~2.4: standard error 0.017; 0.06 is 3.5 standard errors
    assert abs(np.mean(stc) - random_samples_to_correct(n, 2)) < 0.06


# --------------------------------------------------------------------------------------------
# repexp and the leave-one-out bonus


def test_repexp_is_algorithm_1_with_a_uniform_first_pick():
    ctx = full_context(n=30, d=5)
    first = int(np.random.default_rng(11).integers(30))
    want = repexp_order(ctx.features, 30, lam=1.0, first=first)
    assert np.array_equal(repexp(ctx, np.random.default_rng(11)), want)
    assert np.array_equal(repexp(ctx, np.random.default_rng(0), first=first), want)
    firsts = {int(repexp(ctx, np.random.default_rng(s))[0]) for s in range(40)}
    assert len(firsts) > 10  # the first pick varies with the seed


def test_leave_one_out_bonus_is_the_authors_downdate():
    """The recipe's formula (Λ downdated by the row itself) and a direct inverse, by brute force."""
    rng = np.random.default_rng(1)
    for n, d, lam in ((8, 3, 1.0), (5, 7, 0.01), (20, 4, 0.3)):
        phi = rng.standard_normal((n, d))
        c = phi - phi.mean(axis=0)
        Lam = np.linalg.inv(lam * np.eye(d) + c.T @ c)
        authors, direct = [], []
        for x in c:
            x = x[:, None]
            middle = np.linalg.inv(1 - x.T @ Lam @ x)
            authors.append((x.T @ (Lam + Lam @ x @ middle @ x.T @ Lam) @ x).item())
            direct.append(x[:, 0] @ np.linalg.solve(lam * np.eye(d) + c.T @ c - x @ x.T, x[:, 0]))
        got = leave_one_out_bonus(phi, lam)
        np.testing.assert_allclose(got, authors, rtol=1e-9)
        np.testing.assert_allclose(got, direct, rtol=1e-9)


def test_repexp_loo_ranks_by_the_bonus():
    ctx = full_context(n=25, d=4)
    b = leave_one_out_bonus(ctx.features, 1.0)
    order = repexp_loo(ctx, np.random.default_rng(0))
    assert np.all(np.diff(b[order]) <= 0)
    assert order[0] == np.argmax(b) and order[-1] == np.argmin(b)


def test_inside_algorithm_1_leverage_and_leave_one_out_give_alg_1s_order():
    """Why repexp_loo is a one-shot ranking: inside the greedy both RL bonuses reproduce Alg. 1."""
    rng = np.random.default_rng(2)
    phi = rng.standard_normal((15, 4))
    c = phi - phi.mean(axis=0)
    lam, first = 1.0, 6
    for bonus_type in ("leverage", "leave_one_out"):
        order = [first]
        while len(order) < 15:
            scores = np.full(15, -np.inf)
            for i in set(range(15)) - set(order):
                group = order + [i]  # the group S ∪ {i}, as in RL
                Lam = np.linalg.inv(lam * np.eye(4) + c[group].T @ c[group])
                lev = c[i] @ Lam @ c[i]
                scores[i] = lev if bonus_type == "leverage" else lev / (1 - lev)
            order.append(int(np.argmax(scores)))
        assert order == repexp_order(phi, 15, lam=lam, first=first).tolist(), bonus_type


# --------------------------------------------------------------------------------------------
# maxmin


def brute_maxmin(X, first):
    """Farthest-point greedy from all pairwise distances (scipy cdist), recomputed every step."""
    D = cdist(X, X)
    order = [first]
    while len(order) < len(X):
        rest = [i for i in range(len(X)) if i not in order]
        score = D[np.ix_(rest, order)].min(axis=1)
        order.append(rest[int(np.argmax(score))])
    return order


def test_maxmin_hand_made_line():
    # points on a line: 0, 1, 10, 4, 6. From 0 (index 0): 10 (idx 2), then 4 or 6 at distance 4
    # from {0, 10}... 4 is at min(4, 6) = 4, 6 at min(6, 4) = 4: a tie; then 1 (distance 1 ...).
    X = np.array([[0.0], [1.0], [10.0], [4.0], [6.0]])
    ctx = PoolContext(n=5, features=X)
    seen = set()
    for seed in range(30):
        order = maxmin(ctx, np.random.default_rng(seed)).tolist()
        if order[0] == 0:
            assert order[1] == 2 and set(order[2:4]) == {3, 4} and order[4] == 1
            seen.add(order[2])
    assert seen == {3, 4}  # the tie goes either way, by seed


def test_maxmin_matches_brute_force_and_the_2_approximation():
    rng = np.random.default_rng(4)
    for n, d in ((30, 3), (12, 20), (9, 2)):
        X = rng.standard_normal((n, d))
        ctx = PoolContext(n=n, features=X)
        order = maxmin(ctx, np.random.default_rng(n))
        assert order.tolist() == brute_maxmin(X, int(order[0]))
    # k-center: every prefix's covering radius is within 2x the best k-subset's (exhaustive)
    X = rng.standard_normal((9, 2))
    D = cdist(X, X)
    order = maxmin(PoolContext(n=9, features=X), np.random.default_rng(0))
    for k in range(1, 6):
        greedy = D[:, order[:k]].min(axis=1).max()
        best = min(D[:, list(S)].min(axis=1).max() for S in itertools.combinations(range(9), k))
        assert greedy <= 2 * best + 1e-12


def test_maxmin_with_duplicates_picks_the_farthest_then_random():
    # three distinct points, each repeated: after 3 picks every distance is 0
    base = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 2.0]])
    X = np.repeat(base, [4, 3, 2], axis=0)
    ctx = PoolContext(n=9, features=X)
    D = cdist(X, X)
    tails = set()
    for seed in range(20):
        order = maxmin(ctx, np.random.default_rng(seed))
        assert is_permutation(order, 9)
        for t in range(1, 9):  # each pick attains the max-min distance
            rest = order[t:]
            assert D[order[t], order[:t]].min() == pytest.approx(
                D[np.ix_(rest, order[:t])].min(axis=1).max()
            )
        assert len({tuple(X[i]) for i in order[:3]}) == 3  # the three distinct points first
        tails.add(tuple(order[3:]))
    assert len(tails) > 5  # the exhausted tail is seeded random


# --------------------------------------------------------------------------------------------
# dpp


def brute_dpp(L, first=None, tol=1e-10):
    """Greedy MAP by exhaustive log det: at every step the item maximising det(L_{S ∪ {i}})."""
    n = len(L)
    order, gains, prev = [], [], 0.0
    eps = tol * np.diag(L).max()
    while len(order) < n:
        best, best_i = -np.inf, None
        for i in range(n):
            if i in order:
                continue
            sign, logdet = np.linalg.slogdet(L[np.ix_(order + [i], order + [i])])
            val = logdet if sign > 0 else -np.inf
            if val > best:
                best, best_i = val, i
        if first is not None and not order:
            best_i = first
            best = np.linalg.slogdet(L[np.ix_([first], [first])])[1]
        if not best - prev > math.log(eps):
            break
        order.append(best_i)
        gains.append(best - prev)
        prev = best
    return order, gains


def test_dpp_greedy_map_matches_exhaustive_log_det():
    rng = np.random.default_rng(6)
    # not centred when N <= d: N centred rows sum to 0, so the last two residuals tie exactly
    for n, d, centre in ((10, 4, True), (7, 9, False), (6, 6, False)):
        X = rng.standard_normal((n, d))
        if centre:
            X -= X.mean(axis=0)
        want, want_gains = brute_dpp(X @ X.T)
        got, gains = dpp_greedy_map(X)
        assert got.tolist() == want
        np.testing.assert_allclose(gains, want_gains, rtol=1e-8, atol=1e-8)
        assert len(got) == np.linalg.matrix_rank(X)  # stops when the volume is spent


def test_dpp_with_a_ridge_kernel_is_repexp_greedy():
    """L = I + ΦΦᵀ/λ (the linear kernel of [Φ/√λ, I]): same order as Alg. 1 from the same first
    pick, and d² = det(L_{S+i})/det(L_S) = 1 + RepExp's bonus at every step."""
    rng = np.random.default_rng(7)
    for n, d, lam in ((25, 4, 1.0), (12, 30, 0.3), (40, 8, 5.0)):
        phi = rng.standard_normal((n, d)) * 2 + 1
        c = phi - phi.mean(axis=0)  # centred as RepExp centres
        first = int(rng.integers(n))
        order, bonus = repexp_order(phi, n, lam=lam, first=first, return_bonus=True)
        got, gains = dpp_greedy_map(np.hstack([c / np.sqrt(lam), np.eye(n)]), first=first)
        assert got.tolist() == order.tolist()
        np.testing.assert_allclose(np.exp(gains), 1.0 + bonus, rtol=1e-9)


def test_dpp_linear_kernel_is_repexp_as_lambda_vanishes():
    rng = np.random.default_rng(8)
    phi = rng.standard_normal((30, 6))
    c = phi - phi.mean(axis=0)
    greedy, _ = dpp_greedy_map(c)
    assert len(greedy) == 6
    small = repexp_order(phi, 6, lam=1e-7, first=int(greedy[0]))
    assert small.tolist() == greedy.tolist()


def test_ridge_dpp_greedy_is_within_1_minus_1_over_e_of_the_best_subset():
    """log det(I + Φ_SΦ_Sᵀ/λ) is monotone submodular and 0 on ∅: greedy >= (1 − 1/e) OPT."""
    rng = np.random.default_rng(9)
    n, d = 9, 3
    c = rng.standard_normal((n, d))
    L = np.eye(n) + c @ c.T
    order, _ = dpp_greedy_map(np.hstack([c, np.eye(n)]))
    for k in range(1, 5):
        greedy = np.linalg.slogdet(L[np.ix_(order[:k], order[:k])])[1]
        best = max(
            np.linalg.slogdet(L[np.ix_(S, S)])[1] for S in itertools.combinations(range(n), k)
        )
        assert greedy >= (1 - 1 / math.e) * best
        assert greedy <= best + 1e-12


def test_dpp_selector_greedy_prefix_then_random_tail():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((12, 3))
    ctx = PoolContext(n=12, features=X)
    want, _ = brute_dpp((X - X.mean(0)) @ (X - X.mean(0)).T)
    assert len(want) == 3
    tails = set()
    for seed in range(10):
        order = dpp(ctx, np.random.default_rng(seed))
        assert order[:3].tolist() == want
        tails.add(tuple(order[3:]))
    assert len(tails) > 5


# --------------------------------------------------------------------------------------------
# likelihood


def test_likelihood_orders_hand_made():
    ctx = PoolContext(n=5, logprob_sum=[-5.0, -1.0, -3.0, -1.0, -10.0], n_tokens=[5, 1, 1, 2, 20])
    # sums: -1 (1, 3 tied), -3 (2), -5 (0), -10 (4); per token: -0.5 (3, 4), -1 (0, 1), -3 (2)
    hi = {tuple(run_selector("likelihood_high", ctx, np.random.default_rng(s))) for s in range(20)}
    assert hi == {(1, 3, 2, 0, 4), (3, 1, 2, 0, 4)}
    lo = {tuple(run_selector("likelihood_low", ctx, np.random.default_rng(s))) for s in range(20)}
    assert lo == {(4, 0, 2, 1, 3), (4, 0, 2, 3, 1)}
    hpt = {
        tuple(run_selector("likelihood_high_per_token", ctx, np.random.default_rng(s)))
        for s in range(40)
    }
    assert hpt == {(a, b, c, e, 2) for a, b in ((3, 4), (4, 3)) for c, e in ((0, 1), (1, 0))}
    lpt = run_selector("likelihood_low_per_token", ctx, np.random.default_rng(0))
    assert lpt[0] == 2 and set(lpt[1:3]) == {0, 1} and set(lpt[3:]) == {3, 4}


# --------------------------------------------------------------------------------------------
# answer_dedup and final answers


def test_answer_dedup_hand_built_pool():
    answers = ["4", "5", "4", None, "4", "5", "7", None]
    # groups: "4" = {0, 2, 4} (3), "5" = {1, 5} (2), "7" = {6} (1), None = {3, 7} (last)
    ctx = PoolContext(n=8, answers=answers)
    firsts = set()
    for seed in range(30):
        order = answer_dedup(ctx, np.random.default_rng(seed)).tolist()
        groups = [
            {0, 2, 4},
            {1, 5},
            {6},
            {3, 7},  # round 1: one of each, most frequent first
            {0, 2, 4},
            {1, 5},
            {3, 7},  # round 2
            {0, 2, 4},
        ]  # round 3
        assert all(i in g for i, g in zip(order, groups, strict=True)), order
        assert is_permutation(np.array(order), 8)
        firsts.add(order[0])
    assert firsts == {0, 2, 4}  # members of a group come in random order


def test_answer_dedup_equal_groups_in_random_order_and_none_last():
    ctx = PoolContext(n=7, answers=[None, None, None, "a", "b", "a", "b"])
    heads = {tuple(answer_dedup(ctx, np.random.default_rng(s))[:3]) for s in range(30)}
    assert all({ctx.answers[h[0]], ctx.answers[h[1]]} == {"a", "b"} for h in heads)
    assert {ctx.answers[h[0]] for h in heads} == {"a", "b"}
    assert all(h[2] in (0, 1, 2) for h in heads)  # the no-answer group is last though largest


def test_final_answers():
    assert final_answers("gsm8k", ["so #### 1,000", "#### 1000.00", "it is 5", "#### 7."]) == [
        "1000",
        "1000",
        None,
        "7",
    ]
    assert final_answers("gsm8k", ["it is 5"], last_number_fallback=True) == ["5"]
    assert final_answers("arith", ["it is 5"]) == ["5"]
    assert final_answers(
        "math", [r"so \boxed{\dfrac{1}{2}}", r"\boxed{ \frac{1}{2} }.", "none"]
    ) == [r"\frac{1}{2}", r"\frac{1}{2}", None]
    assert final_answers("game24", [r"\boxed{(10 - 4) * (6 - 2)}", "(10-4)*(6-2) = 24"]) == [
        "(10-4)*(6-2)",
        "(10-4)*(6-2)",
    ]
    with pytest.raises(ValueError, match="code task"):
        final_answers("mbppplus", ["def f(): pass"])


# --------------------------------------------------------------------------------------------
# kmeans_rr


def test_kmeans_rr_round_robin_over_separated_blobs():
    rng = np.random.default_rng(12)
    # (no blob of 2: its two points are equally far from their mean, a tie)
    sizes, centres = [6, 4, 3], np.array([[0.0, 0, 0], [50, 0, 0], [0, 50, 0]])
    blob = np.repeat(np.arange(3), sizes)
    X = centres[blob] + rng.standard_normal((13, 3))
    # independent expectation: blobs by size, inside by distance to the blob mean, round-robin
    members = []
    for b in range(3):
        idx = np.flatnonzero(blob == b)
        members.append(idx[np.argsort(((X[idx] - X[idx].mean(0)) ** 2).sum(1))].tolist())
    want = [m[r] for r in range(6) for m in members if r < len(m)]
    ctx = PoolContext(n=13, features=X)
    for seed in range(5):
        assert kmeans_rr(ctx, np.random.default_rng(seed), 3).tolist() == want
    # k = None: ⌈√13⌉ = 4 clusters; k above the distinct rows is lowered to them
    assert is_permutation(kmeans_rr(ctx, np.random.default_rng(0)), 13)
    dup = PoolContext(n=6, features=np.repeat([[0.0, 1.0], [3.0, 1.0]], 3, axis=0))
    order = kmeans_rr(dup, np.random.default_rng(0), 5)
    assert is_permutation(order, 6) and {int(order[0]) // 3, int(order[1]) // 3} == {0, 1}


# --------------------------------------------------------------------------------------------
# ngram


def test_ngram_sets_tokenise_words_and_punctuation():
    assert ngram_sets(["So x+1=2."], n=2) == [
        {("so", "x"), ("x", "+"), ("+", "1"), ("1", "="), ("=", "2"), ("2", ".")}
    ]
    assert ngram_sets(["one", "a b c"], n=3) == [set(), {("a", "b", "c")}]


def test_ngram_hand_made():
    texts = [
        "a b c d",  # ab bc cd
        "a b c d e",  # ab bc cd de
        "x y",  # xy
        "a b x y z w",
    ]  # ab bx xy yz zw: most bigrams, first
    # after 3: text 1 adds bc cd de (3), text 0 adds bc cd (2), text 2 nothing; after 1: nothing
    ctx = PoolContext(n=4, texts=texts)
    tails = {tuple(ngram(ctx, np.random.default_rng(s))) for s in range(20)}
    assert tails == {(3, 1, 0, 2), (3, 1, 2, 0)}


def test_ngram_matches_brute_force_greedy_and_coverage_bound():
    rng = np.random.default_rng(13)
    vocab = "a b c d e f g".split()
    for trial in range(6):
        n = 10
        texts = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 8)))) for _ in range(n)]
        sets = ngram_sets(texts, 2)
        order = ngram(PoolContext(n=n, texts=texts), np.random.default_rng(trial))
        assert is_permutation(order, n)
        covered: set = set()
        for t, i in enumerate(order):
            gains = [len(sets[j] - covered) for j in order[t:]]
            assert len(sets[i] - covered) == max(gains)  # each pick is a greedy argmax
            covered |= sets[i]
        for k in range(1, 4):
            got = len(set().union(*(sets[i] for i in order[:k])))
            best = max(
                len(set().union(*(sets[i] for i in S))) for S in itertools.combinations(range(n), k)
            )
            assert got >= (1 - 1 / math.e) * best


# --------------------------------------------------------------------------------------------
# oracle


def test_oracle_stc_is_1_on_every_solved_question():
    rng = np.random.default_rng(14)
    for q in range(50):
        n = int(rng.integers(1, 60))
        correct = rng.random(n) < rng.uniform(0, 0.3)
        order = oracle(PoolContext(n=n, correct=correct), np.random.default_rng(q))
        assert is_permutation(order, n)
        if correct.any():
            assert samples_to_correct(order, correct) == 1
            assert correct[order[: correct.sum()]].all()  # every correct one first
        else:
            assert samples_to_correct(order, correct) is None


# --------------------------------------------------------------------------------------------
# the selector comparison's confidence intervals (repexp.metrics)


def test_bootstrap_ratio_ci_against_a_hand_computation():
    from repexp.metrics import bootstrap_ratio_ci

    x, y = np.array([1.0, 2.0, 6.0]), np.array([2.0, 4.0, 3.0])
    ratio, lo, hi = bootstrap_ratio_ci(x, y, n_boot=5, level=0.5, seed=3)
    assert ratio == pytest.approx(9.0 / 9.0)
    # by hand: the same 5 resamples of the 3 questions, the ratio of means of each, and the
    # 25 % / 75 % points by linear interpolation between the sorted ratios (positions 1 and 3)
    idx = np.random.default_rng(3).integers(0, 3, size=(5, 3))
    ratios = sorted(sum(x[i] for i in r) / sum(y[i] for i in r) for r in idx.tolist())
    assert (lo, hi) == pytest.approx((ratios[1], ratios[3]))
    # an exact case: x = (1, 3) over y = (1, 1) resamples to means 1, 2, 3 with mass 1/4, 1/2,
    # 1/4, so the 95 % interval is [1, 3] and the 40 % one [2, 2]
    assert bootstrap_ratio_ci([1, 3], [1, 1]) == (2.0, 1.0, 3.0)
    assert bootstrap_ratio_ci([1, 3], [1, 1], level=0.4)[1:] == (2.0, 2.0)
    assert all(np.isnan(v) for v in bootstrap_ratio_ci([], []))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ratio_ci([1.0, np.nan], [1.0, 1.0])


def test_relative_stc_per_pool_over_the_questions_every_method_has():
    from repexp.metrics import bootstrap_ratio_ci, relative_stc

    pool = dict(model="m", task="t", sampler="vanilla", pooling="mean")
    stc = {  # q2: no oracle STC (say k_max cut it), so q2 leaves every ratio of this pool
        "random": [4.0, 2.0, 8.0, 6.0],
        "repexp": [2.0, 2.0, 1.0, 3.0],
        "oracle": [1.0, 1.0, np.nan, 1.0],
    }
    rows = [
        {**pool, "qid": f"q{i}", "method": m, "stc": v[i]} for i in range(4) for m, v in stc.items()
    ]
    other = {**pool, "model": "w"}
    rows += [
        {**other, "qid": "q0", "method": m, "stc": v} for m, v in (("random", 3), ("repexp", 1.5))
    ]
    got = relative_stc(pd.DataFrame(rows), n_boot=200)
    assert got[["model", "method", "questions"]].values.tolist() == [
        ["m", "repexp", 3],
        ["m", "oracle", 3],
        ["w", "repexp", 1],
    ]
    assert got["ratio"].tolist() == pytest.approx([7 / 12, 3 / 12, 0.5])
    want = bootstrap_ratio_ci([2.0, 2.0, 3.0], [4.0, 2.0, 6.0], n_boot=200)
    assert tuple(got.iloc[0][["ratio", "lo", "hi"]]) == pytest.approx(want)
    assert (got["lo"] <= got["ratio"]).all() and (got["ratio"] <= got["hi"]).all()


# --------------------------------------------------------------------------------------------
# repexp_layer<L>: a family of entries, each Algorithm 1 on another layer's features


def test_repexp_layer_family_is_resolved_by_name():
    from repexp.selectors import SelectorTable

    sel = SELECTORS["repexp_layer15"]
    assert isinstance(SELECTORS, SelectorTable) and "repexp_layer15" in SELECTORS
    assert sel.fn is repexp and sel.layer == 15 and sel.needs == frozenset({"features"})
    assert "15" in sel.label and SELECTORS.get("repexp_layer3").layer == 3
    assert SELECTORS["repexp"].layer is None and SELECTORS["maxmin"].layer is None
    for bad in ("repexp_layer0", "repexp_layer", "repexp_layer015", "repexp_layerx", "xrepexp"):
        assert bad not in SELECTORS and SELECTORS.get(bad) is None
        with pytest.raises(KeyError):
            SELECTORS[bad]
    assert not any(name.startswith("repexp_layer") for name in SELECTORS)  # fixed entries only
    assert "repexp_layer<L>" in SELECTORS.known() and "oracle" in SELECTORS.known()
    with pytest.raises(ValueError, match="known: .*repexp_layer<L>"):
        run_selector("repexp_layer0", full_context(), np.random.default_rng(0))


def test_repexp_layer_is_repexp_on_the_features_it_is_given():
    """run_selector("repexp_layer<L>") on a context holding layer L's features: the same order as
    repexp on them with the same generator, and Algorithm 1's (repexp_order, hand-made first
    pick) on the centred features."""
    ctx = full_context(n=30, d=5, seed=4)
    for layer in (1, 15):
        for seed in range(3):
            got = run_selector(f"repexp_layer{layer}", ctx, np.random.default_rng(seed))
            want = run_selector("repexp", ctx, np.random.default_rng(seed))
            np.testing.assert_array_equal(got, want)
            first = int(np.random.default_rng(seed).integers(ctx.n))
            np.testing.assert_array_equal(got, repexp_order(ctx.centred, ctx.n, first=first))
