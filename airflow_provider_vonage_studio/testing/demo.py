"""``make demo``: the ``reminder_calls`` example DAG in a real, running Airflow 3 against the emulator.

What it does, step by step (each step prints a progress line):

1. starts the AI Studio emulator in a subprocess on 127.0.0.1, with one scripted outcome
   per recipient of ``reminder_calls`` (answered, busy, timeout, rejected);
2. creates a temporary ``AIRFLOW_HOME`` and its metadata database (``airflow db migrate``;
   SQLite in the home by default, or a fresh PostgreSQL database with ``--database postgres``);
3. starts Airflow 3 on loopback: the API server (which mounts this provider's plugin: the
   callback receiver and the outcome view at ``/vonage-studio``), the scheduler
   (LocalExecutor), the triggerer and the DAG processor, over ``example_dags/``;
4. points the ``vonage_studio_default`` connection at the emulator, with
   ``callback_base_url`` at the plugin inside the API server and a random
   ``callback_secret``, so the emulator's status callbacks travel the production path;
5. unpauses and triggers ``reminder_calls`` through the REST API and follows its tasks:
   ``call_recipients`` dials the list, then defers, and the triggerer waits for the outcomes;
6. prints each recipient's outcome (redacted number, scripted, observed, session id) and the
   URL of the outcome view, then stops every process it started and removes the home.

Exit status 0 only when the run succeeded and every observed outcome is the one the
emulator was scripted to produce. The API key and the callback secret are random per run
and never printed; phone numbers are printed redacted.

Run ``python -m airflow_provider_vonage_studio.testing.demo --help`` for the options
(``--keep`` keeps the home, ``--keep-running`` leaves Airflow up to browse the outcome view).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

__all__ = ["DAG_ID", "SCRIPT", "DemoError", "main"]

DAG_ID = "reminder_calls"
AGENT_ID = "agent-1"
#: What the emulated callee does with each call of ``reminder_calls`` (the numbers as the
#: provider sends them: digits with the country code). Keep in step with the DAG's list.
SCRIPT: dict[str, str] = {
    "447700900123": "answered",
    "12125550100": "busy",
    "972541116037": "timeout",
    "447700900456": "rejected",
}
#: Seconds without a failure report after which a call counts as answered. The emulator
#: reports failures after CALLBACK_DELAY, so 5 s leaves a wide margin on a loaded machine
#: while keeping the run short.
ANSWER_WINDOW = 5.0
CALLBACK_DELAY = 0.5
#: Seconds between the trigger's reads of the call store.
POKE_INTERVAL = 1.0
#: Environment variable carrying this run's id into every process the demo starts, so that
#: the clean-up can find (and the CI test can check for) strays that left their group.
RUN_ID_ENV = "VONAGE_STUDIO_DEMO_RUN_ID"
#: Optional fixed values for the emulator's API key and the callback secret (random per run
#: otherwise); the CI test sets them to check that neither ever shows in the output.
KEY_ENV = "VONAGE_STUDIO_DEMO_API_KEY"
SECRET_ENV = "VONAGE_STUDIO_DEMO_CALLBACK_SECRET"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: Airflow components, in start order; stopped in reverse.
COMPONENTS = ("api-server", "scheduler", "triggerer", "dag-processor")
#: Task instance states after which nothing more happens to the task.
_FINISHED_TI = {"success", "failed", "skipped", "upstream_failed", "removed"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which step and why (no secrets in it)."""


# ----------------------------------------------------------------------------- output


