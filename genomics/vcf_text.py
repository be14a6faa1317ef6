"""The fast path for VCF text (.vcf and bgzipped .vcf.gz): streamed chunks, parsed by Numba kernels.

The file is read in chunks of whole lines (memory bounded by the chunk size, never by the file); gzip
members are inflated by ISA-L in a background thread while the kernels of :mod:`better.genomics.vcf_numba`
parse the previous chunk on all Numba threads. No Python code runs per sample.
"""

from __future__ import annotations

import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip

from better.engine.errors import InputError
from better.genomics import vcf_numba as kernels
from better.genomics.schema import packed_width
from better.genomics.vcf_batches import build_batch, dot_to_null
from better.genomics.vcf_dosage import KINDS, dosage_problem, fallback_field
from better.genomics.vcf_header import VcfHeader, parse_header_text, split_info

#: The 28-byte empty block that ends every complete BGZF file (SAM/BAM specification, section 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

_ERRORS = {
    kernels.ERR_TOO_FEW_COLUMNS: "fewer columns than the header's {n} samples need",
    kernels.ERR_TOO_MANY_COLUMNS: "more columns than the header's {n} samples",
    kernels.ERR_BAD_POS: "POS is not a positive integer",
    kernels.ERR_NO_GT: "FORMAT has no GT field; BETTER needs genotypes (GT) for every record",
    kernels.ERR_BAD_GT: "malformed GT value",
    kernels.ERR_PLOIDY: "ploidy above 2 is not supported",
    kernels.ERR_ALLELE_RANGE: "GT names an allele index beyond the record's ALT alleles",
    kernels.ERR_EMPTY_FIELD: "an empty CHROM, POS, ID, REF or ALT column",
}


class _Inflater:
    """A gzip stream inflated by ISA-L in a background thread, up to ``ahead`` bytes before its reader.

    The thread runs (without the GIL) while the kernels parse the previous chunk, so that inflating a whole
    chunk overlaps its parsing rather than only ISA-L's own couple of blocks. An error of the thread
    (truncated or corrupt data) is raised by :meth:`readinto`.
    """

    def __init__(self, raw: BinaryIO, ahead: int, block: int = 1 << 20) -> None:
        self._gz = igzip.IGzipFile(fileobj=raw, mode="rb")
        self._block = block
        self._blocks: queue.Queue[bytes | BaseException] = queue.Queue(max(2, ahead // block))
        self._current = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, name="better-inflate", daemon=True)
        self._thread.start()

    def _inflate(self) -> None:
        item: bytes | BaseException = b""
        try:
            while not self._stop.is_set():
                item = self._gz.read(self._block)
                if not item:
                    break
                self._put(item)
        except BaseException as exc:  # handed to the reader, which raises it
            item = exc
        self._put(item if isinstance(item, BaseException) else b"")

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the data goes; return the number of bytes copied (0 at the end)."""
        total = 0
        while total < len(view):
            if not self._current:
                if self._done:
                    break
                item = self._blocks.get()
                if isinstance(item, BaseException):
                    self._done = True
                    raise item
                if not item:
                    self._done = True
                    break
                self._current = memoryview(item)
            n = min(len(self._current), len(view) - total)
            view[total : total + n] = self._current[:n]
            self._current = self._current[n:]
            total += n
        return total

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._gz.close()


class TextStream:
    """A VCF text file, plain or gzip/BGZF, read as raw bytes with clear errors on corruption.

    ``ahead``: how many inflated bytes a background thread may hold ready (a compressed file).
    """

    def __init__(self, path: str, ahead: int = 4 << 20) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        magic = self._raw.read(4)
        self._raw.seek(0)
        self.compressed = magic[:2] == b"\x1f\x8b"
        self._stream: Any = self._raw
        if self.compressed:
            is_bgzf = len(magic) == 4 and magic[3] & 4 != 0  # FEXTRA set: BGZF blocks carry 'BC'
            if is_bgzf:
                self._raw.seek(max(0, self.size - len(BGZF_EOF)))
                tail = self._raw.read()
                self._raw.seek(0)
                if tail != BGZF_EOF:
                    self.close()
                    raise InputError(
                        f"{path}: the BGZF end-of-file marker is missing, so the file is truncated "
                        "(an interrupted copy or download?); copy it again or re-run bgzip"
                    )
            self._stream = _Inflater(self._raw, ahead)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the data goes; return the number of bytes read (0 at the end)."""
        total = 0
        try:
            while total < len(view):
                n = self._stream.readinto(view[total:])
                if not n:
                    break
                total += n
        except (EOFError, zlib.error, OSError) as exc:
            raise InputError(
                f"{self.path}: the compressed data is truncated or corrupt ({exc}); "
                "check the file with `bgzip -t` and copy it again"
            ) from None
        return total

    def progress(self) -> int:
        """Bytes of the file on disk consumed so far."""
        return self._raw.tell() if not self._raw.closed else self.size

    def close(self) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()


def _read_header(stream: TextStream, buf: bytearray) -> tuple[VcfHeader, int, int]:
    """Read header lines; return the header, the bytes of ``buf`` in use and where records begin."""
    filled = stream.readinto(memoryview(buf))
    lines: list[str] = []
    start = 0
    while True:
        nl = buf.find(b"\n", start, filled)
        if nl < 0:
            if filled < len(buf):  # the file ended inside the header
                tail = bytes(buf[start:filled]).decode("utf-8", "replace")
                if tail and not lines and not tail.startswith("##fileformat=VCF"):
                    parse_header_text([tail], stream.path)
                if tail.startswith("#CHROM"):
                    lines.append(tail)
                    return parse_header_text(lines, stream.path), filled, filled
                if not lines:
                    parse_header_text([tail], stream.path)
                raise InputError(f"{stream.path}: the file ends before the #CHROM header line")
            if start:
                buf[: filled - start] = buf[start:filled]
                filled -= start
                start = 0
            else:
                buf.extend(bytes(len(buf)))  # a long header line: double the buffer
            filled += stream.readinto(memoryview(buf)[filled:])
            continue
        try:
            line = bytes(buf[start:nl]).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{stream.path}: line {len(lines) + 1} is not text: this is not a VCF file "
                "(a BCF? name it .bcf; a BAM? use `better ingest-bam`)"
            ) from None
        if not lines and not line.startswith("##fileformat=VCF"):
            parse_header_text([line], stream.path)
        lines.append(line.rstrip("\r"))
        start = nl + 1
        if line.startswith("#CHROM"):
            return parse_header_text(lines, stream.path), filled, start
        if not line.startswith("##"):
            raise InputError(f"{stream.path}: line {len(lines)} is a record before the #CHROM header line")


