"""Synthetic aligned reads: small indexed BAMs from a synthetic cohort's haplotypes (``better synth --bam``).

On a generated reference (random bases, with each SNP's REF allele at its position), paired reads are
drawn from capture targets spread over the cohort's region. Each fragment comes from one of the
sample's two haplotypes, so reads carry the sample's ALT alleles as its VCF genotypes say; bases get
random qualities and a few sequencing errors. Coverage varies by target (capture efficiency) and by
sample (library size). So that every ``samtools flagstat`` line counts something, a few reads are
duplicates, QC failures, secondary or supplementary alignments, unmapped mates, mates on a second
contig, or unplaced pairs; some CIGARs have soft clips, insertions and deletions.

Writes into ``OUT/bam``: ``reference.fa`` (+ ``.fai``), ``targets.bed``, and per station
``STATION/SAMPLE.bam`` (+ ``.bai``) with the sample in its read group (``SM``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam
from cyvcf2 import VCF

from better.engine.errors import InputError

BASES = np.array(list("ACGT"))
READ_LENGTH = 100
FRAGMENT_MEAN = 260
DECOY = ("decoy", 20_000)


@dataclass(frozen=True)
class BamConfig:
    """How many samples per station get a BAM, the capture design and the mean depth."""

    samples_per_station: int = 6
    targets: int = 24
    target_length: int = 400
    depth: float = 30.0
    seed: int = 7


def synthesize_bams(cohort: Path, stations: list[str], cfg: BamConfig | None = None) -> Path:
    """Write the BAMs of the first samples of each station of the cohort in ``cohort``; return ``OUT/bam``."""
    cfg = cfg or BamConfig()
    rng = np.random.default_rng(cfg.seed)
    out = cohort / "bam"
    out.mkdir(parents=True, exist_ok=True)
    first = VCF(str(cohort / f"{stations[0]}.vcf.gz"))
    chrom = first.seqnames[0]
    positions = np.array([v.POS for v in first if len(v.REF) == 1], dtype=np.int64)
    first.close()
    if positions.size == 0:
        raise InputError(f"{cohort}: the cohort has no SNPs to place reads around")
    length = int(positions.max()) + 5_000
    reference = rng.integers(0, 4, length).astype(np.int8)
    # capture targets, evenly spread over the cohort's span, in (0-based, half-open) BED coordinates
    lo, hi = int(positions.min()), int(positions.max()) - cfg.target_length
    starts = np.linspace(lo, hi, cfg.targets).astype(np.int64)
    targets = [(int(s), int(s) + cfg.target_length) for s in starts]
    efficiency = rng.uniform(0.3, 1.5, len(targets))
    snps = _snps_in(cohort / f"{stations[0]}.vcf.gz", targets)
    for pos, ref, _ in snps.values():
        reference[pos - 1] = "ACGT".index(ref)
    decoy = rng.integers(0, 4, DECOY[1]).astype(np.int8)
    fasta = out / "reference.fa"
    with open(fasta, "w") as f:
        for name, seq in ((chrom, reference), (DECOY[0], decoy)):
            f.write(f">{name}\n")
            text = "".join(BASES[seq])
            f.writelines(text[i : i + 60] + "\n" for i in range(0, len(text), 60))
    pysam.faidx(str(fasta))
    with open(out / "targets.bed", "w") as f:
        f.writelines(f"{chrom}\t{s}\t{e}\ttarget{i + 1}\n" for i, (s, e) in enumerate(targets))
    header_sq = [{"SN": chrom, "LN": length}, {"SN": DECOY[0], "LN": DECOY[1]}]
    for station in stations:
        vcf = VCF(str(cohort / f"{station}.vcf.gz"))
        samples = list(vcf.samples)[: cfg.samples_per_station]
        genotypes = _genotypes(vcf, targets, len(samples))
        folder = out / station
        folder.mkdir(exist_ok=True)
        for s, sample in enumerate(samples):
            library = rng.uniform(0.5, 1.5)
            reads = _sample_reads(rng, reference, decoy, targets, efficiency * library * cfg.depth, genotypes, s)
            path = folder / f"{sample}.bam"
            header = {
                "HD": {"VN": "1.6", "SO": "coordinate"},
                "SQ": header_sq,
                "RG": [{"ID": f"{sample}.L1", "SM": sample, "PL": "ILLUMINA"}],
            }
            _write(path, header, reads, f"{sample}.L1")
    return out


def _is_snp(v: object) -> bool:
    ref, alt = v.REF, v.ALT  # type: ignore[attr-defined]
    return len(ref) == 1 and ref in "ACGT" and len(alt) == 1 and len(alt[0]) == 1 and alt[0] in "ACGT"


def _snps_in(vcf_path: Path, targets: list[tuple[int, int]]) -> dict[int, tuple[int, str, str]]:
    """Biallelic SNPs inside the targets: position -> (position, REF, ALT)."""
    vcf = VCF(str(vcf_path))
    out = {}
    for v in vcf:
        if _is_snp(v) and any(s < v.POS <= e for s, e in targets):
            out[v.POS] = (v.POS, v.REF, v.ALT[0])
    vcf.close()
    return out


def _genotypes(vcf: VCF, targets: list[tuple[int, int]], n: int) -> dict[int, tuple[str, np.ndarray]]:
    """Per SNP position in the targets: its ALT base and the first ``n`` samples' two alleles (1 = ALT)."""
    out = {}
    for v in vcf:
        if not (_is_snp(v) and any(s < v.POS <= e for s, e in targets)):
            continue
        gt = np.array([g[:2] for g in v.genotypes[:n]], dtype=np.int64)
        out[v.POS] = (v.ALT[0], np.where(gt < 0, 0, gt))
    vcf.close()
    return out


