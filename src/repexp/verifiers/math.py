r"""MATH / AIME answer checkers (boxed final answer + math-verify equivalence).

Required output format: the model must put its final answer in ``\boxed{...}``
(``\boxed {...}`` and ``\fbox{...}`` are accepted too). A response without a (balanced,
non-empty) boxed answer is scored 0.0 -- we never guess an answer from free text. When
a response contains several boxed answers the LAST one counts, even if an unboxed
different answer follows it.

``check_math`` (reward 1.0/0.0):

1. ``last_boxed(response)``; ``answer`` is used as is, or its last boxed content if it
   contains one (a full MATH solution may be passed).
2. Fast path: both strings equal after light normalisation (whitespace, surrounding
   ``$``, ``\dfrac``/``\tfrac`` -> ``\frac``, ``\left``/``\right``, LaTeX spacing
   commands, trailing period) -> 1.0 without sympy.
3. Otherwise :func:`math_equal` in a separate process with a hard timeout
   (:func:`repexp.parallel.call_with_timeout`); a timeout counts as incorrect.

``math_equal`` extraction config: each string is wrapped as ``$s$`` and parsed with
math-verify's ``LatexExtractionConfig()`` (default normalisation: basic LaTeX, units,
malformed operators, nits, boxed="all"; equations=False). Only if that yields no sympy
object AND the string contains no backslash (plain-text math such as ``2**10`` or
``sqrt(2)/2``) is ``ExprExtractionConfig()`` tried on the raw string -- it is not used on
LaTeX because it then extracts a stray number (``2x`` -> 2, ``(3,-2)`` -> -2). The
fallback match string that math-verify returns is kept, so unparseable answers still
compare by exact string. ``verify(gold, pred)`` is called with gold first (it is
asymmetric) and default precision (``float_rounding=6``, ``strict=True``).
math-verify's own ``signal.alarm`` timeouts are disabled (``parsing_timeout=None``,
``timeout_seconds=None``): they only work in the main thread and cannot stop C code
that never checks for signals; the process timeout replaces them.

Consequences of math-verify's semantics (decided, tested):

* ``x = 5`` vs ``5`` is correct (either way round): math-verify compares the right-hand
  side of a single-variable assignment.
* Degrees: ``30^\circ`` equals ``30``; units in ``\text{}`` are dropped (``10\text{ cm}``).
* ``1,000`` equals ``1000``; ``1,2`` is the set {1, 2} (so ``2,1`` equals it).
* Multiple-choice text: ``\text{(B)}`` equals ``(B)``/``B``, not ``\text{(C)}``.
* Intervals are exact: ``[1,2)`` is not ``(1,2)``; ordered pairs keep order.
* Numbers compare after rounding to 6 decimals: ``0.333333`` equals ``\frac13`` but
  ``0.3333`` does not; ``\pi`` is not ``3.14``.
* ``10\%`` equals ``10`` (math-verify's percent handling), either way round.
* Whitespace is ignored (as in LaTeX math mode), so ``3 3`` equals ``33``.

``check_aime``: AIME answers are integers 0..999. See its docstring.

``check_math_recipe``: the authors' RL reward for MATH (a string-equivalence rule, no sympy),
offered for the RL stage (``verifiers.math_reward: recipe``). See "The recipe's MATH reward" below.
"""

from __future__ import annotations

import logging
import re

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from repexp.parallel import call_with_timeout
from repexp.verifiers.latex import braced, last_boxed

__all__ = [
    "aime_integer_value",
    "check_aime",
    "check_aime_inprocess",
    "check_math",
    "check_math_inprocess",
    "check_math_recipe",
    "last_boxed",
    "math_equal",
    "normalise_answer",
    "recipe_answer",
    "recipe_equiv",
    "recipe_normalise",
]


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeout is disabled; we disable it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


# --------------------------------------------------------------------------- normalise

