"""FREQ, HWE and case/control tests: one round of genotype counts per variant, added over stations.

With each variant's genotype (hard-call) counts, a station sends its ALT dosage sums: sum, sum of squares
and samples with a dosage, per group. For hard calls they follow from the counts; for a dataset ingested
with dosages they are PLINK 2's dosage-based frequencies (``ALT_FREQS``, ``OBS_CT``, ``MACH_R2``), while
HWE keeps to the hard calls, as ``plink2 --hardy`` does.

The ``variant_keys`` round lists each station's variants in the clear (the variant list, as FREQ
results have always shown it): secure aggregation lays every station's per-variant arrays on their
union, and a variant filter on pooled counts needs them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from better.engine.design import KEY_COLUMNS, Block, Design, concat_keys
from better.engine.filters import VariantFilter
from better.engine.kernels.counts import dosage_sums, genotype_counts
from better.engine.key_union import KeyUnion, union_keys
from better.engine.pieces import whole
from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, SharedRows, Split, StationData, Task
from better.engine.stats import allelic_chi2, genotypic_chi2, hwe_exact, log10_p_chi2, mach_r2, trend_chi2


# -- station side ----------------------------------------------------------------------------------------
def counts_station(task: Task, data: StationData) -> Result:
    """Genotype counts ``(variants, groups, 4)`` of the included samples, in one group or as controls and
    cases (``task["groups"]``), with the variants' keys and the group sizes."""
    return _counts_station(data.design, data.blocks(None), int(task["groups"]))


def _counts_station(design: Design, blocks: Iterable[Block], groups: int) -> Result:
    group = design.groups(groups)
    key_parts = []
    counts = []
    sums: list[tuple[np.ndarray, ...]] = []
    nearest = []
    for b in blocks:
        key_parts.append(b.keys)
        packed = np.ascontiguousarray(b.packed)
        counts.append(genotype_counts(packed, group, groups))
        if b.dosages is None:  # the dosages are the calls: their sums follow from the counts
            c = counts[-1]
            nearest.append(c)
            sums.append((c[:, :, 1] + 2.0 * c[:, :, 2], c[:, :, 1] + 4.0 * c[:, :, 2], c[:, :, :3].sum(axis=2)))
        else:
            nearest.append(genotype_counts(packed, group, groups, b.dosages))
            sums.append(dosage_sums(packed, b.dosages, group, groups))
    out = {f"key_{c}": v for c, v in concat_keys(key_parts).items()}
    out["counts"] = np.concatenate(counts) if counts else np.zeros((0, groups, 4), dtype=np.int64)
    out["dosage_people"] = np.concatenate(nearest) if nearest else np.zeros((0, groups, 4), dtype=np.int64)
    for i, name in enumerate(DOSAGE_SUMS):
        empty = np.zeros((0, groups), dtype=np.int64 if name == "dose_called" else np.float64)
        out[name] = np.concatenate([s[i] for s in sums]) if sums else empty
    out["group_size"] = np.bincount(group[group >= 0], minlength=groups).astype(np.int64)
    return out


#: The dosage sums of the counts round, each ``(variants, groups)``: ALT dosage sum, sum of squares, and
#: samples with a dosage.
DOSAGE_SUMS = ("dose_alt", "dose_squares", "dose_called")


def variant_keys_station(task: Task, data: StationData) -> Result:
    """The station's variants in the task's regions, as key columns."""
    return {f"key_{c}": v for c, v in data.variant_keys().items()}


def counts_people(result: Result) -> np.ndarray:
    """The people behind each variant's counts, in two views side by side ``(rows, groups, 8)``: the
    genotype counts themselves, then the genotypes nearest the dosages that the dosage sums add up
    (``dosage_people``, kept at the station; the same counts for hard calls). A row is withheld if either
    view calls for it (:func:`better.station_api.policy.withheld_rows`)."""
    return np.concatenate(
        [np.asarray(result["counts"], dtype=np.int64), np.asarray(result["dosage_people"], dtype=np.int64)], axis=-1
    )


