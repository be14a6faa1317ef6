"""What a running station server shares between its routes: the store, the audit log, the task manager,
the signing key, the rate limiter and ``station.toml`` as it is now (reloaded when the file changes).

:func:`better.station_api.app.create_app` opens one :class:`ServerState` and puts it on ``app.state.station``;
the routers reach it through :func:`better.station_api.routes.deps.server_state`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from better.engine.errors import BetterError
from better.genomics.store import Store
from better.station_api import __version__
from better.station_api.audit import AuditLog
from better.station_api.config import CONFIG_FILE, Policy, StationConfig, read_config, write_config
from better.station_api.signing import load_or_create_key, public_key_text
from better.station_api.tasks import TaskManager

log = logging.getLogger("better.station")


class RateLimiter:
    """At most ``per_minute`` task submissions per user in any 60 seconds.

    Parameters
    ----------
    per_minute : int
        Submissions a user may make in any 60 seconds (``[policy] rate_limit_per_minute``).
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, user: str) -> None:
        """Count one submission by ``user``, or refuse it.

        Parameters
        ----------
        user : str
            The submitting token's user.

        Raises
        ------
        HTTPException
            429, with ``Retry-After``, when ``user`` is over the limit.
        """
        t = time.monotonic()
        with self._lock:
            q = self._seen[user]
            while q and t - q[0] > 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                wait = int(60.0 - (t - q[0])) + 1
                raise HTTPException(
                    429,
                    f"rate limit: {self.per_minute} tasks a minute per user at this station; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            q.append(t)


class ServerState:
    """The station in ``station_dir`` opened for serving.

    Opening removes what an interrupted ingest left behind, checks the audit log's hash chain (a damaged
    log is reported, and the station keeps serving and logging) and loads or creates the signing key.

    Parameters
    ----------
    station_dir : Path
        The station directory (a store with ``station.toml``).

    Attributes
    ----------
    name : str
        The station's name, as ``station.toml`` gave it at start.
    store : Store
        The station's store.
    audit : AuditLog
        The hash-chained audit log.
    manager : TaskManager
        Queues, runs and keeps the tasks.
    limiter : RateLimiter
        Task submissions per user and minute.
    public_key : str
        The signing key's public half (``ed25519:...``).
    """

    def __init__(self, station_dir: Path) -> None:
        self.store = Store.open(station_dir)
        config = read_config(station_dir)
        for leftover in self.store.clean_up():  # what an ingest killed midway left behind
            log.info("removed %s, left by an ingest that did not finish", leftover)
        self.audit = AuditLog(self.store)
        self.audit.create_view()
        checked = self.audit.verify()
        if not checked.ok:  # the station keeps serving (and logging, chained from the head) and says so
            self.audit.damaged = checked.problem
            log.warning("audit log needs attention: %s (better station audit --verify)", checked.problem)
        self._dir = Path(station_dir)
        self._config_path = self._dir / CONFIG_FILE
        self._config = config
        self._mtime = self._config_path.stat().st_mtime_ns
        key = load_or_create_key(self._dir)
        self.public_key = public_key_text(key)
        self.manager = TaskManager(self.store, config, self.audit, key)
        self.limiter = RateLimiter(config.policy.rate_limit_per_minute)
        self.name = config.name

    def config(self) -> StationConfig:
        """``station.toml`` as it is now: tokens added or a policy edited take effect without a restart.

        Returns
        -------
        StationConfig
            The file re-read if it changed since last read; the last good one if it no longer validates
            (a half-edited file) or cannot be read.
        """
        try:
            mtime = self._config_path.stat().st_mtime_ns
        except OSError:
            return self._config
        if mtime != self._mtime:
            try:
                fresh = read_config(self._dir)
            except BetterError as exc:  # a half-edited file: keep serving with the last good one
                log.warning("station.toml not reloaded: %s", exc)
            else:
                self._apply(fresh)
            self._mtime = mtime
        return self._config

    def set_policy(self, policy: Policy, user: str) -> None:
        """Replace the policy: write it to ``station.toml``, put it in force at once and log it.

        Parameters
        ----------
        policy : Policy
            The new policy.
        user : str
            Who set it (the audit log's actor).
        """
        new = self.config().model_copy(update={"policy": policy})
        write_config(self._dir, new)
        self._apply(new)
        self._mtime = self._config_path.stat().st_mtime_ns
        self.audit.append(user, "policy.set", policy.model_dump())

    def start(self) -> None:
        """Log the server's start, with its software version and policy."""
        detail = {"software": __version__, "policy": self._config.policy.model_dump()}
        self.audit.append("station", "server.start", detail)

    def stop(self) -> None:
        """Stop the task manager and log the server's stop."""
        self.manager.close()
        self.audit.append("station", "server.stop", {})

    def _apply(self, new: StationConfig) -> None:
        self._config = new
        self.manager.config = new
        self.limiter.per_minute = new.policy.rate_limit_per_minute


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work (catalog access) off the event loop.

    Parameters
    ----------
    fn : Callable
        The blocking function.
    *args : Any
        Its arguments.

    Returns
    -------
    Any
        What ``fn`` returns.
    """
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))
