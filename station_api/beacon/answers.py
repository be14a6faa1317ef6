"""A Beacon question answered under the same policy as any release of the station.

A ``/g_variants`` query becomes a ``freq`` counts round over the region its variants can lie in, and a
``/individuals`` query a ``count`` round, each over the samples its filters select (everyone, without
filters), one task per dataset, submitted to the :class:`~better.station_api.tasks.TaskManager` as the
caller. So the station's allowed analyses, variant cap, rate limit, query audit (the sample set of every
answer is recorded, station-wide, with every other release), per-row rules, audit log and signed
manifest all apply, and a Beacon answer is never more than the task released, but for one bit at the
public level (below). A query over everyone is a release over everyone, recorded as such: an answer
about everyone and one about everyone but one person cannot be differenced.

- a variant is **present** when some selected person carries its ALT allele: its released genotype
  counts show a carrier, or the row was withheld by the ``minor_allele_count`` rule (1 to
  ``min_minor_allele_count - 1`` copies of the minor allele: FREQ shows such a row as withheld, not as
  absent). At the **public** level (everyone, no filters) a variant is present only where its ALT allele
  is seen ``min_minor_allele_count`` times or more: an anonymous yes on a rare allele is how a Beacon
  tells who is in the cohort (Shringarpure & Bustamante, 2015). For a withheld row that one bit comes
  from the store's counts over everyone; it tells a rare ALT (no, as if absent) from a rare REF (yes, as
  if no one lacked the ALT), so it says nothing of the few people either way;
- the number of individuals is the released sample count; a count the policy withholds (1 to
  ``min_cell_count - 1`` people, or a selection that with earlier ones would single them out) is not
  given, and the answer falls back to yes or no (a withheld count is never of nobody).

A task the policy refuses becomes a Beacon error naming the rule.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi import HTTPException

from better.engine.errors import BetterError, NotFoundError, StoreError
from better.genomics.allele_query import AlleleQuery, same_chromosome
from better.genomics.regions import Region
from better.genomics.store import Dataset
from better.station_api.beacon.requests import BeaconRequest, BeaconRequestError, Filter
from better.station_api.policy import PolicyRefusalError
from better.station_api.routes.catalog import variables
from better.station_api.server_state import ServerState, in_thread
from better.station_api.tasks import FINAL
from better.wire.arrays import decode_arrays
from better.wire.messages import Condition, TaskRequest

#: Seconds a Beacon request waits for its tasks before answering 504.
WAIT_SECONDS = 120.0


class BeaconRefusalError(BeaconRequestError):
    """The station's policy refused the question (403), or could not answer it in time (504)."""


@dataclass(frozen=True)
class DatasetAnswer:
    """One dataset's answer: whether anything matched, and how many (None: withheld)."""

    dataset: str
    exists: bool
    count: int | None


def variant_datasets(state: ServerState, asked: tuple[str, ...]) -> list[Dataset]:
    """The datasets a request covers: those it names (each must exist and hold variants), else every
    dataset of variants, in name order."""
    names = asked or tuple(state.store.dataset_names())
    out = []
    for name in names:
        try:
            ds = state.store.dataset(name)
        except NotFoundError:  # (not the list of datasets: /beacon/datasets gives it to a token)
            raise BeaconRequestError(f"no dataset {name!r} here; /beacon/datasets lists them", 404) from None
        if ds.kind == "variants":
            out.append(ds)
        elif asked:
            raise BeaconRequestError(f"dataset {name!r} holds aligned reads, not variants or individuals")
    return out


async def variant_answers(
    state: ServerState, user: str, request: BeaconRequest, public: bool, limit_key: str | None = None
) -> list[DatasetAnswer]:
    """Per dataset: the variants matching ``request.variant`` that the selected people carry."""
    query = request.variant
    if query is None:
        raise BeaconRequestError(
            "a variant query needs referenceName and start (0-based), with alternateBases, or with end for a range"
        )
    out = []
    floor = state.config().policy.min_minor_allele_count
    for name, tasks in await in_thread(_variant_tasks, state, request, query):
        found = 0
        for chrom, task in tasks:
            released = await run_task(state, user, task, limit_key)
            common = None
            if public and len(released["key_pos"]):
                common = await in_thread(common_alt, state.store.dataset(name), released, floor)
            found += int(present(query, chrom, released, common).sum())
        out.append(DatasetAnswer(name, found > 0, found))
    return out


