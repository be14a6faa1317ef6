"""The cyvcf2 reader: BCF input, and the reference that the fast text path is tested against.

One record at a time through htslib; genotypes are turned into codes with numpy per record (no Python
loop per sample). Slower than :mod:`better.genomics.vcf_text`, but it reads anything htslib reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from better.engine.errors import InputError
from better.genomics.dosage import hard_calls
from better.genomics.schema import packed_width
from better.genomics.vcf_batches import build_batch
from better.genomics.vcf_dosage import cyvcf2_units
from better.genomics.vcf_header import VcfHeader, check_sample_ids, split_info

_INFO_NUMBER = re.compile(r"^##INFO=<ID=([^,>]+),Number=([^,>]+)")
_FORMAT_ID = re.compile(r"^##FORMAT=<ID=([^,>]+)")


def record_codes(gt: np.ndarray | None, n_alt: int, n_samples: int, where: str) -> np.ndarray:
    """Genotype codes ``(max(n_alt, 1), n_samples)`` of one record from cyvcf2's ``genotype.array()``.

    ``gt`` has one column per allele slot plus the phase flag; -1 is a missing allele and -2 pads a
    haploid call in a record of higher ploidy.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[0, 1, 0], [1, 2, 1], [-1, 2, 0], [2, -2, 1]])
    >>> record_codes(gt, 2, 4, "22:1").tolist()
    [[1, 1, 3, 0], [0, 1, 3, 2]]
    """
    rows = max(n_alt, 1)
    if n_samples == 0:
        return np.zeros((rows, 0), dtype=np.int8)
    if gt is None:
        raise InputError(f"{where}: the record has no GT field; BETTER needs genotypes (GT)")
    alleles = gt[:, :-1].astype(np.int32)
    if alleles.shape[1] > 2 and np.any(alleles[:, 2:] != -2):
        raise InputError(f"{where}: ploidy above 2 is not supported")
    a = alleles[:, 0]
    b = alleles[:, 1] if alleles.shape[1] > 1 else np.full_like(a, -2)
    haploid = b == -2
    missing = (a < 0) | (b == -1)
    if np.any(a > n_alt) or np.any(b > n_alt):
        raise InputError(f"{where}: GT names an allele index beyond the record's ALT alleles")
    k = np.arange(1, rows + 1)[:, None]
    codes = np.where(haploid, 2 * (a == k), (a == k).astype(np.int8) + (b == k))
    return np.where(missing, 3, codes).astype(np.int8)


def record_haploid(gt: np.ndarray | None, n_samples: int) -> np.ndarray:
    """Whether each sample's GT has one allele (``.`` and an absent GT included, as htslib reads them).

    Examples
    --------
    >>> import numpy as np
    >>> record_haploid(np.array([[0, 1, 0], [1, -2, 1], [-1, -2, 1], [-1, -1, 0]]), 4).tolist()
    [False, True, True, False]
    """
    if gt is None:
        return np.zeros(n_samples, dtype=np.bool_)
    if gt.shape[1] < 3:
        return np.ones(n_samples, dtype=np.bool_)
    return np.asarray(gt[:, 1] == -2)


def read_header(path: str) -> VcfHeader:
    """The header of a VCF/BCF as cyvcf2 reads it."""
    import cyvcf2

    try:
        vcf = cyvcf2.VCF(path, lazy=True)
    except (OSError, Exception) as exc:  # htslib reports every failure as a generic exception
        raise InputError(f"{path}: htslib cannot open it as VCF/BCF ({exc})") from None
    try:
        samples = list(vcf.samples)
        check_sample_ids(samples, path)
        raw = vcf.raw_header
        info_number = {m.group(1): m.group(2) for m in map(_INFO_NUMBER.match, raw.splitlines()) if m}
        format_ids = [m.group(1) for m in map(_FORMAT_ID.match, raw.splitlines()) if m]
        return VcfHeader(
            samples=samples,
            info_number=info_number,
            contigs=list(vcf.seqnames),
            format_ids=format_ids,
            n_lines=raw.count("\n"),
        )
    finally:
        vcf.close()


def iter_cyvcf2_batches(
    path: str, batch_rows: int = 4096
) -> tuple[VcfHeader, Iterator[tuple[pa.RecordBatch, np.ndarray]]]:
    """Header and an iterator of (batch, line number of each row), like the text reader's."""
    import cyvcf2

    header = read_header(path)
    n = len(header.samples)

    def batches() -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        cols: dict[str, list] = {
            k: []
            for k in (
                "chrom",
                "pos",
                "id",
                "ref",
                "alt",
                "qual",
                "filt",
                "info",
                "record",
                "alt_index",
                "line",
            )
        }
        codes: list[np.ndarray] = []
        dosages: list[np.ndarray] | None = [] if header.dosage_field else None
        record = 0
        vcf = cyvcf2.VCF(path, gts012=False, strict_gt=False)
        try:
            it = iter(vcf)
            while True:
                try:
                    v = next(it)
                except StopIteration:
                    break
                except Exception as exc:
                    raise InputError(f"{path}: record {record + 1}: htslib cannot read it ({exc})") from None
                where = f"{path}: record {record + 1} ({v.CHROM}:{v.POS})"
                alts = list(v.ALT)
                gt = v.genotype.array() if n and "GT" in v.FORMAT else None
                if n and gt is None:  # no GT (e.g. PL only): every genotype missing, as bcftools
                    c = np.full((max(len(alts), 1), n), 3, dtype=np.int8)
                else:
                    c = record_codes(gt, len(alts), n, where)
                if dosages is not None and header.dosage_field is not None:
                    haploid = record_haploid(gt, n)
                    dosages.append(cyvcf2_units(v, header.dosage_field, c, haploid, len(alts), where, header.samples))
                fixed = str(v).split("\t", 8)
                filt = None if fixed[6] == "." else fixed[6]
                info = None if fixed[7] == "." else fixed[7]
                for j in range(c.shape[0]):
                    cols["chrom"].append(v.CHROM)
                    cols["pos"].append(v.POS)
                    cols["id"].append(v.ID)
                    cols["ref"].append(v.REF)
                    cols["alt"].append(alts[j] if alts else ".")
                    cols["qual"].append(v.QUAL)
                    cols["filt"].append(filt)
                    cols["info"].append(split_info(info, j + 1, len(alts), header.info_number))
                    cols["record"].append(record)
                    cols["alt_index"].append(j + 1)
                    cols["line"].append(header.n_lines + record + 1)
                codes.append(c)
                record += 1
                if len(cols["pos"]) >= batch_rows:
                    yield _flush(cols, codes, n, dosages)
            if cols["pos"]:
                yield _flush(cols, codes, n, dosages)
        finally:
            vcf.close()

    return header, batches()


