"""``better synth``: realistic synthetic cohorts split across stations.

Genealogies come from msprime (coalescent with recombination in a three-deme island model), so the
cohort has linkage disequilibrium, a realistic allele-frequency spectrum, population structure (which
the principal components pc1..pc4, computed from the genotypes, capture) and the occasional multi-allelic
site from recurrent mutation. Stations sample the demes in different proportions and add a batch effect
to the phenotype means. A quantitative trait (``ldl``) and a binary trait (``case``) depend on a few
causal variants, on the covariates and on ancestry; the truth is written next to the data.

With ``dosages`` (``better synth --dosages``) the VCFs are imputed-style, as an imputation server returns
them (GT:DS:GP, INFO R2, multi-allelic sites split): :mod:`better.genomics.synth_dosage`. The phenotypes
and the truth are those of the same seed without it.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from better.engine.errors import InputError
from better.genomics.tsv import write_tsv

if TYPE_CHECKING:
    from better.genomics.synth_dosage import ImputedCohort

STATION_NAMES = ("milano", "nijmegen", "barcelona", "lyon", "helsinki", "porto", "zagreb")
N_DEMES = 3
NE = 10_000
MUTATION_RATE = 1.25e-8
RECOMBINATION_RATE = 1e-8
MIGRATION_RATE = 1e-3


@dataclass
class SynthConfig:
    """Parameters of a synthetic cohort (the defaults are the demo cohort)."""

    out: str = "data/synthetic/cohort"
    stations: int = 3
    samples: int = 2000
    variants: int = 8000
    seed: int = 42
    chrom: str = "22"
    offset: int = 16_000_000
    n_causal_ldl: int = 5
    n_causal_case: int = 4
    missing_genotype_rate: float = 0.01
    #: Share of variants with no missing genotype at all (as in imputed data); 0 keeps every variant's rate.
    fully_called: float = 0.0
    #: "variable": each variant's missing rate drawn around ``missing_genotype_rate`` (many variants with
    #: very few missing calls, a few with many: as in sequencing); "uniform": the same rate everywhere.
    missing_rates: str = "variable"
    #: Write imputed-style VCFs (minimac's GT:DS:GP, INFO R2, IMPUTED/TYPED; multi-allelic sites split into
    #: biallelic records): see :mod:`better.genomics.synth_dosage`. The phenotypes stay those of the true
    #: genotypes, the same as without ``dosages`` for the same seed.
    dosages: bool = False
    #: With ``dosages``: also write GP (genotype posteriors); off, the files are ``GT:DS`` only (smaller).
    gp: bool = True

    def validate(self) -> None:
        """Refuse a configuration that cannot make a cohort, naming the option.

        Raises
        ------
        InputError
            On a bad number of stations, samples or variants, or a bad missing-data option.
        """
        if not 1 <= self.stations <= 50:
            raise InputError(f"--stations {self.stations}: choose between 1 and 50 stations")
        if self.samples < 4 * self.stations:
            raise InputError(f"--samples {self.samples}: need at least 4 samples per station")
        if not 10 <= self.variants <= 5_000_000:
            raise InputError(f"--variants {self.variants}: choose between 10 and 5,000,000 variants")
        if not 0.0 <= self.fully_called <= 1.0:
            raise InputError(f"--fully-called {self.fully_called}: a share between 0 and 1")
        if self.missing_rates not in ("variable", "uniform"):
            raise InputError(f"--missing-rates {self.missing_rates}: use variable or uniform")


@dataclass
class SynthResult:
    """Where everything was written, and what the simulation chose."""

    out: Path
    stations: list[str]
    station_sizes: list[int]
    n_variants: int
    n_records: int
    n_multiallelic: int
    files: dict[str, str] = field(default_factory=dict)
    batch_effects: dict[str, float] = field(default_factory=dict)


def station_names(n: int) -> list[str]:
    """``n`` station names: the BETTER centres first, then ``station8``, ``station9``, ..."""
    return [STATION_NAMES[i] if i < len(STATION_NAMES) else f"station{i + 1}" for i in range(n)]


def _simulate(cfg: SynthConfig, deme_counts: list[int], rng: np.random.Generator):  # type: ignore[no-untyped-def]
    import msprime

    demography = msprime.Demography.island_model([NE] * N_DEMES, migration_rate=MIGRATION_RATE)
    n_hap = 2 * sum(deme_counts)
    harmonic = float(np.sum(1.0 / np.arange(1, n_hap)))
    length = cfg.variants / (4 * NE * MUTATION_RATE * harmonic) * 1.2
    for _ in range(6):
        ts = msprime.sim_ancestry(
            samples={f"pop_{d}": c for d, c in enumerate(deme_counts) if c},
            demography=demography,
            sequence_length=int(length),
            recombination_rate=RECOMBINATION_RATE,
            random_seed=int(rng.integers(1, 2**31)),
        )
        ts = msprime.sim_mutations(ts, rate=MUTATION_RATE, random_seed=int(rng.integers(1, 2**31)))
        if ts.num_sites >= cfg.variants:
            return ts.delete_sites(np.arange(cfg.variants, ts.num_sites))
        length *= 1.3 * cfg.variants / max(ts.num_sites, 1)
    raise InputError("the simulation produced too few variants; try fewer --variants")  # pragma: no cover


def _principal_components(dosage: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Top ``k`` PCs (unit variance) of samples from standardised common-variant dosages."""
    freq = dosage.mean(axis=1) / 2
    common = np.flatnonzero((freq > 0.05) & (freq < 0.95))
    if common.size > 4000:
        common = np.sort(rng.choice(common, 4000, replace=False))
    x = dosage[common].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True)
    if x.size > 4_000_000:  # large cohorts: only the top k singular vectors (Lanczos), not a full SVD
        from scipy.sparse.linalg import svds

        _, s, vt = svds(x, k=k, v0=np.ones(min(x.shape)), tol=0, solver="arpack")
        vt = vt[np.argsort(s)[::-1]]
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = vt[:k].T
    pcs = pcs * np.sign(pcs[0:1, :] + 1e-300)  # deterministic sign
    return (pcs - pcs.mean(axis=0)) / pcs.std(axis=0)


