"""Tests for the Game-of-24 checker (repexp.verifiers.game24).

References are independent of the checker: a brute-force enumerator written here (permutations x
4^3 operators x 5 binary-tree shapes, evaluated directly with fractions.Fraction) and the
1,362-puzzle Tree-of-Thoughts set, read from the tree-of-thoughts-llm 0.1.0 wheel.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import random
import time
import zipfile
from fractions import Fraction
from itertools import combinations_with_replacement, permutations, product
from pathlib import Path

import pytest

from repexp.verifiers.game24 import (
    MAX_EXPR_LEN,
    check_game24,
    evaluate,
    extract_expression,
    parse_puzzle,
)

# ---------------------------------------------------------------------------------------------
# Independent reference: enumerate every fully parenthesised expression over 4 numbers.
# ---------------------------------------------------------------------------------------------

OPS = ("+", "-", "*", "/")
ALL_OPS = tuple(product(OPS, repeat=3))
# The 5 binary-tree shapes over leaves a b c d (in that order), operators o1 o2 o3 left to right.
SHAPES = (
    "(({a} {o1} {b}) {o2} {c}) {o3} {d}",
    "({a} {o1} ({b} {o2} {c})) {o3} {d}",
    "({a} {o1} {b}) {o2} ({c} {o3} {d})",
    "{a} {o1} (({b} {o2} {c}) {o3} {d})",
    "{a} {o1} ({b} {o2} ({c} {o3} {d}))",
)
TARGET = Fraction(24)


def _ref_apply(x: Fraction | None, op: str, y: Fraction | None) -> Fraction | None:
    """x op y with Fractions; None propagates a division by zero."""
    if x is None or y is None:
        return None
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        return None
    return x / y


def _ref_values(perm: tuple[int, ...]):
    """Yield (value, shape index, (o1, o2, o3)) for all 5 x 64 expressions on this leaf order."""
    a, b, c, d = (Fraction(n) for n in perm)
    f = _ref_apply
    ab = {o: f(a, o, b) for o in OPS}
    bc = {o: f(b, o, c) for o in OPS}
    cd = {o: f(c, o, d) for o in OPS}
    for o1, o2 in product(OPS, repeat=2):
        ab_c = f(ab[o1], o2, c)  # (a o1 b) o2 c
        a_bc = f(a, o1, bc[o2])  # a o1 (b o2 c)
        for o3 in OPS:
            ops = (o1, o2, o3)
            yield f(ab_c, o3, d), 0, ops
            yield f(a_bc, o3, d), 1, ops
            yield f(ab[o1], o2, cd[o3]), 2, ops
            yield f(a, o1, f(bc[o2], o3, d)), 3, ops
            yield f(a, o1, f(b, o2, cd[o3])), 4, ops


def _ref_format(perm: tuple[int, ...], shape: int, ops: tuple[str, str, str]) -> str:
    a, b, c, d = perm
    o1, o2, o3 = ops
    return SHAPES[shape].format(a=a, b=b, c=c, d=d, o1=o1, o2=o2, o3=o3)


def _ref_value_of(perm: tuple[int, ...], shape: int, ops: tuple[str, str, str]) -> Fraction | None:
    a, b, c, d = (Fraction(n) for n in perm)
    o1, o2, o3 = ops
    f = _ref_apply
    return (
        f(f(f(a, o1, b), o2, c), o3, d),
        f(f(a, o1, f(b, o2, c)), o3, d),
        f(f(a, o1, b), o2, f(c, o3, d)),
        f(a, o1, f(f(b, o2, c), o3, d)),
        f(a, o1, f(b, o2, f(c, o3, d))),
    )[shape]


def ref_solve(nums: tuple[int, ...]) -> str | None:
    """A fully parenthesised expression equal to 24 using nums exactly once, or None."""
    for perm in sorted(set(permutations(nums))):
        for value, shape, ops in _ref_values(perm):
            if value == TARGET:
                return _ref_format(perm, shape, ops)
    return None


def ref_expressions(nums: tuple[int, ...]) -> set[str]:
    """Every expression string the enumerator produces for nums (deduplicated)."""
    return {
        _ref_format(perm, shape, ops)
        for perm in set(permutations(nums))
        for shape in range(len(SHAPES))
        for ops in ALL_OPS
    }


ALL_MULTISETS = tuple(combinations_with_replacement(range(1, 14), 4))


def _puzzle_str(nums: tuple[int, ...]) -> str:
    return " ".join(map(str, nums))


@pytest.fixture(scope="session")
def reference_solutions() -> dict[tuple[int, ...], str | None]:
    """Brute-force classification of all 1,820 multisets of 4 numbers from 1..13."""
    return {nums: ref_solve(nums) for nums in ALL_MULTISETS}


# ---------------------------------------------------------------------------------------------
# The Tree-of-Thoughts puzzle set, read from the published wheel (cached, not installed).
# ---------------------------------------------------------------------------------------------

TOT_CSV = "tot/data/24/24.csv"


@pytest.fixture(scope="session")
def tot_puzzles(wheel_dir: Path) -> list[str]:
    """The Tree-of-Thoughts puzzle set, read from the pinned wheel (cached, not installed)."""
    with zipfile.ZipFile(wheel_dir / "tree-of-thoughts-llm.whl") as zf:
        text = zf.read(TOT_CSV).decode("utf-8")
    return [row["Puzzles"] for row in csv.DictReader(io.StringIO(text))]


# ---------------------------------------------------------------------------------------------
# 1. Hand-made cases
# ---------------------------------------------------------------------------------------------

P = "4 5 6 10"  # (10 - 6) * 5 + 4 = 24
Q = "1 2 3 4"  # 1 * 2 * 3 * 4 = 24

CASES = [
    # --- correct -----------------------------------------------------------------------------
    ("plain", P, "(10 - 6) * 5 + 4", 1.0),
    ("plain, puzzle order irrelevant", "10 6 5 4", "4 + 5 * (10 - 6)", 1.0),
    ("puzzle with commas", "4, 5, 6, 10", "(10-6)*5+4", 1.0),
    ("boxed", P, "Let me think.\nSo the answer is \\boxed{(10 - 6) * 5 + 4}.", 1.0),
    ("unicode times/minus", P, "(10 \u2212 6) \u00d7 5 + 4", 1.0),
    ("unicode division", "3 3 8 8", "\\boxed{8 \u00f7 (3 \u2212 8 \u00f7 3)}", 1.0),
    ("latex times in $", P, "$\\boxed{(10 - 6) \\times 5 + 4}$", 1.0),
    ("latex div", "3 3 8 8", "\\boxed{8 \\div (3 - 8 \\div 3)}", 1.0),
    ("latex cdot left/right", P, "\\boxed{\\left(10 - 6\\right) \\cdot 5 + 4}", 1.0),
    ("latex nested frac", "3 3 8 8", "\\boxed{\\frac{8}{3 - \\frac{8}{3}}}", 1.0),
    ("latex dfrac", "1 5 5 5", "$$\\boxed{5 \\times \\left(5 - \\dfrac{1}{5}\\right)}$$", 1.0),
    ("= 24 suffix", P, "\\boxed{(10 - 6) * 5 + 4 = 24}", 1.0),
    ("24 = prefix", P, "\\boxed{24 = (10 - 6) * 5 + 4}", 1.0),
    ("answer: line", P, "Try things.\nAnswer: (10 - 6) * 5 + 4 = 24\nHope it helps!", 1.0),
    ("markdown answer: line", P, "**Answer:** `(10 - 6) * 5 + 4`", 1.0),
    ("last line, trailing period", P, "I found it:\n(10-6)*5+4 = 24.\n\n", 1.0),
    ("exact intermediate fractions", "3 3 8 8", "8 / (3 - 8 / 3)", 1.0),
    ("exact fractions 1 5 5 5", "1 5 5 5", "5 * (5 - 1 / 5)", 1.0),
    ("100 nested parens, under the length cap", Q, "(" * 100 + "1 * 2 * 3 * 4" + ")" * 100, 1.0),
    ("boxed wins over a later unboxed line", P, "\\boxed{(10-6)*5+4}\nor maybe (10-6)*5-4", 1.0),
    ("last of several boxed wins", P, "\\boxed{(10-6)*5-4} no wait \\boxed{(10-6)*5+4}", 1.0),
    # a truncated final answer is no answer (as for MATH), not an earlier one
    ("unclosed last boxed is no answer", P, "\\boxed{(10-6)*5+4} then \\boxed{(10-6)*5", 0.0),
    # --- incorrect ---------------------------------------------------------------------------
    ("wrong value", P, "\\boxed{(10 - 6) * 5 - 4}", 0.0),
    ("boxed wrong, later unboxed right", P, "\\boxed{(10-6)*5-4}\n(10-6)*5+4", 0.0),
    ("last boxed wrong", P, "\\boxed{(10-6)*5+4} no wait \\boxed{(10-6)*5-4}", 0.0),
    ("number used twice (and one missing)", Q, "\\boxed{4 * 3 * (1 + 1)}", 0.0),
    ("number missing", Q, "\\boxed{4 * 3 * 2}", 0.0),
    ("extra number", Q, "\\boxed{4 * 3 * 2 * 1 * 1}", 0.0),
    ("number not in puzzle", Q, "\\boxed{6 * 4 * (3 - 2)}", 0.0),
    ("float literal", Q, "\\boxed{4 * 3 * 2 * 1.0}", 0.0),
    ("float 2.5", "1 2 3 4", "\\boxed{(2.5 - 1.5) * 4 * 3 * 2}", 0.0),
    ("unary minus", Q, "\\boxed{-2 * 3 * 4 * -1}", 0.0),
    ("unary minus on group", Q, "\\boxed{-(1 - 2) * 3 * 4 * 2}", 0.0),
    ("unary plus", Q, "\\boxed{+1 * 2 * 3 * 4}", 0.0),
    ("power", Q, "\\boxed{4 ** 1 * 3 * 2}", 0.0),
    ("floor division", Q, "\\boxed{4 * 3 * 2 // 1}", 0.0),
    ("modulo", Q, "\\boxed{4 * 3 * 2 * (1 % 5)}", 0.0),
    ("import call", Q, "\\boxed{__import__('os').system('echo pwned')}", 0.0),
    ("function call", Q, "\\boxed{abs(4) * 3 * 2 * 1}", 0.0),
    ("name", Q, "\\boxed{x * 3 * 2 * 1}", 0.0),
    ("implicit multiplication", Q, "\\boxed{(4 * 3)(2 * 1)}", 0.0),
    ("hex literal", Q, "\\boxed{0x4 * 3 * 2 * 1}", 0.0),
    ("leading zero", Q, "\\boxed{04 * 3 * 2 * 1}", 0.0),
    ("digit separator", "1 2 3 10", "\\boxed{1_0 + 3 * 2 * 1}", 0.0),
    ("division by zero", "4 5 5 6", "\\boxed{(4 / (5 - 5)) * 6}", 0.0),
    ("empty response", Q, "", 0.0),
    ("whitespace response", Q, "  \n\t \n", 0.0),
    ("empty boxed", Q, "\\boxed{}", 0.0),
    ("just 24", Q, "\\boxed{24}", 0.0),
    ("24 = 24", Q, "24 = 24", 0.0),
    ("deeply nested (10000 levels)", Q, "(" * 10000 + "1 * 2 * 3 * 4" + ")" * 10000, 0.0),
    ("deeply nested boxed", Q, "\\boxed{" + "(" * 10000 + "1*2*3*4" + ")" * 10000 + "}", 0.0),
    ("very long expression", Q, "\\boxed{" + "1 + " * 50000 + "1}", 0.0),
    ("prose last line", Q, "The answer is 1 * 2 * 3 * 4, obviously", 0.0),
]


@pytest.mark.parametrize(
    ("puzzle", "response", "expected"),
    [pytest.param(p, r, e, id=name) for name, p, r, e in CASES],
)
def test_handmade_cases(puzzle: str, response: str, expected: float) -> None:
    assert check_game24(puzzle, response) == expected


def test_handmade_case_count() -> None:
    assert len(CASES) >= 20


def test_exact_arithmetic_where_floats_fail() -> None:
    # The float evaluation of the 3 3 8 8 solution is not exactly 24; Fractions are.
    assert 8 / (3 - 8 / 3) != 24
    value, literals = evaluate("8 / (3 - 8 / 3)")
    assert value == Fraction(24) and isinstance(value, Fraction)
    assert literals == [8, 3, 8, 3]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{(10-4)*(6-2)}", "(10-4)*(6-2)"),
        ("(10-4)*(6-2) = 24", "(10-4)*(6-2)"),
        ("24 = (10-4)*(6-2)", "(10-4)*(6-2)"),
        ("\\boxed{4*6 = 12+12}", "4*6"),
        ("\\boxed{(10-4)*(6-2) = 6*4 = 24}", "(10-4)*(6-2)"),
        ("\\boxed{\\frac{8}{3-\\frac{8}{3}}}", "(8)/(3-(8)/(3))"),
        ("$(10 \\times 2) + 4$.", "(10 * 2) + 4"),
        ("\\( 12 \\div 3 \\)", "12 / 3"),
        ("Answer: 1+2+3+18\nbye", "1+2+3+18"),
        ("answer: 1+2\nANSWER: 3*8\nsomething else", "3*8"),
        ("Answer:\n3 * 8", "3 * 8"),
        ("line one\n\n  3 * 8  \n\n", "3 * 8"),
        ("\\boxed{3\n*\n8}", "3 * 8"),
        ("\\boxed{3 * 8} and \\boxed{2 * 12}", "2 * 12"),
        ("", None),
        ("   \n", None),
        ("\\boxed{}", None),
        ("\\boxed{ $ $ }", None),
    ],
)
def test_extract_expression(response: str, expected: str | None) -> None:
    assert extract_expression(response) == expected


def test_parse_puzzle() -> None:
    assert parse_puzzle("4 5 6 10") == (4, 5, 6, 10)
    assert parse_puzzle("4,5,6,10") == (4, 5, 6, 10)
    assert parse_puzzle(" 4, 5 ,6\t10 ") == (4, 5, 6, 10)
    for bad in ["", "   ", "4 5 x 10", "4 5.5 6 10", "4 -5 6 10", ",,"]:
        with pytest.raises(ValueError):
            parse_puzzle(bad)


def test_malformed_puzzle_raises() -> None:
    with pytest.raises(ValueError):
        check_game24("four five six ten", "\\boxed{24}")


@pytest.mark.parametrize(
    "expr",
    [
        "4 / (5 - 5)",
        "1 / 0",
        "2 ** 3",
        "7 // 2",
        "7 % 2",
        "-1",
        "1.5 + 2",
        "__import__('os')",
        "abs(3)",
        "x",
        "True",
        "(1, 2)",
        "()",
        "",
        "1 +",
        "(" * 10000 + "1" + ")" * 10000,
        "1+" * 1000 + "1",
        "(" * 130 + "1" + ")" * 130,  # just over MAX_EXPR_LEN
    ],
)
def test_evaluate_rejects(expr: str) -> None:
    with pytest.raises(ValueError):
        evaluate(expr)


def test_evaluate_values() -> None:
    assert evaluate("(10 - 6) * 5 + 4") == (Fraction(24), [10, 6, 5, 4])
    assert evaluate("1 / 3 + 1 / 6") == (Fraction(1, 2), [1, 3, 1, 6])
    assert evaluate("1 - 3") == (Fraction(-2), [1, 3])
    assert evaluate("1+" * (MAX_EXPR_LEN // 2 - 1) + "1")[0] == MAX_EXPR_LEN // 2
    # The deepest nesting that fits in MAX_EXPR_LEN characters still parses and evaluates.
    depth = (MAX_EXPR_LEN - 1) // 2
    assert evaluate("(" * depth + "7" + ")" * depth) == (Fraction(7), [7])


def test_pathological_inputs_are_fast() -> None:
    start = time.perf_counter()
    for response in [
        "(" * 100_000 + "1" + ")" * 100_000,
        "\\boxed{" * 50_000 + "}" * 50_000,
        "\\boxed{" * 50_000,
        "\\boxed{\\frac{" * 50_000 + "}",
        "1+" * 500_000 + "1",
        "\\frac{" * 20_000,
        "answer:" * 100_000,
    ]:
        assert check_game24(Q, response) == 0.0
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------------------------------------
# 2. Every ToT puzzle is solvable, and each brute-force solution is accepted
# ---------------------------------------------------------------------------------------------


def test_reference_enumerator_sanity() -> None:
    # 24 orderings x 64 operator choices x 5 shapes, all distinct strings.
    assert len(ref_expressions((1, 2, 3, 4))) == 24 * 64 * 5
    assert len(ref_expressions((3, 3, 8, 8))) == 6 * 64 * 5
    assert ref_solve((1, 1, 1, 1)) is None
    assert ref_solve((3, 3, 8, 8)) is not None  # needs 8 / (3 - 8 / 3)


def test_tot_csv_is_the_solvable_set(tot_puzzles, reference_solutions) -> None:
    assert len(tot_puzzles) == 1362
    assert len(ALL_MULTISETS) == 1820
    tot_multisets = [tuple(sorted(parse_puzzle(p))) for p in tot_puzzles]
    assert len(set(tot_multisets)) == 1362
    solvable = {nums for nums, sol in reference_solutions.items() if sol is not None}
    assert len(solvable) == 1362
    assert set(tot_multisets) == solvable


def test_checker_accepts_brute_force_solutions(tot_puzzles) -> None:
    rejected = []
    for puzzle in tot_puzzles:
        expr = ref_solve(parse_puzzle(puzzle))
        assert expr is not None, puzzle
        response = f"Let's combine the numbers step by step.\nFinal: \\boxed{{{expr}}}"
        if check_game24(puzzle, response) != 1.0:
            rejected.append((puzzle, expr))
    assert rejected == []


# ---------------------------------------------------------------------------------------------
# 3. No expression over an unsolvable multiset is accepted; random wrong ones are rejected
# ---------------------------------------------------------------------------------------------


def _accepted_in_chunk(multisets: list[tuple[int, ...]]) -> tuple[int, list[tuple[str, str]]]:
    """Check every enumerated expression over each multiset; return (#checked, accepted)."""
    checked = 0
    accepted = []
    for nums in multisets:
        puzzle = _puzzle_str(nums)
        for expr in ref_expressions(nums):
            checked += 1
            if check_game24(puzzle, "\\boxed{" + expr + "}") != 0.0:
                accepted.append((puzzle, expr))
    return checked, accepted


@pytest.mark.integration
def test_unsolvable_multisets_never_accepted(reference_solutions) -> None:
    unsolvable = sorted(nums for nums, sol in reference_solutions.items() if sol is None)
    assert len(unsolvable) == 458
    chunks = [unsolvable[i::16] for i in range(16)]
    start = time.perf_counter()
    if "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_accepted_in_chunk, chunks, chunksize=1)
    else:  # pragma: no cover - non-POSIX
        results = [_accepted_in_chunk(chunk) for chunk in chunks]
    elapsed = time.perf_counter() - start
    checked = sum(n for n, _ in results)
    accepted = [a for _, acc in results for a in acc]
    print(f"\nunsolvable sweep: {checked} expressions checked in {elapsed:.1f} s")
    expected = sum(len(set(permutations(nums))) * 64 * 5 for nums in unsolvable)
    assert checked == expected
    assert accepted == []


def test_random_expressions_agree_with_reference(reference_solutions) -> None:
    """Random (mostly wrong) expressions over solvable puzzles: checker == reference."""
    rng = random.Random(24)
    solvable = sorted(nums for nums, sol in reference_solutions.items() if sol is not None)
    n_wrong = n_right = 0
    for _ in range(5000):
        nums = rng.choice(solvable)
        perm = tuple(rng.sample(nums, 4))
        shape = rng.randrange(len(SHAPES))
        ops = rng.choice(ALL_OPS)
        expr = _ref_format(perm, shape, ops)
        want = 1.0 if _ref_value_of(perm, shape, ops) == TARGET else 0.0
        assert check_game24(_puzzle_str(nums), f"\\boxed{{{expr}}}") == want, (nums, expr)
        n_right += want == 1.0
        n_wrong += want == 0.0
    assert n_wrong > 4000 and n_right > 0
    # A correct expression for the wrong puzzle is rejected too.
    for nums, sol in list(reference_solutions.items())[:200]:
        if sol is not None:
            other = tuple(sorted((nums[0] % 13 + 1,) + nums[1:]))
            if other != nums:
                assert check_game24(_puzzle_str(other), f"\\boxed{{{sol}}}") == 0.0