def counts_calls(result: Result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples with and without a dosage (a call) and the ALT dosage (allele count) per variant."""
    called = np.rint(np.asarray(result["dose_called"]).sum(axis=1)).astype(np.int64)
    everyone = np.asarray(result["counts"]).sum(axis=(1, 2))
    return called, everyone - called, np.rint(np.asarray(result["dose_alt"]).sum(axis=1)).astype(np.int64)


# -- central side ----------------------------------------------------------------------------------------
def station_keys(result: Result) -> dict[str, np.ndarray]:
    return {c: result[f"key_{c}"] for c in KEY_COLUMNS}


def pooled_summary(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """ALT allele count, called and missing sample counts and (from genotype counts only) genotype counts
    ``(m, 3)`` from pooled ``(m, groups, 4)`` genotype or ``(m, groups, 3)`` allele counts: what
    :meth:`better.engine.filters.VariantFilter.mask` takes."""
    c = counts.sum(axis=1)
    if counts.shape[2] == 3:  # allele counts: called, ALT alleles, missing
        return c[:, 1], c[:, 0], c[:, 2], None
    return c[:, 1] + 2 * c[:, 2], c[:, :3].sum(axis=1), c[:, 3], c[:, :3]


def withheld_of(results: list[Result], al: KeyUnion) -> np.ndarray:
    """Per pooled variant: some station withheld its statistics (a ``withheld`` array in its result)."""
    out = np.zeros(al.n, dtype=bool)
    for r, idx in zip(results, al.index, strict=True):
        if "withheld" in r:
            out[idx] |= np.asarray(r["withheld"], dtype=bool)
    return out


def combine_counts(
    results: list[Result], al: KeyUnion | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pooled keys, counts and the withheld mask; a variant a station lacks is missing there.

    Counts are ``(variants, groups, codes)`` with "missing" the last code: genotype counts (4 codes) or
    the allele counts of the logistic score round (3, float: ALT dosage sums). ``al`` is computed unless
    given.
    """
    al = al or union_keys([station_keys(r) for r in results])
    groups, codes = results[0]["counts"].shape[1:]
    total = np.zeros((al.n, groups, codes), dtype=np.result_type(*(r["counts"].dtype for r in results)))
    for r, idx in zip(results, al.index, strict=True):
        total[idx] += r["counts"]
        absent = np.ones(al.n, dtype=bool)
        absent[idx] = False
        total[absent, :, -1] += r["group_size"]  # the last code is "missing", in either layout
    return al.keys, total, withheld_of(results, al)


def combine_dosage_sums(results: list[Result], al: KeyUnion) -> np.ndarray:
    """Pooled :data:`DOSAGE_SUMS` over groups, ``(variants, 3)``; a variant a station lacks has no dosage there."""
    total = np.zeros((al.n, len(DOSAGE_SUMS)))
    for r, idx in zip(results, al.index, strict=True):
        for i, name in enumerate(DOSAGE_SUMS):
            total[idx, i] += np.asarray(r[name], dtype=np.float64).sum(axis=1)
    return total


def dosage_summary(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :meth:`better.engine.filters.VariantFilter.mask` takes, from pooled dosage sums and genotype
    counts: ALT dosage, samples with and without a dosage, and the hard-call genotype counts (HWE)."""
    c = counts.sum(axis=1)
    total = c.sum(axis=1)
    return sums[:, 0], sums[:, 2], total - sums[:, 2], c[:, :3]


@dataclass
class CountsProtocol(OneRoundProtocol):
    """One round of genotype counts; ``groups`` 1 (everyone) or 2 (controls, cases)."""

    kind = "counts"

    groups: int = 1
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    counts: np.ndarray | None = None
    sums: np.ndarray | None = None
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def task(self) -> Task:
        return {"kind": self.kind, "groups": self.groups}

    def combine(self, results: list[Result]) -> None:
        al = union_keys([station_keys(r) for r in results])
        self.keys, self.counts, self.withheld = combine_counts(results, al)
        self.sums = combine_dosage_sums(results, al)

    def result(self) -> dict[str, np.ndarray]:
        assert self.counts is not None
        return {**self.keys, **counts_columns(self.counts, self.withheld, self.sums)}

    def keep(self, variant_filter: VariantFilter) -> np.ndarray:
        """The variants that pass ``variant_filter`` on the pooled counts and dosage sums."""
        assert self.counts is not None and self.sums is not None
        return variant_filter.mask(*dosage_summary(self.sums, self.counts), squares=self.sums[:, 1])


def counts_columns(
    counts: np.ndarray, withheld: np.ndarray | None = None, sums: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """FREQ (``.afreq``: ALT_FREQS, MACH_R2, OBS_CT), HWE (``.hardy``: HOM_A1_CT, HET_A1_CT, TWO_AX_CT,
    O(HET_A1), E(HET_A1), HWE_P with A1 = REF) and, for two groups, allelic, genotypic and trend test columns.

    ``sums``, the pooled :data:`DOSAGE_SUMS` ``(variants, 3)``, give the frequency columns (ALT_FREQS,
    MACH_R2, OBS_CT, MISSING_CT, CALL_RATE) from dosages; without them, from the genotype counts. Rows in
    ``withheld`` (a station's policy kept its counts back) get NaN in every column and ``WITHHELD`` True:
    no number is shown for them.
    """
    if withheld is not None and withheld.any():
        hidden = None if sums is None else np.where(withheld[:, None], 0, sums)
        out = counts_columns(np.where(withheld[:, None, None], 0, counts), None, hidden)
        for name, col in out.items():
            out[name] = np.where(withheld, np.nan, col.astype(float))
        out["WITHHELD"] = withheld.copy()
        return out
    c = counts.sum(axis=1)
    hom_ref, het, hom_alt, miss = (c[:, i] for i in range(4))
    called = hom_ref + het + hom_alt
    if sums is None:
        sums = np.stack([het + 2 * hom_alt, het + 4 * hom_alt, called], axis=1).astype(np.float64)
    dose_alt, dose_squares, dose_called = sums[:, 0], sums[:, 1], sums[:, 2]
    everyone = called + miss
    with np.errstate(invalid="ignore", divide="ignore"):
        genotype_freq = (het + 2 * hom_alt) / (2.0 * called)
        e_het = 2 * genotype_freq * (1 - genotype_freq) * called
        alt_freq = dose_alt / (2.0 * dose_called)
    out = {
        "ALT_FREQS": alt_freq,
        "MACH_R2": mach_r2(dose_alt, dose_squares, dose_called),
        "OBS_CT": 2 * np.rint(dose_called).astype(np.int64),
        "MISSING_CT": everyone - np.rint(dose_called).astype(np.int64),
        "CALL_RATE": np.where(everyone > 0, dose_called / np.maximum(everyone, 1), np.nan),
        # .hardy columns: A1 is REF, AX is ALT, as plink2 --hardy writes them for biallelic variants.
        "HOM_A1_CT": hom_ref,
        "HET_A1_CT": het,
        "TWO_AX_CT": hom_alt,
        "O(HET_A1)": np.where(called > 0, het / np.maximum(called, 1), np.nan),
        "E(HET_A1)": np.where(called > 0, e_het / np.maximum(called, 1), np.nan),
        "HWE_P": hwe_exact(hom_ref, het, hom_alt),
    }
    if counts.shape[1] == 2:
        ctrl, case = counts[:, 0, :3], counts[:, 1, :3]
        for name, stat, df in (
            ("ALLELIC", allelic_chi2(case, ctrl), 1),
            ("GENO", genotypic_chi2(case, ctrl), 2),
            ("TREND", trend_chi2(case, ctrl), 1),
        ):
            lp = log10_p_chi2(stat, df)
            out[f"{name}_CHISQ"] = stat
            out[f"{name}_P"] = 10.0**lp
            out[f"{name}_LOG10_P"] = -lp
    out["WITHHELD"] = np.zeros(counts.shape[0], dtype=bool)
    return out


ROUNDS = (
    RoundKind("variant_keys", variant_keys_station, lists_keys=True, sealed="never"),
    RoundKind(
        "counts",
        counts_station,
        shared=SharedRows(
            "variant_keys", KEY_COLUMNS, dict.fromkeys(("counts", "dosage_people", *DOSAGE_SUMS, "withheld"))
        ),
        rules=("minor_allele_count",),
        zeroed=("counts", *DOSAGE_SUMS),
        dropped=("dosage_people",),
        people=counts_people,
        calls=counts_calls,
        split=Split(whole(counts_station), rows=("counts", "dosage_people", *DOSAGE_SUMS)),
    ),
)
ANALYSES = (Analysis("freq", ("variant_keys", "counts")), Analysis("hwe", ("variant_keys", "counts")))
