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
(``--keep`` keeps the home, ``--keep-running`` leaves Airflow up to browse the outcome view,
``--campaign`` runs ``reminder_campaign`` instead: :class:`CampaignDemo`).

The module stays a little over ~500 lines on purpose: ``CampaignDemo`` must live beside
``Demo`` (``main`` picks one of them, and the campaign's module, which holds its scenario and
report, cannot import this one back without an import circle).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The scenario's names were defined here too; they stay importable from this module.
from airflow_provider_vonage_studio.testing import demo_campaign as campaign
from airflow_provider_vonage_studio.testing.demo_scenario import (
    AGENT_ID,
    ANSWER_WINDOW,
    CALLBACK_DELAY,
    DAG_ID,
    POKE_INTERVAL,
    SCRIPT,
    Observed,
    observed_rows,
    print_received,
    print_table,
)

# The process harness was part of this module; its names stay importable from here for one
# release (the demo's test imports RUN_ID_ENV and tagged_processes from this module).
from airflow_provider_vonage_studio.testing.harness import (  # noqa: F401
    COMPONENTS,
    RUN_ID_ENV,
    AirflowProcesses,
    Component,
    Console,
    DemoError,
    _die_with_parent,
    _group_exists,
    free_port,
    stop_all,
    tagged_processes,
)

__all__ = ["DAG_ID", "SCRIPT", "DemoError", "main"]

#: Optional fixed values for the emulator's API key and the callback secret (random per run
#: otherwise); the CI test sets them to check that neither ever shows in the output.
KEY_ENV = "VONAGE_STUDIO_DEMO_API_KEY"
SECRET_ENV = "VONAGE_STUDIO_DEMO_CALLBACK_SECRET"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: Task instance states after which nothing more happens to the task.
_FINISHED_TI = {"success", "failed", "skipped", "upstream_failed", "removed"}


