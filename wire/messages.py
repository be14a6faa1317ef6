"""The task a coordinator sends a station, version 1: the request models both sides import.

A **task** is JSON (:class:`TaskRequest`): which dataset, analysis and round, the model (phenotype,
covariates, sample filter, regions, station adjustment), the round's state (named arrays,
:mod:`better.wire.arrays`, in base64) and, under secure aggregation, the round's ``secure`` block and a
sealed round's ``exchange`` step. Everything here may come from an attacker: every field is bounded, and
the request as a whole is checked for consistency against the round kinds' declarations.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from better.engine.analyses import analyses, analysis, round_kind, round_kinds


def _known_analysis(name: str) -> str:
    if name not in analyses():  # (the name sent is not repeated: errors are releases too)
        raise ValueError(f"unknown analysis; one of {', '.join(analyses())}")
    return name


def _known_kind(name: str) -> str:
    if name not in round_kinds():
        raise ValueError(f"unknown round kind; one of {', '.join(round_kinds())}")
    return name


#: An analysis a station may allow (:mod:`better.engine.analyses` declares them).
AnalysisName = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_known_analysis),
    Field(json_schema_extra=lambda schema: schema.update(enum=list(analyses()))),
]
#: A kind of round (:mod:`better.engine.analyses` declares them).
RoundKindName = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_known_kind),
    Field(json_schema_extra=lambda schema: schema.update(enum=list(round_kinds()))),
]

#: Sample-filter conditions and regions a task may carry (the query language says so before sending).
MAX_CONDITIONS = 32
MAX_REGIONS = 256

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]


class Condition(BaseModel):
    """One sample-filter condition on a phenotype column: ``column op value``."""

    model_config = ConfigDict(extra="forbid")

    column: Name
    op: Literal["=", "!=", "<", "<=", ">", ">=", "is_missing", "not_missing"]
    value: float | Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        needs_value = self.op not in ("is_missing", "not_missing")
        if needs_value and self.value is None:
            raise ValueError(f"condition on {self.column!r}: {self.op!r} needs a value")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"condition on {self.column!r}: the value must be a finite number")
        return self


class Adjust(BaseModel):
    """``ADJUST station``: this station's 0-based index among ``count`` stations."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, le=63)
    count: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _index_in_range(self) -> Adjust:
        if self.index >= self.count:
            raise ValueError(f"station index {self.index} is not below the station count {self.count}")
        return self


class Participant(BaseModel):
    """A station taking part in a securely aggregated round, with its key-agreement key."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    agreement_key: Annotated[str, StringConstraints(pattern=r"^x25519:[A-Za-z0-9+/]{43}=$")]


class Secure(BaseModel):
    """Secure aggregation of this round: the station masks its release (see :mod:`better.station_api.secure_agg`)."""

    model_config = ConfigDict(extra="forbid")

    session: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="the query's random session id (128 bits, hex)"
    )
    round: int = Field(ge=0, le=1_000_000, description="the round's number within the session, never reused")
    participants: list[Participant] = Field(min_length=2, max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> Secure:
        names = [p.name for p in self.participants]
        keys = [p.agreement_key for p in self.participants]
        if len(set(names)) != len(names) or len(set(keys)) != len(keys):
            raise ValueError("a participant (name or key) appears twice")
        return self


StationName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]


class Exchange(BaseModel):
    """A sealed round's step (see :mod:`better.station_api.sealed`).

    ``seal``: compute the round, keep the result, and return, for each other participant, a message
    only that station can open (masked counts for the totals the release is judged on). ``open``: the
    messages the other participants sealed to this station (by sender); the station sums the totals,
    decides, and releases what it kept. ``finish``: a step of the rows the stations finish themselves
    (:mod:`better.station_api.finishing`): first without messages (the station seals its sums), then with the
    others' messages of the step before, until the station releases those rows' results.
    """

    model_config = ConfigDict(extra="forbid")

    phase: Literal["seal", "open", "finish"]
    lock: bool = Field(False, description="seal holding the station's audit (a round run again for that)")
    test: Literal["wald", "score", "firth"] | None = Field(
        None, description="finish: the logistic test the finished rows get (the coordinator's protocol's)"
    )
    blobs: dict[StationName, Annotated[str, StringConstraints(max_length=128 << 20)]] = Field(
        default_factory=dict, max_length=64
    )


class TaskRequest(BaseModel):
    """One round of one analysis, as a station receives it."""

    model_config = ConfigDict(extra="forbid")

    wire_version: Literal[1] = Field(1, description="wire protocol version")
    dataset: Name
    analysis: AnalysisName
    kind: RoundKindName
    phenotype: Name | None = None
    covariates: list[Name] = Field(default_factory=list, max_length=64)
    binary: bool = False
    groups: Literal[1, 2] = 1
    where: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    regions: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_REGIONS
    )
    pass_only: bool = Field(False, description="use only records whose FILTER is PASS (or '.') at this station")
    adjust: Adjust | None = None
    state: str | None = Field(None, description="round state: an Arrow IPC stream, base64")
    label: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        None, description="the coordinator's name for the query this round belongs to (for the audit log)"
    )
    secure: Secure | None = Field(None, description="mask the release for secure aggregation")
    exchange: Exchange | None = Field(None, description="a sealed round's seal or opening (with secure)")

    @model_validator(mode="after")
    def _consistent(self) -> TaskRequest:
        kind = round_kind(self.kind)
        if self.kind not in analysis(self.analysis).rounds:
            raise ValueError(f"a {self.analysis} analysis has no {self.kind!r} round")
        if analysis(self.analysis).needs_phenotype and self.phenotype is None:
            raise ValueError(f"a {self.analysis} analysis needs a phenotype")
        if kind.case_control and not self.binary:
            raise ValueError(f"{self.kind} rounds need binary = true")
        if self.groups == 2 and (self.phenotype is None or not self.binary):
            raise ValueError("case/control counts (groups = 2) need a binary phenotype (binary = true)")
        if kind.state and self.state is None and not self._opening:
            raise ValueError(f"a {self.kind} round needs its state")
        if len(set(self.covariates)) != len(self.covariates):
            raise ValueError("a covariate is named twice")
        if kind.lists_keys and self.secure is not None:
            raise ValueError(f"the {self.kind} round lists keys in the clear; it takes no secure block")
        if self.exchange is not None:
            if self.secure is None:
                raise ValueError("a sealed round (exchange) needs secure aggregation (a secure block)")
            if kind.sealed == "never":
                raise ValueError(f"a {self.kind!r} round is not sealed")
            if self.exchange.phase == "open" and not self.exchange.blobs:
                raise ValueError("an opening carries the other stations' sealed messages")
            if self.exchange.phase == "seal" and self.exchange.blobs:
                raise ValueError("a seal carries no messages")
        return self

    @property
    def _opening(self) -> bool:
        """An opening or a finishing step: the station has the round's state from its seal."""
        return self.exchange is not None and self.exchange.phase != "seal"


def participants_of(spec: Secure) -> list[tuple[str, str]]:
    """``(name, agreement key)`` pairs of a request's ``secure`` block."""
    return [(p.name, p.agreement_key) for p in spec.participants]
