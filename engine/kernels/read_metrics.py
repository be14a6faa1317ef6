"""Read-level kernels: BAM records from decompressed bytes, and per-sample read metrics and depth.

Two stages, both single passes over coordinate-sorted reads in chunks of bounded size:

1. :func:`parse_records` walks decompressed BAM bytes and writes each record's core fields (reference,
   position, flag, MAPQ, mate reference) and its CIGAR operations into flat arrays. CRAM files, which
   only htslib decodes, fill the same arrays from pysam.
2. :func:`accumulate` takes those arrays and adds to the sample's running state: ``samtools flagstat``'s
   counters, a MAPQ histogram, and per-base depth swept left to right through a ring buffer of depth
   changes, so memory is bounded by the longest read's reference span, not by the genome. Each base's
   depth is added to the targets that contain it (sum of depth and bases at >= 10x, 20x, 30x).

Depth follows ``samtools depth -a``: reads with any of the flags UNMAP, SECONDARY, QCFAIL, DUP are left
out, aligned bases (CIGAR M, =, X) count, deletions and skips do not, overlapping mates both count.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit

#: ``samtools flagstat`` counters, in this order, for QC-passed (row 0) and QC-failed (row 1) reads.
FLAGSTAT_FIELDS = (
    "total",
    "primary",
    "secondary",
    "supplementary",
    "duplicates",
    "primary_duplicates",
    "mapped",
    "primary_mapped",
    "paired",
    "read1",
    "read2",
    "properly_paired",
    "with_mate_mapped",
    "singletons",
    "mate_on_other_chrom",
    "mate_on_other_chrom_mapq5",
)
THRESHOLDS = (10, 20, 30)

PAIRED, PROPER, UNMAP, MUNMAP, READ1, READ2, SECONDARY, QCFAIL, DUP, SUPPLEMENTARY = (
    0x1,
    0x2,
    0x4,
    0x8,
    0x40,
    0x80,
    0x100,
    0x200,
    0x400,
    0x800,
)
#: Reads that do not count towards depth (samtools depth and bedcov's default filter).
DEPTH_EXCLUDE = UNMAP | SECONDARY | QCFAIL | DUP

# Status codes of the kernels (0 is fine); the caller turns them into messages.
OK, TRUNCATED, UNSORTED, SPAN_TOO_LONG, CIGAR_IN_TAG, BAD_RECORD = 0, 1, 2, 3, 4, 5


@jit
def _u32(buf: np.ndarray, i: int) -> np.uint32:
    """The little-endian unsigned 32-bit integer at ``buf[i:i + 4]``."""
    return (
        np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << 8) | (np.uint32(buf[i + 2]) << 16) | (np.uint32(buf[i + 3]) << 24)
    )


@jit
def parse_records(
    buf: np.ndarray,
    start: int,
    end: int,
    tid: np.ndarray,
    pos: np.ndarray,
    flag: np.ndarray,
    mapq: np.ndarray,
    mtid: np.ndarray,
    cigar_end: np.ndarray,
    cigar: np.ndarray,
) -> tuple[int, int, int, int]:
    """Parse whole records from ``buf[start:end]`` into the arrays (as many as fit).

    Returns ``(records, cigar ops, offset after the last whole record, status)``; ``cigar_end[i]`` is
    the end of record ``i``'s operations in ``cigar``. A record cut by ``end`` is left for the next call.
    """
    n = 0
    n_ops = 0
    off = start
    cap = tid.shape[0]
    cap_ops = cigar.shape[0]
    while n < cap and off + 4 <= end:
        size = int(_u32(buf, off))
        if size < 32 or size > (1 << 28):
            return n, n_ops, off, BAD_RECORD
        if off + 4 + size > end:
            break
        b = off + 4
        ref = np.int32(_u32(buf, b))
        p = np.int32(_u32(buf, b + 4))
        l_name = int(buf[b + 8])
        q = buf[b + 9]
        k = int(buf[b + 12]) | (int(buf[b + 13]) << 8)
        f = np.uint16(np.uint16(buf[b + 14]) | (np.uint16(buf[b + 15]) << 8))
        l_seq = int(_u32(buf, b + 16))
        mref = np.int32(_u32(buf, b + 20))
        c0 = b + 32 + l_name
        if c0 + 4 * k > off + 4 + size:
            return n, n_ops, off, BAD_RECORD
        if n_ops + k > cap_ops:
            break
        for j in range(k):
            cigar[n_ops + j] = _u32(buf, c0 + 4 * j)
        if k == 2 and (cigar[n_ops] & 0xF) == 4 and (cigar[n_ops] >> 4) == l_seq and (cigar[n_ops + 1] & 0xF) == 3:
            return n, n_ops, off, CIGAR_IN_TAG  # the real CIGAR is in the CG tag (over 65535 operations)
        n_ops += k
        tid[n] = ref
        pos[n] = p
        flag[n] = f
        mapq[n] = q
        mtid[n] = mref
        cigar_end[n] = n_ops
        n += 1
        off += 4 + size
    return n, n_ops, off, OK


@jit
def _emit(
    q: int,
    depth: int,
    starts: np.ndarray,
    ends: np.ndarray,
    first: int,
    last: int,
    cursor: np.ndarray,
    thresholds: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Add the depth at position ``q`` to the targets ``first..last-1`` (this contig's) that contain it."""
    t = cursor[0]
    while t < last and ends[t] <= q:
        t += 1
    cursor[0] = t
    j = t
    while j < last and starts[j] <= q:
        if q < ends[j]:
            acc[j, 0] += depth
            for h in range(thresholds.shape[0]):
                if depth >= thresholds[h]:
                    acc[j, 1 + h] += 1
        j += 1