def synthesize(cfg: SynthConfig, on_step: Callable[[str], None] | None = None) -> SynthResult:
    """Generate a cohort into ``cfg.out`` and return where its files are.

    Examples
    --------
    >>> r = synthesize(SynthConfig(out="/tmp/doc-cohort", samples=60, variants=50, stations=2))  # doctest: +SKIP
    >>> sorted(r.files)[:3]  # doctest: +SKIP
    ['cohort.json', 'milano.pheno.tsv', 'milano.vcf.gz']
    """
    cfg.validate()
    step = on_step or (lambda _msg: None)
    rng = np.random.default_rng(cfg.seed)
    names = station_names(cfg.stations)
    weights = 1.0 / np.arange(1, cfg.stations + 1)
    sizes = np.floor(cfg.samples * weights / weights.sum()).astype(int)
    sizes[0] += cfg.samples - sizes.sum()
    # Each station samples the three demes in its own proportions.
    mix = np.full((cfg.stations, N_DEMES), 0.2)
    mix[np.arange(cfg.stations), np.arange(cfg.stations) % N_DEMES] = 0.6
    station_deme = [rng.choice(N_DEMES, size=s, p=mix[k]) for k, s in enumerate(sizes)]
    deme_counts = [int(sum((sd == d).sum() for sd in station_deme)) for d in range(N_DEMES)]

    step(f"simulating {cfg.samples} samples x {cfg.variants} variants (msprime)")
    ts = _simulate(cfg, deme_counts, rng)
    # msprime numbers individuals deme by deme; map each station's samples onto them.
    pop_of_ind = np.array([ts.node(ts.individual(i).nodes[0]).population for i in range(ts.num_individuals)])
    pool = {d: list(rng.permutation(np.flatnonzero(pop_of_ind == d))) for d in range(N_DEMES)}
    order = np.array([pool[d].pop() for sd in station_deme for d in sd])
    station_of = np.repeat(np.arange(cfg.stations), sizes)
    deme_of = np.concatenate(station_deme)

    hap = ts.genotype_matrix().astype(np.int8)  # (variants, 2 * individuals), allele indices
    hap = hap.reshape(hap.shape[0], -1, 2)[:, order, :]  # (variants, samples, 2) in cohort order
    alleles = [_site_alleles(ts, j) for j in range(ts.num_sites)]
    n_alleles = np.array([len(a) for a in alleles])
    positions = cfg.offset + ts.tables.sites.position.astype(np.int64) + 1

    step("computing principal components and phenotypes")
    alt1 = (hap == 1).sum(axis=2).astype(np.int8)  # dosage of the first ALT allele
    pcs = _principal_components(alt1, 4, rng)
    freq = alt1.mean(axis=1) / 2
    eligible = np.flatnonzero((n_alleles == 2) & (np.minimum(freq, 1 - freq) > 0.08))
    causal_ldl = np.sort(rng.choice(eligible, min(cfg.n_causal_ldl, eligible.size), replace=False))
    causal_case = np.sort(rng.choice(eligible, min(cfg.n_causal_case, eligible.size), replace=False))
    beta_ldl = rng.choice([-1, 1], causal_ldl.size) * rng.uniform(0.25, 0.4, causal_ldl.size)
    beta_case = rng.choice([-1, 1], causal_case.size) * rng.uniform(0.45, 0.7, causal_case.size)

    n = cfg.samples
    age = np.clip(rng.normal(55, 12, n), 18, 95).round(1)
    sex = rng.integers(1, 3, n)  # PLINK coding: 1 male, 2 female
    bmi = np.clip(rng.normal(26.5, 4.2, n), 15, 60).round(1)
    smoking = rng.choice(np.array(["never", "former", "current"]), n, p=[0.5, 0.3, 0.2])
    deme_shift = np.array([0.0, 0.35, -0.25])
    batch = {nm: float(round(b, 3)) for nm, b in zip(names, rng.normal(0, 0.3, cfg.stations), strict=True)}
    batch_arr = np.array([batch[nm] for nm in names])[station_of]
    g_ldl = alt1[causal_ldl].T.astype(float) @ beta_ldl
    ldl = (
        3.2
        + g_ldl
        + 0.015 * (age - 55)
        + 0.2 * sex
        + 0.03 * (bmi - 26.5)
        + deme_shift[deme_of]
        + batch_arr
        + rng.normal(0, 0.8, n)
    )
    g_case = alt1[causal_case].T.astype(float) @ beta_case
    eta = -1.0 + g_case + 0.02 * (age - 55) + 0.3 * sex + 0.5 * (smoking == "current") + deme_shift[deme_of] + batch_arr
    case = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)

    # Missing data: genotypes at a per-variant rate, a few variants failing at one station, phenotypes.
    rate = (
        rng.beta(0.3, 0.3 / max(cfg.missing_genotype_rate, 1e-9) - 0.3, hap.shape[0])
        if cfg.missing_genotype_rate > 0
        else np.zeros(hap.shape[0])
    )
    if cfg.missing_rates == "uniform":  # drawn above all the same: the rest of the cohort stays as with "variable"
        rate = np.full(hap.shape[0], cfg.missing_genotype_rate)
    if cfg.fully_called > 0:
        rate[rng.random(hap.shape[0]) < cfg.fully_called] = 0.0
    if cfg.dosages:  # imputed data has its own missing entries; skip the draws without building the matrix
        # rng.random(shape) takes one 64-bit draw of default_rng's PCG64 per value
        cast(np.random.PCG64, rng.bit_generator).advance(hap.shape[0] * n)
        missing = np.zeros((0, n), dtype=bool)
    else:
        missing = rng.random((hap.shape[0], n)) < rate[:, None]
    failed = np.flatnonzero(rng.random(hap.shape[0]) < 0.005)
    for v in failed:
        at = station_of == rng.integers(cfg.stations)
        if not cfg.dosages:
            missing[v, at] = True
    na_ldl = rng.random(n) < 0.03
    na_case = rng.random(n) < 0.02
    na_age = rng.random(n) < 0.01

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # the centres' samples are MIL00001, NIJ00001, ...; station8 on, ST8_00001, ... (unique with any count)
    prefixes = [n[:3].upper() if k < len(STATION_NAMES) else f"ST{k + 1}_" for k, n in enumerate(names)]
    ids = np.array([f"{prefixes[k]}{i:05d}" for k, s in enumerate(sizes) for i in range(1, s + 1)])
    records = _Records(cfg, positions, alleles, rng)
    files: dict[str, str] = {}
    imputed = None
    if cfg.dosages:
        from better.genomics.synth_dosage import ImputedRecords, write_imputed_vcfs

        step("imputing: writing the stations' and the pooled dosage VCFs")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        imputed = write_imputed_vcfs(
            out,
            [
                *((f"{nm}.vcf.gz", int(starts[k]), int(starts[k + 1])) for k, nm in enumerate(names)),
                ("pooled.vcf.gz", 0, n),
            ],
            chrom=cfg.chrom,
            contig_length=records.length,
            hap=hap,
            records=ImputedRecords.split(cfg.chrom, positions, alleles),
            causal_sites=np.union1d(causal_ldl, causal_case),
            sample_ids=ids,
            rng=rng,
            gp=cfg.gp,
        )
        files.update(imputed.files)
        files["imputation.tsv"] = _write_imputation_truth(out / "imputation.tsv", imputed)
    step("writing station VCFs and phenotype tables" if imputed is None else "writing phenotype tables")
    for k, nm in enumerate(names):
        cols = np.flatnonzero(station_of == k)
        if imputed is None:
            files[f"{nm}.vcf.gz"] = _write_vcf(out / f"{nm}.vcf.gz", records, hap[:, cols], missing[:, cols], ids[cols])
        files[f"{nm}.pheno.tsv"] = _write_table(
            out / f"{nm}.pheno.tsv",
            "sample_id",
            ids[cols],
            _phenotype_columns(cols, age, sex, bmi, smoking, pcs, ldl, case, na_age, na_ldl, na_case, False),
        )
    step("writing the pooled VCF, the PLINK 2 phenotype file and the truth")
    everyone = np.arange(n)
    if imputed is None:
        files["pooled.vcf.gz"] = _write_vcf(out / "pooled.vcf.gz", records, hap, missing, ids)
    plink_cols = _phenotype_columns(everyone, age, sex, bmi, smoking, pcs, ldl, case, na_age, na_ldl, na_case, True)
    plink_cols["station"] = np.array(names)[station_of]
    for k, nm in enumerate(names[1:], start=1):
        plink_cols[f"station_{nm}"] = (station_of == k).astype(int).astype(str)
    files["pooled.pheno.tsv"] = _write_table(out / "pooled.pheno.tsv", "#IID", ids, plink_cols)
    truth_rows = []
    for trait, idx, eff in (("ldl", causal_ldl, beta_ldl), ("case", causal_case, beta_case)):
        for v, b in zip(idx, eff, strict=True):
            truth_rows.append(
                [
                    trait,
                    cfg.chrom,
                    str(positions[v]),
                    records.ids[v]
                    if imputed is None
                    else f"{cfg.chrom}:{positions[v]}:{alleles[v][0]}:{alleles[v][1]}",
                    alleles[v][0],
                    alleles[v][1],
                    f"{freq[v]:.4f}",
                    f"{b:.4f}",
                ]
            )
    write_tsv(out / "truth.tsv", ["trait", "chrom", "pos", "id", "ref", "alt", "alt_freq", "effect"], truth_rows)
    files["truth.tsv"] = str(out / "truth.tsv")
    result = SynthResult(
        out=out,
        stations=names,
        station_sizes=[int(s) for s in sizes],
        n_variants=int((n_alleles - 1).sum()),
        n_records=int(hap.shape[0]) if imputed is None else int((n_alleles - 1).sum()),
        n_multiallelic=int((n_alleles > 2).sum()) if imputed is None else 0,
        files=files,
        batch_effects=batch,
    )
    meta = {
        "config": asdict(cfg),
        "stations": names,
        "station_sizes": result.station_sizes,
        "records": result.n_records,
        "variants_after_split": result.n_variants,
        "multiallelic_records": result.n_multiallelic,
        "batch_effects": batch,
        "effects": {"ldl": "per ALT allele, in ldl units", "case": "per ALT allele, log odds"},
        "demography": {
            "model": "island",
            "demes": N_DEMES,
            "Ne": NE,
            "migration_rate": MIGRATION_RATE,
            "mutation_rate": MUTATION_RATE,
            "recombination_rate": RECOMBINATION_RATE,
        },
    }
    if imputed is not None:
        meta["imputation"] = _imputation_summary(imputed, int((n_alleles > 2).sum()), cfg.gp)
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n")
    files["cohort.json"] = str(out / "cohort.json")
    return result