@dataclass
class Demo(AirflowProcesses):
    """One run of the demo: the emulator, Airflow, the scripted run and its report."""

    postgres_url: str = DEFAULT_POSTGRES_URL
    run_timeout: float = 300.0
    api_key: str = field(
        default_factory=lambda: os.environ.get(KEY_ENV) or "demo-" + secrets.token_urlsafe(18)
    )
    callback_secret: str = field(
        default_factory=lambda: os.environ.get(SECRET_ENV) or secrets.token_urlsafe(24)
    )
    emulator_url: str = ""
    #: The example DAG the demo runs (``reminder_campaign`` with ``--campaign``).
    dag_id: str = DAG_ID

    def __post_init__(self) -> None:
        self.console.add_secret(self.api_key)
        self.console.add_secret(self.callback_secret)
        super().__post_init__()

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
        ]
        cmd += self.emulator_args()
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
        return airflow_env(
            self.home,
            repo_dags(),
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
                **database,
                # Airflow 3 runs LocalExecutor on SQLite too (``airflow standalone`` does).
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                # With it, only the run the demo triggers: no scheduled run of reminder_calls.
                **self.api_server_settings(),
                "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(connection),
                "VONAGE_STUDIO_DEMO_AGENT_ID": AGENT_ID,
                "VONAGE_STUDIO_DEMO_ANSWER_WINDOW": str(ANSWER_WINDOW),
                "VONAGE_STUDIO_DEMO_POKE_INTERVAL": str(POKE_INTERVAL),
            },
        )

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
        self.fetch_token()

    def wait_for_dag(self) -> None:
        """Until the DAG processor has parsed reminder_calls. :raises DemoError: on an import error."""

        def parsed() -> bool:
            errors = self.api("GET", "/api/v2/importErrors").json().get("import_errors", [])
            ours = [e for e in errors if e.get("filename", "").endswith(f"{self.dag_id}.py")]
            if ours:
                raise DemoError(f"{self.dag_id}.py failed to import:\n{ours[0].get('stack_trace', '')}")
            return self.api("GET", f"/api/v2/dags/{self.dag_id}").status_code == 200

        self.wait_until(f"the DAG processor to parse {self.dag_id}", parsed, timeout=self.startup_timeout)

    def trigger(self) -> str:
        """Unpause the DAG and trigger one run; return its run id."""
        now = datetime.now(timezone.utc)
        run_id = f"demo__{now:%Y%m%dT%H%M%S}"
        # A logical date, so that the DAG's {{ ds }} templates render.
        body = {"dag_run_id": run_id, "logical_date": now.isoformat(), "note": "triggered by make demo"}
        self.trigger_run(self.dag_id, body)
        return run_id

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
            tis = self.api("GET", f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances").json()
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
            return self.run_state(self.dag_id, run_id)

        return str(self.wait_until(f"run {run_id} to finish", finished, timeout=self.run_timeout))

    def xcom(self, run_id: str, task_id: str) -> Any:
        """The return value of ``task_id`` in ``run_id`` (None when there is none)."""
        response = self.api(
            "GET",
            f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
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
        """One row per scripted recipient (see :func:`observed_rows`)."""
        return observed_rows(self.emulator_state("calls"), self.xcom(run_id, "call_recipients") or [])

    def outcome_view(self, run_id: str) -> tuple[str, dict[str, int] | None]:
        """The outcome view's one-click URL for the run, and its counts for the run.

        The URL goes through the login of SimpleAuthManager (all admins), which sets the UI's
        ``_token`` cookie and redirects to the view. The demo follows that very link, as a
        browser would, and reads the view's JSON twin with the cookie it got.
        """
        from urllib.parse import quote, urlencode

        view = f"/vonage-studio/outcomes?{urlencode({'dag_id': self.dag_id, 'run_id': run_id})}"
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

    # ------------------------------------------------------------------ the whole run

    def run(self, *, keep_running: bool = False) -> int:
        """The demo from start to finish; returns the exit status (0: every outcome as scripted)."""
        self.bring_up()
        say = self.console.step
        run_id = self.trigger()
        say(f"unpaused {self.dag_id} and triggered run {run_id}; answer window {ANSWER_WINDOW:g}s")
        try:
            state = self.follow(run_id)
        except DemoError:
            self._show_task_logs()  # what the tasks said is the likeliest explanation
            raise
        say(f"run {run_id} finished: {state}")
        ok = self.report(run_id, state)
        if not ok:
            self._show_task_logs()
        if keep_running and ok:
            say(f"Airflow keeps running at {self.api_url}; press Ctrl-C to stop it")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    self.check_alive()
                    time.sleep(1)
        return 0 if ok else 1

    def bring_up(self) -> None:
        """The emulator, the metadata database and Airflow, until the DAG is parsed."""
        say = self.console.step
        where = "in a real Airflow 3, against the AI Studio emulator"
        say(f"Vonage AI Studio demo: the {self.dag_id} DAG {where}")
        say(f"temporary AIRFLOW_HOME: {self.home}")

        self.start_emulator()
        script = self.describe_script()
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
        say(f"DAG {self.dag_id} parsed from {repo_dags()}")

    def emulator_args(self) -> list[str]:
        """The emulator's agent, limit, callback delay and one scripted outcome per recipient."""
        args = ["--agent", AGENT_ID, "--calls-per-second", "1", "--callback-delay", str(CALLBACK_DELAY)]
        for to, outcome in SCRIPT.items():
            args += ["--script", f"{to}={outcome}"]
        return args

    def describe_script(self) -> str:
        """The emulator's script, one ``<redacted number> <outcome>`` per recipient."""
        from airflow_provider_vonage_studio.destinations import redact

        return ", ".join(f"{redact(to)} {outcome}" for to, outcome in SCRIPT.items())

    def report(self, run_id: str, state: str) -> bool:
        """Print the table and what the emulator and the outcome view saw; True when all is as scripted."""
        say = self.console.step
        rows = self.results(run_id)
        print_table(self.console, rows)
        print_received(self.console, self.emulator_state("calls"))
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
        return state == "success" and bool(rows) and all(row.ok for row in rows)

    def _show_task_logs(self) -> None:
        """Print (scrubbed) task log tails of this DAG, to tell why a run failed."""
        for path in sorted((self.home / "logs").rglob("*")):
            if path.is_file() and f"dag_id={self.dag_id}" in str(path):
                self.console.raw(f"----- {path.relative_to(self.home)} -----")
                lines = path.read_text(errors="replace").splitlines()
                self.console.raw("\n".join(lines[-30:]))


@dataclass
class CampaignDemo(Demo):
    """``make demo ARGS=--campaign``: ``reminder_campaign``, its per-attempt script and report
    (:mod:`~airflow_provider_vonage_studio.testing.demo_campaign`), and a check, each time the
    campaign task is seen deferred, that no process runs it."""

    dag_id: str = campaign.CAMPAIGN_DAG_ID
    deferrals: list[campaign.DeferralCheck] = field(default_factory=list)

    def emulator_args(self) -> list[str]:
        return campaign.emulator_args()

    def airflow_env(self) -> dict[str, str]:
        return {**super().airflow_env(), **campaign.AIRFLOW_SETTINGS}

    def describe_script(self) -> str:
        return campaign.describe_script()

    def follow(self, run_id: str) -> str:
        seen: dict[str, str] = {}

        def finished() -> str | None:
            tis = self.api("GET", f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances").json()
            campaign.follow_step(self.console, tis.get("task_instances", []), seen, self.deferrals)
            return self.run_state(self.dag_id, run_id)

        return str(
            self.wait_until(f"run {run_id} to finish", finished, timeout=self.run_timeout, interval=0.5)
        )

    def report(self, run_id: str, state: str) -> bool:
        results = self.xcom(run_id, campaign.CAMPAIGN_TASK) or []
        calls, messages = self.emulator_state("calls"), self.emulator_state("messages")
        ok = campaign.report(self.console, results, calls, messages, self.deferrals)
        self.console.step(f"summary: {self.xcom(run_id, 'summary')}")
        return state == "success" and ok


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


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--campaign",
        action="store_true",
        help="run the reminder_campaign example instead (attempt waves seconds apart, then a WhatsApp "
        "message to whoever was never reached) and print each recipient's attempts",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0 only if every outcome matched)."""
    args = _parser().parse_args(argv)
    console = Console()
    demo = (CampaignDemo if args.campaign else Demo)(
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
    if status == 0 and args.campaign:
        console.step(
            "demo OK: every recipient's calls, disposition and messages as scripted; all processes stopped"
        )
    elif status == 0:
        console.step(
            f"demo OK: every outcome as the emulator scripted ({len(SCRIPT)} calls); all processes stopped"
        )
    elif status != 130:
        console.step("demo FAILED (see above)")
    return status


if __name__ == "__main__":
    sys.exit(main())