def iter_text_batches(
    path: str,
    chunk_bytes: int = 32 << 20,
    on_progress: Callable[[int, int], None] | None = None,
    header_only: bool = False,
) -> tuple[VcfHeader, Iterator[tuple[pa.RecordBatch, np.ndarray]]]:
    """Open a VCF text file; return its header and an iterator of (batch, line number of each row).

    Parameters
    ----------
    path
        ``.vcf`` or gzip/BGZF-compressed ``.vcf.gz``.
    chunk_bytes
        Bytes of text parsed at a time: memory use is a small multiple of this.
    on_progress
        Called with ``(bytes consumed, file size)`` after each chunk.
    header_only
        Read the header, close the file and return an empty iterator.
    """
    stream = TextStream(path)
    try:
        header, _, _ = _read_header(stream, bytearray(1 << 16))
    finally:
        stream.close()
    if header_only:
        return header, iter(())

    def batches() -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        # The file is opened again only once iteration starts, so an iterator that is never
        # consumed holds no file or thread.
        stream = TextStream(path, ahead=chunk_bytes)
        buf = bytearray(max(chunk_bytes, 1 << 16))
        try:
            _, filled, start = _read_header(stream, buf)
        except BaseException:
            stream.close()
            raise
        line_no = header.n_lines + 1
        record = 0
        n_samples = len(header.samples)
        try:
            eof = False
            while True:
                if not eof and filled < len(buf):
                    n = stream.readinto(memoryview(buf)[filled:])
                    filled += n
                    eof = n == 0 or filled < len(buf)
                last_nl = buf.rfind(b"\n", start, filled)
                complete = last_nl + 1 if last_nl >= 0 else start
                if eof and filled > complete:
                    complete = filled  # the last line lacks its newline
                if complete <= start:
                    if eof:
                        break
                    if start == 0:  # one line longer than the buffer: grow it
                        buf.extend(bytes(len(buf)))
                    else:
                        buf[: filled - start] = buf[start:filled]
                        filled -= start
                        start = 0
                    continue
                arr = np.frombuffer(buf, dtype=np.uint8, count=filled)
                result = None
                # a dosage file's lines never have the predicted shape (GT alone): split them exactly
                for exact in (False, True) if header.dosage_field is None else (True,):
                    starts, ends, predicted, index, n_lines = _line_bounds(buf, arr, start, complete, n_samples, exact)
                    if starts.size == 0:
                        break
                    result = _parse_lines(arr, starts, ends, predicted, header, path, line_no + index, record)
                    if result is not None:
                        break
                del arr
                if result is not None:
                    record += starts.size
                    yield result
                line_no += n_lines
                start = complete
                if on_progress is not None:
                    on_progress(stream.progress(), stream.size)
                if eof and start >= filled:
                    break
                buf[: filled - start] = buf[start:filled]  # carry the partial last line to the front
                filled -= start
                start = 0
        finally:
            stream.close()

    return header, batches()