def _variant_tasks(
    state: ServerState, request: BeaconRequest, query: AlleleQuery
) -> list[tuple[str, list[tuple[str, TaskRequest]]]]:
    """Per dataset, the counts rounds (one per stored chromosome the query names) that answer it; none
    where the dataset cannot match (another assembly, no such chromosome, a filter column it lacks)."""
    assembly = state.config().beacon.assembly
    other_assembly = (
        request.assembly is not None and assembly is not None and not same_assembly(request.assembly, assembly)
    )
    chromosomes = {d["name"]: [str(c) for c in d["chromosomes"]] for d in state.store.summary()}
    out = []
    for ds, conditions in dataset_conditions(state, request):
        chroms = [c for c in chromosomes.get(ds.name, []) if same_chromosome(query.reference_name, c)]
        tasks = []
        if conditions is not None and not other_assembly:
            for chrom in chroms:
                region = Region(chrom, query.scan_start(_longest_ref(ds)), query.scan_end())
                task = TaskRequest(
                    dataset=ds.name,
                    analysis="freq",
                    kind="counts",
                    where=conditions,
                    regions=[str(region)],
                    label="beacon g_variants",
                )
                tasks.append((chrom, task))
        out.append((ds.name, tasks))
    return out


def present(
    query: AlleleQuery, chrom: str, released: dict[str, np.ndarray], alt_common: np.ndarray | None = None
) -> np.ndarray:
    """Per released row of a counts round: it matches ``query`` and the selected people carry its ALT
    allele (a withheld row counts as carried). ``alt_common`` (the public level): per row, whether the ALT
    allele is seen at least ``min_minor_allele_count`` times; a withheld row is carried only where it is."""
    keep = query.matches(released["key_pos"], released["key_ref"], released["key_alt"])
    keep &= np.asarray(released["key_chrom"]) == chrom
    counts = np.asarray(released["counts"]).sum(axis=1)  # (rows, 4): hom-ref, het, hom-alt, missing
    withheld = np.asarray(released["withheld"], dtype=bool)
    carried = (counts[:, 1] + counts[:, 2] > 0) & ~withheld
    carried |= withheld if alt_common is None else withheld & alt_common
    return np.asarray(keep & carried, dtype=bool)


def common_alt(ds: Dataset, released: dict[str, np.ndarray], floor: int) -> np.ndarray:
    """Per released row: the ALT allele is seen at least ``floor`` times over everyone (the store's hard
    calls). Only the public level's withheld rows read it (see the module's description)."""
    region = Region(
        str(released["key_chrom"][0]), int(np.min(released["key_pos"])) - 1, int(np.max(released["key_pos"]))
    )
    table = ds.variants(region, ["pos", "ref", "alt", "n_het", "n_hom_alt"])
    alt_count = np.asarray(table.column("n_het")) + 2 * np.asarray(table.column("n_hom_alt"))
    keys = zip(
        table.column("pos").to_pylist(), table.column("ref").to_pylist(), table.column("alt").to_pylist(), strict=True
    )
    seen = {key: int(n) for key, n in zip(keys, alt_count.tolist(), strict=True)}
    rows = zip(released["key_pos"].tolist(), released["key_ref"].tolist(), released["key_alt"].tolist(), strict=True)
    return np.array([seen.get(key, 0) >= floor for key in rows], dtype=bool)


async def individual_answers(
    state: ServerState, user: str, request: BeaconRequest, limit_key: str | None = None
) -> list[DatasetAnswer]:
    """Per dataset: how many of its individuals the filters select (None where the policy withholds it)."""
    out = []
    for ds, conditions in await in_thread(dataset_conditions, state, request):
        if conditions is None:
            out.append(DatasetAnswer(ds.name, False, 0))
            continue
        task = TaskRequest(
            dataset=ds.name, analysis="count", kind="sample_count", where=conditions, label="beacon individuals"
        )
        released = await run_task(state, user, task, limit_key)
        if bool(np.asarray(released.get("withheld", False))):
            out.append(DatasetAnswer(ds.name, True, None))
        else:
            n = int(np.asarray(released["n"]))
            out.append(DatasetAnswer(ds.name, n > 0, n))
    return out


def dataset_conditions(state: ServerState, request: BeaconRequest) -> list[tuple[Dataset, list[Condition] | None]]:
    """The request's datasets, each with its filters as sample conditions on its phenotype columns (None
    where it lacks a filter's column: it then matches nothing). A column no dataset has is an error (a
    misspelt column would otherwise match nothing), as is a value of the wrong type."""
    datasets = [(ds, variables(ds.phenotypes().schema)) for ds in variant_datasets(state, request.datasets)]
    for f in request.filters:
        if not any(f.column in kinds for _, kinds in datasets):
            raise BeaconRequestError(
                f"filter {f.column!r}: no such phenotype column here; /beacon/filtering_terms lists them"
            )
    return [(ds, _conditions(kinds, request.filters)) for ds, kinds in datasets]


