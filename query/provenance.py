"""Read and check the signed manifests that come with a result (see ``better.station_api.signing``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from better.engine.errors import InputError
from better.station_api.signing import verify


def read_manifests(path: Path) -> list[dict[str, Any]]:
    """The manifests in a query result (JSON or Parquet) or in a job's ``provenance.json``."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            return list(json.loads(meta.get(b"better.provenance", b"[]")))
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a BETTER result ({exc})") from None
    manifests = doc.get("provenance") if isinstance(doc, dict) else doc
    if not isinstance(manifests, list):
        raise InputError(f"{path}: holds no provenance list")
    return manifests


def verify_manifests(manifests: list[dict[str, Any]], keys: dict[str, str | None]) -> tuple[list[str], int]:
    """Problems found (empty: all good) and the number of manifests checked.

    Every manifest must name a station of the federation, carry that station's valid signature (its key
    pinned in the federation file), and say it is that station's.
    """
    problems = []
    if not manifests:
        problems.append("the result carries no signed manifests")
    for i, entry in enumerate(manifests):
        station = str(entry.get("station", "?")) if isinstance(entry, dict) else "?"
        manifest, signature = (
            (entry.get("manifest"), entry.get("signature")) if isinstance(entry, dict) else (None, None)
        )
        if station not in keys:
            problems.append(f"manifest {i}: station {station!r} is not in the federation")
        elif not keys[station]:
            problems.append(f"manifest {i}: no public_key pinned for station {station} in the federation file")
        elif not isinstance(manifest, dict) or not isinstance(signature, str):
            problems.append(f"manifest {i} ({station}): missing or malformed")
        elif manifest.get("station") != station or not verify(str(keys[station]), manifest, signature):
            problems.append(f"manifest {i} ({station}, task {manifest.get('task')}): the signature does not match")
    problems.extend(missing_releases(manifests))
    return problems, len(manifests)


def missing_releases(manifests: list[dict[str, Any]]) -> list[str]:
    """Releases a result should carry but does not: every station of a masked round signs its part of that
    round (a round is named by its session and number), so a station whose manifest was taken out shows."""
    signed: dict[tuple[str, int, str], set[str]] = {}
    for entry in manifests:
        m = entry.get("manifest") if isinstance(entry, dict) else None
        if not isinstance(m, dict) or not isinstance(m.get("secure"), dict) or m.get("exchange") == "seal":
            continue  # a seal releases nothing, and one given back (another query held an audit) has no opening
        secure = m["secure"]
        key = (str(secure.get("session")), int(secure.get("round", -1)), str(m.get("exchange") or "release"))
        signed.setdefault(key, set()).add(str(m.get("station")))
        signed[key].update(f"?{p}" for p in secure.get("participants", []))  # who should have signed
    problems = []
    for (session, round_no, step), names in sorted(signed.items()):
        expected = {n[1:] for n in names if n.startswith("?")}
        present = {n for n in names if not n.startswith("?")}
        if expected - present:
            problems.append(
                f"masked round {round_no} ({step}) of session {session[:8]}: no manifest from "
                f"{', '.join(sorted(expected - present))}, which took part in it"
            )
    return problems