class Console:
    """Progress lines prefixed with the seconds since start, with every secret scrubbed."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._start = time.monotonic()
        self._secrets: list[str] = []

    def add_secret(self, value: str) -> None:
        """Never print ``value`` (replaced by ``***`` in anything passed to this console)."""
        if value:
            self._secrets.append(value)

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``***``."""
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def step(self, message: str) -> None:
        """One progress line: ``[ 12.3s] message``."""
        self.raw(f"[{self.elapsed:6.1f}s] {message}")

    def raw(self, text: str = "") -> None:
        """``text`` as is (scrubbed)."""
        print(self.scrub(text), file=self._stream, flush=True)


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    The socket is closed before the port is used, so another process could take it in
    between; on loopback of a test machine that race is negligible, and a component that
    fails to bind shows up in its log.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Run in each child before exec: its own process group, and SIGTERM when the demo dies.

    The own group lets the demo stop a component with all its workers in one signal; the
    parent-death signal (Linux) stops the components even if the demo itself is killed with
    SIGKILL, so a time-bounded CI job never leaves an Airflow running.
    """
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Component:
    """A process the demo started, in its own process group, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the component's output (unscrubbed: pass through Console)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the component's whole process group (gone already: nothing)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # pid == group id, see _die_with_parent

    @property
    def stopped(self) -> bool:
        """True when no process of the component's group is left (the leader is reaped)."""
        self.proc.poll()
        return not _group_exists(self.proc.pid)


def stop_all(components: Sequence[Component], grace: float) -> list[str]:
    """SIGTERM every component's group at once, SIGKILL what is left after ``grace`` seconds.

    All at once because each component takes its own seconds to drain (the triggerer's
    runner, the API server's worker): one after the other would add them up.
    Returns the names of components that needed SIGKILL.
    """
    for component in components:
        component.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not all(c.stopped for c in components):
        time.sleep(0.2)
    killed = [c.name for c in components if not c.stopped]
    for component in components:
        if component.name in killed:
            component.signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(c.stopped for c in components):
        time.sleep(0.1)
    return killed


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def tagged_processes(run_id: str) -> list[int]:
    """PIDs of live processes (other than this one) whose environment carries ``run_id``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(RUN_ID_ENV) == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


# ----------------------------------------------------------------------------- the demo


@dataclass
class Observed:
    """One recipient's row in the final table."""

    key: str
    destination: str | None
    scripted: str | None
    observed: str | None
    session_id: str | None

    @property
    def ok(self) -> bool:
        return self.scripted is not None and self.observed == self.scripted


