"""Numba kernels that parse VCF text records into 2-bit packed genotypes.

Pure functions over a ``uint8`` buffer of whole lines. They never raise: each line gets an error code
(``ERR_*``) that :mod:`better.genomics.vcf_text` turns into a message naming the file and line. A slow,
obviously correct twin lives in ``tests/test_vcf_numba.py``.

Genotype semantics (for the row of ALT allele ``k`` of a record, as after ``bcftools norm -m-``):
diploid ``a/b`` gives ``(a == k) + (b == k)``; haploid ``a`` gives 2 if ``a == k`` else 0 (PLINK's
convention); any missing allele (``.``, including half-calls ``./1``) gives 3 (missing).
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit, jit_parallel, prange

TAB, NEWLINE, CR, COLON, COMMA, DOT, SLASH, PIPE = 9, 10, 13, 58, 44, 46, 47, 124
N_FIXED = 9  # CHROM POS ID REF ALT QUAL FILTER INFO FORMAT

ERR_OK = 0
ERR_TOO_FEW_COLUMNS = 1
ERR_TOO_MANY_COLUMNS = 2
ERR_BAD_POS = 3
ERR_NO_GT = 4
ERR_BAD_GT = 5
ERR_PLOIDY = 6
ERR_ALLELE_RANGE = 7
ERR_EMPTY_FIELD = 8


@jit_parallel
def count_newlines(buf: np.ndarray, bounds: np.ndarray, counts: np.ndarray) -> None:
    """Count ``\\n`` bytes in each segment ``buf[bounds[s]:bounds[s + 1]]``."""
    for s in prange(counts.shape[0]):
        c = 0
        for i in range(bounds[s], bounds[s + 1]):
            if buf[i] == NEWLINE:
                c += 1
        counts[s] = c


@jit_parallel
def fill_newlines(buf: np.ndarray, bounds: np.ndarray, first: np.ndarray, out: np.ndarray) -> None:
    """Write the offsets of ``\\n`` bytes of segment ``s`` into ``out[first[s]:]``."""
    for s in prange(first.shape[0]):
        k = first[s]
        for i in range(bounds[s], bounds[s + 1]):
            if buf[i] == NEWLINE:
                out[k] = i
                k += 1


def find_newlines(buf: np.ndarray, segments: int = 16) -> np.ndarray:
    """Offsets of every ``\\n`` in ``buf``, found in parallel segments.

    Examples
    --------
    >>> import numpy as np
    >>> find_newlines(np.frombuffer(b"a\\nbb\\n\\n", dtype=np.uint8)).tolist()
    [1, 4, 5]
    """
    bounds = np.linspace(0, buf.shape[0], segments + 1).astype(np.int64)
    counts = np.zeros(segments, dtype=np.int64)
    count_newlines(buf, bounds, counts)
    first = np.zeros(segments, dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    out = np.empty(int(counts.sum()), dtype=np.int64)
    fill_newlines(buf, bounds, first, out)
    return out


@jit
def _field_is(buf: np.ndarray, start: int, end: int, c0: int, c1: int) -> bool:
    return end - start == 2 and buf[start] == c0 and buf[start + 1] == c1


@jit
def scan_records(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    n_samples: int,
    field_start: np.ndarray,
    field_end: np.ndarray,
    pos: np.ndarray,
    n_alt: np.ndarray,
    gt_index: np.ndarray,
    err: np.ndarray,
) -> None:
    """First pass over each record line: fixed-column bounds, POS, number of ALTs and GT's FORMAT index.

    Serial on purpose: it reads only the first nine columns, so it costs little next to the samples.

    ``field_start[l, 9]`` is where the sample columns begin. ``n_alt`` is 0 for ``ALT = .``.
    """
    for ln in range(starts.shape[0]):
        s = starts[ln]
        e = ends[ln]
        col = 0
        field_start[ln, 0] = s
        q = s
        while q < e and col < N_FIXED:
            if buf[q] == TAB:
                field_end[ln, col] = q
                col += 1
                field_start[ln, col] = q + 1
            q += 1
        if col < N_FIXED:
            if n_samples == 0 and col >= 7:  # sites-only VCF: 8 columns, or 9 with an empty FORMAT
                field_end[ln, col] = e
                for c in range(col + 1, N_FIXED + 1):
                    field_start[ln, c] = e
                    if c < N_FIXED:
                        field_end[ln, c] = e
            else:
                err[ln] = ERR_TOO_FEW_COLUMNS
                continue
        elif n_samples == 0:
            err[ln] = ERR_TOO_MANY_COLUMNS
            continue
        for c in range(5):  # CHROM POS ID REF ALT must not be empty
            if field_end[ln, c] <= field_start[ln, c]:
                err[ln] = ERR_EMPTY_FIELD
                break
        if err[ln] != ERR_OK:
            continue
        # POS
        v = 0
        ok = True
        for i in range(field_start[ln, 1], field_end[ln, 1]):
            d = buf[i] - 48
            if d < 0 or d > 9 or v > 10**15:
                ok = False
                break
            v = v * 10 + d
        if not ok or v < 1:
            err[ln] = ERR_BAD_POS
            continue
        pos[ln] = v
        # ALT count
        a0 = field_start[ln, 4]
        a1 = field_end[ln, 4]
        if a1 - a0 == 1 and buf[a0] == DOT:
            n_alt[ln] = 0
        else:
            k = 1
            for i in range(a0, a1):
                if buf[i] == COMMA:
                    k += 1
            n_alt[ln] = k
        # GT position in FORMAT
        if n_samples > 0:
            gi = -1
            k = 0
            f0 = field_start[ln, 8]
            f1 = field_end[ln, 8]
            t = f0
            for i in range(f0, f1 + 1):
                if i == f1 or buf[i] == COLON:
                    if _field_is(buf, t, i, 71, 84):  # "GT"
                        gi = k
                        break
                    k += 1
                    t = i + 1
            gt_index[ln] = gi  # -1: no GT in FORMAT, every sample's genotype is missing (as bcftools reads it)


@jit
def _parse_line(
    buf: np.ndarray,
    ln: int,
    ends: np.ndarray,
    sample_start: np.ndarray,
    n_alt: np.ndarray,
    gt_index: np.ndarray,
    row_offset: np.ndarray,
    n_samples: int,
    packed: np.ndarray,
    counts: np.ndarray,
    err: np.ndarray,
    err_sample: np.ndarray,
) -> None:
    """The general GT parser for one line (any ploidy up to 2, any allele count, GT anywhere)."""
    e = ends[ln]
    p = sample_start[ln]
    na = n_alt[ln]
    nrows = max(na, 1)
    r0 = row_offset[ln]
    gi = gt_index[ln]
    for s in range(n_samples):
        if p > e:
            err[ln] = ERR_TOO_FEW_COLUMNS
            err_sample[ln] = s
            return
        q = p
        k = 0
        while k < gi and q < e and buf[q] != TAB:
            if buf[q] == COLON:
                k += 1
            q += 1
        a = -1
        b = -1
        ploidy = 0
        missing = False
        if k == gi and q < e and buf[q] != TAB and buf[q] != COLON:
            if buf[q] == SLASH or buf[q] == PIPE:  # VCF 4.4 prefix phasing: the first allele's phase
                q += 1
            while True:
                c = buf[q]
                allele = -1
                if c == DOT:
                    missing = True
                    q += 1
                elif 48 <= c <= 57:
                    allele = 0
                    while q < e and 48 <= buf[q] <= 57:
                        allele = allele * 10 + (buf[q] - 48)
                        q += 1
                        if allele > 32767:
                            break
                    if allele > na:
                        err[ln] = ERR_ALLELE_RANGE
                        break
                else:
                    err[ln] = ERR_BAD_GT
                    break
                ploidy += 1
                if ploidy == 1:
                    a = allele
                elif ploidy == 2:
                    b = allele
                else:
                    err[ln] = ERR_PLOIDY
                    break
                if q < e and (buf[q] == SLASH or buf[q] == PIPE):
                    q += 1
                    if q >= e:
                        err[ln] = ERR_BAD_GT
                        break
                    continue
                break
            if err[ln] == ERR_OK and q < e and buf[q] != TAB and buf[q] != COLON:
                err[ln] = ERR_BAD_GT
            if err[ln] != ERR_OK:
                err_sample[ln] = s
                return
        elif k == gi and (q >= e or buf[q] == TAB) and gi == 0:
            err[ln] = ERR_BAD_GT  # empty sample column
            err_sample[ln] = s
            return
        else:
            missing = True  # GT not present in this sample's (shortened) field
        while q < e and buf[q] != TAB:
            q += 1
        p = q + 1
        byte = s >> 2
        shift = 2 * (s & 3)
        for j in range(nrows):
            if missing:
                code = 3
            elif ploidy == 1:
                code = 2 if a == j + 1 else 0
            else:
                code = (1 if a == j + 1 else 0) + (1 if b == j + 1 else 0)
            packed[r0 + j, byte] |= np.uint8(code << shift)
            counts[r0 + j, code] += 1
    if n_samples > 0 and p <= e:
        err[ln] = ERR_TOO_MANY_COLUMNS
        err_sample[ln] = n_samples


@jit
def gather_field(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, row_line: np.ndarray, sub_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Copy one field of each row's line into Arrow string buffers ``(int32 offsets, data)``.

    ``sub_index[r] >= 0`` takes only that comma-separated part of the field (the ALT of a split row).
    """
    n = row_line.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int32)
    lo = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    for r in range(n):
        ln = row_line[r]
        s = start[ln]
        e = end[ln]
        j = sub_index[r]
        if j >= 0:
            part = 0
            t = s
            for i in range(s, e + 1):
                if i == e or buf[i] == COMMA:
                    if part == j:
                        s = t
                        e = i
                        break
                    part += 1
                    t = i + 1
        lo[r] = s
        hi[r] = e
        offsets[r + 1] = offsets[r] + (e - s)
    data = np.empty(offsets[n], dtype=np.uint8)
    for r in range(n):
        o = offsets[r]
        for i in range(lo[r], hi[r]):
            data[o] = buf[i]
            o += 1
    return offsets, data


