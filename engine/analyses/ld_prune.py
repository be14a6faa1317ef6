"""PRUNE: LD pruning as PLINK 2's ``--indep-pairwise``, from pooled pair sums.

For each pair of variants that can share a window (the next ``window - 1`` variants of the same
chromosome, or those within ``window`` kb), each station releases six integer sums over its people
called at both (``n``, ``Σx``, ``Σy``, ``Σx²``, ``Σy²``, ``Σxy`` with ``x = g - 1``,
:data:`~better.engine.kernels.ld.PAIR_SUMS`). Added over stations they give the pooled r² exactly
(PLINK 2 uses the people called at both, hardcalls, no imputation). The centre then prunes window by
window with PLINK's own greedy rule, so the kept set is PLINK's on the pooled file.

The order is that of the Debian ``plink2`` (v2.00a3.5) and PLINK 1.9, which PLINK 2 calls
``--indep-order 1``: in each window, the first variant of a pair with r² above the threshold is removed
if its minor allele is rarer, else the second; repeated until nothing changes. Monomorphic, all-het and
all-missing variants are removed on sight; a chromosome (or kb piece) with one variant keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.analyses.pca.station import selected
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.kernels.ld import PAIR_SUMS, pair_sums
from better.engine.protocol import Protocol
from better.engine.rounds import Analysis, Result, RoundKind, StateArray, StationData, Task

#: PLINK 2's relative slack on thresholds and frequency ties.
EPSILON = 2.0**-44
#: Most partners a variant may have (a window in kb over dense variants can reach far).
MAX_SPAN = 2000
#: Pairs per round: a masked round sends 16 bytes per number, 6 numbers a pair (about 24 MB).
PAIRS_PER_ROUND = 250_000


# -- station side ----------------------------------------------------------------------------------------
def pairs_station(task: Task, data: StationData) -> Result:
    """The pair sums ``(rows, span, 6)`` of the task's variants with their next ``span[i]`` variants, over
    this station's included people (a variant it lacks has everyone missing)."""
    span = np.asarray(task["span"], dtype=np.int64)
    if (
        np.any(span < 0)
        or np.any(np.arange(span.shape[0]) + span >= span.shape[0] + (span == 0))
        or (span.max(initial=0) > MAX_SPAN)
    ):
        raise InputError(f"task state: each span is 0 to {MAX_SPAN} and stays within the task's variants")
    if int(span.sum()) > PAIRS_PER_ROUND:
        raise InputError(f"task state: {int(span.sum())} pairs, over the {PAIRS_PER_ROUND} a round may take")
    packed, rows = selected(data, task)
    include = np.asarray(data.design.include, dtype=bool)
    n = include.shape[0]
    codes = np.full((int(np.asarray(task["key_pos"]).shape[0]), n), 3, dtype=np.int8)
    if rows.size:
        unpacked = (packed[:, np.arange(n) >> 2] >> (2 * (np.arange(n) & 3)).astype(np.uint8)) & 3
        codes[rows] = np.where(include, unpacked, 3)
    return {"pairs": pair_sums(codes, span)}


# -- central side ----------------------------------------------------------------------------------------
def spans(chrom: np.ndarray, pos: np.ndarray, window: int, kb: bool) -> np.ndarray:
    """Per variant (sorted by chromosome and position), how many later variants can share a window with it:
    the next ``window - 1`` of its chromosome, or (``kb``) those at most ``window`` bases on.

    >>> spans(np.array(["1", "1", "1", "2"]), np.array([10, 20, 5000, 1]), 3, False).tolist()
    [2, 1, 0, 0]
    >>> spans(np.array(["1", "1", "1", "2"]), np.array([10, 20, 5000, 1]), 1000, True).tolist()
    [1, 0, 0, 0]
    """
    m = chrom.shape[0]
    out = np.zeros(m, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, chrom[1:] != chrom[:-1]]) if m else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], m]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        idx = np.arange(a, b)
        if kb:
            last = np.searchsorted(pos[a:b], pos[a:b] + window, side="right") - 1 + a
        else:
            last = np.minimum(idx + window - 1, b - 1)
        out[a:b] = last - idx
    return out


def high_ld(sums: np.ndarray, r2: float) -> np.ndarray:
    """Per pair, r² above the threshold, as PLINK 2 decides it (exact integers, strict ``>``)."""
    n, sx, sy, sxx, syy, sxy = (sums[..., i].astype(np.float64) for i in range(len(PAIR_SUMS)))
    cov = sxy * n - sx * sy
    v1 = sxx * n - sx * sx
    v2 = syy * n - sy * sy
    return np.asarray(cov * cov > r2 * (1 + EPSILON) * v1 * v2)


