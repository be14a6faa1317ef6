"""Open aligned-read files (BAM, CRAM) with their checks, and stream their records in chunks of arrays.

A BAM is read block by block (BGZF: gzip members of at most 64 KiB, inflated by ISA-L) and parsed by
:func:`better.engine.kernels.read_metrics.parse_records`: the file passes once through memory in chunks of a few MiB,
and its SHA-256 is computed on the way. A CRAM is decoded by htslib (pysam) against its reference, into
the same arrays.

Every problem is an :class:`~better.engine.errors.InputError` naming the file: not a BAM or CRAM, no index, not
coordinate-sorted, a CRAM without its reference, a truncated file.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pysam
from isal import igzip, isal_zlib

from better.engine.errors import InputError
from better.engine.kernels.read_metrics import BAD_RECORD, CIGAR_IN_TAG, OK, parse_records
from better.genomics.paths import input_file

_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_READ_BYTES = 8 << 20
#: Records and CIGAR operations per chunk (bounded memory: about 30 MiB of arrays).
CHUNK_RECORDS = 1 << 20
CHUNK_OPS = 4 << 20


@dataclass
class Chunk:
    """Core fields of ``n`` consecutive records; CIGAR operations of record ``i`` end at ``cigar_end[i]``."""

    n: int
    tid: np.ndarray
    pos: np.ndarray
    flag: np.ndarray
    mapq: np.ndarray
    mtid: np.ndarray
    cigar_end: np.ndarray
    cigar: np.ndarray

    @classmethod
    def empty(cls, records: int = CHUNK_RECORDS, ops: int = CHUNK_OPS) -> Chunk:
        return cls(
            0,
            np.zeros(records, np.int32),
            np.zeros(records, np.int32),
            np.zeros(records, np.uint16),
            np.zeros(records, np.uint8),
            np.zeros(records, np.int32),
            np.zeros(records, np.int64),
            np.zeros(ops, np.uint32),
        )


@dataclass
class AlignmentInfo:
    """What the header says: format, contigs, read groups' samples."""

    path: Path
    format: str  # "BAM" or "CRAM"
    contigs: list[str]
    lengths: list[int]
    samples: list[str]
    sort_order: str | None
    reference: str | None = None
    sha256: str = ""
    bytes: int = 0
    records: int = field(default=0)


def inspect(path: str | os.PathLike[str], reference: str | None = None) -> AlignmentInfo:
    """Check that ``path`` is an indexed, coordinate-sorted BAM or CRAM and read its header."""
    p = Path(input_file(path, "BAM or CRAM file"))
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        fmt = "BAM"
        try:
            with igzip.open(p, "rb") as z:
                inner = z.read(4)
        except EOFError:
            raise InputError(f"{p}: truncated (the file ends inside its first compressed block)") from None
        except OSError:
            inner = b""
        if inner != b"BAM\x01":
            raise InputError(f"{p}: not a BAM or CRAM file (compressed, but it does not hold BAM data)")
    elif magic == b"CRAM":
        fmt = "CRAM"
    else:
        raise InputError(f"{p}: not a BAM or CRAM file (it starts with {magic!r})")
    if fmt == "CRAM" and reference is None:
        raise InputError(f"{p}: a CRAM file is decoded against its reference; give it with --reference FASTA")
    if reference is not None and not Path(reference).is_file():
        raise InputError(f"{reference}: no such reference FASTA")
    index_names = [Path(f"{p}.bai"), p.with_suffix(".bai"), Path(f"{p}.csi")] if fmt == "BAM" else [Path(f"{p}.crai")]
    if not any(i.is_file() for i in index_names):
        raise InputError(
            f"{p}: no index ({index_names[0].name}); make one with `samtools index {p}` (after sorting it)"
        )
    try:
        with pysam.AlignmentFile(str(p), "rc" if fmt == "CRAM" else "rb", reference_filename=reference) as af:
            header = af.header.to_dict()
    except (ValueError, OSError) as exc:
        raise InputError(f"{p}: cannot read the {fmt} header ({exc})") from None
    sort_order = header.get("HD", {}).get("SO")
    if sort_order != "coordinate":
        raise InputError(
            f"{p}: not coordinate-sorted (the header says SO:{sort_order or 'nothing'}); "
            f"sort it with `samtools sort -o sorted.bam {p}` and index that"
        )
    contigs = [s["SN"] for s in header.get("SQ", [])]
    lengths = [int(s["LN"]) for s in header.get("SQ", [])]
    samples = sorted({rg["SM"] for rg in header.get("RG", []) if "SM" in rg})
    return AlignmentInfo(p, fmt, contigs, lengths, samples, sort_order, reference, bytes=p.stat().st_size)


def chunks(info: AlignmentInfo) -> Iterator[Chunk]:
    """The file's records in chunks (the same :class:`Chunk` object, refilled); sets ``info.sha256``."""
    yield from (_bam_chunks(info) if info.format == "BAM" else _cram_chunks(info))


