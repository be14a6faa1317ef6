"""The read kernels against slow twins: flagstat counters by the rules samtools states, and depth from
a plain per-base array, for random reads in random chunks over random targets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from better.engine.kernels.read_metrics import (
    DEPTH_EXCLUDE,
    DUP,
    MUNMAP,
    OK,
    PAIRED,
    PROPER,
    QCFAIL,
    READ1,
    READ2,
    SECONDARY,
    SUPPLEMENTARY,
    THRESHOLDS,
    UNMAP,
    UNSORTED,
    accumulate,
    finish,
    new_state,
)

LENGTHS = np.array([3000, 500, 2000], dtype=np.int64)


def flagstat_twin(flags: np.ndarray, tids: np.ndarray, mtids: np.ndarray, mapqs: np.ndarray) -> np.ndarray:
    out = np.zeros((2, 16), dtype=np.int64)
    for f, t, mt, q in zip(flags.tolist(), tids.tolist(), mtids.tolist(), mapqs.tolist(), strict=True):
        w = 1 if f & QCFAIL else 0
        primary = not f & (SECONDARY | SUPPLEMENTARY)
        mapped = not f & UNMAP
        paired = primary and f & PAIRED
        both = paired and mapped and not f & MUNMAP
        rows = [
            True,
            primary,
            bool(f & SECONDARY),
            bool(f & SUPPLEMENTARY and not f & SECONDARY),
            bool(f & DUP),
            primary and f & DUP,
            mapped,
            primary and mapped,
            paired,
            paired and f & READ1,
            paired and f & READ2,
            paired and f & PROPER and mapped,
            both,
            paired and mapped and f & MUNMAP,
            both and mt != t,
            both and mt != t and q >= 5,
        ]
        out[w] += np.array([bool(r) for r in rows], dtype=np.int64)
    return out


@st.composite
def reads(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n = draw(st.integers(0, 300))
    tid = np.sort(rng.integers(0, 3, n)).astype(np.int32)
    pos = np.zeros(n, np.int32)
    for t in range(3):
        sel = tid == t
        pos[sel] = np.sort(rng.integers(0, LENGTHS[t] - 400, int(sel.sum())))
    unplaced = draw(st.integers(0, 3))
    tid = np.concatenate([tid, np.full(unplaced, -1, np.int32)])
    pos = np.concatenate([pos, np.full(unplaced, -1, np.int32)])
    n += unplaced
    flag = np.array([int(f) & 0xFFF for f in np.bitwise_or.reduce(
        rng.choice([0, PAIRED, PROPER, UNMAP, MUNMAP, READ1, READ2, SECONDARY, QCFAIL, DUP, SUPPLEMENTARY],
                   size=(n, 3)), axis=1)], dtype=np.uint16)  # fmt: skip
    flag[tid < 0] |= UNMAP
    mapq = rng.integers(0, 61, n).astype(np.uint8)
    mtid = rng.integers(-1, 3, n).astype(np.int32)
    ops: list[int] = []
    ends = np.zeros(n, np.int64)
    for i in range(n):
        for _ in range(int(rng.integers(1, 5))):
            op = int(rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 7, 8]))
            ops.append((int(rng.integers(1, 60)) << 4) | op)
        ends[i] = len(ops)
    return {"tid": tid, "pos": pos, "flag": flag, "mapq": mapq, "mtid": mtid, "cigar_end": ends,
            "cigar": np.array(ops, dtype=np.uint32), "chunk": draw(st.integers(1, 64)),
            "min_mapq": draw(st.sampled_from([0, 20])), "targets": draw(st.integers(1, 12)),
            "seed": draw(st.integers(0, 1000))}  # fmt: skip


def depth_twin(r: dict) -> list[np.ndarray]:
    depth = [np.zeros(length + 1000, np.int64) for length in LENGTHS]
    for i in range(len(r["tid"])):
        if r["tid"][i] < 0 or r["flag"][i] & DEPTH_EXCLUDE or r["mapq"][i] < r["min_mapq"]:
            continue
        p = int(r["pos"][i])
        for c in r["cigar"][(r["cigar_end"][i - 1] if i else 0) : r["cigar_end"][i]]:
            op, length = int(c) & 0xF, int(c) >> 4
            if op in (0, 7, 8):
                depth[r["tid"][i]][p : p + length] += 1
                p += length
            elif op in (2, 3):
                p += length
    return depth


def random_targets(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tid = np.sort(rng.integers(0, 3, k))
    starts = np.zeros(k, np.int64)
    ends = np.zeros(k, np.int64)
    for i in range(k):
        starts[i] = rng.integers(0, LENGTHS[tid[i]] - 1)
        ends[i] = min(starts[i] + rng.integers(1, 800), LENGTHS[tid[i]])
    order = np.lexsort((starts, tid))  # overlapping and nested targets included
    tid, starts, ends = tid[order], starts[order], ends[order]
    offsets = np.searchsorted(tid, np.arange(4)).astype(np.int64)
    return tid, starts, ends, offsets


@settings(max_examples=150, deadline=None)
@given(reads())
def test_accumulate__equals_the_twins_in_any_chunking(r: dict) -> None:
    rng = np.random.default_rng(r["seed"])
    t_tid, starts, ends, offsets = random_targets(rng, r["targets"])
    thresholds = np.array(THRESHOLDS, dtype=np.int64)
    state, ring, cursor = new_state(), np.zeros(1 << 12, np.int32), np.zeros(1, np.int64)
    flagstat, mapq_hist = np.zeros((2, 16), np.int64), np.zeros(256, np.int64)
    acc = np.zeros((len(starts), 1 + len(thresholds)), np.int64)
    n = len(r["tid"])
    for a in range(0, n, r["chunk"]):
        b = min(n, a + r["chunk"])
        first_op = r["cigar_end"][a - 1] if a else 0
        status = accumulate(
            b - a, r["tid"][a:b], r["pos"][a:b], r["flag"][a:b], r["mapq"][a:b], r["mtid"][a:b],
            r["cigar_end"][a:b] - first_op, r["cigar"][first_op:], r["min_mapq"], LENGTHS, starts, ends, offsets,
            thresholds, state, ring, cursor, flagstat, mapq_hist, acc,
        )  # fmt: skip
        assert status == OK
    finish(state, ring, LENGTHS, starts, ends, offsets, cursor, thresholds, acc)
    assert np.array_equal(flagstat, flagstat_twin(r["flag"], r["tid"], r["mtid"], r["mapq"]))
    depth = depth_twin(r)
    for j in range(len(starts)):
        d = depth[t_tid[j]][starts[j] : ends[j]]
        assert acc[j, 0] == d.sum()
        assert list(acc[j, 1:]) == [int((d >= t).sum()) for t in THRESHOLDS]
    primary_mapped = (r["flag"] & (SECONDARY | SUPPLEMENTARY | UNMAP | QCFAIL)) == 0
    assert np.array_equal(mapq_hist, np.bincount(r["mapq"][primary_mapped], minlength=256))
    assert not ring.any()  # every pending change consumed


def test_accumulate__reports_reads_out_of_order() -> None:
    tid = np.array([0, 0], np.int32)
    pos = np.array([100, 50], np.int32)
    args = (np.zeros(2, np.uint16), np.full(2, 60, np.uint8), tid, np.array([1, 2]), np.array([10 << 4] * 2, np.uint32))
    flag, mapq, mtid, cigar_end, cigar = args
    starts, ends, offsets = np.array([0]), np.array([10]), np.array([0, 1, 1, 1])
    status = accumulate(
        2, tid, pos, flag, mapq, mtid, cigar_end, cigar, 0, LENGTHS, starts, ends, offsets,
        np.array(THRESHOLDS), new_state(), np.zeros(1 << 12, np.int32), np.zeros(1, np.int64),
        np.zeros((2, 16), np.int64), np.zeros(256, np.int64), np.zeros((1, 4), np.int64),
    )  # fmt: skip
    assert status == UNSORTED