def _write_imputation_truth(path: Path, imputed: ImputedCohort) -> str:
    """Per record: the target imputation quality, TYPED or not, and the r² of DS with the true genotype."""
    rec = imputed.records
    rows = zip(
        rec.ids,
        np.char.mod("%.4f", imputed.quality),
        np.where(imputed.typed, "1", "0"),
        np.where(np.isnan(imputed.true_r2), "NA", np.char.mod("%.4f", imputed.true_r2)),
        strict=True,
    )
    write_tsv(path, ["id", "target_r2", "typed", "true_r2"], rows)
    return str(path)


def _imputation_summary(imputed: ImputedCohort, n_split: int, gp: bool) -> dict[str, object]:
    from better.genomics import synth_dosage as sd

    return {
        "model": "haplotype posterior given a Gaussian observation; sigma set per record for its target r2",
        "format": "GT:DS:GP" if gp else "GT:DS",
        "multiallelic_sites_split": n_split,
        "quality": {
            "good": f"Beta{sd.GOOD_BETA}",
            "poor": f"Beta{sd.POOR_BETA}",
            "typed": f"Beta{sd.TYPED_BETA}",
            "poor_share_common": sd.POOR_SHARE_COMMON,
            "poor_share_rare": sd.POOR_SHARE_RARE,
            "typed_share_common": sd.TYPED_SHARE,
        },
        "missing": {"record_rate": sd.MISSING_RECORD_RATE, "sample_rate": sd.MISSING_SAMPLE_RATE},
        "typed_records": int(imputed.typed.sum()),
        "median_target_r2": round(float(np.median(imputed.quality)), 4),
        "truth": "imputation.tsv",
    }


