"""The union of several stations' row keys (variants by chrom, pos, ref, alt; or targets), and where each
station's rows fall in it: how per-row statistics of different stations are added up."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from better.engine.design import KEY_COLUMNS


@dataclass(frozen=True)
class KeyUnion:
    """The union of variants over stations and where each station's rows go.

    ``keys`` holds the union in (chromosome of first appearance, position) order; ``index[s][r]`` is the
    union row of station ``s``'s row ``r``.
    """

    keys: dict[str, np.ndarray]
    index: list[np.ndarray]

    @property
    def n(self) -> int:
        return int(next(iter(self.keys.values())).shape[0])


#: Integer key columns (positions); the other key columns are text.
INTEGER_KEYS = ("pos", "start", "end")


def union_keys(station_keys: list[dict[str, np.ndarray]], columns: tuple[str, ...] = KEY_COLUMNS) -> KeyUnion:
    """Union of the stations' keys (variant keys by default), and each station's row positions in it.

    The first of ``columns`` is the contig, the second the position the union is sorted by within a
    contig (contigs in order of first appearance).

    Examples
    --------
    >>> a = {"chrom": np.array(["1", "1"]), "pos": np.array([5, 9]), "ref": np.array(["A", "C"]),
    ...      "alt": np.array(["G", "T"])}
    >>> b = {"chrom": np.array(["1"]), "pos": np.array([7]), "ref": np.array(["A"]), "alt": np.array(["C"])}
    >>> al = union_keys([a, b])
    >>> al.keys["pos"].tolist(), [i.tolist() for i in al.index]
    ([5, 7, 9], [[0, 2], [1]])
    """
    frames = []
    for s, keys in enumerate(station_keys):
        series = [
            pl.Series(c, np.asarray(keys[c], dtype=np.int64))
            if c in INTEGER_KEYS
            else pl.Series(c, np.asarray(keys[c]).astype(str), dtype=pl.String)
            for c in columns
        ]
        frames.append(
            pl.DataFrame(series).with_columns(pl.lit(s).alias("_station"), pl.int_range(pl.len()).alias("_row"))
        )
    allk = pl.concat(frames).with_row_index("_order")
    contig, position = columns[0], columns[1]
    chrom_rank = allk.group_by(contig).agg(pl.col("_order").min().alias("_crank"))
    union = (
        allk.unique(subset=list(columns), keep="first", maintain_order=True)
        .join(chrom_rank, on=contig)
        .sort(["_crank", position, "_order"])
        .with_row_index("_union")
    )
    mapped = allk.join(union.select([*columns, "_union"]), on=list(columns))
    index = []
    for s in range(len(station_keys)):
        part = mapped.filter(pl.col("_station") == s).sort("_row")
        index.append(part.get_column("_union").to_numpy().astype(np.int64))
    keys = {c: union.get_column(c).to_numpy() for c in columns}
    return KeyUnion(keys, index)