ERR_RESCAN = 9  # a line whose end was predicted failed the fixed-stride check: split the chunk exactly


@jit
def split_lines_predicted(
    buf: np.ndarray,
    begin: int,
    end: int,
    n_samples: int,
    starts: np.ndarray,
    ends: np.ndarray,
    predicted: np.ndarray,
) -> int:
    """Split ``buf[begin:end]`` into lines without reading every byte; return the number of lines.

    In the dominant record shape every sample field is 4 bytes (``0|1`` and a tab), so a line ends
    at ``start of samples + 4 * n_samples - 1``. Where that byte is a newline the line is taken as
    ``predicted`` (its genotypes must then pass the fixed-stride check of :func:`parse_genotypes_fast`,
    which rejects any newline inside); elsewhere the newline is searched for. Lines end before ``\\n``.
    Returns -1 when ``starts`` is too small.
    """
    n = 0
    p = begin
    while p < end:
        if n >= starts.shape[0]:
            return -1
        tabs = 0
        q = p
        while q < end and buf[q] != NEWLINE and tabs < N_FIXED:
            if buf[q] == TAB:
                tabs += 1
            q += 1
        e = -1
        if tabs == N_FIXED and n_samples > 0:
            guess = q + 4 * n_samples - 1
            if guess < end and buf[guess] == NEWLINE:
                e = guess
                predicted[n] = True
        if e < 0:
            predicted[n] = False
            while q < end and buf[q] != NEWLINE:
                q += 1
            e = q
        starts[n] = p
        ends[n] = e
        n += 1
        p = e + 1
    return n


