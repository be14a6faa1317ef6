"""Result tables with PLINK 2's column names, and their text forms (table, TSV, JSON, Parquet).

A withheld value is null in the DataFrame (with ``WITHHELD`` true on its row) and the word ``withheld``
in every text form: never a number.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from better.engine.design import KEY_COLUMNS
from better.genomics.allele_query import AlleleQuery
from better.genomics.tsv import cell, tsv_text
from better.query.withholding import WithheldBy

if TYPE_CHECKING:
    from better.query.parser import Query

LINEAR = ["#CHROM", "POS", "ID", "REF", "ALT", "A1", "TEST", "OBS_CT", "BETA", "SE", "T_STAT", "P"]
LINEAR_EXTRA = ["A1_FREQ", "LOG10_P", "ERRCODE"]
LOGISTIC = ["#CHROM", "POS", "ID", "REF", "ALT", "A1", "TEST", "OBS_CT", "OR", "LOG(OR)_SE", "Z_STAT", "P"]
LOGISTIC_EXTRA = ["A1_FREQ", "FIRTH?", "LOG10_P", "ERRCODE"]
FREQ = ["#CHROM", "POS", "ID", "REF", "ALT", "ALT_FREQS", "MACH_R2", "OBS_CT", "MISSING_CT", "CALL_RATE"]
BEACON = ["#CHROM", "POS", "ID", "REF", "ALT", "EXISTS", "ALT_FREQS", "OBS_CT"]
HARDY = ["#CHROM", "POS", "ID", "A1", "AX", "HOM_A1_CT", "HET_A1_CT", "TWO_AX_CT", "O(HET_A1)", "E(HET_A1)", "P"]
#: Columns that are identity or labels, shown even on withheld rows.
_LABELS = {
    "#CHROM",
    "POS",
    "ID",
    "REF",
    "ALT",
    "A1",
    "AX",
    "TEST",
    "WITHHELD",
    "WITHHELD_BY",
    "ERRCODE",
    "FIRTH?",
    "LEFT_OUT",
    "EXISTS",
}


def table(
    verb: str,
    model: str | None,
    res: dict[str, np.ndarray],
    ids: dict[tuple, str],
    withheld_by: WithheldBy | None = None,
) -> pl.DataFrame:
    """The engine's result columns as a DataFrame in PLINK 2's layout, with ``WITHHELD`` and, from
    ``withheld_by``, ``WITHHELD_BY`` (the rules that withheld a row)."""
    if verb == "count":
        hidden = bool(res["WITHHELD"][0])
        return pl.DataFrame(
            {"COUNT": [None if hidden else int(res["COUNT"][0])], "WITHHELD": [hidden]},
            schema={"COUNT": pl.Int64, "WITHHELD": pl.Boolean},
        )
    n = len(res["pos"])
    keys, base = _variant_columns(res, ids)
    if verb == "freq":
        cols = {**base, **{c: res[c] for c in ("ALT_FREQS", "MACH_R2", "OBS_CT", "MISSING_CT", "CALL_RATE")}}
        withheld = np.asarray(res["WITHHELD"], dtype=bool)
        order = FREQ
    elif verb == "hwe":
        cols = {**base, "A1": base["REF"], "AX": base["ALT"], "P": res["HWE_P"]}
        cols.update({c: res[c] for c in ("HOM_A1_CT", "HET_A1_CT", "TWO_AX_CT", "O(HET_A1)", "E(HET_A1)")})
        withheld = np.asarray(res["WITHHELD"], dtype=bool)
        order = HARDY
    else:
        common = {**base, "A1": base["ALT"], "TEST": ["ADD"] * n if model == "linear" else list(res["TEST"])}
        withheld = np.asarray(res["ERRCODE"] == "WITHHELD", dtype=bool)
        errcode = [e if e else "." for e in res["ERRCODE"]]
        if model == "linear":
            names = ("OBS_CT", "BETA", "SE", "T_STAT", "P", "A1_FREQ", "LOG10_P")
            cols = {**common, **{c: res[c] for c in names}, "ERRCODE": errcode}
            order = LINEAR + LINEAR_EXTRA
        else:
            names = ("OBS_CT", "OR", "LOG(OR)_SE", "Z_STAT", "P", "A1_FREQ", "LOG10_P")
            cols = {**common, **{c: res[c] for c in names}, "FIRTH?": list(res["FIRTH?"]), "ERRCODE": errcode}
            order = LOGISTIC + LOGISTIC_EXTRA
    frame = pl.DataFrame({c: _series(c, cols[c]) for c in order})
    return _hide_withheld(frame, withheld, keys, withheld_by, _LABELS)


def _variant_columns(
    res: dict[str, np.ndarray], ids: dict[tuple, str]
) -> tuple[list[tuple[object, ...]], dict[str, Any]]:
    """The rows' keys, and their ``#CHROM POS ID REF ALT`` columns (IDs from ``ids``, else ``.``)."""
    keys: list[tuple[object, ...]] = list(zip(*(res[c].tolist() for c in KEY_COLUMNS), strict=True))
    return keys, {
        "#CHROM": [str(c) for c in res["chrom"]],
        "POS": np.asarray(res["pos"], dtype=np.int64),
        "ID": [ids.get(k, ".") for k in keys],
        "REF": [str(r) for r in res["ref"]],
        "ALT": [str(a) for a in res["alt"]],
    }