def _flush(
    cols: dict[str, list], codes: list[np.ndarray], n: int, dosages: list[np.ndarray] | None = None
) -> tuple[pa.RecordBatch, np.ndarray]:
    from better.genomics.packing import pack_genotypes

    allc = np.concatenate(codes, axis=0) if codes else np.zeros((0, n), dtype=np.int8)
    units = None
    if dosages is not None:
        units = np.concatenate(dosages, axis=0) if dosages else np.zeros((0, n), dtype=np.uint16)
        packed, counts = hard_calls(units)
        dosages.clear()
    else:
        counts = (
            np.stack([(allc == c).sum(axis=1) for c in range(4)], axis=1)
            if n
            else np.zeros((allc.shape[0], 4), dtype=np.int32)
        )
        packed = pack_genotypes(allc) if n else np.zeros((allc.shape[0], packed_width(0)), dtype=np.uint8)
    batch = build_batch(
        n,
        chrom=cols["chrom"],
        pos=np.array(cols["pos"]),
        ident=cols["id"],
        ref=cols["ref"],
        alt=cols["alt"],
        qual=cols["qual"],
        filt=cols["filt"],
        info=cols["info"],
        record=np.array(cols["record"]),
        alt_index=np.array(cols["alt_index"]),
        counts=counts,
        packed=packed,
        dosages=units,
    )
    lines = np.array(cols["line"], dtype=np.int64)
    for v in cols.values():
        v.clear()
    codes.clear()
    return batch, lines
