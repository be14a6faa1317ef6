"""Imputed-style dosage VCFs for ``better synth --dosages``: the cohort as an imputation server returns it.

The true haplotypes of :mod:`better.genomics.synth` are seen through a model of genotype imputation and
written the way minimac (Michigan / TOPMed imputation servers) writes them: ``GT:DS:GP`` per sample,
``AF``, ``MAF``, ``R2`` and an ``IMPUTED`` or ``TYPED`` flag per record, numbers with 3 decimals and no
trailing zeros (``0.012``, ``1``, ``1.998``).

The imputation model
--------------------
Each record (one ALT allele: multi-allelic sites are split into biallelic records at the same position,
as the servers write them) gets a target imputation quality ``q``, its expected r² between dosage and
true genotype:

* imputed records: a mixture of well imputed ones, ``Beta(8, 1)`` (mean 0.89), and a tail of poorly
  imputed ones, ``Beta(1.5, 2.5)`` (mean 0.38): 10% of the common records (MAF >= 1%) and 30% of the
  rare ones are poor. Causal variants are always from the well imputed component.
* typed records (10% of the common ones): ``Beta(200, 1)`` (mean 0.995).

Each haplotype's ALT allele ``a`` (0 or 1) is observed through Gaussian noise, ``y = a + sigma e``, and
imputed as its posterior ``h = P(a = 1 | y)`` under the prior ``P(a = 1) = p``, the ALT frequency in
the whole cohort (the "reference panel"): ``logit h = logit p + (y - 1/2) / sigma^2``. ``sigma`` is the
one at which the expected r² of ``h`` is ``q`` (inverted numerically for the record's frequency, so a
rare and a common record of the same ``q`` are as well imputed). As in minimac, the genotype
probabilities are those of two independent haplotypes, ``GP = ((1-h1)(1-h2), h1(1-h2) + h2(1-h1),
h1 h2)`` and ``DS = h1 + h2 = GP[1] + 2 GP[2]``; GT is the most likely genotype, phased by which
haplotype is the more likely carrier. Written values are consistent to the last digit: GP sums to 1 and
``GP[1] + 2 GP[2] == DS`` exactly in thousandths.

Per file (each station and the pooled cohort) ``AF`` is the mean DS / 2 and ``R2`` the MaCH r² of the
written dosages, ``var(DS) / (2 AF (1 - AF))`` over the samples with a dosage (population variance; 0
where AF is 0 or 1), which is what ``plink2 --freq cols=+machr2`` computes. About 1% of the records
have a missing entry (``./.:.:.``) for about 0.5% of the samples.

Speed: one Numba kernel per block of records draws nothing (the observation noise comes from the cohort's
NumPy generator, so the same seed gives the same files) and does the rest in one pass: posteriors, GP,
DS, GT, the text, and the sums behind AF, R2 and the truth. A thread pool compresses the BGZF blocks
(ISA-L deflate) while the next block is imputed, and the ``.tbi`` indexes are written from the records'
known virtual offsets, without reading the files back. 600 samples x 2,000 sites take about 2 s in all;
10,000 x 50,000 (four VCFs, 15 GB of text) about 2.5 minutes on 2 cores, 80 s of it imputing and writing.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from better.engine.accelerate import jit, jit_parallel, prange

#: Share of the records with a missing entry, and of the samples missing there.
MISSING_RECORD_RATE = 0.01
MISSING_SAMPLE_RATE = 0.005
#: Share of the common records (MAF >= 1%) that were on the array (TYPED).
TYPED_SHARE = 0.10
#: Share of poorly imputed records among the common and the rare (MAF < 1%) imputed ones.
POOR_SHARE_COMMON = 0.10
POOR_SHARE_RARE = 0.30
GOOD_BETA = (8.0, 1.0)
POOR_BETA = (1.5, 2.5)
TYPED_BETA = (200.0, 1.0)
#: Uncompressed bytes per BGZF block, as htslib writes them.
BGZF_BLOCK = 0xFF00
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
#: Sample entries (records x samples) formatted at a time.
CHUNK_ENTRIES = 1 << 21


@dataclass
class ImputedRecords:
    """The biallelic records of the dosage cohort: multi-allelic sites split, one record per ALT allele.

    Attributes
    ----------
    site
        Index of each record's site in the simulated genotype matrix.
    allele
        The ALT allele's index at that site (1 for a biallelic site).
    positions
        1-based positions.
    ref, alt
        Allele strings.
    ids
        Michigan-style IDs, ``CHROM:POS:REF:ALT`` (unique, as a split site's records need).
    """

    site: np.ndarray
    allele: np.ndarray
    positions: np.ndarray
    ref: list[str]
    alt: list[str]
    ids: list[str]

    @classmethod
    def split(cls, chrom: str, positions: np.ndarray, alleles: Sequence[Sequence[str]]) -> ImputedRecords:
        """One record per ALT allele of each site, in position order.

        Examples
        --------
        >>> r = ImputedRecords.split("22", np.array([100, 200]), [["A", "G"], ["C", "T", "A"]])
        >>> r.ids, r.allele.tolist()
        (['22:100:A:G', '22:200:C:T', '22:200:C:A'], [1, 1, 2])
        """
        site = np.array([j for j, al in enumerate(alleles) for _ in al[1:]], dtype=np.int64)
        allele = np.array([k for al in alleles for k in range(1, len(al))], dtype=np.int64)
        ref = [alleles[j][0] for j in site]
        alt = [alleles[j][k] for j, k in zip(site, allele, strict=True)]
        pos = positions[site]
        ids = [f"{chrom}:{p}:{r}:{a}" for p, r, a in zip(pos, ref, alt, strict=True)]
        return cls(site=site, allele=allele, positions=pos, ref=ref, alt=alt, ids=ids)


@dataclass
class ImputedCohort:
    """What :func:`write_imputed_vcfs` wrote, and the imputation it simulated.

    Attributes
    ----------
    records
        The records written.
    quality
        Each record's target imputation quality (expected r² of DS with the true genotype).
    typed
        Whether each record is TYPED (on the array) rather than IMPUTED.
    true_r2
        Squared correlation of the written DS with the true genotype, over the whole cohort (NaN where
        either is constant).
    files
        File name -> path of the VCFs written (``.tbi`` next to each).
    """

    records: ImputedRecords
    quality: np.ndarray
    typed: np.ndarray
    true_r2: np.ndarray
    files: dict[str, str] = field(default_factory=dict)


# -- the imputation model --------------------------------------------------------------------------------


def imputation_quality(maf: np.ndarray, causal: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each record's target imputation quality and whether it is TYPED (see the module's model).

    Parameters
    ----------
    maf
        Minor allele frequency of each record in the whole cohort.
    causal
        Boolean mask of the records that carry a phenotype effect: always well imputed.
    rng
        The cohort's random generator.

    Returns
    -------
    quality, typed
        Float qualities in [0.01, 0.999] and a boolean TYPED mask.

    Examples
    --------
    >>> q, t = imputation_quality(np.full(4000, 0.2), np.zeros(4000, bool), np.random.default_rng(1))
    >>> bool(0.8 < np.median(q) < 0.95), bool((q < 0.3).mean() > 0.02), round(float(t.mean()), 1)
    (True, True, 0.1)
    """
    m = maf.size
    common = maf >= 0.01
    poor = (rng.random(m) < np.where(common, POOR_SHARE_COMMON, POOR_SHARE_RARE)) & ~causal
    good_q = rng.beta(*GOOD_BETA, m)
    poor_q = rng.beta(*POOR_BETA, m)
    typed = common & (rng.random(m) < TYPED_SHARE)
    typed_q = rng.beta(*TYPED_BETA, m)
    quality = np.where(typed, typed_q, np.where(poor, poor_q, good_q))
    return np.clip(quality, 0.01, 0.999), typed


@functools.cache
def _r2_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected r² of the haplotype posterior on a grid of log MAF x log sigma (see :func:`noise_scale`)."""
    log_maf = np.linspace(np.log(1e-5), np.log(0.5), 48)
    log_s = np.linspace(np.log(0.03), np.log(20.0), 120)
    x = np.linspace(-8.0, 8.0, 241)
    wx = np.exp(-0.5 * x * x)
    wx /= wx.sum()
    p = np.exp(log_maf)[:, None, None]
    s = np.exp(log_s)[None, :, None]
    lp = np.log(p / (1 - p))
    with np.errstate(over="ignore"):
        h1 = 1.0 / (1.0 + np.exp(-(lp + 0.5 / s**2 + x / s)))  # y = 1 + s x
        h0 = 1.0 / (1.0 + np.exp(-(lp - 0.5 / s**2 + x / s)))  # y = s x
    eh2 = p[:, :, 0] * (h1 * h1 * wx).sum(axis=2) + (1 - p[:, :, 0]) * (h0 * h0 * wx).sum(axis=2)
    pp = p[:, :, 0]
    r2 = np.clip((eh2 - pp * pp) / (pp * (1 - pp)), 0.0, 1.0)
    r2 = np.minimum.accumulate(r2, axis=1)  # monotone in sigma despite quadrature noise
    return log_maf, log_s, r2


def noise_scale(quality: np.ndarray, maf: np.ndarray) -> np.ndarray:
    """The observation noise ``sigma`` at which the haplotype posterior has expected r² ``quality``.

    Parameters
    ----------
    quality
        Target r² per record, in (0, 1).
    maf
        Minor allele frequency per record (the prior's, clipped to [1e-5, 0.5]).

    Examples
    --------
    >>> s = noise_scale(np.array([0.3, 0.9, 0.9]), np.array([0.2, 0.2, 0.01]))
    >>> bool(s[0] > s[1] > s[2])  # worse quality, more noise; a rare allele needs less noise for the same r²
    True
    """
    log_maf, log_s, r2 = _r2_table()
    # log sigma at each grid MAF for each record (r² decreases with sigma: interpolate on reversed arrays)
    at = np.stack([np.interp(quality, r2[i, ::-1], log_s[::-1]) for i in range(log_maf.size)])
    pos = np.interp(np.log(np.clip(maf, 1e-5, 0.5)), log_maf, np.arange(log_maf.size, dtype=float))
    lo = np.minimum(pos.astype(np.int64), log_maf.size - 2)
    frac = pos - lo
    cols = np.arange(quality.size)
    return np.exp(at[lo, cols] * (1 - frac) + at[lo + 1, cols] * frac)


def genotype_probabilities(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thousandths of DS and GP from two haplotype posteriors, consistent to the last digit; GT codes.

    ``DS = round(1000 (h1 + h2))`` and ``P(hom ALT) = round(1000 h1 h2)``, the latter moved by at most one
    thousandth where needed so that ``P(het) = DS - 2 P(hom ALT)`` and ``P(hom REF) = 1000 - DS + P(hom
    ALT)`` are not negative: the written GP then sums to 1 and gives DS exactly.

    Parameters
    ----------
    h
        (records, samples, 2) haplotype ALT posteriors.

    Returns
    -------
    ds, gp1, gp2, gt
        int16 thousandths of DS, P(het) and P(hom ALT), and the most likely genotype as a phased code:
        0 ``0|0``, 1 ``0|1``, 2 ``1|0``, 3 ``1|1`` (a heterozygote's ALT on the likelier carrier).

    Examples
    --------
    >>> ds, g1, g2, gt = genotype_probabilities(np.array([[[0.9995, 0.9996], [0.2, 0.7], [0.0, 0.001]]]))
    >>> ds.tolist(), g1.tolist(), g2.tolist(), gt.tolist()
    ([[1999, 900, 1]], [[1, 620, 1]], [[999, 140, 0]], [[3, 1, 0]])
    """
    block = format_block(h, np.zeros(np.shape(h)[:2], dtype=bool), gp=False)
    return block.ds, block.ds - 2 * block.gp2, block.gp2, block.gt


def mach_r2(ds: np.ndarray, called: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ALT frequency and MaCH r² of each row of thousandths of dosages, over the called entries.

    ``r2 = var(DS) / (2 p (1 - p))`` with ``p = mean(DS) / 2`` and the population variance; 0 where
    ``p`` is 0 or 1 (or nothing is called). It passes 1 where a rare ALT sits in homozygotes (at most 2).

    Examples
    --------
    >>> af, r2 = mach_r2(np.array([[0, 1000, 2000, 1000], [0, 0, 0, 0]]), np.ones((2, 4), bool))
    >>> af.tolist(), r2.tolist()
    ([0.5, 0.0], [1.0, 0.0])
    """
    d = np.where(called, ds, 0).astype(np.int64)
    return _r2_from_sums(called.sum(axis=1), d.sum(axis=1), (d * d).sum(axis=1))


def _r2_from_sums(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AF and MaCH r² from the count, sum and sum of squares of thousandths of dosages."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.asarray(s1, dtype=np.float64) / 1000 / n
        var = np.asarray(s2, dtype=np.float64) / 1e6 / n - mean * mean
        af = mean / 2
        denom = 2 * af * (1 - af)
        r2 = np.where((n > 0) & (denom > 0), var / denom, 0.0)
    return np.where(n > 0, af, 0.0), np.maximum(r2, 0.0)


def _true_r2(sums: np.ndarray) -> np.ndarray:
    """Squared correlation of DS and the true genotype per row from (n, Σd, Σd², Σg, Σg², Σdg)."""
    n, sd, sdd, sg, sgg, sdg = (sums[:, k].astype(np.float64) for k in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sdg / n - sd * sg / n**2
        vd = sdd / n - (sd / n) ** 2
        vg = sgg / n - (sg / n) ** 2
        r2 = cov * cov / (vd * vg)
    return np.where((vd > 0) & (vg > 0), r2, np.nan)


# -- formatting ------------------------------------------------------------------------------------------


def _number(v: int) -> str:
    return f"{v / 1000:.3f}".rstrip("0").rstrip(".")


#: Text of 0..2000 thousandths as minimac writes them (``0``, ``0.012``, ``0.5``, ``1``, ``1.998``, ``2``).
_NUMBERS = [_number(v) for v in range(2001)]
NUM_TEXT = np.zeros((2001, 5), dtype=np.uint8)
for _v, _t in enumerate(_NUMBERS):
    NUM_TEXT[_v, : len(_t)] = np.frombuffer(_t.encode(), dtype=np.uint8)
NUM_LEN = np.array([len(t) for t in _NUMBERS], dtype=np.int64)
#: Most bytes one sample entry takes: ``0|1:1.998:0.001,0.999,0.001`` and a tab.
ENTRY_WIDTH = 3 + 6 + 6 + 6 + 6 + 1


@dataclass
class FormattedBlock:
    """A block of records' sample entries as text, and the numbers written.

    Attributes
    ----------
    text
        (records, samples x :data:`ENTRY_WIDTH`) bytes; row ``i`` holds its entries back to back, each
        ending in a tab, up to ``ends[i, -1]``.
    ends
        (records, samples) end offset of each entry in its row.
    ds, gp2
        int16 thousandths of DS and P(hom ALT) (-1 where missing).
    gt
        int8 phased genotype codes (see :func:`genotype_probabilities`; 4 where missing).
    """

    text: np.ndarray
    ends: np.ndarray
    ds: np.ndarray
    gp2: np.ndarray
    gt: np.ndarray

    def span(self, row: int, first: int, end: int) -> bytes:
        """Entries ``first..end-1`` of ``row`` as one tab-separated run, without the last tab."""
        start = int(self.ends[row, first - 1]) if first > 0 else 0
        return self.text[row, start : int(self.ends[row, end - 1]) - 1].tobytes()


def _empty_block(rows: int, n: int) -> FormattedBlock:
    return FormattedBlock(
        text=np.empty((rows, n * ENTRY_WIDTH), dtype=np.uint8),
        ends=np.empty((rows, n), dtype=np.int64),
        ds=np.empty((rows, n), dtype=np.int16),
        gp2=np.empty((rows, n), dtype=np.int16),
        gt=np.empty((rows, n), dtype=np.int8),
    )


def format_block(h: np.ndarray, missing: np.ndarray, gp: bool) -> FormattedBlock:
    """Genotype probabilities, dosages and most likely genotypes of given haplotype posteriors, written as
    ``GT:DS[:GP]`` entries (missing ones as ``./.:.[:.]``).

    Parameters
    ----------
    h
        (records, samples, 2) haplotype ALT posteriors.
    missing
        (records, samples) entries to write as missing.
    gp
        Whether to write GP.

    Returns
    -------
    FormattedBlock

    Examples
    --------
    >>> b = format_block(np.array([[[0.0, 1.0], [0.9, 0.05]]]), np.array([[False, False]]), True)
    >>> b.span(0, 0, 2)
    b'0|1:1:0,1,0\\t1|0:0.95:0.095,0.86,0.045'
    """
    rows, n = missing.shape
    block = _empty_block(rows, n)
    _format_kernel(
        np.ascontiguousarray(h, dtype=np.float64),
        np.ascontiguousarray(missing, dtype=np.bool_),
        NUM_TEXT,
        NUM_LEN,
        gp,
        block.text,
        block.ends,
        block.ds,
        block.gp2,
        block.gt,
    )
    return block


@dataclass
class ImputedBlock(FormattedBlock):
    """A :class:`FormattedBlock` simulated from true haplotypes, with the sums its INFO needs.

    Attributes
    ----------
    file_sums
        int64 (records, files, 3): called entries, sum and sum of squares of DS thousandths in each file's
        sample range.
    truth_sums
        int64 (records, 6): over all called entries, n, Σd, Σd², Σg, Σg², Σdg of DS thousandths ``d``
        and the true genotype ``g``.
    """

    file_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), dtype=np.int64))
    truth_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), dtype=np.int64))


def impute_block(
    hap: np.ndarray,
    rows: slice,
    records: ImputedRecords,
    logit_p: np.ndarray,
    sigma: np.ndarray,
    missing: np.ndarray,
    bounds: np.ndarray,
    rng: np.random.Generator,
    gp: bool,
) -> ImputedBlock:
    """Impute and format records ``rows`` from the true haplotypes (see the module's model).

    Parameters
    ----------
    hap
        (sites, samples, 2) int8 allele indices of the true haplotypes.
    rows
        The records (a slice of ``records``).
    records
        All records.
    logit_p, sigma
        Prior log-odds of ALT and observation noise of the records in ``rows``.
    missing
        (records in ``rows``, samples) entries written as missing.
    bounds
        int64 (files, 2): each file's first and end sample, for :attr:`ImputedBlock.file_sums`.
    rng
        Generator of the observation noise: one float32 standard normal per haplotype.
    gp
        Whether to write GP.

    Returns
    -------
    ImputedBlock
    """
    n_rows, n = missing.shape
    noise = rng.standard_normal((n_rows, n, 2), dtype=np.float32)
    half = 0.5 / sigma**2
    b = _empty_block(n_rows, n)
    block = ImputedBlock(
        text=b.text,
        ends=b.ends,
        ds=b.ds,
        gp2=b.gp2,
        gt=b.gt,
        file_sums=np.zeros((n_rows, bounds.shape[0], 3), dtype=np.int64),
        truth_sums=np.zeros((n_rows, 6), dtype=np.int64),
    )
    _impute_kernel(
        hap,
        records.site[rows],
        records.allele[rows].astype(np.int8),
        noise,
        (logit_p + half).astype(np.float64),
        (logit_p - half).astype(np.float64),
        (1.0 / sigma).astype(np.float64),
        np.ascontiguousarray(missing, dtype=np.bool_),
        NUM_TEXT,
        NUM_LEN,
        gp,
        np.ascontiguousarray(bounds, dtype=np.int64),
        block.text,
        block.ends,
        block.ds,
        block.gp2,
        block.gt,
        block.file_sums,
        block.truth_sums,
    )
    return block


@jit
def _write_missing(text, i, at, gp):  # type: ignore[no-untyped-def]
    """``./.:.`` (``./.:.:.`` with GP) and a tab at ``text[i, at]``; the offset after it."""
    text[i, at] = 46
    text[i, at + 1] = 47
    text[i, at + 2] = 46
    text[i, at + 3] = 58
    text[i, at + 4] = 46
    at += 5
    if gp:
        text[i, at] = 58
        text[i, at + 1] = 46
        at += 2
    text[i, at] = 9
    return at + 1


@jit
def _write_entry(text, i, at, h1, h2, gp, num, num_len):  # type: ignore[no-untyped-def]
    """The entry of haplotype posteriors ``h1``, ``h2`` and a tab at ``text[i, at]``: the offset after it,
    DS and P(hom ALT) in thousandths and the GT code (see :func:`genotype_probabilities`)."""
    d = int(np.rint((h1 + h2) * 1000.0))
    g2 = int(np.rint(h1 * h2 * 1000.0))
    g2 = min(max(g2, max(d - 1000, 0)), d // 2)
    g1 = d - 2 * g2
    g0 = 1000 - d + g2
    geno = 1 if g1 > g0 else 0
    if g2 > max(g0, g1):
        geno = 2
    code = 0 if geno == 0 else (3 if geno == 2 else (1 if h2 > h1 else 2))
    text[i, at] = 49 if code >= 2 else 48
    text[i, at + 1] = 124  # "|"
    text[i, at + 2] = 49 if code == 1 or code == 3 else 48
    at += 3
    for v, sep, on in ((d, 58, True), (g0, 58, gp), (g1, 44, gp), (g2, 44, gp)):
        if on:
            text[i, at] = sep
            at += 1
            for k in range(num_len[v]):
                text[i, at + k] = num[v, k]
            at += num_len[v]
    text[i, at] = 9
    return at + 1, d, g2, code


@jit_parallel
def _format_kernel(h, missing, num, num_len, gp, text, ends, ds_out, gp2_out, gt_out):  # type: ignore[no-untyped-def]
    rows, n = missing.shape
    for i in prange(rows):
        at = 0
        for j in range(n):
            if missing[i, j]:
                at = _write_missing(text, i, at, gp)
                d, g2, code = -1, -1, 4
            else:
                at, d, g2, code = _write_entry(text, i, at, h[i, j, 0], h[i, j, 1], gp, num, num_len)
            ends[i, j] = at
            ds_out[i, j] = d
            gp2_out[i, j] = g2
            gt_out[i, j] = code


@jit_parallel
def _impute_kernel(  # type: ignore[no-untyped-def]
    hap, site, allele, noise, c1, c0, inv_s, missing, num, num_len, gp, bounds, text, ends, ds_out, gp2_out,
    gt_out, file_sums, truth_sums,
):  # fmt: skip
    rows, n = missing.shape
    n_files = bounds.shape[0]
    for i in prange(rows):
        at = 0
        for j in range(n):
            if missing[i, j]:
                at = _write_missing(text, i, at, gp)
                ends[i, j] = at
                ds_out[i, j] = -1
                gp2_out[i, j] = -1
                gt_out[i, j] = 4
                continue
            a1 = hap[site[i], j, 0] == allele[i]
            a2 = hap[site[i], j, 1] == allele[i]
            # logit h = logit p + (y - 1/2) / sigma^2 with y = a + sigma e
            h1 = 1.0 / (1.0 + np.exp(-((c1[i] if a1 else c0[i]) + noise[i, j, 0] * inv_s[i])))
            h2 = 1.0 / (1.0 + np.exp(-((c1[i] if a2 else c0[i]) + noise[i, j, 1] * inv_s[i])))
            at, d, g2, code = _write_entry(text, i, at, h1, h2, gp, num, num_len)
            ends[i, j] = at
            ds_out[i, j] = d
            gp2_out[i, j] = g2
            gt_out[i, j] = code
            for f in range(n_files):
                if bounds[f, 0] <= j < bounds[f, 1]:
                    file_sums[i, f, 0] += 1
                    file_sums[i, f, 1] += d
                    file_sums[i, f, 2] += d * d
            g = int(a1) + int(a2)
            truth_sums[i, 0] += 1
            truth_sums[i, 1] += d
            truth_sums[i, 2] += d * d
            truth_sums[i, 3] += g
            truth_sums[i, 4] += g * g
            truth_sums[i, 5] += d * g


@jit_parallel
def _allele_counts(hap, site, allele, out):  # type: ignore[no-untyped-def]
    """Copies of each record's ALT allele among the haplotypes."""
    for i in prange(site.size):
        c = 0
        for j in range(hap.shape[1]):
            c += (hap[site[i], j, 0] == allele[i]) + (hap[site[i], j, 1] == allele[i])
        out[i] = c


# -- BGZF output -----------------------------------------------------------------------------------------


def _bgzf_block(data: bytes, level: int) -> bytes:
    from isal import isal_zlib

    comp = isal_zlib.compress(data, level, -15)
    if len(comp) + 26 > 65536:  # pragma: no cover - incompressible data: store it
        c = zlib.compressobj(0, zlib.DEFLATED, -15)
        comp = c.compress(data) + c.flush()
    size = len(comp) + 26
    head = struct.pack("<BBBBIBBHBBHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, size - 1)
    return head + comp + struct.pack("<II", zlib.crc32(data), len(data))


class BgzfWriter:
    """A BGZF file written by a thread pool: blocks of :data:`BGZF_BLOCK` bytes compressed in parallel
    (ISA-L deflate, which releases the GIL) and written in order. The output depends only on the bytes
    written, not on the threads.

    Examples
    --------
    >>> import gzip, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.gz"
    >>> with ThreadPoolExecutor(2) as pool, BgzfWriter(path, pool) as w:
    ...     w.write(b"hello\\n" * 20000)
    >>> gzip.decompress(path.read_bytes()) == b"hello\\n" * 20000
    True
    """

    def __init__(self, path: Path, pool: ThreadPoolExecutor, level: int = 1, max_pending: int = 64) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pool = pool
        self._level = level
        self._max_pending = max_pending
        self._pending: deque[Future[bytes]] = deque()
        self._tail = b""
        self._closed = False
        #: Uncompressed bytes written so far.
        self.offset = 0
        #: Compressed size of each block written, in order (without the end-of-file marker).
        self.block_sizes: list[int] = []

    def write(self, data: bytes) -> None:
        """Append ``data``; full blocks go to the pool."""
        self.offset += len(data)
        data = self._tail + data if self._tail else data
        n_full = len(data) // BGZF_BLOCK
        view = memoryview(data)
        for i in range(n_full):
            self._submit(bytes(view[i * BGZF_BLOCK : (i + 1) * BGZF_BLOCK]))
        self._tail = bytes(view[n_full * BGZF_BLOCK :])

    def _submit(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(_bgzf_block, block, self._level))
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            self._put(self._pending.popleft().result())

    def _put(self, block: bytes) -> None:
        self._f.write(block)
        self.block_sizes.append(len(block))

    def close(self) -> None:
        """Flush the last block, wait for the pool and end the file with the BGZF end-of-file marker."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._tail:
                self._submit(self._tail)
                self._tail = b""
            while self._pending:
                self._put(self._pending.popleft().result())
            self._f.write(BGZF_EOF)
        finally:
            self._f.close()

    def virtual_offsets(self, offsets: np.ndarray) -> np.ndarray:
        """BGZF virtual offsets (compressed block start << 16 | offset in the block) of uncompressed offsets,
        once the file is closed."""
        starts = np.concatenate([[0], np.cumsum(self.block_sizes, dtype=np.uint64)]).astype(np.uint64)
        u = np.asarray(offsets, dtype=np.uint64)
        return (starts[u // BGZF_BLOCK] << np.uint64(16)) | (u % BGZF_BLOCK)

    def __enter__(self) -> BgzfWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _reg2bin(beg: int, end: int) -> int:
    """The smallest UCSC bin holding 0-based ``[beg, end)`` (SAM specification, section 5.3)."""
    end -= 1
    for shift, first in ((14, 4681), (17, 585), (20, 73), (23, 9), (26, 1)):
        if beg >> shift == end >> shift:
            return first + (beg >> shift)
    return 0


def write_tbi(
    path: Path, contig: str, pos: np.ndarray, ref_len: np.ndarray, start: np.ndarray, end: np.ndarray
) -> None:
    """A tabix index (``.tbi``, VCF preset) of a position-sorted BGZF VCF whose records are all on ``contig``,
    from each record's virtual offsets: no pass over the file.

    Parameters
    ----------
    path
        The index to write.
    contig
        The one contig of every record.
    pos, ref_len
        1-based position and REF length of each record (a record spans ``[pos - 1, pos - 1 + ref_len)``).
    start, end
        Virtual offsets of each record's first byte and of the byte after its newline.
    """
    bins: dict[int, list[list[int]]] = {}
    linear: dict[int, int] = {}
    last_bin = -1
    for p, n, s, e in zip(pos.tolist(), ref_len.tolist(), start.tolist(), end.tolist(), strict=True):
        beg, stop = p - 1, p - 1 + max(n, 1)
        b = _reg2bin(beg, stop)
        chunks = bins.setdefault(b, [])
        if b == last_bin and chunks and chunks[-1][1] == s:
            chunks[-1][1] = e
        else:
            chunks.append([s, e])
        last_bin = b
        for w in range(beg >> 14, ((stop - 1) >> 14) + 1):
            linear[w] = min(linear.get(w, s), s)
    if pos.size:  # htslib's pseudo-bin: the contig's span and its mapped / unmapped record counts
        bins[37450] = [[int(start[0]), int(end[-1])], [int(pos.size), 0]]
    n_intv = max(linear) + 1 if linear else 0
    ioff: list[int] = []
    for w in range(n_intv):
        ioff.append(linear.get(w, ioff[-1] if ioff else int(start[0])))
    name = contig.encode() + b"\0"
    out = [b"TBI\1", struct.pack("<8i", 1, 2, 1, 2, 0, ord("#"), 0, len(name)), name, struct.pack("<i", len(bins))]
    for b, chunks in bins.items():
        out.append(struct.pack("<Ii", b, len(chunks)))
        out.extend(struct.pack("<QQ", c0, c1) for c0, c1 in chunks)
    out.append(struct.pack("<i", n_intv))
    out.append(struct.pack(f"<{n_intv}Q", *ioff))
    out.append(struct.pack("<Q", 0))  # records without coordinates
    data = b"".join(out)
    with open(path, "wb") as f:
        for k in range(0, len(data), BGZF_BLOCK):
            f.write(_bgzf_block(data[k : k + BGZF_BLOCK], 1))
        f.write(BGZF_EOF)


# -- the cohort ------------------------------------------------------------------------------------------


def vcf_header(chrom: str, length: int, samples: Sequence[str], gp: bool) -> str:
    """The header of an imputed-style VCF, as minimac writes it (without the date and command line)."""
    lines = [
        "##fileformat=VCFv4.2",
        "##source=better-synth --dosages (minimac-style imputed dosages of an msprime cohort; see cohort.json)",
        "##phasing=full",
        f"##contig=<ID={chrom},length={length}>",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##INFO=<ID=AF,Number=1,Type=Float,Description="Estimated Alternate Allele Frequency (mean DS / 2)">',
        '##INFO=<ID=MAF,Number=1,Type=Float,Description="Estimated Minor Allele Frequency">',
        '##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated Imputation Accuracy (R-square): MaCH r2 of '
        'the dosages in this file, var(DS) / (2 AF (1 - AF))">',
        '##INFO=<ID=IMPUTED,Number=0,Type=Flag,Description="Marker was imputed but NOT genotyped">',
        '##INFO=<ID=TYPED,Number=0,Type=Flag,Description="Marker was genotyped AND imputed">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Estimated Alternate Allele Dosage : [P(0/1)+2*P(1/1)]">',
    ]
    if gp:
        lines.append(
            '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Posterior Probabilities for Genotypes '
            '0/0, 0/1 and 1/1">'
        )
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]))
    return "\n".join(lines) + "\n"


def _blocks(n_records: int, n_samples: int) -> Iterator[tuple[int, int]]:
    rows = max(1, CHUNK_ENTRIES // max(n_samples, 1))
    for r0 in range(0, n_records, rows):
        yield r0, min(r0 + rows, n_records)


def write_imputed_vcfs(
    out: Path,
    files: Sequence[tuple[str, int, int]],
    *,
    chrom: str,
    contig_length: int,
    hap: np.ndarray,
    records: ImputedRecords,
    causal_sites: np.ndarray,
    sample_ids: np.ndarray,
    rng: np.random.Generator,
    gp: bool = True,
    threads: int | None = None,
) -> ImputedCohort:
    """Simulate imputation of the true haplotypes and write one VCF per column range of the cohort.

    Parameters
    ----------
    out
        Output folder.
    files
        ``(file name, first sample, end sample)``: each VCF holds a contiguous range of the cohort's
        samples (the stations, then the pooled file with all of them); the values are computed once, so
        every file shows a sample the same way.
    chrom, contig_length
        The contig of every record.
    hap
        (sites, samples, 2) allele indices of the true haplotypes.
    records
        The biallelic records to write (:meth:`ImputedRecords.split`).
    causal_sites
        Site indices with a phenotype effect (kept well imputed).
    sample_ids
        All sample IDs, in cohort order.
    rng
        The cohort's generator: the same state gives the same files.
    gp
        Also write ``GP`` (otherwise ``GT:DS``).
    threads
        Compression threads (default: the CPUs, at most 16).

    Returns
    -------
    ImputedCohort
        The files and the per-record imputation truth.
    """
    n = hap.shape[1]
    m = records.site.size
    counts = np.zeros(m, dtype=np.int64)
    _allele_counts(hap, records.site, records.allele.astype(np.int8), counts)
    p = (counts + 0.5) / (2 * n + 1)  # the reference panel's ALT frequency
    maf = np.minimum(p, 1 - p)
    quality, typed = imputation_quality(maf, np.isin(records.site, causal_sites), rng)
    sigma = noise_scale(quality, maf)
    logit_p = np.log(p / (1 - p))
    missing_records = np.flatnonzero(rng.random(m) < MISSING_RECORD_RATE)
    missing_samples = {int(r): rng.random(n) < MISSING_SAMPLE_RATE for r in missing_records}
    true_r2 = np.full(m, np.nan)
    bounds = np.array([[a, b] for _, a, b in files], dtype=np.int64).reshape(-1, 2)

    fmt_field = "GT:DS:GP" if gp else "GT:DS"
    flags = np.where(typed, "TYPED", "IMPUTED")
    paths = {name: out / name for name, _, _ in files}
    workers = threads or min(16, os.cpu_count() or 1)
    line_ends: list[list[int]] = [[] for _ in files]  # uncompressed offset after each record's newline
    with ThreadPoolExecutor(workers) as pool:
        writers = [BgzfWriter(paths[name], pool) for name, _, _ in files]
        try:
            for w, (_, a, b) in zip(writers, files, strict=True):
                w.write(vcf_header(chrom, contig_length, [str(s) for s in sample_ids[a:b]], gp).encode())
            header_ends = [w.offset for w in writers]
            for r0, r1 in _blocks(m, n):
                miss = np.zeros((r1 - r0, n), dtype=bool)
                for r in missing_records[(missing_records >= r0) & (missing_records < r1)]:
                    miss[r - r0] = missing_samples[int(r)]
                rows = slice(r0, r1)
                block = impute_block(hap, rows, records, logit_p[rows], sigma[rows], miss, bounds, rng, gp)
                true_r2[rows] = _true_r2(block.truth_sums)
                for f, (w, (_, a, b)) in enumerate(zip(writers, files, strict=True)):
                    af, r2 = _r2_from_sums(*(block.file_sums[:, f, k] for k in range(3)))
                    pieces: list[bytes] = []
                    at = w.offset
                    for i, r in enumerate(range(r0, r1)):
                        info = f"AF={af[i]:.5f};MAF={min(af[i], 1 - af[i]):.5f};R2={r2[i]:.5f};{flags[r]}"
                        fixed = (
                            f"{chrom}\t{records.positions[r]}\t{records.ids[r]}\t{records.ref[r]}\t"
                            f"{records.alt[r]}\t.\tPASS\t{info}\t{fmt_field}\t".encode()
                        )
                        entries = block.span(i, a, b)
                        pieces += (fixed, entries, b"\n")
                        at += len(fixed) + len(entries) + 1
                        line_ends[f].append(at)
                    w.write(b"".join(pieces))
        finally:
            for w in writers:
                w.close()
    ref_len = np.array([len(x) for x in records.ref], dtype=np.int64)
    for w, (name, _, _), first, ends in zip(writers, files, header_ends, line_ends, strict=True):
        stops = np.array(ends, dtype=np.int64)
        starts = np.concatenate([[first], stops[:-1]]).astype(np.int64)
        write_tbi(
            Path(f"{paths[name]}.tbi"),
            chrom,
            records.positions,
            ref_len,
            w.virtual_offsets(starts),
            w.virtual_offsets(stops),
        )
    return ImputedCohort(
        records=records,
        quality=quality,
        typed=typed,
        true_r2=true_r2,
        files={name: str(path) for name, path in paths.items()},
    )