def beacon_table(
    query: Query, res: dict[str, np.ndarray], ids: dict[tuple, str], withheld_by: WithheldBy | None = None
) -> pl.DataFrame:
    """BEACON: the variants asked about, pooled over the stations, with ``EXISTS`` where some selected
    person carries the ALT allele. A row the minor allele count rule withheld is carried (1 to a few
    copies: present, its numbers withheld). For ``REF>ALT`` without wildcards at a position no station
    holds, one row says ``EXISTS`` false."""
    keep = np.ones(len(res["pos"]), dtype=bool)
    region = query.regions[0]
    if query.alleles is not None:
        ref, alt = query.alleles
        asked = AlleleQuery(region.chrom, (region.start,), reference_bases=ref, alternate_bases=alt)
        keep = asked.matches(res["pos"], res["ref"], res["alt"]) & (
            np.asarray(res["chrom"]).astype(str) == region.chrom
        )
    rows = {name: np.asarray(col)[keep] for name, col in res.items()}
    withheld = np.asarray(rows["WITHHELD"], dtype=bool)
    carriers = np.nan_to_num(rows["HET_A1_CT"].astype(float)) + np.nan_to_num(rows["TWO_AX_CT"].astype(float))
    keys, cols = _variant_columns(rows, ids)
    cols |= {
        "EXISTS": withheld | (carriers > 0),
        "ALT_FREQS": rows["ALT_FREQS"],
        "OBS_CT": rows["OBS_CT"],
    }
    types = {"#CHROM": pl.String, "ID": pl.String, "REF": pl.String, "ALT": pl.String, "EXISTS": pl.Boolean}
    frame = pl.DataFrame([pl.Series(c, cols[c], dtype=types[c]) if c in types else _series(c, cols[c]) for c in BEACON])
    frame = _hide_withheld(frame, withheld, keys, withheld_by, _LABELS)
    if query.alleles is not None and not frame.height and set("".join(query.alleles)) <= set("ACGT"):
        ref, alt = query.alleles
        absent = {"#CHROM": [region.chrom], "POS": [region.end], "ID": ["."], "REF": [ref], "ALT": [alt]}
        absent |= {"EXISTS": [False], "WITHHELD": [False], "WITHHELD_BY": [""]}
        frame = frame.with_columns(pl.col("WITHHELD_BY").cast(pl.String))
        frame = pl.concat([frame, pl.DataFrame(absent, schema={c: frame.schema[c] for c in absent})], how="diagonal")
    return frame


def read_table(res: dict[str, np.ndarray], withheld_by: WithheldBy | None = None) -> pl.DataFrame:
    """A COVERAGE, READS or PILEUP result as a DataFrame (contig column as ``#CHROM``); withheld rows keep
    their labels and lose their numbers."""
    cols = {("#CHROM" if c == "CHROM" else c): v for c, v in res.items()}
    frame = pl.DataFrame([_series(c, v) for c, v in cols.items() if c != "WITHHELD"])
    withheld = np.asarray(res.get("WITHHELD", np.zeros(frame.height, dtype=bool)), dtype=bool)
    keys: list[tuple[object, ...]] = [()] * frame.height
    if "START" in frame.columns:  # coverage targets: 1-based START in the table, 0-based in the keys
        keys = list(zip(frame["#CHROM"], (frame["START"] - 1).to_list(), frame["END"], frame["NAME"], strict=True))
    elif "POS" in frame.columns:
        keys = list(zip(frame["#CHROM"], frame["POS"], strict=True))
    labels = {"#CHROM", "POS", "START", "END", "NAME", "WITHHELD", "WITHHELD_BY"}
    return _hide_withheld(frame, withheld, keys, withheld_by, labels)


