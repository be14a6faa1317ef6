"""Sealed envelopes, signed hub requests, the hub's queue and the station's replay registry, in-process."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from better.engine.errors import StoreError
from better.hub.config import HubConfig, write_config
from better.hub.queue import HubQueue, Quotas
from better.station_api.pull import SeenIds, split_frames
from better.wire.envelope import (
    MAX_TTL,
    Envelope,
    EnvelopeError,
    decode,
    ed25519_text,
    encode,
    open_reply,
    open_task,
    refusal,
    seal_reply,
    seal_task,
    x25519_text,
)
from better.wire.masking import canonical
from better.wire.signed_requests import sign_request, verify_request

REQUEST = {"method": "POST", "path": "/tasks", "headers": {"authorization": "Bearer btr_x"}}
BODY = b'{"dataset": "cohort"}'


@pytest.fixture
def parties() -> dict[str, Any]:
    return {
        "researcher": Ed25519PrivateKey.generate(),
        "sign": Ed25519PrivateKey.generate(),
        "agree": X25519PrivateKey.generate(),
        "other_agree": X25519PrivateKey.generate(),
    }


def _task(p: dict[str, Any], **kw: Any) -> tuple[Envelope, Any]:
    return seal_task(p["researcher"], "milano", x25519_text(p["agree"]), REQUEST, BODY, **kw)


def _resigned(envelope: Envelope, key: Ed25519PrivateKey, **changes: Any) -> Envelope:
    """The envelope with header fields changed and signed again by ``key`` (what a hub could forge)."""
    header = {**envelope.header, **changes}
    unsigned = Envelope(header, b"", envelope.ciphertext)
    return Envelope(header, key.sign(unsigned.signed_bytes()), envelope.ciphertext)


def test_a_task_and_its_reply_open_only_at_their_ends(parties: dict[str, Any]) -> None:
    task, secret = _task(parties)
    frame = encode(task)
    for secret_text in (b"btr_x", b"/tasks", b"Bearer", b"cohort"):
        assert secret_text not in frame
    opened = open_task(decode(frame), "milano", parties["agree"])
    assert opened.request == REQUEST and opened.body == BODY and opened.sender == ed25519_text(parties["researcher"])
    assert opened.digest == task.digest
    reply = seal_reply(parties["sign"], "milano", opened, {"status": 200}, b"\x00result")
    assert b"result" not in encode(reply)
    opened_reply = open_reply(decode(encode(reply)), task, secret, ed25519_text(parties["sign"]))
    assert opened_reply == ({"status": 200}, b"\x00result")
    with pytest.raises(EnvelopeError) as bad:
        open_task(task, "milano", parties["other_agree"])  # another station's key
    assert bad.value.reason == "undecryptable"
    _, other_secret = _task(parties)
    with pytest.raises(EnvelopeError) as bad:
        open_reply(reply, task, other_secret, ed25519_text(parties["sign"]))  # another request's key
    assert bad.value.reason == "undecryptable"
    with pytest.raises(EnvelopeError) as bad:
        open_reply(reply, task, secret, ed25519_text(Ed25519PrivateKey.generate()))  # not the pinned station key
    assert bad.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"to": "nijmegen"}, "misaddressed"),
        ({"expires": 4_000_000_000}, "bad_signature"),
        ({"issued": 1}, "bad_signature"),
        ({"id": "0" * 32}, "bad_signature"),
    ],
)
def test_an_altered_header_does_not_open(parties: dict[str, Any], change: dict[str, Any], reason: str) -> None:
    task, _ = _task(parties)
    altered = Envelope({**task.header, **change}, task.signature, task.ciphertext)
    with pytest.raises(EnvelopeError) as bad:
        open_task(decode(encode(altered)), "milano", parties["agree"])
    assert bad.value.reason == reason


def test_a_hub_that_signs_again_in_its_own_name_cannot_open_or_redirect(parties: dict[str, Any]) -> None:
    task, _ = _task(parties)
    hub = Ed25519PrivateKey.generate()
    for changes in ({"from": ed25519_text(hub)}, {"expires": task.header["expires"] + 10}):
        forged = _resigned(task, hub, **changes)
        with pytest.raises(EnvelopeError) as bad:
            open_task(forged, "milano", parties["agree"])
        assert bad.value.reason in ("undecryptable", "bad_signature")  # the header is the AEAD's associated data


def test_ciphertext_and_signature_are_checked(parties: dict[str, Any]) -> None:
    task, _ = _task(parties)
    flipped = bytearray(task.ciphertext)
    flipped[0] ^= 1
    for bad_envelope in (
        Envelope(task.header, task.signature, bytes(flipped)),
        Envelope(task.header, bytes(64), task.ciphertext),
    ):
        with pytest.raises(EnvelopeError) as bad:
            open_task(bad_envelope, "milano", parties["agree"])
        assert bad.value.reason == "bad_signature"


def test_time_limits(parties: dict[str, Any]) -> None:
    task, _ = _task(parties, ttl=60)
    with pytest.raises(EnvelopeError) as bad:
        open_task(task, "milano", parties["agree"], now=time.time() + 120)
    assert bad.value.reason == "expired"
    with pytest.raises(EnvelopeError) as bad:
        open_task(task, "milano", parties["agree"], now=time.time() - 3600)
    assert bad.value.reason == "not_yet_valid"
    long, _ = _task(parties, ttl=10 * MAX_TTL)
    assert long.header["expires"] - long.header["issued"] == MAX_TTL


def test_replies_are_bound_to_their_task_and_station(parties: dict[str, Any]) -> None:
    task, secret = _task(parties)
    other, _ = _task(parties)
    opened_other = open_task(other, "milano", parties["agree"])
    reply_to_other = seal_reply(parties["sign"], "milano", opened_other, {"status": 200})
    with pytest.raises(EnvelopeError) as bad:
        open_reply(reply_to_other, task, secret, ed25519_text(parties["sign"]))
    assert bad.value.reason == "misaddressed"
    refused = refusal(parties["sign"], "milano", task, "replayed")
    with pytest.raises(EnvelopeError) as bad:
        open_reply(decode(encode(refused)), task, secret, ed25519_text(parties["sign"]))
    assert bad.value.reason == "refused:replayed"
    forged = refusal(Ed25519PrivateKey.generate(), "milano", task, "replayed")  # a hub's own refusal
    with pytest.raises(EnvelopeError) as bad:
        open_reply(forged, task, secret, ed25519_text(parties["sign"]))
    assert bad.value.reason == "bad_signature"
    # A hub that sends the station a copy of the envelope with a broken signature gets a signed refusal of
    # that copy, which is no answer to the envelope the coordinator sent.
    broken = Envelope(task.header, bytes(64), task.ciphertext)
    refused_copy = refusal(parties["sign"], "milano", broken, "bad_signature")
    with pytest.raises(EnvelopeError) as bad:
        open_reply(refused_copy, task, secret, ed25519_text(parties["sign"]))
    assert bad.value.reason == "misaddressed"


@given(st.binary(max_size=300))
def test_decode_refuses_any_garbage_cleanly(junk: bytes) -> None:
    for frame in (junk, b"BTE1" + junk):
        try:
            decode(frame)
        except EnvelopeError as exc:
            assert exc.reason == "malformed"


def test_decode_refuses_malformed_frames(parties: dict[str, Any]) -> None:
    task, _ = _task(parties)
    frame = encode(task)
    head = canonical(task.header)
    cases = [
        frame[:9],
        b"XXXX" + frame[4:],
        frame[:4] + (10**6).to_bytes(4, "big") + frame[8:],
        frame[:4] + len(head).to_bytes(4, "big") + head.replace(b",", b", ", 1) + frame[8 + len(head) :],
        encode(Envelope({**task.header, "extra": 1}, task.signature, task.ciphertext)),
        encode(Envelope({**task.header, "issued": "1"}, task.signature, task.ciphertext)),
        encode(Envelope({**task.header, "id": "G" * 32}, task.signature, task.ciphertext)),
        encode(Envelope({**task.header, "v": 2}, task.signature, task.ciphertext)),
        encode(Envelope({**task.header, "to": "x" * 300}, task.signature, task.ciphertext)),
    ]
    for case in cases:
        with pytest.raises(EnvelopeError) as bad:
            decode(case)
        assert bad.value.reason == "malformed"
    with pytest.raises(EnvelopeError):
        decode(frame, max_bytes=len(frame) - 1)


def test_signed_requests() -> None:
    key = Ed25519PrivateKey.generate()
    headers = sign_request(key, "GET", "/v1/stations/milano/messages?wait=5", b"", now=1000)
    assert verify_request(headers, "GET", "/v1/stations/milano/messages?wait=5", b"", now=1000)
    for method, target, body, now in (
        ("POST", "/v1/stations/milano/messages?wait=5", b"", 1000),
        ("GET", "/v1/stations/roma/messages?wait=5", b"", 1000),
        ("GET", "/v1/stations/milano/messages?wait=5", b"x", 1000),
        ("GET", "/v1/stations/milano/messages?wait=5", b"", 2000),
    ):
        with pytest.raises(EnvelopeError):
            verify_request(headers, method, target, body, now=now)
    with pytest.raises(EnvelopeError, match="missing"):
        verify_request({}, "GET", "/", b"", now=1000)
    with pytest.raises(EnvelopeError):
        verify_request({**headers, "X-Better-Signature": base64.b64encode(bytes(64)).decode()}, "GET", "/", b"")


def _queue(tmp_path: Path) -> HubQueue:
    write_config(tmp_path, HubConfig())
    return HubQueue(tmp_path)


LIMITS = Quotas(per_station=10, per_station_bytes=1 << 20, per_sender=10)


def test_the_queue_keeps_everything_across_a_restart(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    credential = queue.enrol("milano")
    assert credential.startswith("bhc_") and queue.station_for(credential) == "milano"
    assert queue.station_for(credential[:-1] + ("A" if credential[-1] != "A" else "B")) is None
    assert queue.station_for("bhc_x") is None and queue.station_for("") is None
    assert queue.bind_key("milano", "ed25519:a") and queue.bind_key("milano", "ed25519:a")
    assert not queue.bind_key("milano", "ed25519:b")
    assert queue.enqueue("a" * 32, "milano", "k", time.time() + 60, b"frame-a", LIMITS) is None
    assert queue.enqueue("a" * 32, "milano", "k", time.time() + 60, b"frame-a", LIMITS) == "duplicate"
    assert queue.enqueue("b" * 32, "roma", "k", time.time() + 60, b"frame-b", LIMITS) == "unknown_station"
    (tmp_path / "frames" / "left.tmp").write_bytes(b"x")  # as a hub killed mid-write leaves
    queue.close()

    queue = HubQueue(tmp_path)  # a restart
    assert queue.clean_up() == 1 and sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["a" * 32 + ".task"]
    assert queue.station_for(credential) == "milano"
    (delivered,) = queue.lease("milano", 60, 1 << 20)
    assert delivered.path.read_bytes() == b"frame-a"
    assert queue.lease("milano", 60, 1 << 20) == []  # leased
    assert [d.id for d in queue.lease("milano", 60, 1 << 20, fresh=True)] == ["a" * 32]  # the station restarted
    assert queue.reply("a" * 32, "milano", b"reply")
    assert not queue.reply("a" * 32, "milano", b"again")
    assert not delivered.path.exists()  # the task's frame goes once it is answered
    queue.close()

    queue = HubQueue(tmp_path)
    path = queue.reply_path("a" * 32)
    assert path is not None and path.read_bytes() == b"reply" and queue.sender("a" * 32) == "k"
    assert queue.remove("a" * 32, "k", "message.removed")
    assert queue.reply_path("a" * 32) is None and not path.exists()
    credential2 = queue.enrol("milano")  # enrolling again replaces the credential and unbinds the key
    assert queue.station_for(credential) is None and queue.station_for(credential2) == "milano"
    assert queue.signing_key("milano") is None
    queue.close()


def test_the_queue_bounds_and_expires(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    queue.enrol("milano")
    queue.enrol("roma")
    two = Quotas(per_station=2, per_station_bytes=100, per_sender=3)
    assert queue.enqueue("1" * 32, "milano", "k", time.time() + 60, b"f" * 40, two) is None
    assert queue.enqueue("2" * 32, "milano", "k", time.time() - 1, b"f", two) is None
    assert queue.enqueue("3" * 32, "milano", "k", time.time() + 60, b"f", two) == "queue_full"  # count
    assert queue.enqueue("4" * 32, "roma", "k", time.time() + 60, b"f" * 101, two) == "queue_full"  # bytes
    assert queue.enqueue("5" * 32, "roma", "k", time.time() + 60, b"f", two) is None
    assert queue.enqueue("6" * 32, "roma", "k", time.time() + 60, b"f", two) == "sender_quota"
    assert [d.id for d in queue.lease("milano", 0.0, 10)] == ["1" * 32]  # the expired one is not handed out
    time.sleep(0.01)
    assert [d.id for d in queue.lease("milano", 60, 10)] == ["1" * 32]  # a lease of 0 s ran out: again
    assert queue.expire(reply_ttl=3600) == 1
    assert queue.counts() == {"leased": 1, "queued": 1}
    assert len(list((tmp_path / "frames").iterdir())) == 2
    queue.close()


def test_a_delivery_is_bounded_in_bytes_but_takes_at_least_one(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    queue.enrol("milano")
    for k in range(3):
        assert queue.enqueue(str(k) * 32, "milano", "k", time.time() + 60, b"f" * 100, LIMITS) is None
    assert len(queue.lease("milano", 60, 50)) == 1
    assert len(queue.lease("milano", 60, 250)) == 2
    queue.close()


def test_a_station_opens_each_envelope_once_even_after_a_restart(tmp_path: Path) -> None:
    seen = SeenIds(tmp_path / "seen.txt")
    with pytest.raises(StoreError, match="another process"):
        SeenIds(tmp_path / "seen.txt")  # one process serves a station through a hub
    assert seen.claim("a" * 64, time.time() + 60) is None
    assert seen.claim("a" * 64, time.time() + 60) == "replayed"
    assert seen.claim("b" * 64, time.time() - 1) is None
    assert seen.claim("c" * 64, time.time() + 60) is None
    seen.answered("c" * 64, time.time() + 60)
    seen.close()
    with (tmp_path / "seen.txt").open("a") as f:
        f.write("d" * 64 + " 12")  # a line cut short by a crash
    again = SeenIds(tmp_path / "seen.txt")
    assert again.claim("a" * 64, time.time() + 60) == "interrupted"  # opened, never answered, then a restart
    assert again.claim("c" * 64, time.time() + 60) == "replayed"
    assert again.claim("b" * 64, time.time() + 60) is None  # expired entries are forgotten (refused anyway)
    again.close()


def test_split_frames() -> None:
    body = b"".join(len(f).to_bytes(4, "big") + f for f in (b"one", b"", b"three"))
    assert split_frames(body) == [b"one", b"", b"three"]
    with pytest.raises(EnvelopeError):
        split_frames(body[:-1])