@dataclass
class Demo:
    """One run of the demo: everything it started and everything it must clean up."""

    console: Console
    keep: bool = False
    database: str = "sqlite"
    postgres_url: str = DEFAULT_POSTGRES_URL
    startup_timeout: float = 300.0
    run_timeout: float = 300.0
    run_id: str = field(default_factory=lambda: os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vonage-studio-demo-")))
    components: dict[str, Component] = field(default_factory=dict)
    api_key: str = field(
        default_factory=lambda: os.environ.get(KEY_ENV) or "demo-" + secrets.token_urlsafe(18)
    )
    callback_secret: str = field(
        default_factory=lambda: os.environ.get(SECRET_ENV) or secrets.token_urlsafe(24)
    )
    api_port: int = 0
    emulator_url: str = ""
    pg_database: str | None = None
    _http: requests.Session | None = None
    _token: str | None = None

    def __post_init__(self) -> None:
        self.console.add_secret(self.api_key)
        self.console.add_secret(self.callback_secret)
        self.logs = self.home / "demo-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ plumbing

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def http(self) -> requests.Session:
        if self._http is None:
            import requests

            self._http = requests.Session()
            self._http.trust_env = False  # loopback: never through a proxy from the environment
        return self._http

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> Component:
        """Start ``cmd`` as component ``name`` (own process group, output to demo-logs/NAME.log)."""
        log_path = self.logs / f"{name}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                list(cmd),
                env={**env, RUN_ID_ENV: self.run_id},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Only os/ctypes calls in the child before exec: safe with preexec_fn.
                preexec_fn=_die_with_parent,
                cwd=self.home,
            )
        component = Component(name, proc, log_path)
        self.components[name] = component
        return component

    def fail(self, message: str, *, show: Sequence[str] = ()) -> DemoError:
        """A DemoError for ``message``; prints the log tails of components ``show`` first."""
        for name in show:
            component = self.components.get(name)
            if component is not None:
                self.console.raw(f"----- last lines of {name} ({component.log_path.name}) -----")
                self.console.raw(component.tail())
        return DemoError(message)

    def check_alive(self) -> None:
        """:raises DemoError: a component exited (with its log tail printed)."""
        for component in self.components.values():
            if not component.alive:
                raise self.fail(
                    f"{component.name} exited with status {component.proc.returncode}", show=[component.name]
                )

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        """Call ``check`` until it returns something truthy; components must stay alive meanwhile.

        A connection error or a body that is not JSON counts as "not yet" (a server starting
        up, or restarting a worker); a component that died is caught by :meth:`check_alive`.

        :raises DemoError: after ``timeout`` seconds, naming ``what`` and the last error seen.
        """
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            self.check_alive()
            try:
                result = check()
            except (OSError, ValueError) as exc:  # requests' errors are OSErrors
                result, last_error = None, f" (last error: {type(exc).__name__}: {exc})"
            if result:
                return result
            if time.monotonic() > deadline:
                raise self.fail(
                    f"timed out after {timeout:.0f}s waiting for {what}{last_error}",
                    show=list(self.components),
                )
            time.sleep(interval)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request to the Airflow REST API with the demo's bearer token."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return self.http.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs)

    # ------------------------------------------------------------------ steps

    def start_emulator(self) -> None:
        """Start the emulator subprocess with the script; read its URL from its first line."""
        from airflow_provider_vonage_studio.testing.emulator import KEYS_ENV

        cmd = [
            sys.executable,
            "-m",
            "airflow_provider_vonage_studio.testing.emulator",
            "--port",
            "0",
            "--agent",
            AGENT_ID,
            "--calls-per-second",
            "1",
            "--callback-delay",
            str(CALLBACK_DELAY),
        ]
        for to, outcome in SCRIPT.items():
            cmd += ["--script", f"{to}={outcome}"]
        # The key goes through the environment: command lines are visible to everyone in ps.
        component = self.start("emulator", cmd, {**os.environ, KEYS_ENV: self.api_key})

        def url() -> str | None:
            for line in component.log_path.read_text(errors="replace").splitlines():
                if line.startswith("emulator listening on "):
                    return line.rsplit(" ", 1)[1].strip()
            return None

        self.emulator_url = self.wait_until("the emulator to listen", url, timeout=60, interval=0.2)

    def airflow_env(self) -> dict[str, str]:
        """The environment shared by every Airflow component (and the migration)."""
        from airflow_provider_vonage_studio.testing.dagrun import airflow_env

        if self.database == "postgres":
            sql_conn = self.postgres_url.rsplit("/", 1)[0] + f"/{self.pg_database}"
            # Airflow derives its async URL by swapping in asyncpg, which the provider does not
            # install; psycopg 3 (the sync driver we use) speaks asyncio too.
            database = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": sql_conn}
        else:
            sql_conn = f"sqlite:///{self.home}/airflow.db"
            database = {}  # Airflow derives sqlite+aiosqlite itself
        connection = {
            "conn_type": "vonage_studio",
            "host": self.emulator_url,
            "password": self.api_key,
            "extra": {
                "calls_per_second": 1,
                # The plugin in the API server receives the emulator's callbacks.
                "callback_base_url": f"{self.api_url}/vonage-studio",
                "callback_secret": self.callback_secret,
            },
        }
        jwt_secret = secrets.token_urlsafe(32)
        api_secret = secrets.token_urlsafe(32)
        self.console.add_secret(jwt_secret)
        self.console.add_secret(api_secret)
        return airflow_env(
            self.home,
            repo_dags(),
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
                **database,
                # Airflow 3 runs LocalExecutor on SQLite too (``airflow standalone`` does).
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                # Local demo on loopback only: everyone is admin, no password to hand out.
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": api_secret,
                # Tasks reach the API server's execution API here (default would be localhost:8080).
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                # Every component must sign and verify the same JWTs.
                "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
                # Only the run the demo triggers: no scheduled run of reminder_calls on unpause.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(connection),
                "VONAGE_STUDIO_DEMO_AGENT_ID": AGENT_ID,
                "VONAGE_STUDIO_DEMO_ANSWER_WINDOW": str(ANSWER_WINDOW),
                "VONAGE_STUDIO_DEMO_POKE_INTERVAL": str(POKE_INTERVAL),
            },
        )

    def create_postgres_database(self) -> None:
        """Create a fresh, empty metadata database for this run on the PostgreSQL server.

        :raises DemoError: the server cannot be reached or the database not created.
        """
        from sqlalchemy import create_engine, text

        self.pg_database = f"vonage_studio_demo_{os.getpid()}_{self.run_id[:8]}"
        try:
            engine = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.pg_database}"'))
            engine.dispose()
        except Exception as exc:
            self.pg_database = None
            raise DemoError(
                f"--database postgres: could not create a database on {self.postgres_url!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def drop_postgres_database(self) -> None:
        """Drop the run's metadata database (best effort; reported, never raised)."""
        if self.pg_database is None:
            return
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)'))
            engine.dispose()
        except Exception as exc:
            self.console.step(f"could not drop database {self.pg_database}: {type(exc).__name__}: {exc}")

    def migrate(self, env: Mapping[str, str]) -> None:
        """``airflow db migrate`` into the fresh metadata database. :raises DemoError:"""
        from airflow_provider_vonage_studio.testing.dagrun import migrate

        try:
            migrate(env)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from exc

    def start_airflow(self, env: Mapping[str, str]) -> None:
        """Start the API server, scheduler, triggerer and DAG processor."""
        from airflow_provider_vonage_studio.testing.dagrun import airflow_bin

        airflow = airflow_bin()
        for name in COMPONENTS:
            args = [airflow, name]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
            self.start(name, args, env)

    def wait_for_airflow(self) -> None:
        """Until the health endpoint says every component is healthy and the plugin answers."""

        def healthy() -> dict[str, Any] | None:
            try:
                response = self.http.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
            except OSError:
                return None
            if response.status_code != 200:
                return None
            body = response.json()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            statuses = {p: (body.get(p) or {}).get("status") for p in parts if p in body}
            return body if statuses and all(s == "healthy" for s in statuses.values()) else None

        self.wait_until("Airflow's components to report healthy", healthy, timeout=self.startup_timeout)
        response = self.http.get(f"{self.api_url}/vonage-studio/health", timeout=30)
        if response.status_code != 200:
            raise self.fail(
                f"the plugin's receiver at /vonage-studio/health answered {response.status_code}: "
                f"{response.text[:300]}",
                show=["api-server"],
            )
        # SimpleAuthManager with all_admins hands out an admin token without credentials.
        token = self.http.get(f"{self.api_url}/auth/token", timeout=30)
        if token.status_code not in (200, 201):
            raise self.fail(f"GET /auth/token answered {token.status_code}", show=["api-server"])
        self._token = token.json()["access_token"]
        self.console.add_secret(self._token)

    def wait_for_dag(self) -> None:
        """Until the DAG processor has parsed reminder_calls. :raises DemoError: on an import error."""

        def parsed() -> bool:
            errors = self.api("GET", "/api/v2/importErrors").json().get("import_errors", [])
            ours = [e for e in errors if e.get("filename", "").endswith(f"{DAG_ID}.py")]
            if ours:
                raise DemoError(f"{DAG_ID}.py failed to import:\n{ours[0].get('stack_trace', '')}")
            return self.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200

        self.wait_until(f"the DAG processor to parse {DAG_ID}", parsed, timeout=self.startup_timeout)

    def trigger(self) -> str:
        """Unpause the DAG and trigger one run; return its run id."""
        response = self.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        if response.status_code != 200:
            raise self.fail(f"unpausing {DAG_ID} answered {response.status_code}: {response.text[:300]}")
        now = datetime.now(timezone.utc)
        response = self.api(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={
                "dag_run_id": f"demo__{now:%Y%m%dT%H%M%S}",
                # A logical date, so that the DAG's {{ ds }} templates render.
                "logical_date": now.isoformat(),
                "note": "triggered by make demo",
            },
        )
        if response.status_code not in (200, 201):
            raise self.fail(f"triggering {DAG_ID} answered {response.status_code}: {response.text[:300]}")
        return str(response.json()["dag_run_id"])

    def follow(self, run_id: str) -> str:
        """Print each task's state changes until the run finishes; return the run's state."""
        seen: dict[str, str] = {}
        deferred: set[str] = set()
        explain = {
            ("call_recipients", "running"): "dialing the recipients (paced at 1 call/s)",
            ("call_recipients", "deferred"): "calls placed; the triggerer waits for their outcomes",
            ("call_recipients", "scheduled again"): "the trigger fired: every call's outcome is known",
            ("call_recipients", "running again"): "resumed: reporting from the call ledger (no redial)",
            ("collect_unanswered", "success"): "listed who did not pick up",
        }

        def finished() -> str | None:
            tis = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
            for ti in sorted(tis.get("task_instances", []), key=lambda t: t.get("start_date") or "~"):
                task_id, state = ti["task_id"], ti.get("state")
                if state is None or seen.get(task_id) == state:
                    continue  # not scheduled yet, or nothing new
                seen[task_id] = state
                if state == "deferred":
                    deferred.add(task_id)
                again = task_id in deferred and state != "deferred" and state not in _FINISHED_TI
                phase = f"{state} again" if again else state
                note = explain.get((task_id, phase))
                self.console.step(f"  task {task_id}: {state}" + (f" -- {note}" if note else ""))
            run = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
            state = run.get("state")
            return state if state in ("success", "failed") else None

        return str(self.wait_until(f"run {run_id} to finish", finished, timeout=self.run_timeout))

    def xcom(self, run_id: str, task_id: str) -> Any:
        """The return value of ``task_id`` in ``run_id`` (None when there is none)."""
        response = self.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        if response.status_code != 200:
            return None
        value = response.json().get("value")
        if isinstance(value, str):  # the raw column may come back as JSON text
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        return value

    def emulator_state(self, what: str) -> list[dict[str, Any]]:
        """``GET /_emulator/<what>`` (calls, callbacks)."""
        body = self.http.get(f"{self.emulator_url}/_emulator/{what}", timeout=10).json()
        return list(body if isinstance(body, list) else body.get(what, []))

    def results(self, run_id: str) -> list[Observed]:
        """One row per scripted recipient: what was scripted and what the run observed.

        The emulator's record of each call (full number, session id) links the DAG's results
        (redacted number, session id, status) to the script.
        """
        calls = self.emulator_state("calls")
        to_by_session = {c.get("session_id"): c.get("to") for c in calls}
        rows: list[Observed] = []
        seen: set[str] = set()
        for result in self.xcom(run_id, "call_recipients") or []:
            destination = to_by_session.get(result.get("session_id"))
            if destination:
                seen.add(destination)
            rows.append(
                Observed(
                    key=str(result.get("key")),
                    destination=destination,
                    scripted=SCRIPT.get(destination or ""),
                    observed=result.get("status") or result.get("result"),
                    session_id=result.get("session_id"),
                )
            )
        # A scripted number the run never dialed is a failure too.
        for destination, outcome in SCRIPT.items():
            if destination not in seen:
                rows.append(Observed("-", destination, outcome, "not dialed", None))
        return rows

    def outcome_view(self, run_id: str) -> tuple[str, dict[str, int] | None]:
        """The outcome view's one-click URL for the run, and its counts for the run.

        The URL goes through the login of SimpleAuthManager (all admins), which sets the UI's
        ``_token`` cookie and redirects to the view. The demo follows that very link, as a
        browser would, and reads the view's JSON twin with the cookie it got.
        """
        from urllib.parse import quote, urlencode

        view = f"/vonage-studio/outcomes?{urlencode({'dag_id': DAG_ID, 'run_id': run_id})}"
        link = f"{self.api_url}/auth/token/login?next={quote(view, safe='')}"
        login = self.http.get(link, allow_redirects=False, timeout=30)
        cookie = login.cookies.get("_token")
        if login.status_code not in (302, 303, 307) or not cookie:
            self.console.step(f"the outcome view's login link answered {login.status_code}")
            return link, None
        self.console.add_secret(cookie)
        page = self.http.get(self.api_url + view, cookies={"_token": cookie}, timeout=30)
        data = self.http.get(
            self.api_url + view.replace("/outcomes?", "/outcomes.json?"),
            cookies={"_token": cookie},
            timeout=30,
        )
        if page.status_code != 200 or data.status_code != 200:
            self.console.step(f"the outcome view answered {page.status_code} (JSON {data.status_code})")
            return link, None
        runs = data.json().get("runs", [])
        return link, (dict(runs[0].get("counts", {})) if runs else {})

    def print_table(self, rows: Sequence[Observed]) -> None:
        from airflow_provider_vonage_studio.destinations import redact

        self.console.raw()
        header = f"{'recipient':<11} {'number':<14} {'scripted':<9} {'observed':<11} {'session id':<36}  ok"
        self.console.raw(header)
        self.console.raw("-" * len(header))
        for row in rows:
            number = redact(row.destination) if row.destination else "?"
            self.console.raw(
                f"{row.key:<11} {number:<14} {row.scripted or '?':<9} {row.observed or '-':<11} "
                f"{row.session_id or '-':<36}  {'yes' if row.ok else 'NO'}"
            )
        self.console.raw()

    def print_received(self, calls: Sequence[dict[str, Any]]) -> None:
        """What reached the emulator, one line per request it accepted: number (redacted),
        agent, session id and the session parameters the agent was given."""
        from airflow_provider_vonage_studio.destinations import redact

        self.console.raw(f"calls received by the emulator: {len(calls)}")
        for call in calls:
            params = ", ".join(
                f"{p.get('name')}={p.get('value')}" for p in call.get("session_parameters") or []
            )
            number, agent, session = redact(str(call.get("to"))), call.get("agent_id"), call.get("session_id")
            self.console.raw(f"  {number:<14} {agent!s:<9} {session!s:<36}  {params}")
        self.console.raw()

    def shutdown(self) -> None:
        """Stop every component (Airflow first, the emulator last), then any tagged stray."""
        names = [n for n in reversed(COMPONENTS) if n in self.components]
        names += [n for n in self.components if n not in names]
        if names:
            self.console.step(f"stopping {', '.join(names)}")
        # The API server and scheduler drain their workers on SIGTERM: give them time.
        killed = stop_all([self.components[n] for n in names], grace=30.0)
        if killed:
            self.console.step(f"{', '.join(killed)} did not stop within 30s: killed")
        strays = tagged_processes(self.run_id)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            self.console.step(f"killed {len(strays)} stray process(es) left behind: {strays}")
        if self._http is not None:
            self._http.close()
        self.drop_postgres_database()

    def cleanup_home(self) -> None:
        if self.keep:
            self.console.step(f"kept {self.home} (logs in {self.logs})")
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------ the whole run

    def run(self, *, keep_running: bool = False) -> int:
        """The demo from start to finish; returns the exit status (0: every outcome as scripted)."""
        from airflow_provider_vonage_studio.destinations import redact

        say = self.console.step
        say(f"Vonage AI Studio demo: the {DAG_ID} DAG in a real Airflow 3, against the AI Studio emulator")
        say(f"temporary AIRFLOW_HOME: {self.home}")

        self.start_emulator()
        script = ", ".join(f"{redact(to)} {outcome}" for to, outcome in SCRIPT.items())
        say(f"emulator listening on {self.emulator_url} (agent {AGENT_ID}, 1 call/s); scripted: {script}")

        self.api_port = free_port()
        if self.database == "postgres":
            self.create_postgres_database()
            say(f"metadata database: PostgreSQL database {self.pg_database} (dropped at the end)")
        else:
            say("metadata database: SQLite in AIRFLOW_HOME")
        env = self.airflow_env()
        say(
            "call store shared by the tasks, the triggerer and the plugin: "
            + env["AIRFLOW__VONAGE_STUDIO__STORE_URL"]
        )
        say("creating the metadata database (airflow db migrate) ...")
        self.migrate(env)

        say(f"starting Airflow on {self.api_url}: {', '.join(COMPONENTS)} (LocalExecutor)")
        self.start_airflow(env)
        self.wait_for_airflow()
        say(
            "Airflow is up: scheduler, triggerer and DAG processor healthy; the plugin's callback "
            f"receiver answers at {self.api_url}/vonage-studio"
        )
        self.wait_for_dag()
        say(f"DAG {DAG_ID} parsed from {repo_dags()}")

        run_id = self.trigger()
        say(f"unpaused {DAG_ID} and triggered run {run_id}; answer window {ANSWER_WINDOW:g}s")
        try:
            state = self.follow(run_id)
        except DemoError:
            self._show_task_logs()  # what the tasks said is the likeliest explanation
            raise
        say(f"run {run_id} finished: {state}")

        rows = self.results(run_id)
        self.print_table(rows)
        self.print_received(self.emulator_state("calls"))
        callbacks = self.emulator_state("callbacks")
        accepted = sum(1 for c in callbacks if c.get("status") == 200)
        say(
            f"status callbacks posted by the emulator to the plugin: {len(callbacks)}, "
            f"accepted (HTTP 200): {accepted}"
        )
        unanswered = self.xcom(run_id, "collect_unanswered")
        if unanswered is not None:
            say(f"collect_unanswered: {json.dumps(unanswered)}")
        link, counts = self.outcome_view(run_id)
        if counts is not None:
            say(f"the outcome view shows for this run: {json.dumps(counts)}")
        say(f"outcome view (while Airflow runs; see --keep-running): {link}")

        ok = state == "success" and bool(rows) and all(row.ok for row in rows)
        if not ok:
            self._show_task_logs()
        if keep_running and ok:
            say(f"Airflow keeps running at {self.api_url}; press Ctrl-C to stop it")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    self.check_alive()
                    time.sleep(1)
        return 0 if ok else 1

    def _show_task_logs(self) -> None:
        """Print (scrubbed) task log tails of this DAG, to tell why a run failed."""
        for path in sorted((self.home / "logs").rglob("*")):
            if path.is_file() and f"dag_id={DAG_ID}" in str(path):
                self.console.raw(f"----- {path.relative_to(self.home)} -----")
                lines = path.read_text(errors="replace").splitlines()
                self.console.raw("\n".join(lines[-30:]))


