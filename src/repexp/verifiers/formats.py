r"""Did a response give its answer in the format its prompt asks for? (``format_ok``)

The prompts (config/README.md, "Prompt templates") ask every model for one answer format, and the
checkers read only that format (strict, as the verl recipe). A model that answers correctly in
another format scores 0, so the format-miss rate separates "wrong" from "unreadable": it is
recorded per response (the ``format_ok`` column of the score tables) and summarised per pool
(``format_miss`` in ``stc.csv``). It never changes a score.

==========================  =======================================================================
task                        ``format_ok`` iff the response ...
==========================  =======================================================================
math, dapo, aime, aime2024  has a balanced, non-empty last ``\boxed{}`` (or ``\fbox{}``): what the
                            checker reads (:func:`repexp.verifiers.latex.last_boxed`)
gsm8k, arith                has a number right after its last ``####``: what the strict checker
                            reads (:func:`repexp.verifiers.gsm8k.extract_hash_answer`); ``arith``'s
                            scorer also falls back to the last number, but its prompt asks for
                            ``####``
game24                      has a balanced, non-empty last ``\boxed{}``: the prompt asks for the
                            expression "within \boxed{}"; the checker also reads an ``answer:`` line
                            or the last line, so a miss here can still be scored correct
mbppplus                    has a fenced code block (```` ```python ````, ```` ```py ````,
                            ```` ```python3 ```` or a bare ```` ``` ````): what the prompt asks for
                            and :func:`repexp.sandbox.extract_code` takes (else the whole response
                            is run as code)
==========================  =======================================================================
"""

from __future__ import annotations

from repexp.verifiers.gsm8k import extract_hash_answer
from repexp.verifiers.latex import last_boxed

__all__ = ["FORMATS", "format_ok"]

#: the required format of each task, in words (the docs and the figure's caption)
FORMATS = {
    "math": "\\boxed{}",
    "dapo": "\\boxed{}",
    "aime": "\\boxed{}",
    "aime2024": "\\boxed{}",
    "game24": "\\boxed{}",
    "gsm8k": "#### <number>",
    "arith": "#### <number>",
    "mbppplus": "```python block",
}


def _boxed(response: str) -> bool:
    content = last_boxed(response)
    return content is not None and bool(content.strip())


def _code_block(response: str) -> bool:
    from repexp.sandbox import extract_code

    # extract_code returns the response itself when it has no python/plain fenced block; a block's
    # content never equals the whole response (the response also holds the fence line)
    return bool(response) and extract_code(response) != response


def format_ok(task: str, response: str) -> bool:
    """True iff ``response`` gives its answer in the format that ``task``'s prompt asks for."""
    if task not in FORMATS:
        raise ValueError(f"no answer format defined for task {task!r}; known: {', '.join(FORMATS)}")
    if not isinstance(response, str) or not response:
        return False
    if task in ("gsm8k", "arith"):
        return extract_hash_answer(response) is not None
    if task == "mbppplus":
        return _code_block(response)
    return _boxed(response)
