"""Numba kernels that parse VCF text records into 2-bit packed genotypes.

Pure functions over a ``uint8`` buffer of whole lines. They never raise: each line gets an error code
(``ERR_*``) that :mod:`better.genomics.vcf_text` turns into a message naming the file and line. A slow,
obviously correct twin lives in ``tests/test_vcf_numba.py``.

Genotype semantics (for the row of ALT allele ``k`` of a record, as after ``bcftools norm -m-``):
diploid ``a/b`` gives ``(a == k) + (b == k)``; haploid ``a`` gives 2 if ``a == k`` else 0 (PLINK's
convention); any missing allele (``.``, including half-calls ``./1``) gives 3 (missing).

ALT dosages from FORMAT DS, HDS or GP (:func:`parse_dosage_lines`, rules in :func:`field_units`) follow
``plink2 --vcf F dosage=...``; :mod:`better.genomics.vcf_dosage` describes them.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit, jit_parallel, prange
from better.genomics.dosage import hard_call, hard_call_row

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


# ---------------------------------------------------------------------------------------------------------
# ALT dosages from FORMAT DS, HDS or GP, as ``plink2 --vcf F dosage=DS|HDS|GP`` (v2.00a3.5) imports them.
# ---------------------------------------------------------------------------------------------------------

KIND_DS = 1
KIND_HDS = 2
KIND_GP = 3

ERR_DOSAGE_VALUE = 10  # not a number, an empty value, or a partly missing HDS/GP
ERR_DOSAGE_RANGE = 11  # DS outside [0, 2] ([0, 1] haploid), HDS or GP value outside [0, 1]
ERR_DOSAGE_COUNT = 12  # the wrong number of values for the record's ALT alleles and the sample's ploidy
ERR_DOSAGE_MULTIALLELIC = 13  # HDS in a record with several ALT alleles

_DOSAGE_MISSING = -1  # the field is missing ('.', '.,.') or absent: fall back
_DOSAGE_UNREAD = -2  # the fast path of a lone DS value did not apply
_SIGNIFICANT = 10_000_000_000_000_000  # plink2 keeps 17 significant digits and drops the rest
# plink2's tables (kPositivePow10, kPositivePowTen16, kNegativePow10, kNegativePowTen16): correctly rounded
_POW10 = np.array([float(f"1e{i}") for i in range(16)])
_POW10_16 = np.array([float(f"1e{16 * i}") for i in range(16)])
_NEG_POW10 = np.array([float(f"1e-{i}") for i in range(16)])
_NEG_POW10_16 = np.array([float(f"1e-{16 * i}") for i in range(8)])


@jit
def _digit(buf: np.ndarray, q: int, end: int) -> int:
    """The decimal digit at ``buf[q]``, or -1 (also past ``end``)."""
    if q >= end:
        return -1
    d = int(buf[q]) - 48
    return d if 0 <= d < 10 else -1


@jit
def scan_decimal(buf: np.ndarray, q: int, end: int) -> tuple[int, float]:
    """Parse a decimal number at ``buf[q:end]`` exactly as plink2's ``ScanadvDouble`` does.

    Returns ``(position after the number, value)``, or ``(-1, 0.0)`` when no number starts at ``q``.
    The first 17 significant digits make an integer mantissa that is scaled by tabulated powers of ten
    (``digits * 1e-k``, further digits dropped), so that a dosage rounds to the very integer plink2 stores.
    Unlike plink2, an exponent needs a digit (``1e`` is refused, as htslib does).
    """
    if q >= end:
        return -1, 0.0
    negative = False
    c = np.int64(buf[q])
    if c == 45 or c == 43:  # '-' '+'
        negative = c == 45
        q += 1
    digits = np.int64(0)
    e10 = 0
    seen = 0
    d = _digit(buf, q, end)
    while d >= 0:
        if digits < _SIGNIFICANT:
            digits = digits * 10 + d
        else:
            e10 += 1
        seen += 1
        q += 1
        d = _digit(buf, q, end)
    if q < end and buf[q] == DOT:
        q += 1
        d = _digit(buf, q, end)
        while d >= 0:
            if digits < _SIGNIFICANT:
                digits = digits * 10 + d
                e10 -= 1
            seen += 1
            q += 1
            d = _digit(buf, q, end)
    if seen == 0:
        return -1, 0.0
    if q < end and (buf[q] == 69 or buf[q] == 101):  # 'E' 'e'
        q += 1
        exp_negative = False
        if q < end and (buf[q] == 45 or buf[q] == 43):
            exp_negative = buf[q] == 45
            q += 1
        d = _digit(buf, q, end)
        if d < 0:
            return -1, 0.0
        exponent = 0
        while d >= 0:
            if exponent < 100_000_000:
                exponent = exponent * 10 + d
            q += 1
            d = _digit(buf, q, end)
        e10 += -exponent if exp_negative else exponent
    if digits == 0:
        return q, 0.0
    x = float(digits)
    if negative:
        x = -x
    if e10 < 0:
        p = -e10
        x *= _NEG_POW10[p & 15]
        p >>= 4
        if p:
            x *= _NEG_POW10_16[p & 7]
            if p > 23:
                x = 0.0
            elif p > 15:
                x *= 1e-256
            elif p > 7:
                x *= 1e-128
    elif e10 > 0:
        p = e10
        x *= _POW10[p & 15]
        p >>= 4
        if p:
            if p > 15:
                return q, -np.inf if negative else np.inf
            x *= _POW10_16[p & 15]
    return q, x


@jit
def parse_values(buf: np.ndarray, q: int, end: int, vals: np.ndarray, miss: np.ndarray) -> int:
    """Parse the comma-separated numbers of one FORMAT value ``buf[q:end]``; return how many there are.

    ``vals[i]`` gets value ``i`` and ``miss[i]`` whether it is ``.`` (values beyond the arrays' length are
    counted, not stored). Returns -1 if a value is not a number or ``.`` (an empty value included).
    """
    n = 0
    while True:
        if q < end and buf[q] == DOT and (q + 1 >= end or buf[q + 1] == COMMA):
            x = 0.0
            missing = True
            q += 1
        else:
            q, x = scan_decimal(buf, q, end)
            if q < 0 or (q < end and buf[q] != COMMA):
                return -1
            missing = False
        if n < vals.shape[0]:
            vals[n] = x
            miss[n] = missing
        n += 1
        if q >= end:
            return n
        q += 1  # the comma; a trailing one leaves an empty value, refused above


@jit
def dosage_capacity(n_alt: int) -> int:
    """The most values any dosage field of a record with ``n_alt`` ALT alleles may hold (GP's, plus one)."""
    return max(3, (n_alt + 1) * (n_alt + 2) // 2 + 1)


@jit
def ds_units(d: float, haploid: bool) -> int:
    """plink2's units of one DS value ``d`` (doubled for a haploid GT), or ``-ERR_DOSAGE_RANGE``."""
    if d < 0.0:
        return -ERR_DOSAGE_RANGE
    if haploid:
        d *= 2.0
    if d > 2.0:
        return -ERR_DOSAGE_RANGE
    return int(d * 16384.0 + 0.5)


@jit
def field_units(
    kind: int,
    vals: np.ndarray,
    miss: np.ndarray,
    n: int,
    n_alt: int,
    haploid: bool,
    units: np.ndarray,
    r0: int,
    s: int,
) -> int:
    """Turn one sample's ``n`` values of a DS, HDS or GP field into dosage units of its record's rows.

    Writes ``units[r0 + j, s]`` for the rows (ALT alleles ``j + 1``) the field gives and returns 0; returns
    :data:`_DOSAGE_MISSING` when every value is ``.`` (the caller falls back to DS, then GT), or an
    ``ERR_DOSAGE_*`` code. plink2's rules (v2.00a3.5, ``plink2_import.cc``):

    - DS ``d`` (one per ALT; ``.`` values fall back to GT): ``d < 0`` is an error, a haploid's ``d`` is
      doubled, then ``d > 2`` is an error; units ``floor(d * 16384 + 0.5)``.
    - HDS: one value ``h`` (haploid) gives ``floor(h * 32768 + 0.5)``, two give
      ``floor((h1 + h2) * 16384 + 0.5)``; each must lie in [0, 1]; a half-missing HDS is an error.
    - GP: probabilities in [0, 1] of the genotypes in VCF order (``n_alt + 1`` of them when haploid), not
      necessarily summing to 1: ALT ``k``'s dosage is ``sum(count_k(g) * P(g)) / sum(P)``, for a biallelic
      record ``(P01 + 2 P11) / (P00 + P01 + P11)`` (a haploid's ``2 P1 / (P0 + P1)``). All zero: missing
      dosage and missing hard call (GT ignored).
    """
    if n > dosage_capacity(n_alt):
        return ERR_DOSAGE_COUNT
    n_missing = 0
    for i in range(n):
        if miss[i]:
            n_missing += 1
        elif vals[i] != vals[i]:  # a NaN (htslib reads "nan"): not a dosage
            return ERR_DOSAGE_VALUE
    if n_missing == n:
        return _DOSAGE_MISSING
    rows = max(n_alt, 1)
    if kind == KIND_DS:
        if n != n_alt:
            return ERR_DOSAGE_COUNT
        for j in range(n_alt):
            if miss[j]:
                continue
            u = ds_units(vals[j], haploid)
            if u < 0:
                return -u
            units[r0 + j, s] = np.uint16(u)
        return 0
    if n_missing:
        return ERR_DOSAGE_VALUE
    for i in range(n):
        if vals[i] < 0.0 or vals[i] > 1.0:
            return ERR_DOSAGE_RANGE
    if kind == KIND_HDS:
        if n_alt > 1:
            return ERR_DOSAGE_MULTIALLELIC
        if n == 1:
            units[r0, s] = np.uint16(int(vals[0] * 32768.0 + 0.5))
        elif n == 2:
            units[r0, s] = np.uint16(int((vals[0] + vals[1]) * 16384.0 + 0.5))
        else:
            return ERR_DOSAGE_COUNT
        return 0
    alleles = n_alt + 1
    if n != (alleles if haploid else alleles * (alleles + 1) // 2):
        return ERR_DOSAGE_COUNT
    if n_alt == 0:
        return 0
    total = 0.0
    for i in range(n):
        total += vals[i]
    for j in range(rows):
        if total == 0.0:
            units[r0 + j, s] = np.uint16(65535)
            continue
        k = j + 1
        if haploid:
            num = 2.0 * vals[k]
        else:
            num = 0.0
            i = 0
            for b in range(alleles):
                for a in range(b + 1):  # genotype a/b sits at b(b+1)/2 + a
                    num += ((a == k) + (b == k)) * vals[i]
                    i += 1
        units[r0 + j, s] = np.uint16(min(int(num / total * 16384.0 + 0.5), 32768))
    return 0


@jit
def _format_index(buf: np.ndarray, f0: int, f1: int, key: np.ndarray) -> int:
    """The 0-based position of FORMAT key ``key`` in ``buf[f0:f1]`` (-1 if absent or ``key`` is empty)."""
    if key.shape[0] == 0:
        return -1
    k = 0
    t = f0
    for i in range(f0, f1 + 1):
        if i == f1 or buf[i] == COLON:
            if i - t == key.shape[0]:
                same = True
                for j in range(key.shape[0]):
                    if buf[t + j] != key[j]:
                        same = False
                        break
                if same:
                    return k
            k += 1
            t = i + 1
    return -1


@jit
def _line_dosages(
    buf: np.ndarray,
    ln: int,
    ends: np.ndarray,
    sample_start: np.ndarray,
    format_start: np.ndarray,
    format_end: np.ndarray,
    n_alt: np.ndarray,
    gt_index: np.ndarray,
    row_offset: np.ndarray,
    n_samples: int,
    kind: int,
    key: np.ndarray,
    fallback_key: np.ndarray,
    packed: np.ndarray,
    units: np.ndarray,
    err: np.ndarray,
    err_sample: np.ndarray,
    err_field: np.ndarray,
) -> None:
    """The general dosage reader of one line whose GT :func:`_parse_line` has put in ``packed``.

    Every sample's dosage starts as its GT's (0, 1 or 2 ALT alleles, 65535 if missing); ``key`` (``DS``,
    ``HDS``, ``GP``, as bytes) is then read with :func:`field_units`' rules of ``kind``, and
    ``fallback_key`` (``DS`` for HDS, else empty) where that field is missing. A sample's ploidy is its
    GT's (a GT absent from its shortened field reads as ``.``, haploid, as htslib reads it). On an error,
    ``err[ln]`` gets the ``ERR_DOSAGE_*`` code, ``err_sample[ln]`` the sample and ``err_field[ln]`` the
    FORMAT position of the faulty value.
    """
    na = n_alt[ln]
    rows = max(na, 1)
    r0 = row_offset[ln]
    for j in range(rows):
        for s in range(n_samples):
            code = (packed[r0 + j, s >> 2] >> (2 * (s & 3))) & 3
            units[r0 + j, s] = 65535 if code == 3 else code * 16384
    di = _format_index(buf, format_start[ln], format_end[ln], key)
    fi = _format_index(buf, format_start[ln], format_end[ln], fallback_key)
    if di < 0 and fi < 0:
        return
    gi = gt_index[ln]
    cap = dosage_capacity(na)
    vals = np.empty(cap, dtype=np.float64)
    miss = np.empty(cap, dtype=np.bool_)
    e = ends[ln]
    p = sample_start[ln]
    for s in range(n_samples):
        g0 = -1
        g1 = -1
        d0 = -1
        d1 = -1
        f0 = -1
        f1 = -1
        k = 0
        t = p
        q = p
        while True:
            if q >= e or buf[q] == TAB or buf[q] == COLON:
                if k == gi:
                    g0, g1 = t, q
                elif k == di:
                    d0, d1 = t, q
                elif k == fi:
                    f0, f1 = t, q
                if q >= e or buf[q] == TAB:
                    break
                k += 1
                t = q + 1
            q += 1
        p = q + 1
        haploid = gi >= 0  # an absent GT reads as '.'
        for i in range(g0 + 1, g1):
            if buf[i] == SLASH or buf[i] == PIPE:
                haploid = False
                break
        result = _DOSAGE_MISSING
        where = di
        if d0 >= 0:
            result = _DOSAGE_UNREAD
            if kind == KIND_DS and na == 1:  # the common case, without the general parser's arrays
                if d1 - d0 == 1 and buf[d0] == DOT:
                    result = _DOSAGE_MISSING
                else:
                    q, x = scan_decimal(buf, d0, d1)
                    if q == d1:
                        u = ds_units(x, haploid)
                        if u < 0:
                            result = -u
                        else:
                            units[r0, s] = np.uint16(u)
                            result = 0
            if result == _DOSAGE_UNREAD:
                n = parse_values(buf, d0, d1, vals, miss)
                result = ERR_DOSAGE_VALUE if n < 0 else field_units(kind, vals, miss, n, na, haploid, units, r0, s)
        if result == _DOSAGE_MISSING and f0 >= 0:
            where = fi
            n = parse_values(buf, f0, f1, vals, miss)
            result = ERR_DOSAGE_VALUE if n < 0 else field_units(KIND_DS, vals, miss, n, na, haploid, units, r0, s)
        if result > 0:
            err[ln] = result
            err_sample[ln] = s
            err_field[ln] = where
            return


@jit
def _is_gt_ds(buf: np.ndarray, f0: int, f1: int) -> bool:
    """Whether ``buf[f0:f1]`` (a FORMAT column) is exactly ``GT:DS``."""
    return (
        f1 - f0 == 5
        and buf[f0] == 71  # G
        and buf[f0 + 1] == 84  # T
        and buf[f0 + 2] == COLON
        and buf[f0 + 3] == 68  # D
        and buf[f0 + 4] == 83  # S
    )


@jit
def _gt_ds_line(
    buf: np.ndarray,
    p: int,
    e: int,
    n_samples: int,
    packed_row: np.ndarray,
    counts_row: np.ndarray,
    units_row: np.ndarray,
    value: np.ndarray,
    code_of: np.ndarray,
) -> bool:
    """Read a biallelic ``GT:DS`` line in one pass: dosage units, hard calls and their counts.

    Takes only the common shapes: a GT of one or two alleles ``0``, ``1`` or ``.`` (``value`` and
    ``code_of`` as in :func:`_fixed_stride_line`), then nothing, or ``:`` and a DS that is ``.`` or
    ``digits[.digits]`` of at most 15 digits (the very value :func:`scan_decimal` reads: every digit
    kept, one scaling by a power of ten). Where DS is given, the hard call is the dosage's
    (:func:`better.genomics.dosage.hard_call`); where it is missing, the dosage and hard call are GT's.
    Anything else (other GTs, exponents, signs, extra fields, values outside [0, 2], a wrong number of
    columns) returns False, leaving partial output, so that the general readers can take the line
    (and name its error).
    """
    local = np.zeros(4, dtype=np.int64)
    byte = 0
    for s in range(n_samples):
        if p + 1 >= e:  # an empty, one-byte or missing sample column
            return False
        c = buf[p + 1]
        if c in (SLASH, PIPE):  # a diploid GT
            if p + 2 >= e:
                return False
            code = code_of[value[buf[p]] + value[buf[p + 2]]]
            if code == 255:
                return False
            haploid = False
            q = p + 3
        elif c in (COLON, TAB):  # a haploid GT
            v = value[buf[p]]
            if v > 4:
                return False
            code = 0 if v == 0 else (2 if v == 1 else 3)
            haploid = True
            q = p + 1
        else:
            return False
        u = 65535 if code == 3 else code * 16384  # the GT's dosage, where DS is missing
        if q < e and buf[q] == COLON:
            d = q + 1
            if d < e and buf[d] == DOT and (d + 1 == e or buf[d + 1] == TAB):
                q = d + 1
            else:
                digits = np.int64(0)
                n_digits = 0
                while d < e and 48 <= buf[d] <= 57:
                    digits = digits * 10 + (buf[d] - 48)
                    n_digits += 1
                    d += 1
                n_fraction = 0
                if d < e and buf[d] == DOT:
                    d += 1
                    while d < e and 48 <= buf[d] <= 57:
                        digits = digits * 10 + (buf[d] - 48)
                        n_fraction += 1
                        d += 1
                if n_digits + n_fraction == 0 or n_digits + n_fraction > 15 or (d < e and buf[d] != TAB):
                    return False
                x = float(digits)
                if n_fraction:
                    x *= _NEG_POW10[n_fraction]
                if haploid:
                    x *= 2.0
                if x > 2.0:
                    return False
                u = int(x * 16384.0 + 0.5)
                code = hard_call(u)
                q = d
        if q < e and buf[q] != TAB:
            return False
        units_row[s] = u
        byte |= code << (2 * (s & 3))
        local[code] += 1
        if s & 3 == 3 or s == n_samples - 1:
            packed_row[s >> 2] = byte
            byte = 0
        p = q + 1
    if n_samples > 0 and p <= e:  # more columns than samples
        return False
    for c in range(4):
        counts_row[c] = local[c]
    return True


@jit_parallel
def parse_dosage_lines(
    buf: np.ndarray,
    ends: np.ndarray,
    sample_start: np.ndarray,
    format_start: np.ndarray,
    format_end: np.ndarray,
    n_alt: np.ndarray,
    gt_index: np.ndarray,
    predicted: np.ndarray,
    row_offset: np.ndarray,
    n_samples: int,
    kind: int,
    key: np.ndarray,
    fallback_key: np.ndarray,
    packed: np.ndarray,
    counts: np.ndarray,
    units: np.ndarray,
    err: np.ndarray,
    err_sample: np.ndarray,
    err_field: np.ndarray,
) -> None:
    """Every sample's ALT dosage (``units``, rows x samples, uint16) and hard call of each record line.

    What :func:`parse_genotypes_fast`, then :func:`_line_dosages` on every line and
    :func:`better.genomics.dosage.hard_calls` on every row would give, in one pass per line where the
    line allows it: a ``GT``-only line of the fixed-stride shape (dosages from GT), a biallelic
    ``GT:DS`` line read by :func:`_gt_ds_line`; other lines (and those that leave either path) through
    :func:`_parse_line`, :func:`_line_dosages` and the hard calls of the dosages. ``packed`` must be
    zeroed; errors as :func:`parse_genotypes_fast` and :func:`_line_dosages` report them.
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
    ds_fast = kind == KIND_DS and key.shape[0] == 2 and key[0] == 68 and key[1] == 83
    for ln in prange(ends.shape[0]):
        if err[ln] != ERR_OK:
            continue
        r0 = row_offset[ln]
        rows = max(n_alt[ln], 1)
        biallelic_gt_first = n_alt[ln] == 1 and gt_index[ln] == 0
        f0 = format_start[ln]
        f1 = format_end[ln]
        if (
            biallelic_gt_first
            and f1 - f0 == 2
            and ends[ln] - sample_start[ln] == 4 * n_samples - 1
            and _fixed_stride_line(buf, sample_start[ln], n_samples, packed[r0], counts[r0], value, code_of)
        ):
            for s in range(n_samples):  # FORMAT is GT alone: the dosages are GT's
                code = (packed[r0, s >> 2] >> (2 * (s & 3))) & 3
                units[r0, s] = 65535 if code == 3 else code * 16384
            continue
        if predicted[ln]:
            err[ln] = ERR_RESCAN
            continue
        if (
            ds_fast
            and biallelic_gt_first
            and _is_gt_ds(buf, f0, f1)
            and _gt_ds_line(
                buf, sample_start[ln], ends[ln], n_samples, packed[r0], counts[r0], units[r0], value, code_of
            )
        ):
            continue
        for j in range(rows):
            packed[r0 + j, :] = 0
            counts[r0 + j, :] = 0
        _parse_line(
            buf, ln, ends, sample_start, n_alt, gt_index, row_offset, n_samples, packed, counts, err, err_sample
        )
        if err[ln] != ERR_OK:
            continue
        _line_dosages(
            buf,
            ln,
            ends,
            sample_start,
            format_start,
            format_end,
            n_alt,
            gt_index,
            row_offset,
            n_samples,
            kind,
            key,
            fallback_key,
            packed,
            units,
            err,
            err_sample,
            err_field,
        )
        if err[ln] != ERR_OK:
            continue
        for j in range(rows):
            packed[r0 + j, :] = 0
            hard_call_row(units[r0 + j], packed[r0 + j], counts[r0 + j])


@jit
def record_dosages(
    kind: int,
    vals: np.ndarray,
    miss: np.ndarray,
    counts: np.ndarray,
    fallback_vals: np.ndarray,
    fallback_miss: np.ndarray,
    fallback_counts: np.ndarray,
    n_alt: int,
    haploid: np.ndarray,
    units: np.ndarray,
) -> tuple[int, int, int]:
    """:func:`_line_dosages` for one record already decoded by htslib (the cyvcf2 reader).

    ``vals``/``miss`` are ``(samples, width)`` values and missing flags, ``counts[s]`` how many values
    sample ``s`` has (0: the record has no such field); the ``fallback_*`` arrays are DS's for HDS.
    ``units`` (rows x samples) must hold the GT dosages. Returns ``(0, -1, 0)`` or ``(error code, sample,
    0 for the field itself or 1 for the fallback)``.
    """
    for s in range(units.shape[1]):
        result = _DOSAGE_MISSING
        where = 0
        if counts[s] > 0:
            result = field_units(kind, vals[s], miss[s], counts[s], n_alt, haploid[s], units, 0, s)
        if result == _DOSAGE_MISSING and fallback_counts[s] > 0:
            where = 1
            result = field_units(
                KIND_DS, fallback_vals[s], fallback_miss[s], fallback_counts[s], n_alt, haploid[s], units, 0, s
            )
        if result > 0:
            return result, s, where
    return 0, -1, 0
