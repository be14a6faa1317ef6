"""Numba kernels that parse VCF text records into 2-bit packed genotypes.

Pure functions over a ``uint8`` buffer of whole lines. They never raise: each line gets an error code
(``ERR_*``) that :mod:`genomics.vcf_text` turns into a message naming the file and line. A slow,
obviously correct twin lives in ``tests/test_vcf_numba.py``.

Genotype semantics (for the row of ALT allele ``k`` of a record, as after ``bcftools norm -m-``):
diploid ``a/b`` gives ``(a == k) + (b == k)``; haploid ``a`` gives 2 if ``a == k`` else 0 (PLINK's
convention); any missing allele (``.``, including half-calls ``./1``) gives 3 (missing).
"""

from __future__ import annotations

import numpy as np

from engine.accelerate import jit, jit_parallel, prange

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


@jit_parallel
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

    ``field_start[l, 9]`` is where the sample columns begin. ``n_alt`` is 0 for ``ALT = .``.
    """
    for ln in prange(starts.shape[0]):
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
            if gi < 0:
                err[ln] = ERR_NO_GT
                continue
            gt_index[ln] = gi


@jit_parallel
def parse_genotypes(
    buf: np.ndarray,
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
    """Second pass: parse every sample's GT into the packed rows of its record.

    Record ``l`` owns rows ``row_offset[l] .. row_offset[l] + max(n_alt[l], 1) - 1``; ``packed`` must be
    zeroed. ``counts[r, c]`` receives how many samples have code ``c`` in row ``r``. On an error,
    ``err_sample[l]`` is the 0-based sample at fault.
    """
    for ln in prange(ends.shape[0]):
        if err[ln] != ERR_OK:
            continue
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
                break
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
                    break
            elif k == gi and (q >= e or buf[q] == TAB) and gi == 0:
                err[ln] = ERR_BAD_GT  # empty sample column
                err_sample[ln] = s
                break
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
        if err[ln] == ERR_OK and n_samples > 0 and p <= e:
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
        data[offsets[r] : offsets[r + 1]] = buf[lo[r] : hi[r]]
    return offsets, data