#: A chunk whose first line is at least this long has its newlines found one by one by ``bytearray.find``
#: (C's memchr, a dozen GB/s, against 1 GB/s for a byte loop); one of shorter lines by the Numba kernels,
#: where Python's cost per line would outweigh the scan.
_LONG_LINE = 512


def _newlines(buf: bytearray, arr: np.ndarray, begin: int, end: int) -> np.ndarray:
    """Offsets of every ``\\n`` in ``buf[begin:end]`` (``arr`` is ``buf`` as a uint8 array)."""
    first = buf.find(b"\n", begin, min(end, begin + _LONG_LINE))
    if first >= 0:  # short lines
        return kernels.find_newlines(arr[begin:end]) + begin
    found: list[int] = []
    find, append = buf.find, found.append
    q = find(b"\n", begin, end)
    while q >= 0:
        append(q)
        q = find(b"\n", q + 1, end)
    return np.array(found, dtype=np.int64)


def _line_bounds(
    buf: bytearray, arr: np.ndarray, begin: int, end: int, n_samples: int, exact: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Start, end (before CR/LF), predicted flag and 0-based line index of each non-blank line of
    ``arr[begin:end]`` (``arr`` is ``buf`` as a uint8 array), and the number of lines including blank ones."""
    if exact:
        newlines = _newlines(buf, arr, begin, end)
        if newlines.size == 0 or newlines[-1] != end - 1:
            newlines = np.append(newlines, end)
        starts = np.concatenate(([begin], newlines[:-1] + 1))
        ends = newlines
        predicted = np.zeros(starts.size, dtype=np.bool_)
    else:
        capacity = max(1024, (end - begin) // 64)
        while True:
            starts = np.empty(capacity, dtype=np.int64)
            ends = np.empty(capacity, dtype=np.int64)
            predicted = np.zeros(capacity, dtype=np.bool_)
            n = kernels.split_lines_predicted(arr, begin, end, n_samples, starts, ends, predicted)
            if n >= 0:
                break
            capacity *= 4
        starts, ends, predicted = starts[:n], ends[:n], predicted[:n]
    n_lines = starts.size
    index = np.arange(n_lines)
    keep = ends > starts  # blank lines are skipped (but counted)
    if not keep.all():
        starts, ends, predicted, index = starts[keep], ends[keep], predicted[keep], index[keep]
    cr = ends > starts
    cr[cr] = arr[ends[cr] - 1] == kernels.CR
    ends = ends - cr
    return starts, ends, predicted, index, n_lines


def _parse_lines(
    arr: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    predicted: np.ndarray,
    header: VcfHeader,
    path: str,
    line_numbers: np.ndarray,
    first_record: int,
) -> tuple[pa.RecordBatch, np.ndarray] | None:
    """Parse whole record lines into a batch; None if a predicted line end proved wrong."""
    n_lines = starts.size
    n_samples = len(header.samples)
    field_start = np.zeros((n_lines, kernels.N_FIXED + 1), dtype=np.int64)
    field_end = np.zeros((n_lines, kernels.N_FIXED), dtype=np.int64)
    pos = np.zeros(n_lines, dtype=np.int64)
    n_alt = np.zeros(n_lines, dtype=np.int64)
    gt_index = np.zeros(n_lines, dtype=np.int64)
    err = np.zeros(n_lines, dtype=np.int8)
    kernels.scan_records(arr, starts, ends, n_samples, field_start, field_end, pos, n_alt, gt_index, err)
    n_rows = np.maximum(n_alt, 1)
    row_offset = np.zeros(n_lines, dtype=np.int64)
    np.cumsum(n_rows[:-1], out=row_offset[1:])
    total = int(n_rows.sum())
    packed = np.zeros((total, packed_width(n_samples)), dtype=np.uint8)
    counts = np.zeros((total, 4), dtype=np.int32)
    err_sample = np.full(n_lines, -1, dtype=np.int64)
    err_field = np.full(n_lines, -1, dtype=np.int64)
    dosages = None
    if header.dosage_field is None:
        kernels.parse_genotypes_fast(
            arr,
            ends,
            field_start[:, 9],
            n_alt,
            gt_index,
            field_end[:, 8] - field_start[:, 8],
            predicted,
            row_offset,
            n_samples,
            packed,
            counts,
            err,
            err_sample,
        )
    else:
        # dosages, hard calls (the dosages') and their counts in one pass over each line
        dosages = np.empty((total, n_samples), dtype=np.uint16)
        fallback = fallback_field(header.dosage_field) or ""
        kernels.parse_dosage_lines(
            arr,
            ends,
            field_start[:, 9],
            field_start[:, 8],
            field_end[:, 8],
            n_alt,
            gt_index,
            predicted,
            row_offset,
            n_samples,
            KINDS[header.dosage_field],
            np.frombuffer(header.dosage_field.encode(), dtype=np.uint8),
            np.frombuffer(fallback.encode(), dtype=np.uint8),
            packed,
            counts,
            dosages,
            err,
            err_sample,
            err_field,
        )
    if np.any(err == kernels.ERR_RESCAN):
        return None
    bad = np.flatnonzero(err)
    if bad.size:
        ln = int(bad[0])
        if err_field[ln] >= 0:
            _raise_dosage_error(
                arr,
                starts[ln],
                ends[ln],
                int(err[ln]),
                int(err_sample[ln]),
                int(err_field[ln]),
                header,
                path,
                int(line_numbers[ln]),
            )
        _raise_line_error(
            arr, starts[ln], ends[ln], int(err[ln]), int(err_sample[ln]), header, path, int(line_numbers[ln])
        )

    row_line = np.repeat(np.arange(n_lines), n_rows)
    alt_index = (np.arange(total) - row_offset[row_line] + 1).astype(np.int16)
    split = n_alt[row_line] > 1
    sub_index = np.where(split, alt_index.astype(np.int64) - 1, -1)
    whole = np.full(total, -1, dtype=np.int64)

    def text(col: int, subs: np.ndarray = whole) -> pa.Array:
        offsets, data = kernels.gather_field(arr, field_start[:, col], field_end[:, col], row_line, subs)
        values = pa.Array.from_buffers(pa.string(), total, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            raise InputError(
                f"{path}: lines {line_numbers[0]}-{line_numbers[-1]}: column {col + 1} "
                "holds bytes that are not UTF-8 text"
            ) from None
        return values

    qual_text = dot_to_null(text(5))
    try:
        qual = pc.cast(qual_text, pa.float32())
    except pa.ArrowInvalid:
        bad_row = next(i for i, q in enumerate(qual_text.to_pylist()) if q is not None and not _is_float(q))
        raise InputError(
            f"{path}: line {line_numbers[row_line[bad_row]]}: QUAL {qual_text[bad_row].as_py()!r} is not a "
            "number or '.'"
        ) from None
    info = dot_to_null(text(7))
    if split.any():
        values = info.to_pylist()
        for r in np.flatnonzero(split):
            values[r] = split_info(values[r], int(alt_index[r]), int(n_alt[row_line[r]]), header.info_number)
        info = pa.array(values, type=pa.string())
    batch = build_batch(
        n_samples,
        chrom=text(0),
        pos=pos[row_line],
        ident=dot_to_null(text(2)),
        ref=text(3),
        alt=text(4, sub_index),
        qual=qual,
        filt=dot_to_null(text(6)),
        info=info,
        record=first_record + row_line,
        alt_index=alt_index,
        counts=counts,
        packed=packed,
        dosages=dosages,
    )
    return batch, line_numbers[row_line]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _raise_line_error(
    arr: np.ndarray, start: int, end: int, code: int, sample: int, header: VcfHeader, path: str, line: int
) -> None:
    head = bytes(arr[start : min(end, start + 200)]).decode("utf-8", "replace").split("\t")
    where = f"{head[0]}:{head[1]}" if len(head) > 1 else head[0][:40]
    what = _ERRORS.get(code, f"unreadable record (code {code})").format(n=len(header.samples))
    if 0 <= sample < len(header.samples):
        what += f" (sample {header.samples[sample]!r}, column {10 + sample})"
    raise InputError(f"{path}: line {line} (record {where}): {what}")


def _raise_dosage_error(
    arr: np.ndarray,
    start: int,
    end: int,
    code: int,
    sample: int,
    field_index: int,
    header: VcfHeader,
    path: str,
    line: int,
) -> None:
    """Raise the error of a bad dosage value: FORMAT position ``field_index`` of ``sample`` on a line."""
    cols = bytes(arr[start:end]).decode("utf-8", "replace").split("\t")
    keys = cols[8].split(":")
    parts = cols[9 + sample].split(":")
    value = parts[field_index] if field_index < len(parts) else ""
    gt = parts[keys.index("GT")] if "GT" in keys and keys.index("GT") < len(parts) else "."
    haploid = not any(c in gt[1:] for c in "/|")
    n_alt = 0 if cols[4] == "." else cols[4].count(",") + 1
    what = dosage_problem(code, keys[field_index], value, n_alt, haploid)
    raise InputError(
        f"{path}: line {line} (record {cols[0]}:{cols[1]}): {what} "
        f"(sample {header.samples[sample]!r}, column {10 + sample})"
    )
