"""The examples in docstrings run and hold, and stay: a module whose examples vanish fails."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The modules whose docstrings hold examples that run. A module listed here whose examples vanish fails
#: ``test_docstring_examples``; a module with examples not listed here fails ``test_the_list_is_complete``.
WITH_EXAMPLES = (
    "better.engine.analyses.ld_prune",
    "better.engine.analyses.linear",
    "better.engine.analyses.logistic.station",
    "better.engine.analyses.pca.centre",
    "better.engine.design",
    "better.engine.filters",
    "better.engine.finals",
    "better.engine.fixedpoint",
    "better.engine.isolation",
    "better.engine.kernels.counts",
    "better.engine.kernels.ld",
    "better.engine.kernels.standardized",
    "better.engine.key_union",
    "better.engine.pieces",
    "better.engine.shared_rows",
    "better.engine.stats",
    "better.genomics.allele_query",
    "better.genomics.bgen",
    "better.genomics.checksums",
    "better.genomics.dosage",
    "better.genomics.packing",
    "better.genomics.paths",
    "better.genomics.phenotypes",
    "better.genomics.plink_files",
    "better.genomics.regions",
    "better.genomics.schema",
    "better.genomics.selection",
    "better.genomics.synth_dosage",
    "better.genomics.synth_store",
    "better.genomics.tsv",
    "better.genomics.vcf_batches",
    "better.genomics.vcf_cyvcf2",
    "better.genomics.vcf_dosage",
    "better.genomics.vcf_header",
    "better.genomics.vcf_numba",
    "better.jobs.report",
    "better.query.output",
    "better.query.parser",
    "better.query.withholding",
    "better.station_api.beacon.answers",
    "better.station_api.policy",
    "better.station_api.tomlfile",
    "better.wire.envelope",
    "better.wire.signed_requests",
)


def all_modules() -> list[str]:
    """Every module of every installed package: the packages are pyproject's ``package-dir`` (a new one is
    found without editing this file; tests/test_packaging.py checks that every folder is listed there)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    names = set()
    for top in setup["package-dir"]:
        pkg = importlib.import_module(top)
        names |= {top, *(m.name for m in pkgutil.walk_packages(pkg.__path__, top + "."))}
    return sorted(names)


def examples_in(name: str) -> int:
    """The examples doctest would run (``# doctest: +SKIP`` ones are not)."""
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    return sum(not ex.options.get(doctest.SKIP) for t in tests for ex in t.examples)


FOUND = [name for name in all_modules() if examples_in(name)]


def test_the_list_is_complete() -> None:
    assert len(all_modules()) > 50
    assert sorted(FOUND) == sorted(WITH_EXAMPLES), "update WITH_EXAMPLES to the modules that have examples"


# The listed modules and any found with examples: a new module's examples run before it is listed.
@pytest.mark.parametrize("name", sorted({*WITH_EXAMPLES, *FOUND}))
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples any more"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
