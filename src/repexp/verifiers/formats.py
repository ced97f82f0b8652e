r"""Did a response give its answer in the format its prompt asks for? (``format_ok``)

The prompts (config/README.md, "Prompt templates") ask every model for one answer format, and the
checkers read only that format (strict, as the verl recipe). A model that answers correctly in
another format scores 0, so the format-miss rate separates "wrong" from "unreadable": it is
recorded per response (the ``format_ok`` column of the score tables) and summarised per pool
(``format_miss`` in ``stc.csv``). It never changes a score. Each task names its check in its record
(``format_ok`` of :data:`repexp.tasks.TASKS`); the table below is the built-in tasks'.

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

from collections.abc import Mapping

from repexp.verifiers.gsm8k import extract_hash_answer
from repexp.verifiers.latex import last_boxed

__all__ = ["FORMATS", "boxed_ok", "code_block_ok", "format_ok", "hash_ok"]


def boxed_ok(response: str) -> bool:
    """A balanced, non-empty last ``\\boxed{}`` (or ``\\fbox{}``)."""
    content = last_boxed(response)
    return content is not None and bool(content.strip())


def hash_ok(response: str) -> bool:
    """A number right after the last ``####``."""
    return extract_hash_answer(response) is not None


def code_block_ok(response: str) -> bool:
    """A fenced code block (what :func:`repexp.sandbox.extract_code` takes)."""
    from repexp.sandbox import extract_code

    # extract_code returns the response itself when it has no python/plain fenced block; a block's
    # content never equals the whole response (the response also holds the fence line)
    return bool(response) and extract_code(response) != response


class _TaskFormats(Mapping):
    """Task name -> the required format in words (each task record's ``answer_format``), read
    from :data:`repexp.tasks.TASKS` when asked (the table imports this module)."""

    def _tasks(self):
        from repexp.tasks import TASKS

        return TASKS

    def __getitem__(self, task: str) -> str:
        return self._tasks()[task].answer_format

    def __iter__(self):
        return iter(self._tasks())

    def __len__(self) -> int:
        return len(self._tasks())


#: the required format of each task, in words (the docs and the figure's caption)
FORMATS: Mapping[str, str] = _TaskFormats()


def format_ok(task: str, response: str) -> bool:
    """True iff ``response`` gives its answer in the format that ``task``'s prompt asks for
    (the task's ``format_ok`` in :data:`repexp.tasks.TASKS`)."""
    from repexp.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"no answer format defined for task {task!r}; known: {', '.join(TASKS)}")
    if not isinstance(response, str) or not response:
        return False
    return TASKS[task].format_ok(response)
