"""Start station servers as child processes on loopback ports (tests, benchmarks, ``better demo``)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from better.engine.errors import BetterError


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TLSFiles:
    """A server's certificate chain and private key (PEM), and the CA bundle that verifies the chain."""

    cert: Path
    key: Path
    ca: Path

    def options(self) -> list[str]:
        """The ``serve`` command's options for these files."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def _healthy(url: str, tls: TLSFiles | None) -> bool:
    """Whether the server at ``url`` answers ``/health`` (over HTTPS verified by ``tls.ca`` with ``tls``)."""
    verify = ssl.create_default_context(cafile=str(tls.ca)) if tls else True
    try:
        return httpx.get(f"{url}/health", timeout=1.0, verify=verify).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def station_process(
    station: Path,
    port: int | None = None,
    threads: int | None = None,
    start_timeout: float = 120.0,
    hub: str | None = None,
    credential: str | None = None,
    hub_ca: Path | None = None,
    tls: TLSFiles | None = None,
) -> Iterator[str]:
    """Run ``better station serve`` for ``station`` on a loopback port; yield its URL; stop it on exit.

    With ``hub`` (and the station's hub ``credential``), the station serves through that hub instead: it
    opens no port, and the URL yielded is ``hub://NAME``; it counts as started once it has reached the hub
    (whose certificate ``hub_ca`` signed, if given). With ``tls``, a directly served station serves HTTPS.
    The server's output goes to ``serve.log`` in the station directory.
    """
    cmd = [sys.executable, "-c", "from better.cli import main; main()", "station", "serve", "--station", str(station)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    log_path = station / "serve.log"
    if hub is not None:
        cmd += ["--hub", hub, "--hub-credential-env", "BETTER_HUB_CREDENTIAL"]
        env["BETTER_HUB_CREDENTIAL"] = credential or ""
        if hub_ca is not None:
            cmd += ["--hub-ca", str(hub_ca)]
        offset = log_path.stat().st_size if log_path.exists() else 0
        from better.station_api.config import read_config

        url = f"hub://{read_config(station).name}"

        def ready() -> bool:
            with open(log_path, "rb") as f:
                f.seek(offset)
                return b"connected to hub" in f.read()

    else:
        port = port or free_port()
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        cmd += ["--port", str(port), *(tls.options() if tls else [])]

        def ready() -> bool:
            return _healthy(url, tls)

    with child_process(cmd, log_path, ready, f"station server for {station}", start_timeout, env):
        yield url


@contextmanager
def hub_process(
    hub: Path, port: int | None = None, start_timeout: float = 60.0, tls: TLSFiles | None = None
) -> Iterator[str]:
    """Run ``better hub serve`` for ``hub`` on a loopback port; yield its URL; stop it on exit (log: ``serve.log``).

    With ``tls``, the hub serves HTTPS.
    """
    port = port or free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from better.cli import main; main()", "hub", "serve", "--hub", str(hub)]
    cmd += ["--port", str(port), *(tls.options() if tls else [])]

    def ready() -> bool:
        return _healthy(url, tls)

    with child_process(cmd, hub / "serve.log", ready, f"hub {hub}", start_timeout, dict(os.environ)):
        yield url


@contextmanager
def child_process(
    cmd: list[str], log_path: Path, ready: Callable[[], bool], what: str, start_timeout: float, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (output to ``log_path``) until ``ready()``; stop it on exit (SIGTERM, then SIGKILL)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + start_timeout
            while not ready():
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise BetterError(f"{what} exited at start:\n{tail}")
                if time.monotonic() > deadline:
                    raise BetterError(f"{what} did not start within {start_timeout:.0f} s")
                time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def station_processes(stations: list[Path], threads: int | None = None) -> Iterator[list[str]]:
    """Several stations at once (started side by side, not one after the other); yields their URLs."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    with ExitStack() as stack, ThreadPoolExecutor(max_workers=max(1, len(stations))) as pool:
        contexts = [station_process(s, threads=threads) for s in stations]
        urls = list(pool.map(stack.enter_context, contexts))
        yield urls
