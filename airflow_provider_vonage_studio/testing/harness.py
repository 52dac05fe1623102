"""A throw-away Airflow 3 on loopback: its home, its processes, and the REST calls that drive it.

:class:`AirflowProcesses` starts Airflow's components (and any other process, such as the
emulator) in process groups of their own with their output in log files, waits for them to
come up, talks to the REST API with a bearer token, and stops everything again, strays
included. ``make demo`` (:mod:`~airflow_provider_vonage_studio.testing.demo`) and the pacing
runs under a real scheduler (:mod:`~airflow_provider_vonage_studio.testing.scheduled`) are
built on it.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

__all__ = [
    "RUN_ID_ENV",
    "AirflowProcesses",
    "Component",
    "Console",
    "DemoError",
    "free_port",
    "stop_all",
    "tagged_processes",
]

#: Environment variable carrying this run's id into every process the demo starts, so that
#: the clean-up can find (and the CI test can check for) strays that left their group.
RUN_ID_ENV = "VONAGE_STUDIO_DEMO_RUN_ID"
#: Airflow components, in start order; stopped in reverse.
COMPONENTS = ("api-server", "scheduler", "triggerer", "dag-processor")


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


# ----------------------------------------------------------------------------- Airflow


@dataclass
class AirflowProcesses:
    """One Airflow on loopback: everything it started and everything it must clean up.

    :param log_dir: the folder of ``home`` that receives each component's output.
    """

    console: Console
    keep: bool = False
    database: str = "sqlite"
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    startup_timeout: float = 300.0
    run_id: str = field(default_factory=lambda: os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vonage-studio-demo-")))
    log_dir: str = "demo-logs"
    components: dict[str, Component] = field(default_factory=dict)
    api_port: int = 0
    pg_database: str | None = None
    _http: requests.Session | None = None
    _token: str | None = None

    def __post_init__(self) -> None:
        self.logs = self.home / self.log_dir
        self.logs.mkdir(parents=True, exist_ok=True)

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

    def api_server_settings(self) -> dict[str, str]:
        """The settings every component needs to reach the API server on loopback and trust its JWTs.

        Fresh random JWT and API secrets per call, registered with the console (never printed).
        """
        jwt_secret = secrets.token_urlsafe(32)
        api_secret = secrets.token_urlsafe(32)
        self.console.add_secret(jwt_secret)
        self.console.add_secret(api_secret)
        return {
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            # Local runs on loopback only: everyone is admin, no password to hand out.
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
            # Only the runs that are triggered: no scheduled run of a DAG on unpause.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }

    def start_airflow(self, env: Mapping[str, str], names: Sequence[str] = COMPONENTS) -> None:
        """Start Airflow's components ``names`` (the API server on 127.0.0.1:``api_port``)."""
        from airflow_provider_vonage_studio.testing.dagrun import airflow_bin

        airflow = airflow_bin()
        for name in names:
            args = [airflow, name]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
            self.start(name, args, env)

    def fetch_token(self) -> None:
        """Take an admin token for the REST API (SimpleAuthManager with all admins, no credentials).

        :raises DemoError: the API server refused.
        """
        token = self.http.get(f"{self.api_url}/auth/token", timeout=30)
        if token.status_code not in (200, 201):
            raise self.fail(f"GET /auth/token answered {token.status_code}", show=["api-server"])
        self._token = token.json()["access_token"]
        self.console.add_secret(self._token)

    def trigger_run(self, dag_id: str, body: Mapping[str, Any]) -> None:
        """Unpause ``dag_id`` and trigger one run of it (``body`` of ``POST .../dagRuns``).

        :raises DemoError: the API answered anything but success (status and start of body).
        """
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if response.status_code != 200:
            raise self.fail(f"unpausing {dag_id} answered {response.status_code}: {response.text[:300]}")
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=dict(body))
        if response.status_code not in (200, 201):
            raise self.fail(f"triggering {dag_id} answered {response.status_code}: {response.text[:300]}")

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """``success`` or ``failed`` once run ``run_id`` of ``dag_id`` finished, else ``None``."""
        state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json().get("state")
        return state if state in ("success", "failed") else None

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
