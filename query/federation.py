"""The coordinator: a federation of stations, and queries run over it.

.. code-block:: python

    from better.query.federation import Federation
    fed = Federation.from_file("federation.toml")
    df = fed.query("GWAS LINEAR ldl ~ age + sex + pc1 ON 22 WHERE maf >= 0.01")   # a polars DataFrame
    print(fed.explain("GWAS LOGISTIC case ~ age + sex ADJUST station"))

The federation file lists stations (``[[station]]`` with ``name``, ``url`` and ``token_env`` or
``token``; optional ``timeout``, ``dataset``, ``public_key`` and ``agreement_key``) and may set
``secure_aggregation`` to ``"auto"`` (the default: on with three or more stations), ``"on"`` or
``"off"``. With a top-level ``hub = "URL"`` the stations have no ``url``: every call to them is sealed
and relayed by the hub (:mod:`better.query.hub_link`, docs/deployment.md); ``ca_file`` names a CA bundle
for TLS, and plain ``http://`` to another machine is refused unless ``allow_http = true``. Each round
goes to every station, at most ``max_concurrent_stations`` (default 16) at once, a station's ``timeout``
counting from its turn; a station that refuses or fails stops the query with its name and reason, and
the error names every station's state in that round (answered, timed out, refused, unreachable, ...),
unless ``allow_partial``: then the query restarts without it and the result says which stations were
left out and why. With secure aggregation on, a station that drops out (unreachable, too slow, its task
failed) makes the query restart without it in any case, with fresh masks, as long as three stations
remain.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import httpx
import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.coverage import CoverageProtocol
from better.engine.analyses.linear import LinearProtocol
from better.engine.analyses.logistic import LogisticProtocol
from better.engine.analyses.pca import PCAResult
from better.engine.analyses.pileup import PileupProtocol
from better.engine.analyses.reads import ReadsProtocol
from better.engine.analyses.sample_count import SampleCountProtocol
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.filters import VariantFilter
from better.engine.protocol import Protocol, Result
from better.query import output
from better.query.finished import FinishedRows
from better.query.hub_link import SCHEME, HubLink, researcher_key
from better.query.parser import Query, parse
from better.query.planner import Plan, StationCatalog, plan
from better.query.remote import (
    MAX_CONCURRENT_STATIONS,
    Answers,
    Model,
    Recording,
    RoundError,
    Slots,
    StationClient,
    StationError,
    answers_summary,
    gather_or_cancel,
    gather_stations,
    open_client,
    run_remote_async,
)
from better.query.secure import MIN_STATIONS, SecureSession
from better.query.structure import Structure, run_structure
from better.query.withholding import WithheldBy
from better.station_api.tomlfile import load_toml, read_toml, validate
from better.wire.signed_requests import plain_http_problem, tls_verify

#: Called as each round ends: (stage, round number, task kind, stations, seconds).
OnRound = Callable[[str, int, str, int, float], None]


class StationEntry(BaseModel):
    """One ``[[station]]`` of the federation file."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")] | None = Field(
        None, description="the station's URL; none when the federation names a hub"
    )
    token_env: str | None = None
    token: str | None = None
    public_key: str | None = Field(None, description="the station's signing key (ed25519:...), pinned")
    agreement_key: str | None = Field(
        None,
        pattern=r"^x25519:[A-Za-z0-9+/]{43}=$",
        description="the station's key for secure aggregation (x25519:...), pinned",
    )
    timeout: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _one_token(self) -> StationEntry:
        if (self.token is None) == (self.token_env is None):
            raise ValueError(f"station {self.name}: give exactly one of token_env or token")
        return self


class FederationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None
    secure_aggregation: Literal["auto", "on", "off"] = "auto"
    hub: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")] | None = Field(
        None, description="a hub every station is reached through (docs/deployment.md); stations then have no url"
    )
    ca_file: str | None = Field(
        None, description="CA bundle (PEM) to verify the stations' or the hub's TLS certificates"
    )
    allow_http: bool = Field(False, description="allow plain http:// to addresses other than this machine")
    researcher_key: str | None = Field(None, description="the researcher's Ed25519 key file (hub mode)")
    max_concurrent_stations: int = Field(
        MAX_CONCURRENT_STATIONS,
        ge=1,
        le=4096,
        description="station tasks in flight at once; more stations than this are asked in turns",
    )
    station: list[StationEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _urls(self) -> FederationFile:
        for s in self.station:
            if self.hub is not None and s.url is not None:
                raise ValueError(f"station {s.name}: no url when the federation names a hub (it is reached through it)")
            if self.hub is None and s.url is None:
                raise ValueError(f'station {s.name}: give its url (or a top-level hub = "URL")')
        if not self.allow_http:
            for url in [self.hub, *(s.url for s in self.station)]:
                problem = None if url is None else plain_http_problem(url)
                if problem:
                    raise ValueError(problem.replace("allow http", "set allow_http = true"))
        return self


def add_station(
    path: str | os.PathLike[str],
    name: str,
    url: str | None = None,
    token_env: str | None = None,
    token: str | None = None,
    pin: bool = True,
    hub: str | None = None,
    public_key: str | None = None,
) -> dict[str, str]:
    """Add a ``[[station]]`` to a federation file (created if missing) and return the entry.

    A station is reached at ``url``, or through the file's hub (``hub``, written at the top of the file).
    With ``pin``, the station's signing and agreement keys are written into the entry, so that later runs
    refuse a station whose keys changed: read from its open ``/info``; or, through a hub, the signing key
    its administrator gave (``public_key``: a hub is not trusted to tell it) and the agreement key from the
    card the station signed with it for the hub.
    """
    p = Path(path)
    raw = read_toml(p, "federation file") if p.exists() else {}
    hub = hub or (raw.get("hub") if url is None else None)
    if (url is None) == (hub is None):
        raise InputError("give the station's URL, or --hub URL for a station reached through a hub")
    if hub is not None and raw.get("hub") not in (None, hub):
        raise InputError(f"{p} names the hub {raw.get('hub')}; a federation has one hub")
    if (token is None) == (token_env is None):
        raise InputError("give exactly one of --token-env VAR (the token stays out of the file) or --token TOKEN")
    entry: dict[str, str] = {"name": name} if url is None else {"name": name, "url": url.rstrip("/")}
    entry.update({"token_env": token_env} if token_env is not None else {"token": str(token)})
    if hub is not None:
        raw = {**raw, "hub": hub}
    if hub is not None and public_key is None:
        raise InputError(
            f"station {name} through a hub: give its signing key (--public-key ed25519:..., as `better station "
            "init` printed it at the station); a hub cannot be trusted to tell it"
        )
    if public_key is not None:
        entry["public_key"] = public_key
    if pin and hub is not None:
        probe = validate(FederationFile, {**raw, "station": [entry]}, p)
        _, link = _connection(probe, p)
        assert link is not None
        asyncio.run(link.learn_keys())
        entry["agreement_key"] = str(link.keys[name][1])
    elif pin:
        try:
            info = httpx.get(f"{entry['url']}/info", timeout=10.0).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise InputError(f"{url}: no station answers there ({exc}); start it, or add it with --no-pin") from None
        if info.get("name") != name:
            raise InputError(f"{url} is station {info.get('name')!r}, not {name!r}")
        entry.update({k: str(info[k]) for k in ("public_key", "agreement_key") if info.get(k)})
    listed = raw.get("station", [])
    stations = [
        s for s in (listed if isinstance(listed, list) else []) if isinstance(s, dict) and s.get("name") != name
    ]
    doc = {**raw, "station": [*stations, entry]}
    validate(FederationFile, doc, p)  # the file stays one that from_file reads
    import tomli_w

    tmp = p.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(doc))
    if token is not None:
        tmp.chmod(0o600)
    tmp.replace(p)
    return entry


def _connection(spec: FederationFile, path: Path) -> tuple[bool | ssl.SSLContext, HubLink | None]:
    """How a federation file reaches its stations: TLS verification (True, or its ``ca_file``) and its hub."""
    verify: bool | ssl.SSLContext = True
    if spec.ca_file is not None:
        ca = (path.parent / Path(spec.ca_file).expanduser()).resolve()
        if not ca.is_file():
            raise InputError(f"{path}: ca_file {spec.ca_file}: no such file")
        try:
            verify = tls_verify(ca)
        except ssl.SSLError as exc:
            raise InputError(f"{path}: ca_file {spec.ca_file}: not a PEM CA bundle ({exc})") from None
    if spec.hub is None:
        return verify, None
    key_file = None if spec.researcher_key is None else path.parent / Path(spec.researcher_key).expanduser()
    keys = {s.name: (s.public_key, s.agreement_key) for s in spec.station}
    return verify, HubLink(spec.hub, researcher_key(key_file), verify, keys)