@jit
def _fixed_stride_line(
    buf: np.ndarray,
    p: int,
    n_samples: int,
    packed_row: np.ndarray,
    counts_row: np.ndarray,
    value: np.ndarray,
    code_of: np.ndarray,
) -> bool:
    """Parse a biallelic ``GT``-only line whose sample fields are all ``a?b<TAB>`` (4 bytes).

    ``value`` maps a byte to 0 ('0'), 1 ('1'), 4 ('.') or 16 (anything else); ``code_of[va + vb]``
    gives the 2-bit code (3 for missing, 255 for invalid). Returns False, writing nothing, if any
    byte does not fit, so the general parser can take over.
    """
    nbytes = (n_samples + 3) >> 2
    local = np.zeros(4, dtype=np.int64)
    for j in range(nbytes):
        byte = 0
        for t in range(4):
            s = 4 * j + t
            if s >= n_samples:
                break
            q = p + 4 * s
            sep = buf[q + 1]
            delim = buf[q + 3]
            code = code_of[value[buf[q]] + value[buf[q + 2]]]
            if code == 255 or (sep != SLASH and sep != PIPE) or (delim != TAB and s != n_samples - 1):
                return False
            byte |= code << (2 * t)
            local[code] += 1
        packed_row[j] = byte
    for c in range(4):
        counts_row[c] = local[c]
    return True