def _site_alleles(ts, j: int) -> list[str]:  # type: ignore[no-untyped-def]
    site = ts.site(j)
    alleles = [site.ancestral_state]
    for m in site.mutations:
        if m.derived_state not in alleles:
            alleles.append(m.derived_state)
    return alleles


def _phenotype_columns(rows, age, sex, bmi, smoking, pcs, ldl, case, na_age, na_ldl, na_case, plink):  # type: ignore[no-untyped-def]
    def fmt(values, na, spec):  # type: ignore[no-untyped-def]
        return np.where(na[rows], "NA", np.char.mod(spec, values[rows]))

    no = np.zeros_like(na_age)
    cols = {
        "age": fmt(age, na_age, "%.1f"),
        "sex": fmt(sex, no, "%d"),
        "bmi": fmt(bmi, no, "%.1f"),
        "smoking": smoking[rows],
    }
    for i in range(pcs.shape[1]):
        cols[f"pc{i + 1}"] = fmt(pcs[:, i], no, "%.6f")
    cols["ldl"] = fmt(ldl, na_ldl, "%.4f")
    cols["case"] = fmt(case + (1 if plink else 0), na_case, "%d")  # PLINK codes controls 1, cases 2
    return cols


def _write_table(path: Path, id_name: str, ids: np.ndarray, cols: dict[str, np.ndarray]) -> str:
    write_tsv(path, [id_name, *cols], zip(ids.astype(str), *cols.values(), strict=True))
    return str(path)


