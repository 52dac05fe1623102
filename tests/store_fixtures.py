"""Pytest fixtures giving each test a clean call store, on SQLite and on PostgreSQL.

Load them from a conftest with ``pytest_plugins = ["tests.store_fixtures"]``.

* ``store_url`` is parametrised: ``sqlite`` (a file in ``tmp_path``) always, and
  ``postgres`` on the server :func:`postgres_base_url` finds: ``VONAGE_STUDIO_TEST_POSTGRES_URL``
  when set, else the machine's PostgreSQL at ``127.0.0.1:5432`` (db ``test``, user
  ``postgres``) when it answers. When neither, the PostgreSQL cases skip and the run ends
  with one line saying how to enable them. Each PostgreSQL test gets a schema of its own
  (``search_path`` is set through the URL), dropped afterwards, so tests never see each
  other's rows, even when several runs share the server.
* ``store`` is a :class:`CallStore` on ``store_url``, disposed after the test.

``reserve_slots_in_processes`` runs ``reserve_slot`` from several spawned processes at once;
it lives here (an importable module) because spawned children must import the function
they run.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.store import CallStore

POSTGRES_URL_ENV = "VONAGE_STUDIO_TEST_POSTGRES_URL"
#: Tried when ``VONAGE_STUDIO_TEST_POSTGRES_URL`` is not set: the machine's own server.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_SKIP_REASON = "no PostgreSQL answers (see the summary line at the end of the run)"

_postgres_skips = 0


@functools.cache
def postgres_base_url() -> str | None:
    """The PostgreSQL server the ``postgres`` cases use, or ``None`` when there is none.

    ``VONAGE_STUDIO_TEST_POSTGRES_URL`` wins and is not probed: whoever set it asked for
    PostgreSQL, so a server that does not answer makes those tests fail, not skip. Otherwise
    :data:`DEFAULT_POSTGRES_URL` is tried once per run (3 s connect timeout).
    """
    explicit = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if explicit:
        return explicit
    engine = sa.create_engine(
        DEFAULT_POSTGRES_URL, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect():
            pass
    except Exception:  # no server, no such database, no driver: all mean "not here"
        return None
    finally:
        engine.dispose()
    return DEFAULT_POSTGRES_URL


def require_postgres() -> str:
    """The PostgreSQL base URL for a ``postgres`` test case; skips the test when there is none."""
    global _postgres_skips
    base = postgres_base_url()
    if base is None:
        _postgres_skips += 1
        pytest.skip(POSTGRES_SKIP_REASON)
    return base


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line, not one per test, when the PostgreSQL cases could not run."""
    if _postgres_skips:
        terminalreporter.write_line(
            f"{_postgres_skips} PostgreSQL test case(s) skipped: nothing answered at "
            f"{sa.engine.make_url(DEFAULT_POSTGRES_URL).render_as_string()}. Start PostgreSQL there "
            f"(trust auth, database 'test') or set {POSTGRES_URL_ENV}=postgresql+psycopg://USER@HOST:PORT/DB.",
            yellow=True,
            bold=True,
        )


@contextmanager
def postgres_schema_url(base_url: str) -> Iterator[str]:
    """A URL like ``base_url`` whose connections use a new, empty schema; dropped on exit."""
    schema = f"vs_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection left idle in a transaction would block the drop for ever:
            # fail loudly instead.
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """URL of an empty call store; the ``postgres`` case needs a server (:func:`require_postgres`)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vonage_studio.db'}"
        yield url
        CallStore._clear_default_cache(url)
        return
    with postgres_schema_url(require_postgres()) as url:
        yield url
        # CallStore.default() may have pooled connections into the schema about to go.
        CallStore._clear_default_cache(url)


@pytest.fixture
def store(store_url: str) -> Iterator[CallStore]:
    """A :class:`CallStore` on a clean database (see ``store_url``)."""
    call_store = CallStore(store_url)
    yield call_store
    call_store.dispose()


def _reserve_worker(
    url: str, key: str, count: int, interval: float, now: float | None, barrier: Any, results: Any
) -> None:
    store = CallStore(url)
    try:
        store.get_call("warm-up")  # open the pool and check the schema before the race starts
        barrier.wait(timeout=60)
        results.put([store.reserve_slot(key, interval, now=now) for _ in range(count)])
    finally:
        store.dispose()


def reserve_slots_in_processes(
    url: str, *, key: str, processes: int, per_process: int, interval: float, now: float | None = None
) -> list[float]:
    """Reserve ``processes * per_process`` slots from ``processes`` spawned processes racing.

    All processes open their store first and start together (a barrier). Returns every
    slot obtained; raises ``AssertionError`` if a process fails or hangs.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_reserve_worker, args=(url, key, per_process, interval, now, barrier, results), daemon=True
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    slots: list[float] = []
    deadline = time.monotonic() + 120
    try:
        received = 0
        while received < processes:
            try:
                slots.extend(results.get(timeout=0.5))
                received += 1
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                assert not failed, f"reserve_slot worker(s) failed with exit codes {failed}"
                assert time.monotonic() < deadline, "reserve_slot workers did not finish within 120 s"
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers), [w.exitcode for w in workers]
    return slots
