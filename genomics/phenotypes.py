"""Phenotype/covariate tables: read a TSV (or CSV), infer a type per column, match to VCF samples.

The first column holds the sample ID (``sample_id``, ``IID`` or ``#IID`` by convention); each other
column becomes ``int64``, ``float64`` or ``string``, whichever every non-missing value fits. Missing
values are written ``NA``, ``.``, ``NaN`` or left empty.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass

import pyarrow as pa

from better.engine.errors import InputError
from better.genomics.paths import input_file

MISSING_TOKENS = frozenset({"", "NA", "na", "N/A", "NaN", "nan", ".", "null", "NULL"})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT = re.compile(r"^[+-]?[0-9]+$")
RESERVED = frozenset({"sample_id", "sample_index", "station"})
#: The query language's keywords (query/grammar.lark; a test keeps the two in step) and variant-filter
#: names: a phenotype column by such a name could not be named in a query.
QUERY_WORDS = frozenset(
    {
        "explain", "count", "samples", "freq", "hwe", "gwas", "coverage", "reads", "pileup", "min_base_quality",
        "min_mapping_quality", "linear", "logistic", "on", "where", "and", "is", "not", "missing", "adjust",
        "station", "test", "wald", "score", "firth", "maf", "mac", "call_rate", "hwe_p", "r2", "filter", "pca", "prune",
        "project", "as", "beacon",
    }
)  # fmt: skip
_INT64 = 2**63


@dataclass
class PhenotypeTable:
    """A typed phenotype table, one row per sample.

    Attributes
    ----------
    table
        ``sample_id`` (string) followed by the typed phenotype columns, in file order.
    path
        Where it was read from.
    """

    table: pa.Table
    path: str

    @property
    def columns(self) -> list[str]:
        """Phenotype column names (without ``sample_id``)."""
        return self.table.column_names[1:]


def _value_type(text: str) -> str:
    if _INT.match(text):
        return "int64" if -_INT64 <= int(text) < _INT64 else "float64"  # beyond int64: a number, as PLINK reads it
    try:
        float(text)
    except ValueError:
        return "string"
    return "float64"


def read_phenotypes(path: str) -> PhenotypeTable:
    """Read and type a phenotype file, refusing anything ambiguous with a message naming the line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ph.tsv"
    >>> _ = p.write_text("sample_id\\tage\\tldl\\tsite\\nA\\t61\\t3.2\\tnorth\\nB\\tNA\\t2.5\\tsouth\\n")
    >>> t = read_phenotypes(p).table
    >>> [str(f.type) for f in t.schema], t.column("age").to_pylist()
    (['string', 'int64', 'double', 'string'], [61, None])
    """
    input_file(path, "phenotype table")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save the phenotype table as a tab-separated text file") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: the phenotype file is empty; it needs a header line (sample_id, columns...)")
    delimiter = "\t" if "\t" in lines[0] or "," not in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    header[0] = "sample_id"
    names = header[1:]
    if not names:
        raise InputError(f"{path}: line 1 has only the sample ID column; add phenotype columns")
    seen: set[str] = set()
    for name in names:
        if not _IDENTIFIER.match(name):
            fixed = re.sub(r"[^A-Za-z0-9_]", "_", name)
            fixed = fixed if re.match(r"^[A-Za-z_]", fixed) else "_" + fixed
            raise InputError(
                f"{path}: line 1: column name {name!r} cannot be used in queries; rename it to an "
                f"identifier such as {fixed!r} (letters, digits and _, not starting with a digit)"
            )
        if name in RESERVED:
            raise InputError(f"{path}: line 1: column name {name!r} is reserved; rename it")
        if name.lower() in QUERY_WORDS:
            raise InputError(
                f"{path}: line 1: column name {name!r} is a word of the query language, so no query could name "
                f"it; rename it (e.g. {name}_value)"
            )
        if name in seen:
            raise InputError(f"{path}: line 1: column {name!r} appears twice")
        seen.add(name)

    ids: list[str] = []
    first_line: dict[str, int] = {}
    columns: list[list[str | None]] = [[] for _ in names]
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise InputError(
                f"{path}: line {line_no}: {len(row)} fields where the header has {len(header)}; "
                f"every line needs one value per column (use NA for a missing value)"
            )
        sid = row[0].strip()
        if sid in MISSING_TOKENS:
            raise InputError(f"{path}: line {line_no}: the sample ID is missing")
        if sid in first_line:
            raise InputError(
                f"{path}: line {line_no}: sample ID {sid!r} already appears on line {first_line[sid]}; "
                "each sample must have one row"
            )
        first_line[sid] = line_no
        ids.append(sid)
        for j, value in enumerate(row[1:]):
            v = value.strip()
            columns[j].append(None if v in MISSING_TOKENS else v)

    arrays = [pa.array(ids, type=pa.string())]
    for name, values in zip(names, columns, strict=True):
        arrays.append(_typed_column(name, values, path, ids, first_line))
    return PhenotypeTable(pa.table(arrays, names=["sample_id", *names]), path)


def _typed_column(
    name: str, values: list[str | None], path: str, ids: list[str], first_line: dict[str, int]
) -> pa.Array:
    kind = "int64"
    first_of: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        t = _value_type(v)
        first_of.setdefault(t, i)
        if t == "float64" and kind == "int64":
            kind = "float64"
    if "string" in first_of and len(first_of) > 1:
        s = first_of["string"]
        n = min(i for t, i in first_of.items() if t != "string")
        raise InputError(
            f"{path}: column {name!r} mixes numbers (line {first_line[ids[n]]}: {values[n]!r}) and text "
            f"(line {first_line[ids[s]]}: {values[s]!r}); fix the value or write NA for missing"
        )
    if "string" in first_of:
        return pa.array(values, type=pa.string())
    if kind == "int64":
        return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
    numbers = [None if v is None else float(v) for v in values]
    bad = next((i for i, x in enumerate(numbers) if x is not None and not math.isfinite(x)), None)
    if bad is not None:
        raise InputError(
            f"{path}: line {first_line[ids[bad]]}, column {name!r}: {values[bad]!r} is not a finite number; "
            "fix it or write NA for missing"
        )
    return pa.array(numbers, type=pa.float64())


def match_samples(pheno: PhenotypeTable, vcf_samples: list[str], vcf_path: str) -> tuple[pa.Table, int]:
    """Align a phenotype table to the VCF's samples.

    Returns the table restricted to samples present in the VCF, with a ``sample_index`` column (the
    sample's column in the VCF), sorted by it, and the number of phenotype rows that matched no VCF
    sample. Raises when no sample matches, showing IDs from both sides.
    """
    index = {s: i for i, s in enumerate(vcf_samples)}
    ids = pheno.table.column("sample_id").to_pylist()
    positions = [index.get(s, -1) for s in ids]
    keep = [i for i, p in enumerate(positions) if p >= 0]
    if not keep:
        raise InputError(
            f"{pheno.path}: none of its {len(ids)} sample IDs (e.g. {', '.join(map(repr, ids[:3]))}) is among "
            f"the {len(vcf_samples)} samples of {vcf_path} (e.g. {', '.join(map(repr, vcf_samples[:3]))}); "
            "the first column must hold the VCF's sample IDs"
        )
    taken = pheno.table.take(pa.array(keep))
    sample_index = pa.array([positions[i] for i in keep], type=pa.int32())
    taken = taken.add_column(1, "sample_index", sample_index).sort_by("sample_index")
    return taken, len(ids) - len(keep)