# -- BAM: BGZF blocks, the binary header, records ------------------------------------------------------
def _inflated_blocks(info: AlignmentInfo) -> Iterator[bytes]:
    """Inflate the file's BGZF blocks one by one (hashing the file on the way); checks the end marker."""
    digest = hashlib.sha256()
    p = info.path
    tail = b""
    last = b""
    with open(p, "rb") as f:
        while True:
            data = f.read(_READ_BYTES)
            digest.update(data)
            buf = tail + data if tail else data
            off = 0
            while len(buf) - off >= 18:
                if buf[off : off + 4] != b"\x1f\x8b\x08\x04":
                    raise InputError(f"{p}: corrupt BGZF block at byte {f.tell() - len(buf) + off}")
                xlen = struct.unpack_from("<H", buf, off + 10)[0]
                bsize = _block_size(buf, off, xlen, p)
                if len(buf) - off < bsize:
                    break
                block = buf[off : off + bsize]
                isize = struct.unpack_from("<I", block, bsize - 4)[0]
                try:
                    out = isal_zlib.decompress(block[12 + xlen : bsize - 8], -15, max(isize, 1))
                except Exception as exc:  # isal_zlib.error, which typing does not see as an exception
                    raise InputError(f"{p}: corrupt compressed block ({exc})") from None
                if len(out) != isize:
                    raise InputError(f"{p}: corrupt compressed block (size {len(out)}, expected {isize})")
                last = block
                off += bsize
                if out:
                    yield out
            tail = buf[off:]
            if not data:
                break
    if tail:
        raise InputError(f"{p}: truncated (the file ends inside a compressed block)")
    if last != _BGZF_EOF:
        raise InputError(f"{p}: truncated (no BGZF end-of-file marker); the copy is incomplete")
    info.sha256 = digest.hexdigest()


def _block_size(buf: bytes, off: int, xlen: int, path: Path) -> int:
    x = off + 12
    end = x + xlen
    while x + 4 <= end and x + 4 <= len(buf):
        si1, si2, slen = buf[x], buf[x + 1], struct.unpack_from("<H", buf, x + 2)[0]
        if si1 == 66 and si2 == 67 and slen == 2 and x + 6 <= len(buf):
            return int(struct.unpack_from("<H", buf, x + 4)[0]) + 1
        x += 4 + slen
    if end > len(buf):
        return 1 << 30  # the header is cut: read more (or report the truncation)
    raise InputError(f"{path}: a gzip block without the BGZF size field; not a BAM")


def _bam_chunks(info: AlignmentInfo) -> Generator[Chunk, None, None]:
    chunk = Chunk.empty()
    parts: list[bytes] = []
    size = 0
    header_done = False
    for out in _inflated_blocks(info):
        parts.append(out)
        size += len(out)
        if not header_done:
            joined = b"".join(parts)
            header = _header_size(joined, info.path)
            if header is None:
                parts = [joined]
                continue
            parts, size, header_done = [joined[header:]], len(joined) - header, True
        if size >= _READ_BYTES:
            rest = yield from _parse(info, chunk, b"".join(parts))
            parts, size = [rest], len(rest)
    if not header_done:
        raise InputError(f"{info.path}: truncated (the BAM header is incomplete)")
    rest = yield from _parse(info, chunk, b"".join(parts))
    if rest:
        raise InputError(f"{info.path}: truncated (the last record is incomplete)")


def _parse(info: AlignmentInfo, chunk: Chunk, pending: bytes) -> Generator[Chunk, None, bytes]:
    """Parse every whole record in ``pending``, yielding full chunks; returns the unparsed rest."""
    buf = np.frombuffer(pending, dtype=np.uint8)
    off = 0
    while True:
        n, _, off_next, status = parse_records(
            buf, off, len(buf), chunk.tid, chunk.pos, chunk.flag, chunk.mapq, chunk.mtid, chunk.cigar_end, chunk.cigar
        )
        if status == CIGAR_IN_TAG:
            raise InputError(f"{info.path}: a read with over 65,535 CIGAR operations (CG tag) is not supported")
        if status == BAD_RECORD:
            raise InputError(f"{info.path}: a corrupt BAM record (record {info.records + n + 1})")
        assert status == OK
        if n == 0:
            return pending[off:]
        chunk.n = n
        info.records += n
        off = off_next
        yield chunk


def _header_size(data: bytes, path: Path) -> int | None:
    """Bytes of the binary BAM header at the start of ``data``, or None if more data is needed."""
    if len(data) < 12:
        return None
    if data[:4] != b"BAM\x01":
        raise InputError(f"{path}: not a BAM stream (no BAM magic after decompression)")
    l_text = struct.unpack_from("<i", data, 4)[0]
    off = 8 + l_text
    if len(data) < off + 4:
        return None
    n_ref = struct.unpack_from("<i", data, off)[0]
    off += 4
    for _ in range(n_ref):
        if len(data) < off + 4:
            return None
        l_name = struct.unpack_from("<i", data, off)[0]
        off += 4 + l_name + 4
        if len(data) < off:
            return None
    return off


# -- CRAM: htslib decodes, we copy the fields ----------------------------------------------------------
def _cram_chunks(info: AlignmentInfo) -> Iterator[Chunk]:
    chunk = Chunk.empty()
    digest = hashlib.sha256()
    with open(info.path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BYTES), b""):
            digest.update(block)
    info.sha256 = digest.hexdigest()
    n = n_ops = 0
    try:
        with pysam.AlignmentFile(str(info.path), "rc", reference_filename=info.reference) as af:
            for read in af.fetch(until_eof=True):
                ops = read.cigartuples or []
                if n == CHUNK_RECORDS or n_ops + len(ops) > CHUNK_OPS:
                    chunk.n = n
                    info.records += n
                    yield chunk
                    n = n_ops = 0
                chunk.tid[n] = read.reference_id
                chunk.pos[n] = read.reference_start
                chunk.flag[n] = read.flag
                chunk.mapq[n] = read.mapping_quality
                chunk.mtid[n] = read.next_reference_id
                for op, length in ops:
                    chunk.cigar[n_ops] = (length << 4) | op
                    n_ops += 1
                chunk.cigar_end[n] = n_ops
                n += 1
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{info.path}: cannot decode the CRAM ({exc}); is it truncated, or the wrong reference?"
        ) from None
    chunk.n = n
    info.records += n
    yield chunk
