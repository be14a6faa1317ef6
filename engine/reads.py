"""Federated read-level analyses: COVERAGE per target, READS metrics, PILEUP allele counts.

Each is one round whose station results are sums over the station's selected samples, so the pooled
result is their sum: per target the bases and summed depth (mean depth), the bases at >= 10x, 20x,
30x, and the samples whose mean depth reaches each; the ``samtools flagstat`` counters and the MAPQ
histogram; read counts of each base (and deletions) at a position. Station functions here are pure:
the station's runner reads its tables (and, for PILEUP, its files) and hands them over as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.kernels.read_metrics import FLAGSTAT_FIELDS, THRESHOLDS
from better.engine.key_union import union_keys
from better.engine.protocol import Protocol, Result, Task, withheld_of
from better.engine.shared_rows import TARGET_COLUMNS

#: PILEUP's columns of read counts, in this order.
PILEUP_CODES = ("A", "C", "G", "T", "N", "DEL")


# -- station side ----------------------------------------------------------------------------------------
def coverage_station(
    targets: dict[str, np.ndarray], sample: np.ndarray, target: np.ndarray, sums: np.ndarray, include: np.ndarray
) -> Result:
    """Per target, sums over the included samples: samples, bases, summed depth, bases and samples at
    or above each threshold.

    ``sample``, ``target`` index the rows of ``sums`` = ``[bases, summed depth, bases >= T...]``; ``targets``
    holds the key columns (0-based, half-open) of the targets asked for, in order.
    """
    m = int(targets["start"].shape[0])
    keep = include[sample]
    t, v = target[keep], sums[keep]
    bases = np.bincount(t, weights=v[:, 0], minlength=m).astype(np.int64)
    depth = np.bincount(t, weights=v[:, 1], minlength=m).astype(np.int64)
    n_t = len(THRESHOLDS)
    bases_ge = np.stack([np.bincount(t, weights=v[:, 2 + h], minlength=m) for h in range(n_t)], axis=1).astype(np.int64)
    mean = v[:, 1] / np.maximum(v[:, 0], 1)
    samples_ge = np.stack(
        [np.bincount(t, weights=(mean >= th).astype(float), minlength=m) for th in THRESHOLDS], axis=1
    ).astype(np.int64)
    samples = np.bincount(t, minlength=m).astype(np.int64)
    return {
        **{f"key_{c}": targets[c] for c in TARGET_COLUMNS},
        "samples": samples,
        "bases": bases,
        "sum_depth": depth,
        "bases_ge": bases_ge,
        "samples_ge": samples_ge,
        "n": np.array(int(include.sum())),
    }


def reads_station(flagstat: np.ndarray, mapq: np.ndarray, include: np.ndarray) -> Result:
    """Sums over the included samples of the flagstat counters ``(samples, 2, fields)`` and of the MAPQ
    histograms ``(samples, 256)``."""
    return {
        "flagstat": flagstat[include].sum(axis=0).astype(np.int64),
        "mapq": mapq[include].sum(axis=0).astype(np.int64),
        "n": np.array(int(include.sum())),
    }


def pileup_station(counts: np.ndarray) -> Result:
    """Sums over samples of per-sample read counts ``(samples, positions, codes)``; ``carriers`` counts
    the samples with at least one read of each code (the station's policy checks it; it is not released)."""
    return {
        "counts": counts.sum(axis=0).astype(np.int64),
        "samples": (counts.sum(axis=2) > 0).sum(axis=0).astype(np.int64),
        "carriers": (counts > 0).sum(axis=0).astype(np.int64),
        "n": np.array(int(counts.shape[0])),
    }


# -- central side ----------------------------------------------------------------------------------------
@dataclass
class CoverageProtocol(Protocol):
    """One round: per-target sums, added over stations by target."""

    total: Result | None = None

    def next_task(self) -> Task | None:
        return None if self.total is not None else {"kind": "coverage"}

    def receive(self, results: list[Result]) -> None:
        al = union_keys([{c: r[f"key_{c}"] for c in TARGET_COLUMNS} for r in results], TARGET_COLUMNS)
        total: Result = {f"key_{c}": v for c, v in al.keys.items()}
        for name in ("samples", "bases", "sum_depth", "bases_ge", "samples_ge"):
            acc = np.zeros((al.n, *results[0][name].shape[1:]), dtype=np.int64)
            for r, idx in zip(results, al.index, strict=True):
                acc[idx] += r[name]
            total[name] = acc
        total["withheld"] = withheld_of(results, al)
        self.total = total
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        t = self.total
        hide = t["withheld"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out: dict[str, np.ndarray] = {
                "CHROM": t["key_chrom"],
                "START": t["key_start"] + 1,  # 1-based, inclusive, as positions are shown everywhere
                "END": t["key_end"],
                "NAME": t["key_name"],
                "SAMPLES": t["samples"].astype(float),
                "MEAN_DEPTH": t["sum_depth"] / t["bases"],
            }
            for h, th in enumerate(THRESHOLDS):
                out[f"FRAC_BASES_GE_{th}X"] = t["bases_ge"][:, h] / t["bases"]
            for h, th in enumerate(THRESHOLDS):
                out[f"FRAC_SAMPLES_GE_{th}X"] = t["samples_ge"][:, h] / t["samples"]
        for name in list(out)[4:]:
            out[name] = np.where(hide, np.nan, out[name])
        out["WITHHELD"] = hide
        return out


@dataclass
class ReadsProtocol(Protocol):
    """One round: the flagstat counters and the MAPQ histogram, added over stations."""

    total: Result | None = None

    def next_task(self) -> Task | None:
        return None if self.total is not None else {"kind": "reads"}

    def receive(self, results: list[Result]) -> None:
        self.total = {name: np.sum([r[name] for r in results], axis=0) for name in ("flagstat", "mapq", "n")}
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        passed = self.total["flagstat"][0]
        c = dict(zip(FLAGSTAT_FIELDS, passed.tolist(), strict=True))
        mapq = self.total["mapq"]
        mapped = max(int(mapq.sum()), 1)
        total = max(c["total"], 1)
        out = {"SAMPLES": int(self.total["n"]), **{f.upper(): c[f] for f in FLAGSTAT_FIELDS}}
        out["QCFAIL"] = int(self.total["flagstat"][1][0])
        out["MAPPED_PCT"] = 100.0 * c["mapped"] / total
        out["DUPLICATES_PCT"] = 100.0 * c["duplicates"] / total
        out["PROPERLY_PAIRED_PCT"] = 100.0 * c["properly_paired"] / max(c["paired"], 1)
        out["MEAN_MAPQ"] = float((np.arange(256) * mapq).sum() / mapped)
        out["MAPQ0_PCT"] = 100.0 * mapq[0] / mapped
        out["MAPQ_GE20_PCT"] = 100.0 * mapq[20:].sum() / mapped
        out["MAPQ_GE30_PCT"] = 100.0 * mapq[30:].sum() / mapped
        return {k: np.array([v]) for k, v in out.items()}


@dataclass
class PileupProtocol(Protocol):
    """One round at the positions asked for (1-based): read counts per base and deletions, added."""

    chrom: list[str]
    pos: list[int]
    min_base_quality: int = 13
    min_mapping_quality: int = 0
    total: Result | None = None
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def next_task(self) -> Task | None:
        if self.total is not None:
            return None
        return {
            "kind": "pileup",
            "key_chrom": np.array(self.chrom),
            "key_pos": np.array(self.pos, dtype=np.int64),
            "min_base_quality": np.array(self.min_base_quality),
            "min_mapping_quality": np.array(self.min_mapping_quality),
        }

    def receive(self, results: list[Result]) -> None:
        self.total = {name: np.sum([r[name] for r in results], axis=0) for name in ("counts", "samples")}
        self.withheld = np.any([np.asarray(r.get("withheld", False), dtype=bool) for r in results], axis=0)
        self.withheld = np.broadcast_to(self.withheld, (len(self.pos),)).copy()
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        hide = self.withheld
        counts = self.total["counts"].astype(float)
        out: dict[str, np.ndarray] = {
            "CHROM": np.array(self.chrom, dtype=object),
            "POS": np.array(self.pos, dtype=np.int64),
            "SAMPLES": np.where(hide, np.nan, self.total["samples"].astype(float)),
            "DEPTH": np.where(hide, np.nan, counts.sum(axis=1)),
        }
        for j, code in enumerate(PILEUP_CODES):
            out[code] = np.where(hide, np.nan, counts[:, j])
        out["WITHHELD"] = hide
        return out
