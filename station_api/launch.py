"""Start station servers as child processes on loopback ports (tests, benchmarks, ``better demo``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from better.engine.errors import BetterError


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def station_process(
    station: Path, port: int | None = None, threads: int | None = None, start_timeout: float = 120.0
) -> Iterator[str]:
    """Run ``better station serve`` for ``station`` on a loopback port; yield its URL; stop it on exit.

    The server's output goes to ``serve.log`` in the station directory.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from better.cli import main; main()", "station", "serve"]
    cmd += ["--station", str(station), "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    with open(station / "serve.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    tail = (station / "serve.log").read_text(errors="replace")[-2000:]
                    raise BetterError(f"station server for {station} exited at start:\n{tail}")
                try:
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BetterError(f"station server for {station} did not answer within {start_timeout:.0f} s")
                time.sleep(0.1)
            yield url
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
