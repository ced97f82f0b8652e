"""The examples in the package's docstrings run and give what they show (every module of
``src/repexp``; the paper's equations are illustrated there)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import repexp

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(repexp.__path__, "repexp.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