def repo_dags() -> Path:
    """The repository's ``example_dags`` folder. :raises DemoError: when not found."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "example_dags" / f"{DAG_ID}.py").exists():
            return parent / "example_dags"
    raise DemoError("example_dags/ not found next to the package: run `make demo` from the repository")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into KeyboardInterrupt, so a stopped demo still cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    # Ctrl-C must reach the clean-up even when the demo was started with SIGINT ignored
    # (a background job of a non-interactive shell inherits that).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0 only if every outcome matched)."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_vonage_studio.testing.demo",
        description="Run the reminder_calls example DAG in a real Airflow 3 against the AI Studio emulator.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary AIRFLOW_HOME (logs, databases)"
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="leave Airflow running after the run until Ctrl-C"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default=os.environ.get("VONAGE_STUDIO_DEMO_DATABASE", "sqlite"),
        help="Airflow's metadata database: SQLite in the temporary home (default), or a fresh database "
        "created on the PostgreSQL server of --postgres-url and dropped afterwards",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="an existing database of the PostgreSQL server, to connect to for CREATE DATABASE "
        f"(default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for Airflow to come up")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds for the DAG run to finish")
    args = parser.parse_args(argv)

    console = Console()
    demo = Demo(
        console,
        keep=args.keep,
        database=args.database,
        postgres_url=args.postgres_url,
        startup_timeout=args.startup_timeout,
        run_timeout=args.run_timeout,
    )
    status = 1
    with _terminate_as_interrupt():
        try:
            status = demo.run(keep_running=args.keep_running)
        except DemoError as exc:
            console.step(f"FAILED: {console.scrub(str(exc))}")
        except KeyboardInterrupt:
            console.step("interrupted")
            status = 130
        except Exception as exc:  # a bug or an unforeseen answer: still clean up, still no secrets
            import traceback

            console.raw(traceback.format_exc())
            console.step(f"FAILED: unexpected {type(exc).__name__}: {exc}")
        finally:
            # Ignore further Ctrl-C / SIGTERM while cleaning up: half a clean-up leaves orphans.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            demo.shutdown()
            demo.cleanup_home()
    if status == 0:
        console.step(
            f"demo OK: every outcome as the emulator scripted ({len(SCRIPT)} calls); all processes stopped"
        )
    elif status != 130:
        console.step("demo FAILED (see above)")
    return status


if __name__ == "__main__":
    sys.exit(main())
