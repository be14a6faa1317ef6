"""The examples in docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import engine
import genomics
import query
import station_api

MODULES = sorted(
    m.name
    for pkg in (engine, genomics, query, station_api)
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