def major_frequency(genotypes: np.ndarray) -> np.ndarray:
    """The major allele's frequency over called people (0.5 where nobody is called)."""
    called = genotypes.sum(axis=1)
    ref = np.where(called > 0, (2 * genotypes[:, 0] + genotypes[:, 1]) / np.maximum(2.0 * called, 1), 0.5)
    return np.maximum(ref, 1.0 - ref)


def uninformative(genotypes: np.ndarray) -> np.ndarray:
    """Monomorphic, all-het or all-missing variants, which PLINK removes on sight."""
    c0, c1, c2 = genotypes[:, 0], genotypes[:, 1], genotypes[:, 2]
    called = c0 + c1 + c2
    return np.asarray(((c0 == 0) & (c2 == 0)) | (c0 == called) | (c2 == called))


def subcontigs(chrom: np.ndarray, pos: np.ndarray, window: int, kb: bool) -> list[np.ndarray]:
    """The runs PLINK prunes separately: chromosomes, split (kb windows) where a gap exceeds the window."""
    m = chrom.shape[0]
    cut = np.r_[True, chrom[1:] != chrom[:-1]] if m else np.zeros(0, dtype=bool)
    if kb and m:
        cut[1:] |= (pos[1:] - window > pos[:-1]) & (pos[1:] >= window)
    starts = np.flatnonzero(cut)
    return [np.arange(a, b) for a, b in zip(starts.tolist(), np.r_[starts[1:], m].tolist(), strict=True)]


def prune(
    chrom: np.ndarray,
    pos: np.ndarray,
    genotypes: np.ndarray,
    hits: np.ndarray,
    window: int,
    step: int,
    kb: bool,
) -> np.ndarray:
    """PLINK's greedy pruning (``--indep-order 1``) from the pairs' verdicts; returns the removed mask.

    ``hits[i, d]``: variants ``i`` and ``i + 1 + d`` are in high LD. ``window`` in variants, or bases.
    """
    removed = np.zeros(chrom.shape[0], dtype=bool)
    majf = major_frequency(genotypes)
    dead = uninformative(genotypes)
    for run in subcontigs(chrom, pos, window, kb):
        if run.shape[0] > 1:
            _prune_run(run, pos, hits, window, step, kb, majf, dead, removed)
    return removed


def _prune_run(
    run: np.ndarray,
    pos: np.ndarray,
    hits: np.ndarray,
    window: int,
    step: int,
    kb: bool,
    majf: np.ndarray,
    dead: np.ndarray,
    removed: np.ndarray,
) -> None:
    size = run.shape[0]
    bp = pos[run]

    def hit(i: int, k: int) -> bool:  # local indices, i < k
        d = k - i - 1
        return d < hits.shape[1] and bool(hits[run[i], d])

    if kb:
        end = 1
        while end < size and bp[end] <= bp[0] + window:
            end += 1
    else:
        end = min(size, window)
    start, loaded = 0, 0
    in_window: list[int] = []
    first_unchecked: dict[int, int] = {}
    while True:
        while loaded < end:
            in_window.append(loaded)
            if dead[run[loaded]]:
                removed[run[loaded]] = True
            else:
                first_unchecked[loaded] = loaded + 1
            loaded += 1
        _settle(in_window, end, run, removed, first_unchecked, majf, hit)
        if end == size:
            return
        if kb:
            beyond = bp[end]
            start += 1
            while bp[start] < beyond - window:
                start += 1
            end += 1
            while end < size and bp[end] <= bp[start] + window:
                end += 1
        else:
            start += step
            end = min(start + window, size)
        in_window = [i for i in in_window if not removed[run[i]] and i >= start]


def _settle(in_window, end, run, removed, first_unchecked, majf, hit) -> None:  # type: ignore[no-untyped-def]
    """One window: remove one variant of each high-LD pair, the rarer, until no pair is left."""
    while True:
        before = int(sum(removed[run[i]] for i in in_window))
        for fp, i in enumerate(in_window):
            if removed[run[i]] or first_unchecked[i] >= end:
                continue
            later = [k for k in in_window[fp + 1 :] if not removed[run[k]] and k >= first_unchecked[i]]
            for q, k in enumerate(later):
                if hit(i, k):
                    if majf[run[i]] > majf[run[k]] * (1 + EPSILON):
                        removed[run[i]] = True
                    else:
                        removed[run[k]] = True
                        rest = [z for z in later[q + 1 :] if not removed[run[z]]]
                        first_unchecked[i] = rest[0] if rest else end
                    break
            else:
                first_unchecked[i] = end
        if int(sum(removed[run[i]] for i in in_window)) <= before:
            return


