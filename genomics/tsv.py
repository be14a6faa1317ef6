"""Tab-separated text: the one writer of every table BETTER writes as text, and its precision rule.

The rule, for every tab-separated file (query results, ``.glm`` tables, GWAS-SSF, top hits, the
synthetic cohort's tables):

- a float is written with **6 significant digits** (``%.6g``), as PLINK 2 writes its ``.glm``,
  ``.afreq`` and ``.hardy`` tables by default, so that a BETTER table and a PLINK 2 table can be compared
  value by value at the precision both print, and ``better verify`` compares a result's text with the
  signed releases at that precision (full precision stays in the Parquet form of a result);
- a missing value (``None`` or NaN) is written ``NA``, or the marker the format asks for (GWAS-SSF:
  ``#NA``); a boolean ``TRUE`` or ``FALSE``; integers and strings as they are, so text a caller has
  already formatted (the synthetic cohort's measurements, at the precision they were simulated with)
  passes unchanged.

Lines end with ``\\n``, the first line names the columns, and nothing is quoted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

#: Significant digits of a float in every tab-separated file.
DIGITS = 6


def cell(value: object, na: str = "NA", digits: int = DIGITS) -> str:
    """One value as the text of a table cell, by the module's rule.

    Parameters
    ----------
    value
        The value: ``None``, a float, a boolean, an integer or a string.
    na
        What a missing value (``None`` or NaN) reads.
    digits
        Significant digits of a float: :data:`DIGITS` in files; fewer only where a table is shown to a
        reader (the HTML report).

    Returns
    -------
    str
        The cell's text.

    Examples
    --------
    >>> [cell(v) for v in (0.123456789, 1.5e-9, None, float("nan"), True, 7, "rs1")]
    ['0.123457', '1.5e-09', 'NA', 'NA', 'TRUE', '7', 'rs1']
    >>> cell(None, na="#NA"), cell(0.123456789, digits=4)
    ('#NA', '0.1235')
    """
    if value is None:
        return na
    if isinstance(value, float):
        return na if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


def tsv_text(columns: Sequence[str], rows: Iterable[Sequence[object]], na: str = "NA") -> str:
    """A table as tab-separated text: a header line, then one line per row, each value by :func:`cell`.

    Parameters
    ----------
    columns
        The column names, written as the first line.
    rows
        The rows, each as many values as there are columns.
    na
        What a missing value reads.

    Returns
    -------
    str
        The text, every line ending with a newline.

    Examples
    --------
    >>> tsv_text(["ID", "P"], [["rs1", 0.000123456789], ["rs2", None]])
    'ID\\tP\\nrs1\\t0.000123457\\nrs2\\tNA\\n'
    """
    lines = ["\t".join(columns)]
    lines.extend("\t".join(cell(v, na) for v in row) for row in rows)
    return "\n".join(lines) + "\n"


def write_tsv(
    path: str | os.PathLike[str], columns: Sequence[str], rows: Iterable[Sequence[object]], na: str = "NA"
) -> None:
    """Write a table as tab-separated text (:func:`tsv_text`) to ``path``.

    Parameters
    ----------
    path
        The file to write (replaced if it exists).
    columns
        The column names.
    rows
        The rows.
    na
        What a missing value reads.
    """
    with open(path, "w") as f:
        f.write(tsv_text(columns, rows, na))
