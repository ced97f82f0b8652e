r"""The tasks' verifiers with one signature, for the task table (``repexp.tasks.TASKS``).

A **scorer** is ``scorer(answer, response, settings, timeout_s) -> 1.0 | 0.0``: ``answer`` is the
reference stored with the question, ``settings`` the :class:`~repexp.verifiers.settings.
VerifierSettings`, ``timeout_s`` the math-verify limit (``None``: in this process, for workers that
already run under a timeout). A **final-answer extractor** is ``extract(response, settings) -> str |
None``: the answer the scorer reads, canonicalised so that equal answers are equal strings (the
``answer_dedup`` selector groups by it). The checkers' heavy imports (math-verify, the sandbox)
happen on the first call, not when the table is imported.
"""

from __future__ import annotations

import json

from repexp.verifiers.settings import VerifierSettings

__all__ = [
    "boxed_answer",
    "code_scorer",
    "game24_answer",
    "game24_scorer",
    "hash_answer",
    "hash_answer_or_last_number",
    "hash_scorer",
    "hash_scorer_or_last_number",
    "math_scorer",
    "math_verify_scorer",
    "aime_scorer",
]


# ------------------------------------------------------------------------------------------------
# scorers
# ------------------------------------------------------------------------------------------------
def math_scorer(answer: str, response: str, s: VerifierSettings, timeout_s: float | None) -> float:
    """MATH: math-verify on the last ``\\boxed{}``, or the recipe's string rule with
    ``math_reward: recipe`` (the RL stage's default)."""
    from repexp.verifiers.math import check_math, check_math_recipe

    if s.math_reward == "recipe":
        return check_math_recipe(answer, response)
    return check_math(answer, response, timeout_s=timeout_s)


def math_verify_scorer(
    answer: str, response: str, s: VerifierSettings, timeout_s: float | None
) -> float:
    """math-verify on the last ``\\boxed{}`` whatever ``math_reward`` says (DAPO, as the recipe)."""
    from repexp.verifiers.math import check_math

    return check_math(answer, response, timeout_s=timeout_s)


def aime_scorer(answer: str, response: str, s: VerifierSettings, timeout_s: float | None) -> float:
    """AIME: the boxed integer 0-999."""
    from repexp.verifiers.math import check_aime

    return check_aime(answer, response, timeout_s=timeout_s)


def hash_scorer(answer: str, response: str, s: VerifierSettings, timeout_s: float | None) -> float:
    """GSM8K: the number after the last ``####`` (the last number with
    ``gsm8k_last_number_fallback``)."""
    from repexp.verifiers.gsm8k import check_gsm8k

    return check_gsm8k(answer, response, last_number_fallback=s.gsm8k_last_number_fallback)


def hash_scorer_or_last_number(
    answer: str, response: str, s: VerifierSettings, timeout_s: float | None
) -> float:
    """The GSM8K checker, always with the last-number fallback (``arith``: the 135M default model
    rarely writes ``####``)."""
    from repexp.verifiers.gsm8k import check_gsm8k

    return check_gsm8k(answer, response, last_number_fallback=True)


def game24_scorer(
    answer: str, response: str, s: VerifierSettings, timeout_s: float | None
) -> float:
    """Game of 24: the final expression, exact rational arithmetic; ``answer`` is the puzzle."""
    from repexp.verifiers.game24 import check_game24

    return check_game24(answer, response)


def code_scorer(answer: str, response: str, s: VerifierSettings, timeout_s: float | None) -> float:
    """Code: ``answer`` is ``{"setup", "tests"}`` (JSON); the setup, the response's last code block
    and the tests run in the sandbox with the ``code_*`` limits."""
    from repexp.sandbox import extract_code, passes

    ref = json.loads(answer)
    program = ref["setup"] + "\n\n" + extract_code(response)
    return float(
        passes(
            program,
            ref["tests"],
            timeout_s=s.code_timeout_s,
            memory_mb=s.code_memory_mb,
            max_procs=s.code_max_procs,
        )
    )


# ------------------------------------------------------------------------------------------------
# final answers (what the scorer reads, canonicalised for grouping)
# ------------------------------------------------------------------------------------------------
def _hash(response: str, fallback: bool) -> str | None:
    from repexp.verifiers.gsm8k import extract_hash_answer, last_number, to_fraction

    a = extract_hash_answer(response)
    if a is None and fallback:
        a = last_number(response)
    if a is None:
        return None
    v = to_fraction(a)
    return str(v) if v is not None else a  # its exact value: "1,000.00" and "1000" are one answer


def hash_answer(response: str, s: VerifierSettings) -> str | None:
    """The number after the last ``####`` (with ``gsm8k_last_number_fallback``, the last number
    when there is none), written as its exact value."""
    return _hash(response, s.gsm8k_last_number_fallback)


def hash_answer_or_last_number(response: str, s: VerifierSettings) -> str | None:
    """:func:`hash_answer` with the last-number fallback always on (as ``arith``'s scorer)."""
    return _hash(response, True)


def boxed_answer(response: str, s: VerifierSettings) -> str | None:
    """The content of the last ``\\boxed{}``, lightly normalised
    (:func:`repexp.verifiers.math.normalise_answer`); equivalent answers written differently
    (``0.5`` vs ``\\frac12``) stay different: math-verify's equivalence needs a sympy call per
    pair."""
    from repexp.verifiers.latex import last_boxed
    from repexp.verifiers.math import normalise_answer

    a = last_boxed(response)
    a = normalise_answer(a) if a is not None else None
    return a or None


def game24_answer(response: str, s: VerifierSettings) -> str | None:
    """The final expression without spaces (different correct expressions are different
    answers)."""
    from repexp.verifiers.game24 import extract_expression

    e = extract_expression(response)
    return "".join(e.split()) if e else None
