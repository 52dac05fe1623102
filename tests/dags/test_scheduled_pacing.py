"""Pacing and exactly-once under real schedulers: LocalExecutor and CeleryExecutor, strict emulator.

A real ``airflow scheduler`` (with its API server and DAG processor; Airflow's metadata in a
fresh PostgreSQL database, the call store in a schema of it) runs mapped ``MakeCallOperator``s
beside a ``MakeCallsOperator``, all dialing one agent that the emulator holds strictly to its
limit (no tolerance). Asserted, never timed: the run succeeds, the API answered no 429 at all,
every number was called exactly once, task instances really ran at the same time, and no
N + 1 accepted calls fell in one second. The figures (achieved/allowed, baseline) are the
benchmark's: ``benchmarks/pacing_scheduled.py``.
"""

from __future__ import annotations

import importlib.util
import socket

import pytest

from airflow_provider_vonage_studio.testing.scheduled import DEFAULT_REDIS_URL, RunResult, ScheduledPacing
from tests.store_fixtures import require_postgres

pytestmark = pytest.mark.airflow_dags

RATE = 3


def _check(result: RunResult) -> None:
    assert result.state == "success"
    assert result.ours.refused == 0, result.lines()  # not a single 429
    assert result.ours.duplicates == 0
    assert {n: result.called[n] for n in result.numbers} == dict.fromkeys(result.numbers, 1), result.lines()
    assert sum(result.called.values()) == len(result.numbers)  # and nothing else was called
    assert result.max_overlap >= 3, result.lines()  # dialers ran side by side, competing for slots
    assert result.ours.min_window >= 1.0, result.lines()  # the emulator's own rule, seen from outside


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.timeout(420)
def test_local_executor_parallel_dialers_get_no_429_and_call_everyone_once() -> None:
    with ScheduledPacing(
        executor="local",
        rates=(RATE,),
        mapped=12,
        batches={RATE: (12,)},
        parallelism=6,
        naive=False,
        postgres_url=require_postgres(),
        log=lambda line: None,
    ) as airflow:
        result = airflow.run(RATE)
    _check(result)


@pytest.mark.timeout(420)
def test_celery_executor_two_workers_get_no_429_and_call_everyone_once() -> None:
    if importlib.util.find_spec("airflow.providers.celery") is None:
        pytest.skip("apache-airflow-providers-celery is not installed (the dev extra installs it)")
    if not _redis_answers():
        pytest.skip(f"no Redis answers at {DEFAULT_REDIS_URL} (the Celery broker)")
    with ScheduledPacing(
        executor="celery",
        rates=(RATE,),
        mapped=12,
        batches={RATE: (12,)},
        parallelism=6,
        celery_workers=2,
        celery_concurrency=2,
        naive=False,
        postgres_url=require_postgres(),
        log=lambda line: None,
    ) as airflow:
        result = airflow.run(RATE)
    _check(result)