@dataclass
class PruneProtocol(Protocol):
    """Rounds of pair sums over chunks of the variants, then PLINK's greedy pruning. A variant some station
    withholds (1 to 4 copies of its minor allele, or of the people lacking a call, as the station judges
    them) leaves the candidates and the rounds start again without it.

    ``keys`` sorted by chromosome (in file order) and position; ``genotypes`` their pooled hom-ref, het and
    hom-alt counts; ``window`` in variants (or kb with ``kb``), ``step``, ``r2``.
    """

    keys: dict[str, np.ndarray]
    genotypes: np.ndarray
    window: int
    step: int
    r2: float
    kb: bool = False
    span: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 6), dtype=np.int64))
    chunks: list[tuple[int, int]] = field(default_factory=list)
    chunk: int = 0
    removed: np.ndarray | None = None
    #: Variants some station withheld (its rules): they leave the candidates, and pruning starts again.
    left_out: int = 0
    #: Where each candidate left stood among the variants given.
    origin: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.window_bases = int(self.window * 1000 * (1 + EPSILON)) if self.kb else self.window
        self.origin = np.arange(np.asarray(self.keys["pos"]).shape[0])
        self._start()

    def _start(self) -> None:
        pos = np.asarray(self.keys["pos"], dtype=np.int64)
        self.span = spans(np.asarray(self.keys["chrom"]), pos, self.window_bases, self.kb)
        if self.span.max(initial=0) > MAX_SPAN:
            raise InputError(
                f"a variant has {int(self.span.max())} others within the window, over the {MAX_SPAN} allowed: "
                "use a smaller window"
            )
        m = pos.shape[0]
        self.sums = np.zeros((m, int(self.span.max(initial=0)), len(PAIR_SUMS)), dtype=np.int64)
        self.chunks, self.chunk, a = [], 0, 0
        while a < m:  # chunks of rows whose pairs fit a round
            total = np.cumsum(self.span[a:])
            b = a + max(1, int(np.searchsorted(total, PAIRS_PER_ROUND, side="right")))
            self.chunks.append((a, min(b, m)))
            a = b

    def next_task(self) -> Task | None:
        if self.chunk >= len(self.chunks):
            return None
        a, b = self.chunks[self.chunk]
        last = max(b, max((i + int(self.span[i]) + 1 for i in range(a, b)), default=b))
        span = np.zeros(last - a, dtype=np.int64)
        span[: b - a] = self.span[a:b]
        return {"kind": "ld_pairs", **{f"key_{c}": self.keys[c][a:last] for c in KEY_COLUMNS}, "span": span}

    def receive(self, results: list[Result]) -> None:
        a, b = self.chunks[self.chunk]
        last = max(b, max((i + int(self.span[i]) + 1 for i in range(a, b)), default=b))
        width = int(self.span[a:b].max(initial=0))
        withheld = np.zeros(last - a, dtype=bool)
        for r in results:
            pairs = np.asarray(r["pairs"], dtype=np.int64)
            self.sums[a:b, :width] += pairs[: b - a, :width]
            if "withheld" in r:
                withheld |= np.asarray(r["withheld"], dtype=bool)
        self.rounds += 1
        self.chunk += 1
        if withheld.any():  # a candidate's pair sums are not all here: leave it out, and start again
            keep = np.ones(self.span.shape[0], dtype=bool)
            keep[a + np.flatnonzero(withheld)] = False
            self.left_out += int((~keep).sum())
            self.keys = {c: v[keep] for c, v in self.keys.items()}
            self.genotypes = self.genotypes[keep]
            self.origin = self.origin[keep]
            self._start()

    def result(self) -> dict[str, np.ndarray]:
        hits = high_ld(self.sums, self.r2)
        self.removed = prune(
            np.asarray(self.keys["chrom"]),
            np.asarray(self.keys["pos"], dtype=np.int64),
            self.genotypes,
            hits,
            self.window_bases,
            self.step,
            self.kb,
        )
        return {**self.keys, "PRUNE": np.where(self.removed, "out", "in").astype(object)}


ROUNDS = (
    RoundKind(
        "ld_pairs",
        pairs_station,
        state={
            **{f"key_{c}": StateArray(np.int64 if c == "pos" else str, ("rows",)) for c in KEY_COLUMNS},
            "span": StateArray(np.int64, ("rows",)),
        },
        scope="task",
        sealed="never",
        rules=("minor_allele_count", "missing_genotypes"),
        judged_groups=1,
        zeroed=("pairs",),
        pairs=("pairs",),
        rules_from="counts",
        hard_calls=True,
    ),
)
ANALYSES = (Analysis("ld_prune", ("variant_keys", "counts", "ld_pairs")),)