def _conditions(kinds: dict[str, str], filters: tuple[Filter, ...]) -> list[Condition] | None:
    out = []
    for f in filters:
        if f.column not in kinds:
            return None
        if kinds[f.column] == "text":
            if f.op not in ("=", "!="):
                raise BeaconRequestError(f"filter {f.column!r}: a text column takes only = or !")
            out.append(Condition(column=f.column, op=f.op, value=f.value))
            continue
        try:
            value = float(f.value)
        except ValueError:
            raise BeaconRequestError(f"filter {f.column!r}: the column holds numbers; give a number") from None
        if not np.isfinite(value):
            raise BeaconRequestError(f"filter {f.column!r}: give a finite number")
        out.append(Condition(column=f.column, op=f.op, value=value))
    return out


async def run_task(
    state: ServerState, user: str, task: TaskRequest, limit_key: str | None = None
) -> dict[str, np.ndarray]:
    """Submit ``task`` as ``user`` (policy, audit, rate limit as for any task; ``limit_key``: whom the rate
    limit counts, if not ``user``), wait, return its release."""
    if state.config().policy.approval == "manual":
        raise BeaconRefusalError(
            "this station's administrator approves every release by hand, so its Beacon cannot answer at once",
            403,
        )
    try:
        state.limiter.check(limit_key or user)
        record = await in_thread(state.manager.submit, user, task)
    except PolicyRefusalError as exc:
        if exc.rule == "max_variants_per_task":  # (not the number: it would tell where variants lie)
            raise BeaconRefusalError(
                "refused by the station's policy (max_variants_per_task): the query spans more variants than "
                "this station answers at once; ask about a smaller range",
                403,
            ) from None
        hint = (
            "; a Beacon answer is a release in the clear: ask the group with "
            '`better query "BEACON ..."`, or see docs/beacon.md on audit_scope'
            if exc.rule == "audit_group"
            else ""
        )
        raise BeaconRefusalError(f"refused by the station's policy ({exc.rule}): {exc}{hint}", 403) from None
    except NotFoundError as exc:
        raise BeaconRequestError(str(exc), 404) from None
    except StoreError:
        raise
    except BetterError as exc:
        raise BeaconRequestError(str(exc)) from None
    except HTTPException as exc:  # the rate limiter's 429, with its Retry-After
        raise BeaconRequestError(str(exc.detail), exc.status_code, dict(exc.headers or {})) from None
    record = await state.manager.until_ended(user, record.id, WAIT_SECONDS)
    if record.status not in FINAL:
        state.manager.cancel(user, record.id)
        raise BeaconRefusalError("the station is busy and could not answer in time; ask again later", 504)
    if record.status == "done" and record.outcome is not None:
        return decode_arrays(record.outcome.payload, "the station's release")
    if record.refused_by is not None:
        raise BeaconRefusalError(record.error or "refused by the station's policy", 403)
    raise BeaconRequestError(record.error or f"the station's task ended {record.status}", 500 if record.error else 503)


def same_assembly(asked: str, held: str) -> bool:
    """Whether two assembly names mean one assembly (GRCh38, hg38 and GCF_000001405.26+ are one).

    Examples
    --------
    >>> same_assembly("hg38", "GRCh38.p14"), same_assembly("GRCh37", "hg38")
    (True, False)
    >>> same_assembly("GCF_000001405.39", "GRCh38")
    True
    """
    return _assembly(asked) == _assembly(held)


def _assembly(name: str) -> str:
    text = name.strip().upper()
    if text.startswith("GCF_000001405.") or text.startswith("GCA_000001405."):
        version = int(text.split(".")[1]) if text.split(".")[1].isdigit() else 0
        return "GRCH38" if version >= 26 else "GRCH37" if version >= 13 else text
    synonyms = {"HG38": "GRCH38", "HG19": "GRCH37", "B37": "GRCH37", "HS37D5": "GRCH37", "HG18": "NCBI36"}
    base = text.split(".")[0]
    return synonyms.get(base, base)


def _longest_ref(ds: Dataset) -> int:
    """The longest REF of a dataset: how far before a range a variant overlapping it can start."""
    return _longest_ref_in(str(ds.variants_path))


@functools.lru_cache(maxsize=64)
def _longest_ref_in(variants: str) -> int:
    """Kept per file (a re-ingest writes a new folder), for the 64 files asked about last."""
    refs = pq.read_table(variants, columns=["ref"]).column("ref")
    longest = pc.max(pc.utf8_length(refs)).as_py() if len(refs) else 1
    return int(longest or 1)


def answer_summary(answers: list[DatasetAnswer]) -> dict[str, Any]:
    """Exists over every dataset, and the total (None if any dataset's count is withheld)."""
    total = None if any(a.count is None for a in answers) else sum(int(a.count or 0) for a in answers)
    return {"exists": any(a.exists for a in answers), "total": total}
