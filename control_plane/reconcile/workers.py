"""What the reconcile managers share to do their work: a bounded pool of workers, and Triton admin clients
with one HTTP session per thread."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import requests

from model_repository.triton_admin import TritonAdmin


class Workers:
    """A bounded thread pool. Work for different servers runs concurrently; each manager keeps one
    server's work in order itself (so two loads of the same pack on one server never race)."""

    def __init__(self, count: int, name: str) -> None:
        self.pool = ThreadPoolExecutor(count, thread_name_prefix=name)

    def each(self, function: Callable, items: Iterable) -> list:
        """Run function over items on the pool; results in order; the first error is raised."""
        return list(self.pool.map(function, list(items)))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class AdminClients:
    """Triton admin clients (model_repository.triton_admin) for any server, with the fleet's admin key.

    requests.Session is not documented as thread-safe, so each thread gets its own session; `http` gives
    every client one session instead (tests hand in a recording stand-in)."""

    def __init__(self, admin_key: str | None, http: requests.Session | None = None) -> None:
        self.admin_key, self._http = admin_key, http
        self._local = threading.local()
        self._made: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        if self._http is not None:
            return self._http
        session = getattr(self._local, "http", None)
        if session is None:
            session = self._local.http = requests.Session()
            with self._lock:
                self._made.append(session)
        return session

    def close(self) -> None:
        """Close the sessions made so far (an open keep-alive connection delays a Triton server's exit)."""
        with self._lock:
            made, self._made = self._made, []
        for session in made:
            session.close()

    def at(self, http_url: str, metrics_url: str | None = None) -> TritonAdmin:
        return TritonAdmin(http_url, self.admin_key, metrics_url, self.session())