def _hide_withheld(
    frame: pl.DataFrame,
    withheld: np.ndarray,
    keys: Sequence[tuple[object, ...]],
    withheld_by: WithheldBy | None,
    labels: Collection[str],
) -> pl.DataFrame:
    """``frame`` with ``WITHHELD`` and ``WITHHELD_BY`` (the rules, per row ``keys``) and, on withheld rows,
    every column but ``labels`` null."""
    frame = frame.with_columns(
        pl.Series("WITHHELD", withheld),
        pl.Series("WITHHELD_BY", (withheld_by or WithheldBy()).column(keys, withheld.tolist())),
    )
    numbers = [c for c in frame.columns if c not in labels]
    return frame.with_columns([pl.when(pl.col("WITHHELD")).then(None).otherwise(pl.col(c)).alias(c) for c in numbers])


def _series(name: str, values: object) -> pl.Series:
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return pl.Series(name, arr, dtype=pl.Float64, nan_to_null=False)
    if arr.dtype.kind in "iu":
        return pl.Series(name, arr.astype(np.int64))
    return pl.Series(name, [str(v) for v in arr.tolist()], dtype=pl.String)


def _text(value: object, withheld: bool, column: str) -> str:
    return "withheld" if withheld and column not in _LABELS else cell(value)


def rows_as_text(frame: pl.DataFrame) -> list[list[str]]:
    """Each row as the strings every text format shows: ``withheld`` for a withheld value, else by
    :func:`better.genomics.tsv.cell` (``NA``, 6 significant digits)."""
    cols = [c for c in frame.columns if c != "WITHHELD"]
    withheld = frame["WITHHELD"].to_list() if "WITHHELD" in frame.columns else [False] * frame.height
    return [
        [_text(v, bool(w), c) for c, v in zip(cols, row, strict=True)]
        for row, w in zip(frame.select(cols).iter_rows(), withheld, strict=True)
    ]


#: Columns a terminal table shows first when not all fit: where, what, and the main numbers.
_FIRST = ("#CHROM", "POS", "ID", "REF", "ALT", "COUNT", "P", "BETA", "OR", "ALT_FREQS", "OBS_CT", "WITHHELD_BY")


def fitting_columns(cols: list[str], rows: list[list[str]], width: int) -> list[str]:
    """The columns that fit ``width`` characters (in their own order), the most telling first.

    >>> fitting_columns(["A", "LONG_NAME", "P"], [["1", "x" * 30, "0.5"]], 20)
    ['A', 'P']
    """
    need = {c: max([len(c), *(len(r[i]) for r in rows)]) + 3 for i, c in enumerate(cols)}
    chosen: set[str] = set()
    used = 0
    for c in sorted(cols, key=lambda c: (_FIRST.index(c) if c in _FIRST else len(_FIRST), cols.index(c))):
        if used + need[c] <= max(width, 20) or not chosen:
            chosen.add(c)
            used += need[c]
    return [c for c in cols if c in chosen]


def write(
    frame: pl.DataFrame,
    fmt: str,
    out: Path | None,
    notes: list[str],
    console: Console,
    provenance: list[dict[str, Any]] | None = None,
) -> None:
    """Write ``frame`` as ``fmt`` (table, tsv, json, parquet) to ``out`` or stdout; JSON and Parquet carry
    the stations' signed manifests (``better verify`` checks them)."""
    cols = [c for c in frame.columns if c != "WITHHELD"]
    if fmt == "parquet":
        if out is None:
            raise ValueError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        t = frame.to_arrow()
        meta = {
            b"better.notes": json.dumps(notes).encode(),
            b"better.provenance": json.dumps(provenance or []).encode(),
        }
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), **meta})
        pq.write_table(t, out)
        return
    text_rows = rows_as_text(frame)
    if fmt == "tsv":
        body = tsv_text(cols, text_rows)
    elif fmt == "json":
        doc = {"columns": cols, "rows": text_rows, "notes": notes, "provenance": provenance or []}
        body = json.dumps(doc, indent=1) + "\n"
    elif fmt == "table":
        if out is None:
            shown = fitting_columns(cols, text_rows[:200], console.width)
            t = Table(show_edge=False, header_style="bold")
            for c in shown:
                t.add_column(c, justify="right" if c not in _LABELS else "left", no_wrap=True)
            at = [cols.index(c) for c in shown]
            for r in text_rows[:200]:
                t.add_row(*(r[i] for i in at))
            console.print(t)
            if len(text_rows) > 200 or len(shown) < len(cols):
                hidden = [c for c in cols if c not in shown]
                more = f"{len(text_rows) - 200} more rows" if len(text_rows) > 200 else ""
                more += (", " if more else "") + (f"columns {', '.join(hidden)} left out" if hidden else "")
                console.print(f"... {more}: --format tsv (or --out FILE) shows everything")
            return
        body = tsv_text(cols, text_rows)
    else:
        raise ValueError(f"unknown format {fmt!r}: use table, tsv, json or parquet")
    if out is None:
        import sys

        sys.stdout.write(body)
    else:
        out.write_text(body)
