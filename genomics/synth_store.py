"""``better synth-store``: a large synthetic dataset written straight into a station's store.

:mod:`better.genomics.synth` simulates genealogies (msprime) and writes VCF text, which is realistic but
does not scale to a biobank: 100,000 samples by 100,000 variants is ten billion genotypes. This module
draws them from a population-genetic model instead, packs them into the store's 2-bit codes as they are
drawn (a Numba kernel, one variant a thread) and writes ``variants.parquet`` row group by row group, so
memory stays bounded by one chunk of variants whatever the size of the cohort. The dataset is laid out
as ``better ingest`` lays one out (:class:`better.genomics.ingest.RowGroupWriter`, the same samples and
phenotype tables, a catalog row and a provenance row) and committed the same way: written into a
temporary folder and named in the catalog in one transaction, so a crash leaves no half-written dataset.

The model
---------
Sites
    Variants spread over the first ``chromosomes`` autosomes in proportion to their GRCh38 lengths, at
    distinct random positions, each with a unique rsID. Mostly SNVs (transitions twice as likely as
    transversions), 4% short indels; QUAL 30-99 (5% missing), FILTER ``LowQual`` on 2%; INFO holds
    ``AC`` and ``AN`` of the written genotypes, as the VCFs of ``better synth`` do.
Allele frequencies
    The ALT (derived) allele frequency ``p`` of each variant follows the neutral site-frequency spectrum,
    density proportional to ``1/p`` between :data:`MIN_FREQ` and ``1 - MIN_FREQ``: half the variants are
    below 1%, a third between 5% and 95%.
Population structure
    Three demes (:data:`DEME_SHARES` of the samples) drift away from the ancestral frequency under the
    Balding-Nichols model, ``p_k ~ Beta(p (1 - F_k) / F_k, (1 - p) (1 - F_k) / F_k)`` with ``F_k`` in
    :data:`DEME_FST` (0.01-0.04); each sample's genotype is drawn from its deme's frequency in
    Hardy-Weinberg proportions.
Missing genotypes
    Each variant has its own missing rate, drawn around ``missing_genotype_rate`` (1%) as ``better synth
    --missing-rates variable`` draws it (many variants with very few missing calls, a few with many).
Phenotypes
    The columns of a station's ``better synth`` table, with the same types and missing values: ``age``,
    ``sex`` (1 male, 2 female), ``bmi``, ``smoking``, ``pc1`` .. ``pc4`` (principal components of
    :data:`PC_VARIANTS` common variants' genotypes), ``ldl`` and ``case`` (0/1). ``ldl`` and ``case``
    depend on a few causal variants (their effects as in ``better synth``), on the covariates and on the
    deme; the truth is in the catalog's provenance row and, on request, in a TSV.

Determinism
-----------
The same configuration gives the same bytes: every random draw comes from the seeds, and a genotype
from a counter-based generator (SplitMix64 of the genotype key, the variant's index and the sample's
index), so it does not depend on the chunk size, the number of threads, or which other variants are
drawn. The sites (positions, alleles, frequencies, causal variants) come from ``sites_seed`` and the
samples (demes, genotypes, missing calls, phenotypes) from ``seed``: stations made with one
``sites_seed`` and their own ``seed`` share their variants and their causes, as the stations of one
federated cohort do.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from better.engine.accelerate import jit, jit_parallel, prange
from better.engine.errors import InputError
from better.genomics.ingest import ROW_GROUP_BYTES, RowGroupWriter, software_versions
from better.genomics.schema import SAMPLES_SCHEMA, packed_width
from better.genomics.store import Store, check_dataset_name
from better.genomics.vcf_batches import build_batch

#: GRCh38 autosome lengths, chromosomes 1 to 22: the variants are spread in proportion to them.
GRCH38_AUTOSOMES = (
    248_956_422, 242_193_529, 198_295_559, 190_214_555, 181_538_259, 170_805_979, 159_345_973, 145_138_636,
    138_394_717, 133_797_422, 135_086_622, 133_275_309, 114_364_328, 107_043_718, 101_991_189, 90_338_345,
    83_257_441, 80_373_285, 58_617_616, 64_444_167, 46_709_983, 50_818_468,
)  # fmt: skip
#: The lowest (and one minus the highest) ALT allele frequency drawn.
MIN_FREQ = 1e-4
#: Share of the samples in each deme.
DEME_SHARES = (0.5, 0.3, 0.2)
#: Each deme's Balding-Nichols differentiation from the ancestral frequencies.
DEME_FST = (0.01, 0.02, 0.04)
#: Each deme's shift of ``ldl`` and of the log odds of ``case`` (as in ``better synth``).
DEME_SHIFT = (0.0, 0.35, -0.25)
#: Common variants whose genotypes give the principal components ``pc1`` .. ``pc4``.
PC_VARIANTS = 512
N_PCS = 4
#: Share of the variants that are short insertions or deletions.
INDEL_SHARE = 0.04
#: The most variants generated and written at a time (fewer when their genotypes exceed
#: :data:`better.genomics.ingest.ROW_GROUP_BYTES`).
CHUNK_VARIANTS = 8192
#: Samples whose genotypes are held at a time while the principal components are computed (at most
#: ``2**22``, so that a chunk's sums of products of codes are exact in float32).
SAMPLE_CHUNK = 8192

_BASES = np.array(["A", "C", "G", "T"], dtype=object)
#: The transition partner of A, C, G, T.
_TRANSITION = np.array([2, 3, 0, 1])
# Random streams (SeedSequence spawn keys) of the sites' seed and of the samples' seed.
_SITES, _SAMPLES, _GENOTYPES, _MISSING = 1, 2, 3, 4

# SplitMix64 (Steele, Lea and Flood 2014): the constants of its increment and of its output mix.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_VARIANT_STEP = np.uint64(0xD1B54A32D192ED03)
_LOW32 = np.uint64(0xFFFFFFFF)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)


@dataclass
class SynthStoreConfig:
    """Parameters of a synthetic dataset written straight into a store.

    Attributes
    ----------
    dataset
        Name of the dataset (replaced if it exists, only on success).
    samples, variants
        Its size.
    seed
        Seed of the samples: demes, genotypes, missing calls and phenotypes.
    sites_seed
        Seed of the sites: positions, alleles, allele frequencies, causal variants and their effects
        (None: ``seed``). Datasets made with one ``sites_seed`` share their variants.
    chromosomes
        The variants lie on autosomes 1 to ``chromosomes``.
    missing_genotype_rate
        Mean share of missing genotypes.
    n_causal_ldl, n_causal_case
        Causal variants of ``ldl`` and of ``case``.
    id_prefix
        Sample IDs are this prefix and a zero-padded number from 1.
    """

    dataset: str = "cohort"
    samples: int = 10_000
    variants: int = 10_000
    seed: int = 1
    sites_seed: int | None = None
    chromosomes: int = 22
    missing_genotype_rate: float = 0.01
    n_causal_ldl: int = 5
    n_causal_case: int = 4
    id_prefix: str = "S"

    @property
    def the_sites_seed(self) -> int:
        """The seed of the sites: ``sites_seed``, or ``seed`` when it is not given."""
        return self.seed if self.sites_seed is None else self.sites_seed

    def validate(self) -> None:
        """Refuse a configuration that cannot make a dataset, naming the option.

        Raises
        ------
        InputError
            On a bad size, seed, number of chromosomes, missing rate or sample ID prefix.
        """
        check_dataset_name(self.dataset)
        if not 10 <= self.samples <= 10_000_000:
            raise InputError(f"--samples {self.samples}: choose between 10 and 10,000,000 samples")
        if not 10 <= self.variants <= 20_000_000:
            raise InputError(f"--variants {self.variants}: choose between 10 and 20,000,000 variants")
        if not 1 <= self.chromosomes <= len(GRCH38_AUTOSOMES):
            raise InputError(f"--chromosomes {self.chromosomes}: choose between 1 and 22 autosomes")
        if self.seed < 0 or self.the_sites_seed < 0:
            raise InputError("--seed and --sites-seed: use numbers of 0 or more")
        if not 0.0 <= self.missing_genotype_rate < 0.5:
            raise InputError(f"missing genotype rate {self.missing_genotype_rate}: a share from 0 to below 0.5")
        if not (self.id_prefix.isascii() and self.id_prefix.isalnum() and len(self.id_prefix) <= 16):
            raise InputError(f"--id-prefix {self.id_prefix!r}: use 1-16 letters or digits")


@dataclass
class SynthStoreReport:
    """What :func:`synth_store` wrote.

    Attributes
    ----------
    truth
        One dict per causal variant: ``trait``, ``chrom``, ``pos``, ``id``, ``ref``, ``alt``,
        ``alt_freq`` (in this dataset's true genotypes) and ``effect`` (per ALT allele: ``ldl`` units,
        or log odds of ``case``).
    sha256
        Hash of the configuration (recorded in the catalog as the source's hash).
    """

    dataset: str
    n_samples: int
    n_variants: int
    chromosomes: list[str]
    n_phenotyped: int
    phenotype_columns: dict[str, str]
    truth: list[dict[str, Any]] = field(default_factory=list)
    sha256: str = ""
    seconds: float = 0.0


# -- the genotype kernels ---------------------------------------------------------------------------------
@jit
def _mix64(z: np.uint64) -> np.uint64:
    """SplitMix64's output function: a bijective mix of 64 bits."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@jit
def _variant_base(key: np.uint64, variant: int) -> np.uint64:
    """The start of variant ``variant``'s stream of draws (one draw a sample)."""
    return _mix64(key + np.uint64(variant) * _VARIANT_STEP)


@jit
def _code(base: np.uint64, sample: int, hom_ref: np.uint64, not_hom_alt: np.uint64, missing: np.uint64) -> int:
    """Sample ``sample``'s genotype code: 32 random bits against the Hardy-Weinberg thresholds
    (``2**32`` times the probabilities of hom-ref and of not hom-alt), 32 more against the missing rate."""
    x = _mix64(base + np.uint64(sample + 1) * _GOLDEN)
    if (x >> _S32) < missing:
        return 3
    low = x & _LOW32
    return int(low >= hom_ref) + int(low >= not_hom_alt)


@jit_parallel
def _packed_rows(
    key: np.uint64,
    first: int,
    hom_ref: np.ndarray,
    not_hom_alt: np.ndarray,
    missing: np.ndarray,
    deme: np.ndarray,
    packed: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Draw variants ``first`` .. ``first + rows - 1`` for every sample, packed (2 bits a sample, low bits
    first) into ``packed`` ``(rows, bytes)``, with their code counts in ``counts`` ``(rows, 4)``.

    ``hom_ref`` and ``not_hom_alt`` ``(rows, demes)`` are the thresholds of :func:`_code` in each deme,
    ``missing`` ``(rows,)`` the threshold of a missing call, ``deme`` ``(samples,)`` each sample's deme.
    """
    n = deme.shape[0]
    for r in prange(packed.shape[0]):
        base = _variant_base(key, first + r)
        m = missing[r]
        het = 0
        hom_alt = 0
        absent = 0  # tallies in registers: an array's increments would wait on each other
        for j in range(packed.shape[1]):
            byte = 0
            for t in range(min(4, n - 4 * j)):
                s = 4 * j + t
                k = deme[s]
                c = _code(base, s, hom_ref[r, k], not_hom_alt[r, k], m)
                het += c == 1
                hom_alt += c == 2
                absent += c == 3
                byte |= c << (2 * t)
            packed[r, j] = byte
        counts[r, 0] = n - het - hom_alt - absent
        counts[r, 1] = het
        counts[r, 2] = hom_alt
        counts[r, 3] = absent


@jit_parallel
def _code_rows(
    key: np.uint64,
    variants: np.ndarray,
    hom_ref: np.ndarray,
    not_hom_alt: np.ndarray,
    missing: np.ndarray,
    deme: np.ndarray,
    start: int,
    out: np.ndarray,
) -> None:
    """The codes of the listed variants (``variants`` ``(rows,)``, global indices) for samples ``start`` ..
    ``start + out.shape[1] - 1``, into ``out`` ``(rows, samples)`` int8: the same draws as
    :func:`_packed_rows`, for a few variants and any range of samples."""
    for r in prange(variants.shape[0]):
        base = _variant_base(key, variants[r])
        for i in range(out.shape[1]):
            s = start + i
            k = deme[s]
            out[r, i] = _code(base, s, hom_ref[r, k], not_hom_alt[r, k], missing[r])


# -- sites and samples ------------------------------------------------------------------------------------
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _key(seed: int, stream: int) -> np.uint64:
    return np.uint64(np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)[0])


def _thresholds(freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hardy-Weinberg thresholds of :func:`_code` for ALT frequencies ``freq`` (any shape): ``2**32``
    times P(hom-ref) and P(not hom-alt), as uint64 (``2**32`` itself: always below)."""
    f = np.clip(freq, 0.0, 1.0)
    scale = float(2**32)
    return (
        np.floor((1.0 - f) ** 2 * scale).astype(np.uint64),
        np.floor((1.0 - f * f) * scale).astype(np.uint64),
    )


def _rate_threshold(rate: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(rate, 0.0, 1.0) * float(2**32)).astype(np.uint64)


@dataclass
class _Sites:
    """Every variant's fixed columns and model parameters (a few tens of bytes a variant)."""

    chroms: list[str]
    chrom: np.ndarray  # int8 index into chroms
    pos: np.ndarray
    rs: np.ndarray
    ref: np.ndarray  # object
    alt: np.ndarray  # object
    qual: np.ndarray  # float32, NaN where missing
    low_qual: np.ndarray  # bool
    alt_freq: np.ndarray  # ancestral ALT frequency
    deme_freq: np.ndarray  # (variants, demes)
    causal: dict[str, tuple[np.ndarray, np.ndarray]]  # trait -> (variant indices, effects)
    pc_variants: np.ndarray


def _sites(cfg: SynthStoreConfig) -> _Sites:
    rng = _rng(cfg.the_sites_seed, _SITES)
    m = cfg.variants
    lengths = np.array(GRCH38_AUTOSOMES[: cfg.chromosomes], dtype=np.int64)
    share = m * lengths / lengths.sum()
    per = np.floor(share).astype(np.int64)
    per[np.argsort(-(share - per), kind="stable")[: m - int(per.sum())]] += 1  # largest remainders
    pos = np.concatenate(
        [np.sort(rng.choice(int(n_bp), int(k), replace=False)) + 1 for n_bp, k in zip(lengths, per, strict=True)]
    )
    chrom = np.repeat(np.arange(cfg.chromosomes, dtype=np.int8), per)
    rs = rng.choice(200_000_000, m, replace=False) + 1_000_000
    # ALT frequencies: density 1/p on [MIN_FREQ, 1 - MIN_FREQ] (the neutral spectrum of a derived allele)
    lo, hi = np.log(MIN_FREQ), np.log1p(-MIN_FREQ)
    alt_freq = np.exp(lo + (hi - lo) * rng.random(m))
    fst = np.asarray(DEME_FST)  # Balding-Nichols: each deme's frequency drifts from the ancestral one
    deme_freq = rng.beta(alt_freq[:, None] * (1 - fst) / fst, (1 - alt_freq[:, None]) * (1 - fst) / fst)
    # alleles: transitions twice as likely as either transversion; a few indels
    ref_base = rng.integers(0, 4, m)
    kind = rng.random(m)
    transversion = (ref_base + rng.choice(np.array([1, 3]), m)) % 4
    alt_base = np.where(kind < 2 / 3, _TRANSITION[ref_base], transversion)
    ref = _BASES[ref_base]
    alt = _BASES[alt_base]
    indel = np.flatnonzero(rng.random(m) < INDEL_SHARE)
    extra = rng.integers(0, 4, (indel.size, 3))
    extra_len = rng.integers(1, 4, indel.size)
    insertion = rng.random(indel.size) < 0.5
    for i, v in enumerate(indel):
        more = "".join(_BASES[extra[i, : extra_len[i]]])
        if insertion[i]:
            alt[v] = ref[v] + more
        else:
            ref[v] = ref[v] + more
            alt[v] = _BASES[ref_base[v]]
    qual = rng.integers(30, 100, m).astype(np.float32)
    qual[rng.random(m) < 0.05] = np.nan
    low_qual = rng.random(m) < 0.02
    eligible = np.flatnonzero(np.minimum(alt_freq, 1 - alt_freq) > 0.08)
    causal = {}
    for trait, count, size in (("ldl", cfg.n_causal_ldl, (0.25, 0.4)), ("case", cfg.n_causal_case, (0.45, 0.7))):
        idx = np.sort(rng.choice(eligible, min(count, eligible.size), replace=False))
        causal[trait] = (idx, rng.choice([-1, 1], idx.size) * rng.uniform(*size, idx.size))
    common = np.flatnonzero((alt_freq > 0.05) & (alt_freq < 0.95))
    pc_variants = np.sort(rng.choice(common, min(PC_VARIANTS, common.size), replace=False))
    chroms = [str(c + 1) for c in range(cfg.chromosomes)]
    return _Sites(chroms, chrom, pos, rs, ref, alt, qual, low_qual, alt_freq, deme_freq, causal, pc_variants)


@dataclass
class _Cohort:
    """The samples: demes, each variant's missing rate, the genotype key, the phenotype table and truth."""

    deme: np.ndarray  # int8
    missing_rate: np.ndarray  # per variant
    key: np.uint64
    sample_ids: list[str]
    phenotypes: pa.Table
    truth: list[dict[str, Any]]


def _codes(sites: _Sites, key: np.uint64, deme: np.ndarray, variants: np.ndarray, start: int, stop: int) -> np.ndarray:
    """True codes (no missing call) of a few variants for samples ``start`` .. ``stop - 1``."""
    hom_ref, not_hom_alt = _thresholds(sites.deme_freq[variants])
    out = np.empty((variants.size, stop - start), dtype=np.int8)
    if variants.size and stop > start:
        never = np.zeros(variants.size, dtype=np.uint64)
        _code_rows(key, variants.astype(np.int64), hom_ref, not_hom_alt, never, deme, start, out)
    return out


def _principal_components(sites: _Sites, key: np.uint64, deme: np.ndarray) -> np.ndarray:
    """``(samples, 4)`` principal components (mean 0, variance 1) of the standardised true genotypes of
    the :data:`PC_VARIANTS` variants, computed sample chunk by sample chunk.

    The variants' Gram matrix of the 0/1/2 codes is summed exactly (a chunk's sums are integers below
    ``4 * SAMPLE_CHUNK``, exact in float32; the chunks' are added in float64), so it does not depend on
    the order of the sums (BLAS threads); the eigenvectors and the scores are computed on one BLAS
    thread, so the components are the same bytes run after run.
    """
    from threadpoolctl import threadpool_limits

    n = deme.size
    chunks = [(s, min(s + SAMPLE_CHUNK, n)) for s in range(0, n, SAMPLE_CHUNK)]
    p = sites.pc_variants.size
    sums = np.zeros(p)
    gram = np.zeros((p, p))
    for a, b in chunks:
        x = _codes(sites, key, deme, sites.pc_variants, a, b).astype(np.float32)
        sums += x.sum(axis=1, dtype=np.float64)
        gram += x @ x.T
    mean = sums / n
    cov = gram / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    keep = sd > 1e-9
    out = np.zeros((n, N_PCS))
    if keep.sum() < 2:
        return out
    with threadpool_limits(limits=1):
        corr = cov[np.ix_(keep, keep)] / np.outer(sd[keep], sd[keep])
        values, vectors = np.linalg.eigh(corr)
        k = min(N_PCS, int(keep.sum()))
        order = np.argsort(values)[::-1][:k]
        weights = vectors[:, order] / np.sqrt(np.maximum(values[order], 1e-12))
        for a, b in chunks:
            x = _codes(sites, key, deme, sites.pc_variants[keep], a, b).astype(np.float64)
            z = (x - mean[keep, None]) / sd[keep, None]
            out[a:b, :k] = z.T @ weights
    out = out * np.sign(out[0:1, :] + 1e-300)  # a deterministic sign, as better synth chooses it
    scale = out.std(axis=0)
    return (out - out.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _as_written(values: np.ndarray, spec: str) -> np.ndarray:
    """The numbers a phenotype TSV written with ``spec`` (e.g. ``%.4f``) gives back when read."""
    return np.char.mod(spec, values).astype(np.float64)


def _cohort(cfg: SynthStoreConfig, sites: _Sites) -> _Cohort:
    n, m = cfg.samples, cfg.variants
    rng = _rng(cfg.seed, _SAMPLES)
    key = _key(cfg.seed, _GENOTYPES)
    deme = rng.choice(len(DEME_SHARES), n, p=np.asarray(DEME_SHARES)).astype(np.int8)
    rate = cfg.missing_genotype_rate
    missing_rate = (
        _rng(cfg.seed, _MISSING).beta(0.3, 0.3 / rate - 0.3, m) if rate > 0 else np.zeros(m, dtype=np.float64)
    )
    # the phenotypes of better synth (genomics/synth.py), without its stations' batch effects
    age = np.clip(rng.normal(55, 12, n), 18, 95)
    sex = rng.integers(1, 3, n)  # PLINK coding: 1 male, 2 female
    bmi = np.clip(rng.normal(26.5, 4.2, n), 15, 60)
    smoking = rng.choice(np.array(["never", "former", "current"]), n, p=[0.5, 0.3, 0.2])
    shift = np.asarray(DEME_SHIFT)[deme]
    genetic = {}
    truth = []
    for trait, (idx, effects) in sites.causal.items():
        codes = _codes(sites, key, deme, idx, 0, n)
        genetic[trait] = codes.T.astype(np.float64) @ effects
        for v, effect, row in zip(idx, effects, codes, strict=True):
            truth.append(
                {
                    "trait": trait,
                    "chrom": sites.chroms[sites.chrom[v]],
                    "pos": int(sites.pos[v]),
                    "id": f"rs{sites.rs[v]}",
                    "ref": str(sites.ref[v]),
                    "alt": str(sites.alt[v]),
                    "alt_freq": round(float(row.mean()) / 2, 4),
                    "effect": round(float(effect), 4),
                }
            )
    pcs = _principal_components(sites, key, deme)
    ldl = 3.2 + genetic["ldl"] + 0.015 * (age - 55) + 0.2 * sex + 0.03 * (bmi - 26.5) + shift + rng.normal(0, 0.8, n)
    eta = -1.0 + genetic["case"] + 0.02 * (age - 55) + 0.3 * sex + 0.5 * (smoking == "current") + shift
    case = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int64)
    na_ldl = rng.random(n) < 0.03
    na_case = rng.random(n) < 0.02
    na_age = rng.random(n) < 0.01
    width = max(6, len(str(n)))
    ids = [f"{cfg.id_prefix}{i:0{width}d}" for i in range(1, n + 1)]
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array(ids, pa.string()),
        "sample_index": pa.array(np.arange(n, dtype=np.int32)),
        "age": pa.array(_as_written(age, "%.1f"), pa.float64(), mask=na_age),
        "sex": pa.array(sex.astype(np.int64)),
        "bmi": pa.array(_as_written(bmi, "%.1f"), pa.float64()),
        "smoking": pa.array(smoking.tolist(), pa.string()),
    }
    for i in range(N_PCS):
        columns[f"pc{i + 1}"] = pa.array(_as_written(pcs[:, i], "%.6f"), pa.float64())
    columns["ldl"] = pa.array(_as_written(ldl, "%.4f"), pa.float64(), mask=na_ldl)
    columns["case"] = pa.array(case, pa.int64(), mask=na_case)
    return _Cohort(deme, missing_rate, key, ids, pa.table(columns), truth)


def _batch(sites: _Sites, cohort: _Cohort, first: int, stop: int) -> pa.RecordBatch:
    """Variants ``first`` .. ``stop - 1`` as a batch of ``variants.parquet`` rows."""
    n = cohort.deme.size
    rows = stop - first
    hom_ref, not_hom_alt = _thresholds(sites.deme_freq[first:stop])
    packed = np.empty((rows, packed_width(n)), dtype=np.uint8)
    counts = np.empty((rows, 4), dtype=np.int32)
    _packed_rows(
        cohort.key,
        first,
        hom_ref,
        not_hom_alt,
        _rate_threshold(cohort.missing_rate[first:stop]),
        cohort.deme,
        packed,
        counts,
    )
    ac = counts[:, 1] + 2 * counts[:, 2]
    an = 2 * (n - counts[:, 3])
    qual = sites.qual[first:stop]
    chroms = np.array(sites.chroms, dtype=object)
    return build_batch(
        n,
        chrom=chroms[sites.chrom[first:stop]].tolist(),
        pos=sites.pos[first:stop],
        ident=[f"rs{r}" for r in sites.rs[first:stop].tolist()],
        ref=sites.ref[first:stop].tolist(),
        alt=sites.alt[first:stop].tolist(),
        qual=pa.array(qual, pa.float32(), mask=np.isnan(qual)),
        filt=np.where(sites.low_qual[first:stop], "LowQual", "PASS").tolist(),
        info=[f"AC={c};AN={t}" for c, t in zip(ac.tolist(), an.tolist(), strict=True)],
        record=np.arange(first, stop, dtype=np.int64),
        alt_index=np.ones(rows, dtype=np.int16),
        counts=counts,
        packed=packed,
    )


def chunk_variants(n_samples: int) -> int:
    """Variants generated and written at a time for ``n_samples`` samples: at most
    :data:`CHUNK_VARIANTS`, and at most one row group's bytes of genotypes.

    Examples
    --------
    >>> chunk_variants(1000), chunk_variants(100_000), chunk_variants(10_000_000)
    (8192, 1342, 13)
    """
    return max(1, min(CHUNK_VARIANTS, ROW_GROUP_BYTES // max(packed_width(n_samples), 1)))


def config_sha256(cfg: SynthStoreConfig) -> str:
    """The hash the catalog records as the source's: of the configuration, with the generator's model."""
    model = {
        "generator": "better synth-store 1",
        "min_freq": MIN_FREQ,
        "deme_shares": DEME_SHARES,
        "deme_fst": DEME_FST,
        "deme_shift": DEME_SHIFT,
        "pc_variants": PC_VARIANTS,
        "indel_share": INDEL_SHARE,
    }
    text = json.dumps({"config": asdict(cfg), "model": model}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def synth_store(
    store: Store,
    cfg: SynthStoreConfig,
    *,
    chunk: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthStoreReport:
    """Generate a synthetic dataset and write it into ``store`` as ``better ingest`` would.

    Parameters
    ----------
    store
        An opened (or newly created) :class:`~better.genomics.store.Store`.
    cfg
        What to generate (validated here).
    chunk
        Variants generated and written at a time (default :func:`chunk_variants`); the bytes written do
        not depend on it.
    on_progress
        Called with ``(variants written, variants)`` after each chunk; an exception it raises stops the
        run, and nothing is committed.

    Returns
    -------
    SynthStoreReport
        Counts, chromosomes, the causal variants and the time taken.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     store = Store.create(folder)
    ...     r = synth_store(store, SynthStoreConfig(dataset="tiny", samples=40, variants=30, chromosomes=2))
    ...     r.n_samples, r.n_variants, r.chromosomes, store.dataset("tiny").n_variants
    (40, 30, ['1', '2'], 30)
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    cfg.validate()
    store.check_writable()
    sites = _sites(cfg)
    cohort = _cohort(cfg, sites)
    n, m = cfg.samples, cfg.variants
    step = chunk_variants(n) if chunk is None else max(1, int(chunk))
    store.clean_up()  # what a killed ingest left
    tmp = store.new_temporary(cfg.dataset)
    try:
        writer = RowGroupWriter(tmp / "variants.parquet", n)
        # As in ingest: the Parquet encoding and compression of one chunk (Arrow, without the GIL) overlap
        # the drawing of the next, so memory holds two chunks at most.
        writing: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                for first in range(0, m, step):
                    batch = _batch(sites, cohort, first, min(first + step, m))
                    if writing is not None:
                        writing.result()
                    writing = pool.submit(writer.write, batch)
                    if on_progress is not None:
                        on_progress(min(first + step, m), m)
                if writing is not None:
                    writing.result()
            finally:
                if writing is not None:
                    wait([writing])  # never close the file under a write
                writer.close()
        pq.write_table(cohort.phenotypes, tmp / "phenotypes.parquet")
        pq.write_table(
            pa.table(
                [
                    pa.array(np.arange(n, dtype=np.int32)),
                    pa.array(cohort.sample_ids, pa.string()),
                    pa.array(np.ones(n, dtype=bool)),
                ],
                schema=SAMPLES_SCHEMA,
            ),
            tmp / "samples.parquet",
        )
        columns = {f.name: str(f.type) for f in cohort.phenotypes.schema if f.name not in ("sample_id", "sample_index")}
        report = SynthStoreReport(
            dataset=cfg.dataset,
            n_samples=n,
            n_variants=writer.n_rows,
            chromosomes=writer.chromosomes,
            n_phenotyped=n,
            phenotype_columns=columns,
            truth=cohort.truth,
            sha256=config_sha256(cfg),
        )
        report.seconds = time.perf_counter() - started
        details = {
            "records": m,
            "variants": writer.n_rows,
            "multiallelic_records": 0,
            "samples": n,
            "format": "synthetic",
            "dosages": False,
            "config": {**asdict(cfg), "sites_seed": cfg.the_sites_seed},
            "model": {
                "allele_frequencies": f"ALT frequency density 1/p on [{MIN_FREQ}, {1 - MIN_FREQ}]",
                "demes": {"shares": DEME_SHARES, "fst": DEME_FST, "model": "Balding-Nichols, Hardy-Weinberg"},
                "missing": f"per-variant rate ~ Beta(0.3, 0.3 / {cfg.missing_genotype_rate} - 0.3)",
                "pcs": f"{sites.pc_variants.size} common variants",
            },
            "truth": cohort.truth,
        }
        store.commit_dataset(
            cfg.dataset,
            tmp,
            {
                "n_samples": n,
                "n_variants": writer.n_rows,
                "n_records": writer.n_rows,
                "n_phenotyped": n,
                "chromosomes": writer.chromosomes,
                "phenotype_columns": columns,
                "dosages": False,
            },
            [
                {
                    "kind": "variants",
                    "path": _command(cfg),
                    "sha256": report.sha256,
                    "bytes": 0,
                    "software": software_versions(),
                    "started_at": started_at,
                    "seconds": report.seconds,
                    "details": details,
                }
            ],
        )
    except BaseException:
        store.discard_temporary(tmp)
        raise
    return report


def _command(cfg: SynthStoreConfig) -> str:
    """The command line that makes this dataset again (the catalog's source path of a generated one)."""
    return (
        f"better synth-store --dataset {cfg.dataset} --samples {cfg.samples} --variants {cfg.variants} "
        f"--seed {cfg.seed} --sites-seed {cfg.the_sites_seed} --chromosomes {cfg.chromosomes} "
        f"--id-prefix {cfg.id_prefix}"
    )


def write_truth(path: str | os.PathLike[str], truth: list[dict[str, Any]]) -> None:
    """Write the causal variants as ``better synth`` writes ``truth.tsv``."""
    from better.genomics.tsv import write_tsv

    names = ["trait", "chrom", "pos", "id", "ref", "alt", "alt_freq", "effect"]
    write_tsv(path, names, ([str(t[c]) for c in names] for t in truth))