_SPACING_RE = re.compile(r"\\[,!;: ]|\\quad|\\qquad")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def normalise_answer(s: str) -> str:
    r"""Light, meaning-preserving normalisation for the exact-string fast path."""
    s = s.strip().rstrip(".").strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _SPACING_RE.sub("", s)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


# --------------------------------------------------------------------------- math-verify

_LATEX_CFG = (LatexExtractionConfig(),)
_EXPR_CFG = (ExprExtractionConfig(),)


def _mv_parse(s: str) -> list:
    s = normalise_answer(s)
    if not s:
        return []
    parsed = parse(f"${s}$", extraction_config=_LATEX_CFG, parsing_timeout=None)
    if "\\" not in s and not any(not isinstance(p, str) for p in parsed):
        alt = parse(s, extraction_config=_EXPR_CFG, parsing_timeout=None)
        if any(not isinstance(p, str) for p in alt):
            parsed = alt
    return parsed


def math_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answer strings (gold first), IN-PROCESS and without
    any timeout: call it through :func:`repexp.parallel.call_with_timeout` or
    :func:`repexp.parallel.map_with_timeout` on untrusted input."""
    g = _mv_parse(gold)
    p = _mv_parse(pred)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def _gold_text(answer: str) -> str:
    if answer is None:
        raise ValueError("reference answer is None")
    boxed = last_boxed(answer) if ("\\boxed" in answer or "\\fbox" in answer) else None
    gold = boxed if boxed is not None else answer
    if not normalise_answer(gold):
        raise ValueError(f"empty reference answer: {answer!r}")
    return gold


def check_math(answer: str, response: str, *, timeout_s: float | None = 5.0) -> float:
    """1.0 if the last boxed answer of ``response`` is equivalent to ``answer``, else 0.0.

    ``timeout_s`` bounds the math-verify comparison (run in a worker process; timeout ->
    0.0). ``timeout_s=None`` runs it in-process, for callers that already run inside a
    timed worker (e.g. ``map_with_timeout(check_math_inprocess, ...)``)."""
    gold = _gold_text(answer)
    pred = last_boxed(response)
    if pred is None or not normalise_answer(pred):
        return 0.0
    if normalise_answer(gold) == normalise_answer(pred):
        return 1.0
    if timeout_s is None:
        return float(math_equal(gold, pred))
    return float(
        bool(call_with_timeout(math_equal, gold, pred, timeout_s=timeout_s, on_timeout=False))
    )


# --------------------------------------------------------------------------- AIME

_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{(.*)\}$", re.S)


def _aime_clean(s: str) -> str:
    s = s.strip()
    while True:
        prev = s
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1].strip()
        m = _TEXT_WRAP_RE.match(s)
        if m and braced(s, s.index("{") + 1) == (m.group(1), len(s)):
            s = m.group(1).strip()
        if s == prev:
            return s


def _aime_reference(answer: str | int) -> int:
    ref = _aime_clean(str(answer))
    if not re.fullmatch(r"\d+", ref) or not 0 <= int(ref) <= 999:
        raise ValueError(f"AIME reference must be an integer in 0..999, got {answer!r}")
    return int(ref)


def aime_integer_value(content: str) -> int | None:
    """Exact integer value of a boxed answer via math-verify's LaTeX parser, else None.

    An assignment ``x = 33`` gives its right-hand side. Floats count only when exactly
    integral (``33.0`` yes, ``33.0000001`` no). In-process, no timeout."""
    for expr in parse(f"${content}$", extraction_config=_LATEX_CFG, parsing_timeout=None):
        if isinstance(expr, str):
            continue
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs
        if not isinstance(expr, sympy.Basic) or not expr.is_number:
            return None
        expr = sympy.simplify(expr.doit())
        if expr.is_Integer:
            return int(expr)
        if expr.is_Float:  # exact binary value (sympy >= 1.13: Float(33.0) != Integer(33))
            exact = sympy.Rational(expr)
            return int(exact) if exact.q == 1 else None
        return None
    return None


def check_aime(answer: str | int, response: str, *, timeout_s: float | None = 5.0) -> float:
    r"""AIME checker: 1.0 iff the last boxed answer is the reference integer (0..999).

    * Integer literal path (no sympy): surrounding ``$``, ``\text{}``/``\textbf{}``/
      ``\mathrm{}`` wrappers and outer spaces are removed; leading zeros are allowed
      (``033`` == ``33``).
    * Commas are never allowed (``1,000`` is out of range anyway; ``3,3`` is a list).
    * Anything else falls back to :func:`aime_integer_value` (math-verify parse, in a
      worker with ``timeout_s``; ``None`` = in-process): accepted only if it is EXACTLY an
      integer, e.g. ``33.0``, ``\frac{66}{2}``, ``x = 33``; ``33.5``, ``\sqrt{2}``, ``33\%``
      are rejected.
    * Values outside 0..999 (``1000``, ``-33``) are rejected.
    * ``answer`` must itself be an integer 0..999 (ValueError otherwise: a data bug).
    """
    ref = _aime_reference(answer)
    content = last_boxed(response)
    if content is None:
        return 0.0
    c = _aime_clean(content)
    if not c or "," in c:
        return 0.0
    if re.fullmatch(r"\d+", c):
        value: int | None = int(c)
    elif timeout_s is None:
        value = aime_integer_value(c)
    else:
        value = call_with_timeout(aime_integer_value, c, timeout_s=timeout_s, on_timeout=None)
    if value is None or not 0 <= value <= 999:
        return 0.0
    return 1.0 if value == ref else 0.0


# ------------------------------------------------------------------- the recipe's MATH reward
#
# The authors' verl recipe (verl-project/verl-recipe ``rep_exp/reward_score/__init__.py``) scores
# the ``DigitalLearningGmbH/MATH-lighteval`` data source -- its MATH training rewards, dev and test
# evaluations -- with ``verl/utils/reward_score/math_reward.py`` at the verl commit the recipe pins
# (b9bd00ef): ``compute_score`` = ``last_boxed_only_string`` + ``remove_boxed`` on the response,
# then ``is_equiv`` = string equality after ``strip_string``, the lm-evaluation-harness
# ``hendrycks_math`` normalisation. The functions below reimplement that behaviour (quirks
# included, each one listed) so that the RL stage can reward exactly as the recipe does.


class _Unnormalisable(ValueError):
    """The recipe's normalisation raised on this string (it then compares the raw strings)."""