def _read_bases(
    rng: np.random.Generator, reference: np.ndarray, start: int, length: int, alleles: dict[int, str]
) -> tuple[str, np.ndarray]:
    seq = BASES[reference[start : start + length]].copy()
    for pos, alt in alleles.items():
        if start < pos <= start + length:
            seq[pos - 1 - start] = alt
    errors = rng.random(length) < 0.005
    seq[errors] = BASES[rng.integers(0, 4, int(errors.sum()))]
    qual = rng.integers(8, 41, length).astype(np.uint8)
    return "".join(seq), qual


def _sample_reads(
    rng: np.random.Generator,
    reference: np.ndarray,
    decoy: np.ndarray,
    targets: list[tuple[int, int]],
    depth: np.ndarray,
    genotypes: dict[int, tuple[str, np.ndarray]],
    sample: int,
) -> list[dict]:
    """Read records (dicts) for one sample."""
    reads: list[dict] = []
    n = 0
    for (t_start, t_end), d in zip(targets, depth, strict=True):
        span = t_end - t_start + 2 * READ_LENGTH
        fragments = round(float(d) * span / (2 * READ_LENGTH))
        for _ in range(fragments):
            n += 1
            frag = int(np.clip(rng.normal(FRAGMENT_MEAN, 30), READ_LENGTH + 20, 500))
            start = int(rng.integers(t_start - READ_LENGTH, t_end))
            hap = int(rng.integers(0, 2))
            alleles = {p: alt for p, (alt, gt) in genotypes.items() if gt[sample, hap] == 1}
            name = f"r{n}"
            mapq = 60 if rng.random() > 0.1 else int(rng.integers(0, 40))
            r1 = _aligned(rng, reference, 0, start, name, 0x1 | 0x2 | 0x40 | 0x20, mapq, alleles)
            r2 = _aligned(rng, reference, 0, start + frag - READ_LENGTH, name, 0x1 | 0x2 | 0x80 | 0x10, mapq, alleles)
            u = rng.random()
            if u < 0.01:  # the mate did not map: placed at the read's position, flags say so
                r2.update(flag=(r2["flag"] | 0x4) & ~0x2, pos=r1["pos"], cigar=None, mapq=0)
                r1["flag"] = (r1["flag"] | 0x8) & ~0x2
            elif u < 0.015:  # the mate maps to the decoy contig
                r2.update(_aligned(rng, decoy, 1, int(rng.integers(0, DECOY[1] - 200)), name, r2["flag"] & ~0x2, 3, {}))
                r1["flag"] &= ~0x2
            for r, mate in ((r1, r2), (r2, r1)):
                r["mate"] = (mate["tid"], mate["pos"])
            extra = rng.random()
            if extra < 0.03:
                for r in (r1, r2):
                    r["flag"] |= 0x400  # PCR duplicate
            elif extra < 0.035:
                r1["flag"] |= 0x200  # failed QC
            reads += [r1, r2]
            if rng.random() < 0.01:  # a secondary alignment of read 1
                reads.append({**r1, "flag": r1["flag"] | 0x100, "mapq": 0, "pos": r1["pos"] + 7})
            if rng.random() < 0.005:  # a supplementary piece of read 2
                reads.append({**r2, "flag": r2["flag"] | 0x800, "cigar": [(4, 60), (0, 40)], "pos": r2["pos"] + 3})
    for k in range(3):  # unplaced pairs, at the end of the file
        for flag in (0x1 | 0x4 | 0x8 | 0x40, 0x1 | 0x4 | 0x8 | 0x80):
            seq, qual = _read_bases(rng, decoy, 100 * k, READ_LENGTH, {})
            reads.append({"name": f"u{k}", "flag": flag, "tid": -1, "pos": -1, "mapq": 0, "cigar": None,
                          "seq": seq, "qual": qual, "mate": (-1, -1)})  # fmt: skip
    return reads


