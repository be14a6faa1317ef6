"""The examples in docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import better.engine
import better.genomics
import better.query
import better.station_api

MODULES = sorted(
    m.name
    for pkg in (better.engine, better.genomics, better.query, better.station_api)
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
