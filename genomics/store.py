"""The station store: one directory with a DuckDB catalog and a Parquet folder per dataset.

Layout::

    STATION/
      station.toml                 name, policies, hashed tokens (station_api.config)
      catalog.duckdb               datasets, ingest provenance, views over the Parquet files
      datasets/<name>/variants.parquet, samples.parquet, phenotypes.parquet       (kind "variants")
      datasets/<name>/reads.parquet, mapq.parquet, coverage.parquet, targets.parquet,
                      samples.parquet, phenotypes.parquet                        (kind "reads")

A dataset is written into a hidden temporary folder (locked by the ingesting process), renamed to a
folder of its own version (``datasets/<name>@<id>``) and then named in the catalog in one transaction,
which is the commit: a process killed at any point leaves the catalog naming the old folder or the new
one, never a mix, and :meth:`Store.clean_up` removes what no catalog row names (run when a station starts
and before each ingest). A failed ingest leaves nothing behind; a re-ingest replaces a dataset only on
success.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from better.engine.errors import NotFoundError, StoreError
from better.genomics.covariates import PREFIX, columns_of, covariate_files, with_covariates, write_covariates
from better.genomics.regions import Region
from better.genomics.schema import STORE_FORMAT_VERSION, VARIANT_META_COLUMNS
from better.genomics.selection import Condition, sample_mask

CATALOG = "catalog.duckdb"
#: The most bytes of genotypes and dosages one block holds (a dataset of 500,000 samples with dosages:
#: 64 rows).
BLOCK_BYTES = 64 << 20
DATASETS = "datasets"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS datasets (
    name VARCHAR PRIMARY KEY,
    n_samples INTEGER NOT NULL,
    n_variants BIGINT NOT NULL,
    n_records BIGINT NOT NULL,
    n_phenotyped INTEGER NOT NULL,
    chromosomes VARCHAR NOT NULL,
    phenotype_columns VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'variants';
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS folder VARCHAR;
CREATE SEQUENCE IF NOT EXISTS ingest_id;
CREATE TABLE IF NOT EXISTS ingests (
    id BIGINT PRIMARY KEY DEFAULT nextval('ingest_id'),
    dataset VARCHAR NOT NULL,
    source_kind VARCHAR NOT NULL,
    source_path VARCHAR NOT NULL,
    source_sha256 VARCHAR NOT NULL,
    source_bytes BIGINT NOT NULL,
    details VARCHAR NOT NULL,
    software VARCHAR NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seconds DOUBLE NOT NULL
);
"""


