"""Build a station's :class:`better.engine.design.Design` and genotype blocks from its store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from better.engine.design import KEY_COLUMNS, LABEL_COLUMNS, Block, Design, Targets
from better.engine.errors import InputError, NotFoundError
from better.genomics.regions import Region, merge_regions
from better.genomics.selection import Condition, suggest
from better.genomics.store import Dataset


def _numeric_column(ph: pa.Table, name: str, n: int, what: str) -> np.ndarray:
    names = [c for c in ph.column_names if c not in ("sample_id", "sample_index")]
    if name not in names:
        raise NotFoundError(
            f"no phenotype column {name!r} for the {what}{suggest(name, names)}; columns: {', '.join(names)}"
        )
    col = ph.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise InputError(f"column {name!r} holds text; the {what} must be numeric")
    out = np.full(n, np.nan)
    idx = ph.column("sample_index").to_numpy()
    out[idx] = col.to_numpy(zero_copy_only=False).astype(float)
    return out


def build_design(
    dataset: Dataset,
    phenotype: str,
    covariates: Sequence[str] = (),
    conditions: Sequence[Condition] = (),
    *,
    binary: bool = False,
    station_index: int | None = None,
    n_stations: int = 1,
) -> Design:
    """Model inputs for ``phenotype ~ covariates`` over the samples meeting ``conditions``.

    Samples missing the phenotype or any covariate are left out. For a binary trait the phenotype must
    be coded 0/1 (controls/cases). With ``station_index`` (0-based) and ``n_stations``, indicator
    columns for stations 1..S-1 are appended (``ADJUST station``): 1 in this station's own column.
    """
    n = dataset.n_samples
    ph = dataset.phenotypes()
    y = _numeric_column(ph, phenotype, n, "phenotype")
    cols = [np.ones(n)]
    names = ["intercept"]
    for c in covariates:
        cols.append(_numeric_column(ph, c, n, "covariate"))
        names.append(c)
    if station_index is not None:
        for s in range(1, n_stations):
            cols.append(np.full(n, 1.0 if s == station_index else 0.0))
            names.append(f"station{s}")
    C = np.column_stack(cols)
    if binary:
        # Judged on the whole column, before any sample filter, and without quoting a value: an error is a
        # release too, and one about the samples a filter picked could describe a single person.
        coded = np.isnan(y) | (y == 0.0) | (y == 1.0)
        if not coded.all():
            raise InputError(
                f"binary phenotype {phenotype!r} must be coded 0 (control) / 1 (case) (or missing), and this "
                "dataset's column holds other values; recode it (e.g. 1/2 as PLINK codes it: subtract 1) and "
                "ingest again, or analyse it with GWAS LINEAR"
            )
    include = dataset.sample_mask(list(conditions)) & ~np.isnan(y) & ~np.isnan(C).any(axis=1)
    C[~include] = 0.0
    y = np.where(include, y, 0.0)
    return Design(C=np.ascontiguousarray(C), y=y, include=include, names=tuple(names))


def genotype_blocks(
    dataset: Dataset,
    region: Region | None = None,
    targets: Targets | None = None,
    max_variants: int = 4096,
    pass_only: bool = False,
    row_groups: Sequence[int] | None = None,
) -> Iterator[Block]:
    """The dataset's variants as engine blocks (keys and packed genotypes), streamed.

    With ``targets`` (key columns), only blocks at those variants' positions are read; with
    ``pass_only``, only records whose FILTER is PASS or missing; with ``row_groups``, only those row
    groups of the variants file.
    """
    sites = None
    if targets is not None:
        sites = list(zip(np.asarray(targets["chrom"]).tolist(), np.asarray(targets["pos"]).tolist(), strict=True))
    for b in dataset.blocks(region, max_variants=max_variants, sites=sites, pass_only=pass_only, row_groups=row_groups):
        keys = {c: b.variants.column(c).to_numpy(zero_copy_only=False) for c in KEY_COLUMNS}
        for c in LABEL_COLUMNS:  # a VCF ID of "." is stored as null
            keys[c] = pc.fill_null(b.variants.column(c), ".").to_numpy(zero_copy_only=False)
        yield Block(keys, b.packed, b.dosages)


def variant_keys(
    dataset: Dataset, regions: Sequence[Region] | None = None, pass_only: bool = False
) -> dict[str, np.ndarray]:
    """Key and label columns of the variants :func:`genotype_blocks` would yield, without genotypes."""
    parts = []
    for region in regions if regions is not None else [None]:
        table = dataset.variants(region, columns=[*KEY_COLUMNS, *LABEL_COLUMNS], pass_only=pass_only)
        keys = {c: table.column(c).to_numpy(zero_copy_only=False) for c in KEY_COLUMNS}
        for c in LABEL_COLUMNS:
            keys[c] = pc.fill_null(table.column(c), ".").to_numpy(zero_copy_only=False)
        parts.append(keys)
    return {c: np.concatenate([p[c] for p in parts]) for c in (*KEY_COLUMNS, *LABEL_COLUMNS)}


class StationBlocks:
    """A station's :data:`~better.engine.design.BlockSource` for one analysis over a dataset (and region).

    A full pass streams the store. Targeted rounds (the last Newton rounds of a logistic fit name the
    same few variants again and again) read those variants' rows once and then serve them from memory;
    the cache holds only the latest targeted rows, so it stays as small as the request.
    """

    def __init__(
        self,
        dataset: Dataset,
        regions: Region | Sequence[Region] | None = None,
        max_variants: int = 4096,
        on_block: Callable[[int], None] | None = None,
        pass_only: bool = False,
    ) -> None:
        self.dataset = dataset
        self.pass_only = pass_only
        self.regions: list[Region | None] = [None]
        if regions is not None:
            self.regions = list(merge_regions([regions] if isinstance(regions, Region) else list(regions)))
        self.max_variants = max_variants
        self.on_block = on_block
        self._cached: Block | None = None
        self._cached_keys: set[tuple[object, ...]] = set()

    def _read(self, targets: Targets | None) -> Iterator[Block]:
        for region in self.regions:
            for block in genotype_blocks(self.dataset, region, targets, self.max_variants, self.pass_only):
                if self.on_block is not None:  # progress, and the point where a cancelled task stops
                    self.on_block(block.packed.shape[0])
                yield block

    def __call__(self, targets: Targets | None = None) -> Iterator[Block]:
        if targets is None:
            return self._read(None)
        wanted = set(zip(*(np.asarray(targets[c]).tolist() for c in KEY_COLUMNS), strict=True))
        if self._cached is None or not wanted <= self._cached_keys:
            parts = list(self._read(targets))
            keys = {c: np.concatenate([b.keys[c] for b in parts]) if parts else np.array([]) for c in KEY_COLUMNS}
            rows = [
                i for i, key in enumerate(zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True)) if key in wanted
            ]
            packed = np.concatenate([b.packed for b in parts]) if parts else np.zeros((0, 0), dtype=np.uint8)
            dosages = None
            if parts and parts[0].dosages is not None:
                dosages = np.concatenate([b.dosages for b in parts if b.dosages is not None])
            self._cached = Block(keys, packed, dosages).take(rows)
            self._cached_keys = set(zip(*(self._cached.keys[c].tolist() for c in KEY_COLUMNS), strict=True))
            self._cached_keys |= wanted  # wanted but absent here: absent on the next call too
        return iter([self._cached])