def recipe_answer(response: str) -> str | None:
    r"""The answer the recipe's MATH reward reads from ``response``, or None (scored 0).

    * If ``\boxed `` (with a space) occurs anywhere, the answer is the text after its LAST
      occurrence up to the next ``$`` (or the end): ``\boxed 5$`` -> ``5``. This rule wins over
      any ``\boxed{...}``, and ``\boxed {5}`` gives ``{5}``.
    * Otherwise the last ``\boxed`` (else the last ``\fbox``) is scanned from its start, counting
      every ``{`` and ``}`` (escaped ones too), up to the ``}`` that brings the count back to 0;
      none -> None. The span must start with ``\boxed{``; anything else (``\fbox{5}``,
      ``\boxed5``) is None, because the recipe's ``remove_boxed`` raises on it and the reward is 0.
    """
    if not response:
        return None
    if "\\boxed " in response:
        return response.split("\\boxed ")[-1].split("$")[0]
    start = response.rfind("\\boxed")
    if start < 0:
        start = response.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(response)):
        ch = response[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                span = response[start : i + 1]
                return span[len("\\boxed{") : -1] if span.startswith("\\boxed{") else None
    return None


def _recipe_units(s: str) -> str:
    # everything before "\text{ " (units on the right); more than one such group is an error
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise _Unnormalisable("several '\\text{ ' groups")
    return parts[0]


def _recipe_sqrt(s: str) -> str:
    # "\sqrt3" -> "\sqrt{3}": the one character after each \sqrt is braced; \sqrt at the end errs
    if "\\sqrt" not in s:
        return s
    head, *tails = s.split("\\sqrt")
    out = [head]
    for tail in tails:
        if not tail:
            raise _Unnormalisable("nothing after \\sqrt")
        out.append("\\sqrt" + (tail if tail[0] == "{" else "{" + tail[0] + "}" + tail[1:]))
    return "".join(out)


def _recipe_fracs(s: str) -> str:
    # "\frac12" -> "\frac{1}{2}", "\frac1{72}" -> "\frac{1}{72}"; a one-character tail leaves the
    # whole string as it was; \frac at the end errs
    head, *tails = s.split("\\frac")
    out = [head]
    for tail in tails:
        if not tail:
            raise _Unnormalisable("nothing after \\frac")
        if tail[0] == "{":
            out.append("\\frac" + tail)
        elif len(tail) < 2:
            return s
        elif tail[1] != "{":
            out.append("\\frac{" + tail[0] + "}{" + tail[1] + "}" + tail[2:])
        else:
            out.append("\\frac{" + tail[0] + "}" + tail[1:])
    return "".join(out)


def _recipe_slash(s: str) -> str:
    # "a/b" of two integers written plainly -> "\frac{a}{b}"
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def recipe_normalise(s: str) -> str:
    r"""The recipe's ``strip_string``, step by step (raises :class:`ValueError` where it raises):

    1. drop newlines and ``\!``; ``\\`` -> ``\``; ``tfrac``/``dfrac`` -> ``frac``; drop ``\left``,
       ``\right`` (as substrings: ``\rightarrow`` -> ``arrow``), ``^{\circ}``, ``^\circ``, ``\$``;
    2. cut at ``\text{ `` (units; two such groups raise), drop ``\%``;
    3. `` .`` -> `` 0.``, ``{.`` -> ``{0.``; empty -> empty; a leading ``.`` gets a ``0``;
    4. ``lhs=rhs`` with a left side of at most 2 characters -> ``rhs`` (``x = 5`` -> ``5``);
    5. brace the character after ``\sqrt`` (before spaces are removed, so ``\sqrt 2`` ->
       ``\sqrt{}2``); ``\sqrt`` at the end raises;
    6. remove spaces; brace ``\frac`` arguments (``\frac12``); ``\frac`` at the end raises;
    7. exactly ``0.5`` -> ``\frac{1}{2}``; ``a/b`` of plain integers -> ``\frac{a}{b}``.

    Not done (so these differ): thousands commas (``1,000``), other decimals of fractions
    (``0.25``), ``\text{...}`` without a leading space, algebraic or numeric equivalence.
    """
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _recipe_units(s)
    s = s.replace("\\\\%", "").replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _recipe_sqrt(s).replace(" ", "")
    s = _recipe_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _recipe_slash(s)


def recipe_equiv(a: str, b: str) -> bool:
    """The recipe's ``is_equiv``: equal after :func:`recipe_normalise`; if normalising either
    string raises, the raw strings are compared instead."""
    try:
        return recipe_normalise(a) == recipe_normalise(b)
    except _Unnormalisable:
        return a == b


def check_math_recipe(answer: str, response: str) -> float:
    r"""The recipe's MATH reward: 1.0 iff :func:`recipe_answer` of ``response`` is
    :func:`recipe_equiv` to the reference (``answer``, or its last boxed content when it holds a
    whole solution, as the recipe's preprocessing extracts it). Pure string work: no sympy, no
    timeout needed."""
    pred = recipe_answer(response)
    if pred is None:
        return 0.0
    return 1.0 if recipe_equiv(pred, _gold_text(answer)) else 0.0


# --------------------------------------------------------------------------- batch helpers


def check_math_inprocess(answer: str, response: str) -> float:
    """``check_math(..., timeout_s=None)``: for ``map_with_timeout`` (which times it)."""
    return check_math(answer, response, timeout_s=None)


def check_aime_inprocess(answer: str | int, response: str) -> float:
    """``check_aime(..., timeout_s=None)``: for ``map_with_timeout`` (which times it)."""
    return check_aime(answer, response, timeout_s=None)