def _aligned(
    rng: np.random.Generator, ref: np.ndarray, tid: int, start: int, name: str, flag: int, mapq: int, alleles: dict
) -> dict:
    start = max(start, 0)
    kind = rng.random()
    if kind < 0.05:  # soft clip at the start
        cigar = [(4, 5), (0, READ_LENGTH - 5)]
        ref_len = READ_LENGTH - 5
    elif kind < 0.08:  # a 2-base deletion
        cigar = [(0, 50), (2, 2), (0, READ_LENGTH - 50)]
        ref_len = READ_LENGTH + 2
    elif kind < 0.10:  # a 1-base insertion
        cigar = [(0, 40), (1, 1), (0, READ_LENGTH - 41)]
        ref_len = READ_LENGTH - 1
    else:
        cigar = [(0, READ_LENGTH)]
        ref_len = READ_LENGTH
    seq, qual = _read_bases(rng, ref, start, max(ref_len, READ_LENGTH), alleles)
    seq, qual = seq[:READ_LENGTH], qual[:READ_LENGTH]
    return {"name": name, "flag": flag, "tid": tid, "pos": start, "mapq": mapq, "cigar": cigar, "seq": seq,
            "qual": qual, "mate": (-1, -1)}  # fmt: skip


def _write(path: Path, header: dict, reads: list[dict], group: str) -> None:
    reads.sort(key=lambda r: (r["tid"] < 0, r["tid"], r["pos"]))
    with pysam.AlignmentFile(str(path), "wb", header=header) as f:
        for r in reads:
            a = pysam.AlignedSegment(f.header)
            a.query_name = r["name"]
            a.flag = r["flag"]
            a.reference_id = r["tid"]
            a.reference_start = r["pos"]
            a.mapping_quality = r["mapq"]
            if r["cigar"] is not None:
                a.cigartuples = r["cigar"]
            a.query_sequence = r["seq"]
            a.query_qualities = pysam.qualitystring_to_array("".join(chr(q + 33) for q in r["qual"]))
            a.next_reference_id, a.next_reference_start = r["mate"]
            a.set_tag("RG", group)
            f.write(a)
    pysam.index(str(path))