@jit_parallel
def parse_genotypes_fast(
    buf: np.ndarray,
    ends: np.ndarray,
    sample_start: np.ndarray,
    n_alt: np.ndarray,
    gt_index: np.ndarray,
    format_len: np.ndarray,
    predicted: np.ndarray,
    row_offset: np.ndarray,
    n_samples: int,
    packed: np.ndarray,
    counts: np.ndarray,
    err: np.ndarray,
    err_sample: np.ndarray,
) -> None:
    """Parse every sample's GT into the packed rows of its record, trying the fixed-stride path first.

    Record ``l`` owns rows ``row_offset[l] .. row_offset[l] + max(n_alt[l], 1) - 1``; ``packed`` must be
    zeroed. ``counts[r, c]`` receives how many samples have code ``c`` in row ``r``. On an error,
    ``err_sample[l]`` is the 0-based sample at fault. Other lines go through :func:`_parse_line`.

    Lines taken by the fast path must be biallelic, have ``FORMAT`` exactly ``GT`` and a length of
    ``4 * n_samples - 1`` bytes of samples. A predicted line (see :func:`split_lines_predicted`) that
    fails the check gets :data:`ERR_RESCAN`.
    """
    value = np.full(256, 16, dtype=np.uint8)
    value[48] = 0
    value[49] = 1
    value[DOT] = 4
    code_of = np.full(33, 255, dtype=np.uint8)
    code_of[0] = 0
    code_of[1] = 1
    code_of[2] = 2
    for k in (4, 5, 8):
        code_of[k] = 3
    for ln in prange(ends.shape[0]):
        if err[ln] != ERR_OK:
            continue
        fast_shape = (
            n_alt[ln] == 1
            and gt_index[ln] == 0
            and format_len[ln] == 2
            and ends[ln] - sample_start[ln] == 4 * n_samples - 1
        )
        if fast_shape and _fixed_stride_line(
            buf, sample_start[ln], n_samples, packed[row_offset[ln]], counts[row_offset[ln]], value, code_of
        ):
            continue
        if predicted[ln]:
            err[ln] = ERR_RESCAN
            continue
        _parse_line(
            buf,
            ln,
            ends,
            sample_start,
            n_alt,
            gt_index,
            row_offset,
            n_samples,
            packed,
            counts,
            err,
            err_sample,
        )