@jit
def _sweep_to(
    stop: int,
    state: np.ndarray,
    ring: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    target_offsets: np.ndarray,
    cursor: np.ndarray,
    thresholds: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Finish every position before ``stop`` on the current contig: its depth can no longer change."""
    contig = state[0]
    done = state[1]
    run = state[2]
    max_end = state[3]
    mask = ring.shape[0] - 1
    first = target_offsets[contig]
    last = target_offsets[contig + 1]
    q = done
    while q < stop:
        if q > max_end:  # every read so far has ended (and its last change is consumed): depth 0 to the next
            run = 0
            q = stop
            break
        run += ring[q & mask]
        ring[q & mask] = 0
        if run > 0 and first < last:
            _emit(q, run, starts, ends, first, last, cursor, thresholds, acc)
        q += 1
    state[1] = q
    state[2] = run


@jit
def accumulate(
    n: int,
    tid: np.ndarray,
    pos: np.ndarray,
    flag: np.ndarray,
    mapq: np.ndarray,
    mtid: np.ndarray,
    cigar_end: np.ndarray,
    cigar: np.ndarray,
    min_mapq: int,
    contig_lengths: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    target_offsets: np.ndarray,
    thresholds: np.ndarray,
    state: np.ndarray,
    ring: np.ndarray,
    cursor: np.ndarray,
    flagstat: np.ndarray,
    mapq_hist: np.ndarray,
    acc: np.ndarray,
) -> int:
    """Add records ``0..n-1`` to a sample's metrics; returns a status code.

    ``state`` is ``[contig, next position to finish, running depth, furthest end, last contig seen,
    last position seen, unplaced reads seen]`` (start with :func:`new_state`); ``ring`` holds pending depth changes
    (a power-of-two length longer than any read's reference span); targets of contig ``c`` are
    ``starts/ends[target_offsets[c]:target_offsets[c + 1]]``, sorted by start (half-open, 0-based);
    ``acc[t]`` is ``[sum of depth, bases >= thresholds[0], ...]``. Call :func:`finish` after the last
    chunk.
    """
    mask = ring.shape[0] - 1
    for i in range(n):
        f = np.int64(flag[i])
        w = 1 if f & QCFAIL else 0
        flagstat[w, 0] += 1
        if f & SECONDARY:
            flagstat[w, 2] += 1
        elif f & SUPPLEMENTARY:
            flagstat[w, 3] += 1
        else:
            flagstat[w, 1] += 1
            if f & PAIRED:
                flagstat[w, 8] += 1
                if (f & PROPER) and not (f & UNMAP):
                    flagstat[w, 11] += 1
                if f & READ1:
                    flagstat[w, 9] += 1
                if f & READ2:
                    flagstat[w, 10] += 1
                if (f & MUNMAP) and not (f & UNMAP):
                    flagstat[w, 13] += 1
                if not (f & UNMAP) and not (f & MUNMAP):
                    flagstat[w, 12] += 1
                    if mtid[i] != tid[i]:
                        flagstat[w, 14] += 1
                        if mapq[i] >= 5:
                            flagstat[w, 15] += 1
            if not (f & UNMAP):
                flagstat[w, 7] += 1
                if w == 0:
                    mapq_hist[mapq[i]] += 1
            if f & DUP:
                flagstat[w, 5] += 1
        if not (f & UNMAP):
            flagstat[w, 6] += 1
        if f & DUP:
            flagstat[w, 4] += 1
        # coordinate order: contigs ascending, positions ascending within one, unplaced reads (-1) last
        t = int(tid[i])
        p = int(pos[i])
        if t < 0:
            state[6] = 1
            continue
        if state[6] == 1 or t < state[4] or (t == state[4] and p < state[5]):
            return UNSORTED
        state[4] = t
        state[5] = p
        if (f & DEPTH_EXCLUDE) or mapq[i] < min_mapq:
            continue
        if t != state[0]:
            finish(state, ring, contig_lengths, starts, ends, target_offsets, cursor, thresholds, acc)
            state[0] = t
            state[1] = 0
            state[2] = 0
            state[3] = 0
            cursor[0] = target_offsets[t]
        _sweep_to(p, state, ring, starts, ends, target_offsets, cursor, thresholds, acc)
        r = p
        c_start = cigar_end[i - 1] if i > 0 else 0
        for j in range(c_start, cigar_end[i]):
            op = cigar[j] & 0xF
            length = int(cigar[j] >> 4)
            if op == 0 or op == 7 or op == 8:  # M, =, X: aligned bases
                if r + length - state[1] > ring.shape[0]:
                    return SPAN_TOO_LONG
                ring[r & mask] += 1
                ring[(r + length) & mask] -= 1
                r += length
                if r > state[3]:
                    state[3] = r
            elif op == 2 or op == 3:  # D, N: reference without a base
                r += length
    return OK


@jit
def finish(
    state: np.ndarray,
    ring: np.ndarray,
    contig_lengths: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    target_offsets: np.ndarray,
    cursor: np.ndarray,
    thresholds: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Finish the current contig through its end and every pending depth change (the ring is then empty):
    at a change of contig, and after a sample's last chunk."""
    if state[0] >= 0:
        stop = max(np.int64(contig_lengths[state[0]]), state[3] + 1)
        _sweep_to(stop, state, ring, starts, ends, target_offsets, cursor, thresholds, acc)


def new_state() -> np.ndarray:
    """The ``state`` of :func:`accumulate` before a sample's first read."""
    return np.array([-1, 0, 0, 0, -1, -1, 0], dtype=np.int64)
