"""Stations behind a hub, end to end: a hub and three stations in pull mode (real processes), against the
same stations served directly.

- The stations open no listening socket; GWAS LINEAR and LOGISTIC through the hub equal direct mode.
- A station stopped for a while, and a hub restarted meanwhile, lose no task: the queued task completes.
- The hub's file holds no plaintext: no token, query constant or JSON of a request.
- Envelopes tampered with, replayed or sent to the wrong station are refused by the hub, and, when a
  dishonest hub delivers them anyway, by the station: audited there, and answered by a signed refusal.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import polars as pl
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.engine.errors import InputError
from better.hub.queue import DB_FILE, HubQueue, Quotas
from better.query.federation import Federation, add_station
from better.query.remote import StationClient
from better.station_api.launch import free_port, hub_process, station_process, station_processes
from better.station_api.secure_agg import agreement_key_text, load_or_create_agreement_key
from better.station_api.signing import load_or_create_key, public_key_text
from better.wire.envelope import (
    Envelope,
    EnvelopeError,
    decode,
    ed25519_text,
    encode,
    open_reply,
    seal_task,
    verify_signature,
)
from better.wire.signed_requests import signed_call
from tests.servers import StationSetup, better, make_station

NAMES = ("milano", "nijmegen", "barcelona")
LINEAR = "GWAS LINEAR ldl ~ age + sex"
LOGISTIC = "GWAS LOGISTIC case ~ age + sex"


@dataclass
class Hubbed:
    """The hub, its stations in pull mode, and how to stop and start each."""

    root: Path
    hub_dir: Path
    port: int
    stations: list[StationSetup]
    credentials: dict[str, str]
    federation_file: Path
    running: dict[str, ExitStack] = field(default_factory=dict)

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_hub(self) -> None:
        stack = ExitStack()
        stack.enter_context(hub_process(self.hub_dir, self.port))
        self.running["hub"] = stack

    def start_station(self, name: str) -> None:
        path = self.root / name
        stack = ExitStack()
        stack.enter_context(station_process(path, threads=1, hub=self.hub_url, credential=self.credentials[name]))
        self.running[name] = stack

    def stop(self, name: str) -> None:
        self.running.pop(name).close()

    def federation(self) -> Federation:
        return Federation.from_file(self.federation_file)

    def waiting(self, station: str) -> int:
        queue = HubQueue(self.hub_dir)
        try:
            return next(int(s["waiting"]) for s in queue.directory() if s["name"] == station)
        finally:
            queue.close()


def _enrol(hub_dir: Path, name: str) -> str:
    done = better("hub", "enrol", "--hub", str(hub_dir), "--station", name)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hubbed(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubbed]:
    root = tmp_path_factory.mktemp("hubbed")
    stations = [make_station(root, name, small_cohort) for name in NAMES]
    for s in stations:  # untouched copies, for the same queries served directly
        shutil.copytree(s.path, root / "direct" / s.name)
    hub_dir = root / "hub"
    done = better("hub", "init", "--hub", str(hub_dir))
    assert done.returncode == 0, done.stderr
    credentials = {NAMES[0]: _enrol(hub_dir, NAMES[0])}  # the command line once, the others directly
    queue = HubQueue(hub_dir)
    credentials.update({name: queue.enrol(name) for name in NAMES[1:]})
    queue.close()
    port = free_port()
    lines = [f'hub = "http://127.0.0.1:{port}"', 'secure_aggregation = "on"', 'researcher_key = "researcher.key"']
    for s in stations:
        os.environ[f"BETTER_TEST_TOKEN_{s.name.upper()}"] = s.researcher
        lines += [
            "[[station]]",
            f'name = "{s.name}"',
            f'token_env = "BETTER_TEST_TOKEN_{s.name.upper()}"',
            f'public_key = "{public_key_text(load_or_create_key(s.path))}"',
            f'agreement_key = "{agreement_key_text(load_or_create_agreement_key(s.path))}"',
            "timeout = 120",
        ]
    federation_file = root / "federation.toml"
    federation_file.write_text("\n".join(lines) + "\n")
    world = Hubbed(root, hub_dir, port, stations, credentials, federation_file)
    try:
        world.start_hub()
        for name in NAMES:
            world.start_station(name)
        yield world
    finally:
        for stack in reversed(list(world.running.values())):  # the stations, then the hub
            stack.close()


def _listening_sockets(pid: int) -> int:
    """How many TCP sockets the process ``pid`` holds in the LISTEN state (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                listening += 1
    return listening


def _pids_serving(path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and str(path).encode() in argv:
                pids.append(int(proc.name))
    return pids


def test_stations_behind_the_hub_open_no_port(hubbed: Hubbed) -> None:
    for s in hubbed.stations:
        pids = _pids_serving(s.path)
        assert len(pids) == 1, pids
        assert _listening_sockets(pids[0]) == 0
    assert _listening_sockets(_pids_serving(hubbed.hub_dir)[0]) == 1  # the hub listens: it is the one reached


def test_federation_add_pins_the_keys_the_stations_signed_for_the_hub(hubbed: Hubbed, tmp_path: Path) -> None:
    env = {**os.environ, "BETTER_RESEARCHER_KEY": str(tmp_path / "me.key")}
    fed_file = tmp_path / "fed.toml"
    first = hubbed.stations[0]
    token_env = f"BETTER_TEST_TOKEN_{first.name.upper()}"
    done = better("federation", "add", first.name, "--hub", hubbed.hub_url, "--token-env", token_env, env=env)
    assert done.returncode == 1 and "--public-key" in done.stderr  # the hub is not trusted with the signing key
    done = better(
        "federation", "add", first.name, "--hub", hubbed.hub_url, "--token-env", token_env,
        "--public-key", public_key_text(load_or_create_key(first.path)), "--federation", str(fed_file), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    os.environ["BETTER_RESEARCHER_KEY"] = env["BETTER_RESEARCHER_KEY"]
    try:
        for s in hubbed.stations[1:]:
            signing = public_key_text(load_or_create_key(s.path))
            add_station(fed_file, s.name, token_env=f"BETTER_TEST_TOKEN_{s.name.upper()}", public_key=signing)
    finally:
        del os.environ["BETTER_RESEARCHER_KEY"]
    written = fed_file.read_text()
    assert f'hub = "{hubbed.hub_url}"' in written and "url" not in written.replace(f'hub = "{hubbed.hub_url}"', "")
    for s in hubbed.stations:
        assert public_key_text(load_or_create_key(s.path)) in written
        assert agreement_key_text(load_or_create_agreement_key(s.path)) in written
    # Without pinned agreement keys, the query takes them from the cards the stations signed for the hub, and
    # says so; without a pinned signing key, it does not run.
    os.environ["BETTER_RESEARCHER_KEY"] = str(tmp_path / "me.key")
    try:
        fed_file.write_text("\n".join(line for line in written.splitlines() if not line.startswith("agreement_key")))
        fed = Federation.from_file(fed_file)
        assert fed.query("COUNT samples")["COUNT"][0] > 0
        assert any("agreement key not pinned" in n for n in fed.notes)
        fed_file.write_text("\n".join(line for line in written.splitlines() if not line.startswith("public_key")))
        with pytest.raises(InputError, match="signing key must be pinned"):
            Federation.from_file(fed_file).query("COUNT samples")
    finally:
        del os.environ["BETTER_RESEARCHER_KEY"]


def _direct(hubbed: Hubbed, queries: list[str]) -> list[pl.DataFrame]:
    paths = [hubbed.root / "direct" / s.name for s in hubbed.stations]
    with station_processes(paths, threads=1) as urls:
        clients = [
            StationClient(s.name, u, s.researcher, timeout=120) for s, u in zip(hubbed.stations, urls, strict=True)
        ]
        fed = Federation(clients, secure_aggregation="on")
        return [fed.query(q) for q in queries]


@pytest.mark.slow  # (the default run has GWAS through a hub over TLS: tests/test_hub_tls.py)
def test_gwas_through_the_hub_equals_direct_mode(hubbed: Hubbed) -> None:
    fed = hubbed.federation()
    through_hub = [fed.query(q) for q in (LINEAR, LOGISTIC)]
    assert fed.last_plan is not None and fed.last_plan.secure
    direct = _direct(hubbed, [LINEAR, LOGISTIC])
    for a, b in zip(through_hub, direct, strict=True):
        assert a.height > 100
        assert a.equals(b, null_equal=True), (a, b)


def test_a_station_offline_and_a_hub_restart_lose_no_task(hubbed: Hubbed) -> None:
    expected = hubbed.federation().query("COUNT samples WHERE age > 40")
    hubbed.stop("barcelona")
    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            answer["frame"] = hubbed.federation().query("COUNT samples WHERE age > 40")
        except Exception as exc:  # reported below
            answer["error"] = exc

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + 60
    while hubbed.waiting("barcelona") == 0:  # the task waits at the hub for the station
        assert time.monotonic() < deadline and asking.is_alive(), answer
        time.sleep(0.2)
    time.sleep(2.0)
    hubbed.stop("hub")  # the hub goes down with the task queued, and comes back
    time.sleep(1.0)
    hubbed.start_hub()
    assert hubbed.waiting("barcelona") >= 1
    time.sleep(1.0)
    hubbed.start_station("barcelona")
    asking.join(timeout=120)
    assert not asking.is_alive()
    assert "error" not in answer, answer
    frame = answer["frame"]
    assert isinstance(frame, pl.DataFrame) and frame.equals(expected)


def _hub_bytes(hubbed: Hubbed) -> bytes:
    files = [*hubbed.hub_dir.glob(DB_FILE + "*"), *(hubbed.hub_dir / "frames").iterdir()]
    return b"".join(p.read_bytes() for p in files)


def test_the_hub_stores_no_plaintext(hubbed: Hubbed, small_cohort: Path) -> None:
    import asyncio

    from better.query.hub_link import HubLink, HubTransport

    # A query's task waits at the hub for a stopped station: the hub's files then hold its envelope.
    nijmegen = hubbed.stations[1]
    hubbed.stop("nijmegen")
    try:
        link = HubLink(hubbed.hub_url, Ed25519PrivateKey.generate())
        link.keys[nijmegen.name] = (
            public_key_text(load_or_create_key(nijmegen.path)),
            agreement_key_text(load_or_create_agreement_key(nijmegen.path)),
        )
        body = {"dataset": "cohort", "analysis": "count", "kind": "sample_count", "where": [["age", ">", 47.3125]]}

        async def ask() -> None:
            async with httpx.AsyncClient(mounts={"hub://": HubTransport(link)}) as client:
                headers = {"Authorization": f"Bearer {nijmegen.researcher}"}
                answer = await client.post("hub://nijmegen/tasks", json=body, headers=headers, timeout=60)
                assert answer.status_code in (202, 422)  # the station, back, answered it (as it would directly)

        asking = threading.Thread(target=asyncio.run, args=(ask(),))
        asking.start()
        deadline = time.monotonic() + 20
        while hubbed.waiting("nijmegen") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        stored = _hub_bytes(hubbed)
        assert any(p.suffix == ".task" for p in (hubbed.hub_dir / "frames").iterdir())
    finally:
        hubbed.start_station("nijmegen")  # it answers the task; the coordinator has given up, and withdraws it
        asking.join(timeout=60)
    stored += _hub_bytes(hubbed)  # and after the queries of the other tests, deleted pages included
    pheno = pl.read_csv(small_cohort / "milano.pheno.tsv", separator="\t", null_values="NA")
    secrets = [s.researcher.encode() for s in hubbed.stations] + [s.admin.encode() for s in hubbed.stations]
    secrets += [b"47.3125", b'"dataset"', b"Bearer", b"cohort", b"sample_count", b"/tasks"]
    secrets += [str(v).encode() for v in pheno[pheno.columns[0]].to_list()[:20]]  # sample ids
    secrets += [f"{v:.4f}".encode() for v in pheno["ldl"].drop_nulls().to_list()[:20]]
    found = [s for s in secrets if s in stored]
    assert not found, found


# -- a dishonest hub, and envelopes that must be refused ---------------------------------------------------
def _audit_rows(path: Path, action: str) -> list[dict[str, str]]:
    """The details of the station's audit rows of one action."""
    rows = [json.loads(line) for line in (path / "audit.jsonl").read_text().splitlines() if line.strip()]
    return [json.loads(r["detail"]) for r in rows if r["action"] == action]


def _seal(hubbed: Hubbed, key: Ed25519PrivateKey, station: StationSetup) -> tuple[Envelope, object]:
    request = {"method": "GET", "path": "/station", "headers": {"authorization": f"Bearer {station.researcher}"}}
    agreement = agreement_key_text(load_or_create_agreement_key(station.path))
    return seal_task(key, station.name, agreement, request, ttl=60)


async def _reply(hubbed: Hubbed, key: Ed25519PrivateKey, envelope_id: str, what: str = "") -> bytes:
    async with httpx.AsyncClient(base_url=hubbed.hub_url) as hub:
        for _ in range(3):
            r = await signed_call(hub, key, "GET", f"/v1/messages/{envelope_id}/reply?wait=20", timeout=40)
            if r.status_code == 200:
                return r.content
        raise AssertionError(f"no reply to {envelope_id} {what}")


def test_tampered_replayed_and_misaddressed_envelopes_are_refused(hubbed: Hubbed) -> None:
    import asyncio

    key = Ed25519PrivateKey.generate()
    milano, nijmegen = hubbed.stations[0], hubbed.stations[1]
    signing = public_key_text(load_or_create_key(milano.path))

    async def submit(name: str, frame: bytes) -> httpx.Response:
        async with httpx.AsyncClient(base_url=hubbed.hub_url) as hub:
            return await signed_call(hub, key, "POST", f"/v1/stations/{name}/messages", frame)

    # The hub refuses them itself.
    good, secret = _seal(hubbed, key, milano)
    frame = encode(good)
    tampered = frame[:-5] + bytes([frame[-5] ^ 1]) + frame[-4:]
    assert asyncio.run(submit("milano", tampered)).status_code == 422
    assert asyncio.run(submit("nijmegen", frame)).status_code == 422  # addressed to milano
    assert asyncio.run(submit("milano", frame)).status_code == 202
    assert asyncio.run(submit("milano", frame)).status_code == 409  # the same envelope again
    response, body = open_reply(decode(asyncio.run(_reply(hubbed, key, good.id))), good, secret, signing)  # type: ignore[arg-type]
    assert response["status"] == 200 and b"datasets" in body
    events = HubQueue(hubbed.hub_dir).events(200)
    reasons = {e["detail"].get("reason") for e in events if e["action"] == "message.refused"}
    assert {"bad_signature", "misaddressed", "duplicate"} <= reasons

    # A dishonest hub delivers them anyway: the stations refuse, audit, and answer with signed refusals.
    queue = HubQueue(hubbed.hub_dir)
    sender, quotas = ed25519_text(key), Quotas()
    try:
        queue.remove(good.id, "test", "test")
        queue.enqueue(good.id, "milano", sender, time.time() + 60, frame, quotas)  # replayed
        other, _ = _seal(hubbed, key, milano)
        queue.enqueue(other.id, "nijmegen", sender, time.time() + 60, encode(other), quotas)  # misaddressed
        third, _ = _seal(hubbed, key, milano)
        flipped = bytearray(encode(third))
        flipped[-3] ^= 0x40
        tampered_body = bytes(flipped)
        queue.enqueue(third.id, "milano", sender, time.time() + 60, tampered_body, quotas)  # tampered ciphertext
    finally:
        queue.close()
    wake, _ = _seal(hubbed, key, nijmegen)  # a real submission wakes the stations' long-polls
    assert asyncio.run(submit("nijmegen", encode(wake))).status_code == 202
    wake2, _ = _seal(hubbed, key, milano)
    assert asyncio.run(submit("milano", encode(wake2))).status_code == 202
    refusals = ((good, milano, "replayed"), (other, nijmegen, "misaddressed"), (third, milano, "bad_signature"))
    for envelope, station, reason in refusals:
        reply = decode(asyncio.run(_reply(hubbed, key, envelope.id, reason)))
        assert reply.header["kind"] == "refusal" and reply.header["reason"] == reason
        assert reply.header["station"] == station.name
        assert reply.header["task"] == (envelope.digest if envelope is not third else decode(tampered_body).digest)
        verify_signature(public_key_text(load_or_create_key(station.path)), reply.signature, reply.signed_bytes(), "")
    with pytest.raises(EnvelopeError, match="refused"):  # what the coordinator makes of a refusal
        open_reply(decode(asyncio.run(_reply(hubbed, key, good.id))), good, secret, signing)  # type: ignore[arg-type]
    audited = {(r["id"], r["reason"]) for s in (milano, nijmegen) for r in _audit_rows(s.path, "hub.refused")}
    assert {(good.id, "replayed"), (other.id, "misaddressed"), (third.id, "bad_signature")} <= audited


def test_hub_status_shows_the_stations_and_the_events(hubbed: Hubbed) -> None:
    assert hubbed.federation().query("COUNT samples")["COUNT"][0] > 0
    wide = {**os.environ, "COLUMNS": "300"}  # rich folds long cells on a narrow terminal
    done = better("hub", "status", "--hub", str(hubbed.hub_dir), "--events", "200", env=wide)
    assert done.returncode == 0, done.stderr
    for s in hubbed.stations:
        assert s.name in done.stdout
    assert "message.queued" in done.stdout and "message.replied" in done.stdout
