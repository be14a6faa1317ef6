"""Secure aggregation in-process: the station and coordinator steps of a secure round, without HTTP."""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from better.engine.analyses import round_kind
from better.engine.design import KEY_COLUMNS, BlockSource, Design, concat_keys
from better.engine.key_union import union_keys
from better.engine.protocol import GenotypeData, Protocol, execute
from better.engine.shared_rows import conform
from better.station_api.secure_agg import StationSecrets
from better.wire.masking import unmask_sum


def station_secrets(n: int) -> list[StationSecrets]:
    return [StationSecrets(f"s{i}", X25519PrivateKey.generate()) for i in range(n)]


def run_secure_local(protocol: Protocol, stations: list[tuple[Design, BlockSource]]) -> dict[str, np.ndarray]:
    """:func:`better.engine.protocol.run_local`, but every release is laid on the union of variants, masked,
    and only the sum of the masked releases reaches the protocol."""
    keys = station_secrets(len(stations))
    participants = [(s.name, s.public_text) for s in keys]
    session = secrets.token_hex(16)
    own = [concat_keys([b.keys for b in blocks(None)]) for _, blocks in stations]
    shared = union_keys([{c: k[c] for c in KEY_COLUMNS} for k in own]).keys
    round_no = 0
    while (task := protocol.next_task()) is not None:
        masked = []
        spec = round_kind(task["kind"]).shared
        for (design, blocks), mine in zip(stations, keys, strict=True):
            result = execute(task, GenotypeData(design, blocks))
            if spec is not None:
                result = conform(spec, result, shared)
            masked.append(mine.mask(result, session, round_no, participants))
        round_no += 1
        total = unmask_sum(masked, [s.name for s in keys])
        if spec is not None:
            total.update({f"key_{c}": shared[c] for c in KEY_COLUMNS})
        protocol.receive([total])
    return protocol.result()
