"""The registry of analyses and their round kinds.

Each module here holds one analysis: its station half, its central state machine (a
:class:`~better.engine.protocol.Protocol`) and the declarations the rest of BETTER reads, ``ROUNDS``
(:class:`~better.engine.rounds.RoundKind`) and ``ANALYSES`` (:class:`~better.engine.rounds.Analysis`).
Adding an analysis is a new module and its line in :data:`MODULES` (or, in tests, :func:`register`).
"""

from __future__ import annotations

from types import ModuleType

from better.engine.analyses import counts, coverage, ld_prune, linear, logistic, pca, pileup, reads, sample_count
from better.engine.errors import InputError
from better.engine.rounds import Analysis, RoundKind

#: The analyses' modules, in the order stations list them.
MODULES: tuple[ModuleType, ...] = (sample_count, counts, linear, logistic, ld_prune, pca, coverage, reads, pileup)

_ROUNDS: dict[str, RoundKind] = {}
_ANALYSES: dict[str, Analysis] = {}


def register(module: ModuleType) -> None:
    """Add a module's round kinds and analyses to the registry (a name given twice is an error)."""
    kinds: tuple[RoundKind, ...] = getattr(module, "ROUNDS", ())
    analyses: tuple[Analysis, ...] = getattr(module, "ANALYSES", ())
    for kind in kinds:
        if kind.name in _ROUNDS and _ROUNDS[kind.name] is not kind:
            raise ValueError(f"round kind {kind.name!r} is declared twice")
    known = {*_ROUNDS, *(k.name for k in kinds)}
    for a in analyses:
        if a.name in _ANALYSES and _ANALYSES[a.name] is not a:
            raise ValueError(f"analysis {a.name!r} is declared twice")
        missing = [r for r in a.rounds if r not in known]
        if missing:
            raise ValueError(f"analysis {a.name!r} runs undeclared round kinds {missing}")
    _ROUNDS.update({k.name: k for k in kinds})
    _ANALYSES.update({a.name: a for a in analyses})


def unregister(module: ModuleType) -> None:
    """Take a module's round kinds and analyses out of the registry again (tests)."""
    for kind in getattr(module, "ROUNDS", ()):
        _ROUNDS.pop(kind.name, None)
    for a in getattr(module, "ANALYSES", ()):
        _ANALYSES.pop(a.name, None)


def round_kind(name: str) -> RoundKind:
    """The declared round kind ``name``; an unknown name is an :class:`InputError`."""
    try:
        return _ROUNDS[name]
    except KeyError:
        raise InputError(f"unknown round kind {name!r}; this station knows {', '.join(_ROUNDS)}") from None


def analysis(name: str) -> Analysis:
    """The declared analysis ``name``; an unknown name is an :class:`InputError`."""
    try:
        return _ANALYSES[name]
    except KeyError:
        raise InputError(f"unknown analysis {name!r}; this station knows {', '.join(_ANALYSES)}") from None


def judges_later_rounds(name: str) -> bool:
    """Some later round takes the row judgements of a ``name`` round (a Newton round, its score round's)."""
    return any(k.rules_from == name for k in _ROUNDS.values())


def round_kinds() -> tuple[str, ...]:
    """Every declared round kind's name."""
    return tuple(_ROUNDS)


def analyses() -> tuple[str, ...]:
    """Every declared analysis' name."""
    return tuple(_ANALYSES)


for _module in MODULES:
    register(_module)