class _Records:
    """The fixed VCF columns of each site, shared by every file of the cohort."""

    def __init__(
        self, cfg: SynthConfig, positions: np.ndarray, alleles: list[list[str]], rng: np.random.Generator
    ) -> None:
        m = positions.size
        self.cfg = cfg
        self.positions = positions
        self.alleles = alleles
        rs = np.sort(rng.choice(10**8, m, replace=False)) + 10**6
        self.ids = [f"rs{r}" if u > 0.08 else "." for r, u in zip(rs, rng.random(m), strict=True)]
        self.qual = [str(q) if u > 0.05 else "." for q, u in zip(rng.integers(30, 100, m), rng.random(m), strict=True)]
        self.filter = ["LowQual" if u < 0.02 else "PASS" for u in rng.random(m)]
        self.length = int(positions[-1]) + 1000 if m else 1000


def _write_vcf(path: Path, rec: _Records, hap: np.ndarray, missing: np.ndarray, ids: np.ndarray) -> str:
    import pysam

    m, n = missing.shape
    header = [
        "##fileformat=VCFv4.2",
        "##source=better-synth (msprime island model; see cohort.json)",
        f"##contig=<ID={rec.cfg.chrom},length={rec.length}>",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##FILTER=<ID=LowQual,Description="Low call quality">',
        '##INFO=<ID=AC,Number=A,Type=Integer,Description="ALT allele count in called genotypes">',
        '##INFO=<ID=AN,Number=1,Type=Integer,Description="Number of called alleles">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *map(str, ids)]),
    ]
    text = np.empty((m, n, 4), dtype=np.uint8)
    text[:, :, 0] = hap[:, :, 0] + ord("0")
    text[:, :, 1] = ord("|")
    text[:, :, 2] = hap[:, :, 1] + ord("0")
    text[:, :, 3] = ord("\t")
    text[missing] = np.frombuffer(b"./.\t", dtype=np.uint8)
    if n:
        text[:, -1, 3] = ord("\n")
    called = ~missing
    with pysam.BGZFile(str(path), "wb", index=None) as f:
        f.write(("\n".join(header) + "\n").encode())
        for j in range(m):
            al = rec.alleles[j]
            ac = [
                int(((hap[j, :, 0] == a) & called[j]).sum() + ((hap[j, :, 1] == a) & called[j]).sum())
                for a in range(1, len(al))
            ]
            fixed = (
                f"{rec.cfg.chrom}\t{rec.positions[j]}\t{rec.ids[j]}\t{al[0]}\t{','.join(al[1:])}\t"
                f"{rec.qual[j]}\t{rec.filter[j]}\tAC={','.join(map(str, ac))};AN={2 * int(called[j].sum())}\t"
                + ("GT\t" if n else "")
            )
            f.write(fixed.encode() + (text[j].tobytes() if n else b"\n"))
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return str(path)