@dataclass
class Federation:
    """Stations that answer together; :meth:`query` runs the query language over them."""

    stations: list[StationClient]
    dataset: str | None = None
    #: "auto" (on with three or more stations), "on" or "off".
    secure_aggregation: str = "auto"
    notes: list[str] = field(default_factory=list)
    last_plan: Plan | None = None
    #: A PCA or PRUNE query's loadings and counts (the last query's).
    structure: Structure = field(default_factory=Structure)
    #: The stations whose answers the last query's result holds.
    answered: list[str] = field(default_factory=list)
    #: Keep every release of each query (:attr:`recording`), for a result file that ``better verify``
    #: can check value by value (see :mod:`better.query.replay`).
    record_releases: bool = False
    recording: Recording | None = None
    #: Station tasks in flight at once (the federation file's ``max_concurrent_stations``).
    max_concurrent_stations: int = MAX_CONCURRENT_STATIONS
    #: Who answered each round of the last query (:meth:`who_answered` sums it up per station).
    answers: list[Answers] = field(default_factory=list)
    _slots: tuple[asyncio.AbstractEventLoop, Slots] | None = field(default=None, repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Federation:
        """Read a federation file; tokens named by ``token_env`` come from the environment."""
        p = Path(path)
        spec = load_toml(p, FederationFile, "federation file")
        names = [s.name for s in spec.station]
        if len(set(names)) != len(names):
            raise InputError(f"{p}: a station name appears twice")
        verify, link = _connection(spec, p)
        clients = []
        for s in spec.station:
            token = s.token
            if s.token_env is not None:
                token = os.environ.get(s.token_env)
                if not token:
                    raise InputError(f"{p}: station {s.name}: set the environment variable {s.token_env} to its token")
            assert token is not None
            url = s.url if s.url is not None else f"{SCHEME}://{s.name}"
            clients.append(
                StationClient(
                    s.name,
                    url,
                    token,
                    timeout=s.timeout,
                    public_key=s.public_key,
                    agreement_key=s.agreement_key,
                    verify=verify,
                    hub=link,
                )
            )
        return cls(clients, spec.dataset, spec.secure_aggregation, max_concurrent_stations=spec.max_concurrent_stations)

    # -- public API ---------------------------------------------------------------------------------------
    def explain(self, text: str, naive: bool = False) -> str:
        """The plan of a query, in words (nothing runs at the stations)."""
        q = parse(text)
        return asyncio.run(self._plan(q, self.stations, naive))[0].explain()

    def query(
        self, text: str, allow_partial: bool = False, naive: bool = False, on_round: OnRound | None = None
    ) -> pl.DataFrame:
        """Run a query and return its table (an ``EXPLAIN`` query returns the plan, one line a row)."""
        q = parse(text)
        self.notes = []
        self.recording = Recording() if self.record_releases else None
        for s in self.stations:
            s.sent_bytes = s.received_bytes = 0
            s.manifests.clear()
            s.recording = self.recording
        if q.explain:
            return pl.DataFrame({"plan": self.explain(text.split(None, 1)[1], naive).splitlines()})
        return asyncio.run(self.run(q, allow_partial, naive, on_round))

    def pca(
        self, pcs: int = 10, where: str | None = None, prune: str | None = None, name: str | None = None
    ) -> PCAResult:
        """Principal components over the stations (``PCA pcs WHERE where PRUNE prune AS name``): eigenvalues,
        loadings and projection weights; with ``name`` the stations store the scores as covariates.

        Examples
        --------
        ::

            result = fed.pca(10, where="maf >= 0.01", prune="50 5 0.1", name="pc")
            result.eigenvalues, result.loadings.shape
        """
        text = f"PCA {int(pcs)}" + (f" WHERE {where}" if where else "") + (f" PRUNE {prune}" if prune else "")
        self.query(text + (f" AS {name}" if name else ""))
        assert self.structure.pca is not None
        return self.structure.pca

    def who_answered(self) -> list[str]:
        """A line per station over the last query's rounds: calls answered, median and longest seconds, time
        waited for its turns, bytes sent and received, and any failures."""
        return answers_summary(self.answers, self.stations)

    def slots(self) -> Slots:
        """The bound on station calls in flight for the running event loop, shared by every query it runs."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop or self._slots[1].limit != self.max_concurrent_stations:
            self._slots = (loop, Slots(self.max_concurrent_stations))
        return self._slots[1]

    @property
    def manifests(self) -> list[dict[str, object]]:
        """The signed manifests of every release the last query received, station by station."""
        return [m for s in self.stations for m in s.manifests]

    # -- the async parts ---------------------------------------------------------------------------------
    async def catalogs(self, stations: list[StationClient]) -> list[StationCatalog]:
        """What each station holds (``GET /station``), all asked at once."""
        link = next((s.hub for s in stations if s.hub is not None), None)
        if link is not None:
            for note in await link.learn_keys():
                self._note(note)
            for s in stations:
                s.public_key, s.agreement_key = link.keys[s.name]
        async with open_client(stations) as client:

            async def one(s: StationClient) -> StationCatalog:
                info = await s.station_info(client)
                return StationCatalog(
                    s.name,
                    {d["name"]: d for d in info["datasets"]},
                    software=str(info.get("software", "")),
                    policy=dict(info.get("policy", {})),
                    agreement_key=info.get("agreement_key"),
                )

            calls = [(s.name, partial(one, s)) for s in stations]
            return await gather_stations(calls, self.slots(), "GET /station (what each holds)", self.answers)

    async def _plan(self, q: Query, stations: list[StationClient], naive: bool) -> tuple[Plan, SecureSession | None]:
        catalogs = await self.catalogs(stations)
        secure = self._secure_session(stations, catalogs)
        p = plan(q, catalogs, self.dataset, naive)
        p.secure = secure is not None
        return p, secure

    def _secure_session(self, stations: list[StationClient], catalogs: list[StationCatalog]) -> SecureSession | None:
        """Secure aggregation for this run, or None when it is off (or "auto" with too few stations).

        Each station's agreement key is the one pinned in the federation file, which must match what the
        station reports; an unpinned key is taken from the station (and the run notes that).
        """
        mode = self.secure_aggregation
        if mode == "off" or (mode == "auto" and len(stations) < MIN_STATIONS):
            return None
        if len(stations) < MIN_STATIONS:
            raise InputError(
                f"secure aggregation needs at least {MIN_STATIONS} stations and {len(stations)} take part; "
                'add stations or set secure_aggregation = "off"'
            )
        participants = []
        for s, cat in zip(stations, catalogs, strict=True):
            reported = cat.agreement_key
            if reported is None:
                if mode == "auto":
                    self._note(f"secure aggregation off: station {s.name} does not offer it")
                    return None
                raise InputError(f"station {s.name} does not offer secure aggregation (its software is too old)")
            if s.agreement_key is not None and s.agreement_key != reported:
                raise InputError(
                    f"station {s.name} reports the agreement key {reported}, but the federation file pins "
                    f"{s.agreement_key}; if the station's key was replaced, update the pin after checking with it"
                )
            if s.agreement_key is None:
                self._note(f"station {s.name}: agreement key not pinned in the federation file; used {reported}")
            participants.append((s.name, reported))
        return SecureSession(participants)

    def _note(self, text: str) -> None:
        """Add a note once (batch jobs run many queries through one federation)."""
        if text not in self.notes:
            self.notes.append(text)

    async def run(self, q: Query, allow_partial: bool, naive: bool, on_round: OnRound | None) -> pl.DataFrame:
        """Plan and run a parsed query (the async form of :meth:`query`, for callers with a loop)."""
        stations = list(self.stations)
        self.answers = []  # this query's (a batch job's queries run side by side: the last one's)
        left_out: list[str] = []
        was_secure = False
        while True:
            secure = None
            if self.recording is not None:
                self.recording.releases.clear()  # the result holds the last run's releases only
            try:
                p, secure = await self._plan(q, stations, naive)
                if was_secure and secure is None:  # never fall back to the clear
                    raise InputError(
                        f"left out {', '.join(left_out)}; the {len(stations)} station(s) that remain are too few for "
                        f"secure aggregation ({MIN_STATIONS} at least), and the query does not run again in the clear"
                    )
                was_secure = secure is not None
                self.last_plan = p
                self.structure = Structure()
                if len(stations) > self.max_concurrent_stations:
                    self._note(
                        f"{len(stations)} stations, at most {self.max_concurrent_stations} asked at once "
                        "(max_concurrent_stations in the federation file): each round reaches them in turns"
                    )
                frame = await _execute(p, stations, on_round, secure, self.structure, self.slots(), self.answers)
                break
            except StationError as exc:
                gone = [e.station for e in exc.failed]
                restart = allow_partial or (
                    secure is not None and exc.dropout and len(stations) - len(gone) >= MIN_STATIONS
                )
                if not restart or len(stations) <= len(gone):
                    raise
                stations = [s for s in stations if s.name not in gone]
                left_out += [f"{e.station} ({e})" for e in exc.failed]
                without = " and ".join(f"station {name}" for name in gone)
                roster = f"\n{exc.answers.roster(exc.reason)}" if isinstance(exc, RoundError) else ""
                why = "; ".join(str(e) for e in exc.failed)
                self.notes.append(f"partial result: {why}; the query ran again without {without}{roster}")
        if left_out:
            frame = frame.with_columns(pl.lit("; ".join(left_out)).alias("LEFT_OUT"))
        self.answered = [s.name for s in stations]
        return frame


async def _execute(
    p: Plan,
    stations: list[StationClient],
    on_round: OnRound | None,
    secure: SecureSession | None = None,
    structure: Structure | None = None,
    slots: Slots | None = None,
    log: list[Answers] | None = None,
) -> pl.DataFrame:
    """Run a plan: its protocols over the stations, the central filter, the PLINK-style table.

    ``slots`` bounds the station calls in flight over all its protocols (default: a new bound of
    :data:`~better.query.remote.MAX_CONCURRENT_STATIONS`); ``log`` receives who answered each round."""
    slots = slots if slots is not None else Slots()
    q, model = p.query, p.model
    ids: dict[tuple, str] = {}
    withheld_by = WithheldBy()
    finished = FinishedRows()

    async def drive(stage: str, protocol: Protocol, m: Model) -> dict[str, np.ndarray]:
        def seen(round_no: int, kind: str, seconds: float) -> None:
            if on_round is not None:
                on_round(stage, round_no, kind, len(stations), seconds)

        return await run_remote_async(
            protocol,
            stations,
            m,
            on_round=seen,
            on_results=lambda r: _collect_ids(r, ids),
            secure=secure,
            withheld_by=None if stage == "counts" else withheld_by,  # the main analysis' rows only
            finished=finished,
            slots=slots,
            log=log,
        )

    if q.verb in ("pca", "prune", "project"):
        return await run_structure(
            p, lambda stage, proto: drive(stage, proto, model), ids, structure if structure is not None else Structure()
        )
    if q.verb == "count":
        res = await drive("count", SampleCountProtocol(), model)
        return output.table("count", None, res, ids, withheld_by)
    if q.verb in ("coverage", "reads", "pileup"):
        reads_protocol: Protocol = {
            "coverage": CoverageProtocol,
            "reads": ReadsProtocol,
        }.get(
            q.verb,
            lambda: PileupProtocol(
                chrom=[r.chrom for r in q.regions],
                pos=[r.end for r in q.regions],
                min_base_quality=q.min_base_quality,
                min_mapping_quality=q.min_mapping_quality,
            ),
        )()
        return output.read_table(await drive(q.verb, reads_protocol, model), withheld_by)
    if q.verb == "beacon":
        proto = CountsProtocol(groups=1)
        return output.beacon_table(q, await drive(q.verb, proto, model), ids, withheld_by)
    if q.verb in ("freq", "hwe"):
        proto = CountsProtocol(groups=1)
        res = await drive(q.verb, proto, model)
        assert proto.counts is not None
        keep = _keep(p.variant_filter, proto)
        return _drop_filtered(output.table(q.verb, None, _rows(res, keep), ids, withheld_by), p, withheld_by)
    k = p.k
    counts_proto = CountsProtocol(groups=1) if p.separate_counts_round else None
    if q.model == "linear":
        main: Protocol = LinearProtocol()
    else:
        vf = p.variant_filter if p.counts_source == "score" else VariantFilter()
        main = LogisticProtocol(k=k, test=q.test, variant_filter=vf)
    if counts_proto is not None and p.naive:
        await drive("counts", counts_proto, model)
        res = await drive("gwas", main, model)
    elif counts_proto is not None:  # beside the main rounds, on the same connections
        _, res = await gather_or_cancel(drive("counts", counts_proto, model), drive("gwas", main, model))
    else:
        res = await drive("gwas", main, model)
    if p.counts_source == "counts":
        assert counts_proto is not None and counts_proto.counts is not None
        res = _rows(res, _aligned_keep(res, counts_proto, p.variant_filter))
    elif p.counts_source == "linear":
        assert isinstance(main, LinearProtocol) and main.pooled is not None
        pooled = main.pooled
        withheld = pooled.withheld if pooled.withheld is not None else np.zeros(pooled.n_variants, dtype=bool)
        called = pooled.n - pooled.n_miss
        mask = p.variant_filter.mask(pooled.cg[:, 0], called, pooled.n_miss, squares=pooled.gg)
        res = _rows(res, mask | withheld)
    # rows the stations finished themselves: their results, and the filter on the counts that came with them
    res = finished.overlay(res, p.variant_filter if p.counts_source in ("linear", "score") else None)
    return _drop_filtered(output.table("gwas", q.model, res, ids, withheld_by), p, withheld_by)


def _drop_filtered(frame: pl.DataFrame, p: Plan, withheld_by: WithheldBy) -> pl.DataFrame:
    """Leave out withheld rows the variant filter drops whatever their hidden counts (rare variants under a
    ``maf >= 0.01``): they were not asked for, and listing them as withheld says nothing useful."""
    if not p.variant_filter.conditions or not frame.height or "WITHHELD" not in frame.columns:
        return frame
    ref, alt = ("A1", "AX") if "AX" in frame.columns else ("REF", "ALT")
    keys = list(zip(frame["#CHROM"], frame["POS"], frame[ref], frame[alt], strict=True))
    floor = max((int(pol.get("min_minor_allele_count", 5)) for pol in p.policies.values()), default=5)
    drop = withheld_by.certainly_filtered(
        keys, frame["WITHHELD"].to_numpy(), p.variant_filter, floor, dosages=bool(p.with_dosages)
    )
    return frame.filter(pl.Series(~drop)) if drop.any() else frame


def _keep(vf: VariantFilter, counts: CountsProtocol) -> np.ndarray:
    """Rows that pass the filter; withheld rows stay (their counts are unknown) and show as withheld."""
    if not vf.conditions:
        return np.ones(counts.withheld.shape[0], dtype=bool)
    return counts.keep(vf) | counts.withheld


def _aligned_keep(res: dict[str, np.ndarray], counts_proto: CountsProtocol, vf: VariantFilter) -> np.ndarray:
    """The filter from a separate counts round, matched to the analysis' rows by variant key."""
    keep = _keep(vf, counts_proto)
    index = {key: i for i, key in enumerate(zip(*(counts_proto.keys[c].tolist() for c in KEY_COLUMNS), strict=True))}
    rows = zip(*(res[c].tolist() for c in KEY_COLUMNS), strict=True)
    return np.array([keep[index[k]] if k in index else False for k in rows], dtype=bool)


def _rows(res: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    if keep.all():
        return res
    return {name: col[keep] for name, col in res.items()}


def _collect_ids(results: list[Result], ids: dict[tuple, str]) -> None:
    """Remember each variant's VCF ID from results that carry one (the first station with an ID wins)."""
    for r in results:
        if "key_id" not in r:
            continue
        for key, vid in zip(
            zip(*(r[f"key_{c}"].tolist() for c in KEY_COLUMNS), strict=True),
            r["key_id"].tolist(),
            strict=True,
        ):
            if vid != "." and key not in ids:
                ids[key] = vid