def check_dataset_name(name: str) -> str:
    """Refuse dataset names that are not safe as folder and SQL view names."""
    if not _NAME.match(name):
        raise StoreError(
            f"dataset name {name!r} is not allowed: use 1-64 letters, digits, '_' or '-', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class GenotypeBlock:
    """A block of consecutive variants: metadata and packed genotypes.

    Attributes
    ----------
    variants
        The metadata columns of :data:`better.genomics.schema.VARIANT_META_COLUMNS` for these rows.
    packed
        ``(rows, ceil(n_samples / 4))`` uint8, the 2-bit layout of :mod:`better.genomics.schema`; a view of
        Arrow memory, read-only.
    """

    variants: pa.Table
    packed: np.ndarray
    #: ``(rows, n_samples)`` uint16 ALT dosages of a dataset ingested with dosages (see
    #: :mod:`better.genomics.dosage`), else None; a view of Arrow memory, read-only.
    dosages: np.ndarray | None = None

    @property
    def n_variants(self) -> int:
        return int(self.packed.shape[0])


class Dataset:
    """Read access to one ingested dataset, streaming: nothing is loaded whole."""

    def __init__(self, path: Path, name: str, n_samples: int, kind: str = "variants") -> None:
        self.path = path
        self.name = name
        self.n_samples = n_samples
        #: "variants" (a VCF's genotypes) or "reads" (metrics and depth of aligned-read files).
        self.kind = kind

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One of the dataset's Parquet tables, e.g. ``coverage`` of a reads dataset."""
        path = self.path / f"{name}.parquet"
        if not path.exists():
            raise NotFoundError(f"dataset {self.name!r} ({self.kind}) has no {name} table")
        return pq.read_table(path, columns=columns)

    @property
    def variants_path(self) -> Path:
        return self.path / "variants.parquet"

    @functools.cached_property
    def has_dosages(self) -> bool:
        """Whether the dataset was ingested with dosages (its analyses then use them, as PLINK 2 does)."""
        if self.kind != "variants":
            return False
        return "dosages" in pq.read_schema(self.variants_path).names

    @property
    def n_variants(self) -> int:
        """Number of (biallelic, split) variants, from the Parquet footer."""
        return int(pq.ParquetFile(self.variants_path).metadata.num_rows)

    def samples(self) -> pa.Table:
        """``sample_index``, ``sample_id``, ``has_phenotypes`` in VCF column order."""
        return pq.read_table(self.path / "samples.parquet")

    def phenotypes(self) -> pa.Table:
        """The typed phenotype table with ``sample_id`` and ``sample_index`` (empty if none was given),
        with the covariates the station stored for the dataset (:mod:`better.genomics.covariates`)."""
        p = self.path / "phenotypes.parquet"
        if p.exists():
            table = pq.read_table(p)
        else:
            table = pa.table({"sample_id": pa.array([], pa.string()), "sample_index": pa.array([], pa.int32())})
        return with_covariates(table, self.samples(), self.path) if covariate_files(self.path) else table

    def save_covariates(self, name: str, values: np.ndarray) -> None:
        """Store ``values`` ``(samples, k)`` as covariates ``name1..namek`` of this dataset, and show them in
        the catalog (its ``phenotypes_<dataset>`` view and the dataset's phenotype columns)."""
        p = self.path / "phenotypes.parquet"
        ingested = pq.read_schema(p).names if p.exists() else []
        before = self.path / f"{PREFIX}{name}.parquet"
        replaced = set(pq.read_schema(before).names) - {"sample_index"} if before.exists() else set()
        write_covariates(self.path, ingested, name, values)
        store = Store(self.path.parent.parent)
        with store.catalog() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                row = con.execute("SELECT phenotype_columns FROM datasets WHERE name = ?", [self.name]).fetchone()
                columns = {c: t for c, t in (json.loads(row[0]) if row else {}).items() if c not in replaced}
                columns.update({c: "float64" for c in columns_of(name, values.shape[1])})
                con.execute(
                    "UPDATE datasets SET phenotype_columns = ? WHERE name = ?", [json.dumps(columns), self.name]
                )
                Store._create_views(con, self.name, self.path)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def sample_mask(self, conditions: list[Condition] | tuple[Condition, ...] = ()) -> np.ndarray:
        """Boolean mask over samples meeting every condition (see :mod:`better.genomics.selection`)."""
        return sample_mask(self.phenotypes(), self.n_samples, conditions)

    def _filter(
        self, region: Region | None, sites: Sequence[tuple[str, int]] | None = None, pass_only: bool = False
    ) -> Any:
        f = None
        if pass_only:
            field = pads.field("filter")
            f = field.is_null() | (field == "PASS") | (field == ".")
        if region is not None:
            r = pads.field("chrom") == region.chrom
            if region.start > 0:
                r = r & (pads.field("pos") >= region.first_pos)
            r = r & (pads.field("pos") <= region.last_pos)
            f = r if f is None else f & r
        if sites is not None:
            by_chrom: dict[str, list[int]] = {}
            for chrom, pos in sites:
                by_chrom.setdefault(chrom, []).append(pos)
            at = None
            for chrom, positions in by_chrom.items():
                for pos in sorted(set(positions)):
                    one = (pads.field("chrom") == chrom) & (pads.field("pos") == pos)
                    at = one if at is None else at | one
            at = at if at is not None else pads.scalar(False)
            f = at if f is None else f & at
        return f

    def variants(
        self, region: Region | None = None, columns: list[str] | None = None, pass_only: bool = False
    ) -> pa.Table:
        """Variant metadata (no genotypes) of the whole dataset or a region (PASS records only, if asked)."""
        cols = columns or list(VARIANT_META_COLUMNS)
        return pads.dataset(self.variants_path).to_table(columns=cols, filter=self._filter(region, None, pass_only))

    def row_groups(self, region: Region | None = None, pass_only: bool = False) -> list[tuple[int, int]]:
        """The row groups of the variants file that may hold variants of ``region`` (from their
        statistics), as ``(id, rows)`` in file order: the units of work an executor spreads."""
        fragment = next(iter(pads.dataset(self.variants_path).get_fragments()))
        groups = fragment.split_by_row_group(self._filter(region, None, pass_only))
        return [(g.row_groups[0].id, g.row_groups[0].num_rows) for g in groups]

    def blocks(
        self,
        region: Region | None = None,
        max_variants: int = 8192,
        sites: Sequence[tuple[str, int]] | None = None,
        pass_only: bool = False,
        row_groups: Sequence[int] | None = None,
    ) -> Iterator[GenotypeBlock]:
        """Iterate :class:`GenotypeBlock` objects over all variants or a region, in (chrom, pos) order.

        ``sites``, a list of ``(chrom, pos)``, keeps only the variants at those positions (meant for a
        few hundred at most). Row groups outside the region or sites are skipped from their statistics;
        memory stays bounded by ``max_variants`` rows, and by :data:`BLOCK_BYTES` of genotypes and dosages.
        ``row_groups`` (ids, see :meth:`row_groups`) reads only those row groups of the variants file.
        """
        dosages = self.has_dosages
        row_bytes = (self.n_samples + 3) // 4 + (2 * self.n_samples if dosages else 0)
        source: Any = pads.dataset(self.variants_path)
        if row_groups is not None:
            source = next(iter(source.get_fragments())).subset(row_group_ids=list(row_groups))
        scanner = source.scanner(
            columns=[*VARIANT_META_COLUMNS, "genotypes", *(["dosages"] if dosages else [])],
            filter=self._filter(region, sites, pass_only),
            batch_size=max(1, min(max_variants, BLOCK_BYTES // max(row_bytes, 1))),
            use_threads=False,
            batch_readahead=1,  # one block read ahead, not 16: a 100,000-sample station peaked at 3.0 GB
            fragment_readahead=1,
        )
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            yield GenotypeBlock(
                pa.Table.from_batches([batch.drop_columns(["genotypes", *(["dosages"] if dosages else [])])]),
                packed_view(batch.column("genotypes"), self.n_samples),
                dosage_view(batch.column("dosages"), self.n_samples) if dosages else None,
            )


def packed_view(column: pa.Array, n_samples: int) -> np.ndarray:
    """A zero-copy ``(rows, bytes)`` uint8 view of a fixed-size binary genotype column."""
    from better.genomics.schema import packed_width

    if packed_width(n_samples) == 0:
        return np.zeros((len(column), 0), dtype=np.uint8)
    return _bytes_view(column)


def dosage_view(column: pa.Array, n_samples: int) -> np.ndarray:
    """A zero-copy ``(rows, n_samples)`` uint16 view of a fixed-size binary dosage column."""
    if n_samples == 0:
        return np.zeros((len(column), 0), dtype=np.uint16)
    return _bytes_view(column).view("<u2")


def _bytes_view(column: pa.Array) -> np.ndarray:
    """A fixed-size binary column as a zero-copy ``(rows, width)`` uint8 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    width = column.type.byte_width
    data = column.buffers()[1]
    flat = np.frombuffer(data, dtype=np.uint8, count=(column.offset + n) * width)
    return flat[column.offset * width :].reshape(n, width)


#: Lock files held open by this process for the dataset folders it is writing (by folder path).
_FOLDER_LOCKS: dict[str, Any] = {}
_LOCK_NAME = ".writing"


def _lock_folder(folder: Path) -> None:
    f = open(folder / _LOCK_NAME, "w")  # noqa: SIM115 (held open until the folder is committed)
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _FOLDER_LOCKS[str(folder)] = f


def _unlock_folder(folder: Path) -> None:
    f = _FOLDER_LOCKS.pop(str(folder), None)
    if f is not None:
        with contextlib.suppress(OSError):
            (folder / _LOCK_NAME).unlink()
        f.close()


def _locked_by_another(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s write lock (a killed one's lock is gone with it)."""
    if str(folder) in _FOLDER_LOCKS:
        return True
    try:
        with open(folder / _LOCK_NAME, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


class Store:
    """A station's store directory. Create with :meth:`create`, then :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Store:
        """Create the store folder and its catalog (idempotent for an existing store)."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise StoreError(f"{p}: exists and is not a directory; choose another station directory")
        try:
            (p / DATASETS).mkdir(parents=True, exist_ok=True)
            store = cls(p)
            with store.catalog() as con:
                con.execute(_SCHEMA_SQL)
                con.execute(
                    "INSERT OR REPLACE INTO store_meta VALUES ('format_version', ?)",
                    [str(STORE_FORMAT_VERSION)],
                )
        except PermissionError as exc:
            raise StoreError(
                f"{p}: cannot write the station directory ({exc.strerror}); choose a directory you can write to"
            ) from None
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open an existing store, refusing a folder that is not one (an older catalog is brought up to date)."""
        p = Path(path)
        if not (p / CATALOG).is_file():
            raise StoreError(
                f"{p}: not a station store (no {CATALOG}); create it with "
                f"`better station init --station {p} --name NAME`"
            )
        store = cls(p)
        with store.catalog() as con:
            con.execute(_SCHEMA_SQL)
        return store

    @contextmanager
    def catalog(self, read_only: bool = False, wait_seconds: float = 15.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection to the catalog, closed on exit.

        Connections are read-write unless asked otherwise: DuckDB refuses a read-only connection to a
        file that the same process holds open read-write, and the server's threads share the file.

        DuckDB lets one process at a time open the file for writing, and every user of the catalog (the
        server, ``better station approve``, ``better station audit``) holds it only briefly, so a locked
        catalog is retried for up to ``wait_seconds``.
        """
        deadline = time.monotonic() + wait_seconds
        pause = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path / CATALOG), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise StoreError(f"{self.path / CATALOG}: cannot open the catalog ({exc})") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
        try:
            yield con
        finally:
            con.close()

    def check_writable(self) -> None:
        """Fail early, with a clear message, when the store cannot be written."""
        probe = self.path / DATASETS / f".write-test-{uuid.uuid4().hex}"
        try:
            probe.mkdir(parents=True)
            probe.rmdir()
        except OSError as exc:
            raise StoreError(
                f"{self.path}: the station directory cannot be written ({exc.strerror}); "
                "fix its permissions or choose another --station"
            ) from None

    def clean_up(self) -> list[Path]:
        """Delete what a killed ingest left: temporary folders and dataset versions no catalog row names
        (an ingest still running holds a lock on its folder and is left alone). Returns what was removed."""
        with self.catalog() as con:
            named = {str(r[0] or r[1]) for r in con.execute("SELECT folder, name FROM datasets").fetchall()}
        removed = []
        for p in sorted((self.path / DATASETS).iterdir()):
            stale = p.name.startswith((".ingest-", ".write-test-")) or ("@" in p.name and p.name not in named)
            if stale and p.is_dir() and not _locked_by_another(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    # -- reading --------------------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        with self.catalog() as con:
            return [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]

    def dataset(self, name: str) -> Dataset:
        """Open a dataset by name."""
        with self.catalog() as con:
            row = con.execute("SELECT n_samples, kind, folder FROM datasets WHERE name = ?", [name]).fetchone()
            if row is None:
                names = [r[0] for r in con.execute("SELECT name FROM datasets").fetchall()]
                from better.genomics.selection import suggest

                raise NotFoundError(
                    f"no dataset {name!r} at this station{suggest(name, names)}; "
                    f"datasets: {', '.join(sorted(names)) or 'none'}"
                )
        return Dataset(self.path / DATASETS / (row[2] or name), name, int(row[0]), str(row[1]))

    def summary(self) -> list[dict[str, Any]]:
        """One dict per dataset with its counts and latest provenance, for ``better store info``."""
        with self.catalog() as con:
            rows = con.execute(
                """SELECT d.name, d.kind, d.n_samples, d.n_variants, d.n_records, d.n_phenotyped, d.chromosomes,
                          d.phenotype_columns, d.created_at, i.source_path, i.source_sha256, i.seconds
                   FROM datasets d LEFT JOIN ingests i
                     ON i.dataset = d.name AND i.source_kind = d.kind
                     AND i.id = (SELECT max(id) FROM ingests j WHERE j.dataset = d.name
                                 AND j.source_kind = d.kind)
                   ORDER BY d.name"""
            ).fetchall()
            cols = [c[0] for c in con.description]
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["chromosomes"] = json.loads(d["chromosomes"])
            d["phenotype_columns"] = json.loads(d["phenotype_columns"])
            out.append(d)
        return out

    # -- writing --------------------------------------------------------------------------------
    def new_temporary(self, name: str) -> Path:
        """A fresh hidden folder to write a dataset into before :meth:`commit_dataset` (or
        :meth:`discard_temporary`); it stays locked for this process until then."""
        check_dataset_name(name)
        self.check_writable()
        tmp = self.path / DATASETS / f".ingest-{name}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        _lock_folder(tmp)
        return tmp

    def discard_temporary(self, tmp: Path) -> None:
        """Remove a temporary folder whose ingest failed."""
        shutil.rmtree(tmp, ignore_errors=True)
        _unlock_folder(tmp)

    def commit_dataset(self, name: str, tmp: Path, row: dict[str, Any], ingests: list[dict[str, Any]]) -> None:
        """Make ``tmp`` the dataset ``name``: rename it to a version folder of its own, then name that
        folder in the catalog in one transaction (the commit), then remove the previous version.

        Killed before the transaction commits, the catalog still names the previous version and the new
        folder is left for :meth:`clean_up`; after, the new one, and the old folder is left for it.
        """
        version = self.path / DATASETS / f"{name}@{uuid.uuid4().hex[:12]}"
        tmp.rename(version)
        lock = _FOLDER_LOCKS.pop(str(tmp), None)
        if lock is not None:
            _FOLDER_LOCKS[str(version)] = lock
        previous: Path | None = None
        try:
            with self.catalog() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    before = con.execute("SELECT folder FROM datasets WHERE name = ?", [name]).fetchone()
                    if before is not None:
                        previous = self.path / DATASETS / (before[0] or name)
                    con.execute("DELETE FROM datasets WHERE name = ?", [name])
                    con.execute(
                        """INSERT INTO datasets (name, n_samples, n_variants, n_records, n_phenotyped, chromosomes,
                           phenotype_columns, created_at, kind, folder) VALUES (?, ?, ?, ?, ?, ?, ?, now(), ?, ?)""",
                        [
                            name,
                            row["n_samples"],
                            row["n_variants"],
                            row["n_records"],
                            row["n_phenotyped"],
                            json.dumps(row["chromosomes"]),
                            json.dumps(row["phenotype_columns"]),
                            row.get("kind", "variants"),
                            version.name,
                        ],
                    )
                    for ing in ingests:
                        con.execute(
                            """INSERT INTO ingests (dataset, source_kind, source_path, source_sha256,
                               source_bytes, details, software, started_at, seconds)
                               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                            [
                                name,
                                ing["kind"],
                                ing["path"],
                                ing["sha256"],
                                ing["bytes"],
                                json.dumps(ing["details"]),
                                json.dumps(ing["software"]),
                                ing["started_at"],
                                ing["seconds"],
                            ],
                        )
                    self._create_views(con, name, version)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    shutil.rmtree(version, ignore_errors=True)
                    raise
        finally:
            _unlock_folder(version)
        if previous is not None and previous != version:
            shutil.rmtree(previous, ignore_errors=True)

    @staticmethod
    def _create_views(con: duckdb.DuckDBPyConnection, name: str, final: Path) -> None:
        """A view ``<table>_<dataset>`` over each of the dataset's Parquet tables; stale views dropped."""
        safe = name.replace("-", "_")
        for table in ("variants", "samples", "phenotypes", "reads", "mapq", "coverage", "targets"):
            path = final / f"{table}.parquet"
            if not path.exists():
                con.execute(f'DROP VIEW IF EXISTS "{table}_{safe}"')
                continue
            text = str(path.resolve()).replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW \"{table}_{safe}\" AS SELECT * FROM read_parquet('{text}')")
        stored = covariate_files(final)
        if stored:  # every sample, with its phenotypes (if any) and the covariates the station stored

            def sql(p: Path) -> str:
                return "'" + str(p.resolve()).replace("'", "''") + "'"

            pheno = final / "phenotypes.parquet"
            select = ["s.sample_id", "s.sample_index"]
            joins = [f"read_parquet({sql(final / 'samples.parquet')}) s"]
            if pheno.exists():
                select.append("p.* EXCLUDE (sample_id, sample_index)")
                joins.append(f"LEFT JOIN read_parquet({sql(pheno)}) p USING (sample_index)")
            for i, path in enumerate(stored):
                select.append(f"c{i}.* EXCLUDE (sample_index)")
                joins.append(f"LEFT JOIN read_parquet({sql(path)}) c{i} USING (sample_index)")
            con.execute(
                f'CREATE OR REPLACE VIEW "phenotypes_{safe}" AS SELECT {", ".join(select)} FROM {" ".join(joins)} '
                "ORDER BY s.sample_index"
            )
