"""Variants the stations finish themselves: their sums stay among the stations, only results leave.

A variant where 1 to ``min_cell_count - 1`` people of the audit group have no call cannot have its sums
released: PLINK drops those people from the variant's model, and the sums that drop them describe just
them. Under a pooled audit the stations can still give its exact result. After the sealed round's
opening each station keeps the sums of those rows (a :class:`Finishing`); in ``finish`` steps they seal
them to each other, each adds them up, runs the same analysis
(:class:`better.engine.analyses.linear.LinearProtocol`, or
:class:`better.engine.analyses.logistic.LogisticProtocol` with its Newton rounds, for which each station
computes its own sums at the betas it derived itself) and, when the analysis is done, releases only the final statistics
(:mod:`better.engine.finals`), masked. The station that sorts first puts them in; the others add zeros.

The coordinator relays the steps and learns the results, as for every other variant, and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from better.engine import finals
from better.engine.analyses import round_kind
from better.engine.analyses.linear import LinearProtocol
from better.engine.analyses.logistic import LogisticProtocol
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.filters import VariantFilter
from better.engine.protocol import GenotypeData, Protocol, execute
from better.engine.rounds import Finishing as FinishingSums
from better.station_api.runner import Prepared, block_source
from better.station_api.sealed import seal, unseal
from better.station_api.secure_agg import StationSecrets
from better.wire.arrays import encode_arrays
from better.wire.masking import context_digest, unmask_sum
from better.wire.messages import TaskRequest, participants_of

#: Most finish steps a logistic fit may take (Newton and Firth rounds, with room to spare).
MAX_STEPS = 200


@dataclass
class Finishing:
    """One sealed round's rows that the stations finish: their keys, this station's sums, the analysis."""

    kind: str
    prepared: Prepared
    request: TaskRequest
    keys: dict[str, np.ndarray]
    sums: dict[str, np.ndarray]
    user: str
    test: str = "wald"
    step: int = 0
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    protocol: Protocol | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(
        cls,
        kind: str,
        prepared: Prepared,
        request: TaskRequest,
        shared: dict[str, np.ndarray],
        rows: np.ndarray,
        result: dict[str, np.ndarray],
        user: str,
    ) -> Finishing:
        """The rows ``rows`` (of the round's shared rows) of a kept result."""
        spec = _finishing(kind)
        sums = {n: np.asarray(result[n])[rows] for n in spec.rows}
        sums.update({n: np.asarray(result[n]) for n in spec.totals})
        return cls(kind, prepared, request, {c: np.asarray(shared[c])[rows] for c in KEY_COLUMNS}, sums, user)

    def context(self, purpose: str) -> tuple[bytes, str, int, list[tuple[str, str]]]:
        spec = self.request.secure
        assert spec is not None
        participants = participants_of(spec)
        return context_digest(spec.session, spec.round, participants, purpose), spec.session, spec.round, participants


def finish_step(
    f: Finishing, blobs: dict[str, str], test: str | None, secrets: StationSecrets
) -> tuple[bytes, dict[str, Any]]:
    """One step: seal this station's sums (first step, or after a Newton task), or, with the peers' blobs,
    add up and go on; when the analysis is done, release the final statistics (masked)."""
    if f.step >= MAX_STEPS:
        raise InputError("this finishing ran out of steps; run the query again")
    if test is not None:
        f.test = test
    if f.step == 0:
        return _seal(f, f.sums, secrets)
    pooled = _pooled(f, blobs, secrets)
    if f.protocol is None:
        f.protocol = _start(f, pooled)
    else:
        f.protocol.receive([pooled])
    task = f.protocol.next_task()
    if task is None:
        return _release(f, secrets)
    local = execute(task, GenotypeData(f.prepared.design, block_source(f.prepared, None, None)))
    return _seal(f, {n: local[n] for n in _finishing(str(task["kind"])).rows}, secrets)


def _finishing(kind: str) -> FinishingSums:
    spec = round_kind(kind).finishing
    if spec is None:
        raise InputError(f"the stations do not finish the rows of a {kind} round")
    return spec


def _seal(f: Finishing, arrays: dict[str, np.ndarray], secrets: StationSecrets) -> tuple[bytes, dict[str, Any]]:
    context, session, round_no, participants = f.context(f"finish{f.step}")
    f.masked = secrets.mask(arrays, session, round_no, participants, f"finish{f.step}")
    blobs = seal(secrets, participants, context, {"step": f.step, "rows": len(f.keys["pos"])}, f.masked)
    f.step += 1
    names = sorted(blobs)
    payload = encode_arrays({"recipient": np.array(names), "blob": np.array([blobs[n] for n in names])}, len(names))
    return payload, {"kind": f.kind, "finish_step": f.step, "rows": len(f.keys["pos"])}


def _pooled(f: Finishing, blobs: dict[str, str], secrets: StationSecrets) -> dict[str, Any]:
    context, _, _, participants = f.context(f"finish{f.step - 1}")
    payloads, names = [f.masked], [secrets.name]
    for name, key in participants:
        if name == secrets.name:
            continue
        if name not in blobs:
            raise InputError(f"the finishing step lacks the sealed sums of station {name}")
        header, arrays = unseal(secrets, name, key, context, blobs[name])
        if header.get("step") != f.step - 1:
            raise InputError(f"station {name} sealed step {header.get('step')}, not {f.step - 1}")
        payloads.append(arrays)
        names.append(name)
    pooled: dict[str, Any] = dict(unmask_sum(payloads, names))
    if f.protocol is None:  # the round's own rows; a Newton step's rows are the protocol's active ones
        pooled.update({f"key_{c}": v for c, v in f.keys.items()})
    return pooled


def _start(f: Finishing, pooled: dict[str, Any]) -> Protocol:
    """The analysis for the finished rows, fed the pooled sums of the round they come from."""
    if _finishing(f.kind).model == "linear":
        proto: Protocol = LinearProtocol()
    else:
        beta = np.asarray(f.prepared.task["beta"], dtype=float)
        proto = LogisticProtocol(k=beta.shape[0], test=f.test, beta_null=beta, variant_filter=VariantFilter())
        proto.phase = "score"
    proto.receive([pooled])
    return proto


def _release(f: Finishing, secrets: StationSecrets) -> tuple[bytes, dict[str, Any]]:
    assert f.protocol is not None
    model = _finishing(f.kind).model
    result = f.protocol.result()
    pooled_counts = _filter_counts(f)
    encoded = finals.encode(model, result, pooled_counts)
    _, session, round_no, participants = f.context("release")
    first = min(n for n, _ in participants)
    if secrets.name != first:  # one station puts the results in, the others add zeros
        encoded = {n: np.zeros_like(v) for n, v in encoded.items()}
    masked = secrets.mask(encoded, session, round_no, participants, f"finish{f.step}-release")
    return encode_arrays(masked, len(f.keys["pos"]), compress=False), {
        "kind": f.kind,
        "finished": len(f.keys["pos"]),
        "finish_steps": f.step,
    }


def _filter_counts(f: Finishing) -> dict[str, np.ndarray]:
    """ALT alleles, called and missing samples of the finished rows, from the pooled sums."""
    proto = f.protocol
    if isinstance(proto, LinearProtocol):
        assert proto.pooled is not None
        p = proto.pooled
        return {"ALT_CT": np.rint(p.cg[:, 0]), "CALLED_CT": p.n - p.n_miss, "MISSING_CT": p.n_miss}
    assert isinstance(proto, LogisticProtocol)
    c = proto.counts.sum(axis=1)  # (rows, (called, ALT alleles, missing))
    return {"ALT_CT": c[:, 1], "CALLED_CT": c[:, 0], "MISSING_CT": c[:, 2]}
