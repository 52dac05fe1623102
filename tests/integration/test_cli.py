"""The provider's CLI: the ``vonage-studio`` console script on every Airflow, and
``airflow vonage-studio ...`` (discovered through the provider info) where Airflow has provider
CLI commands (3.2 and later).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from airflow_provider_vonage_studio._compat import PROVIDER_CLI_SUPPORTED
from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref, sign_token
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_bin
from tests.conftest import TEST_SECRET, conn_json

NUMBER = "447700900123"
CONSOLE_SCRIPT = "console script"
AIRFLOW_CLI = "airflow CLI"


def _command(entry: str) -> list[str]:
    """How a user starts the provider's commands: ``vonage-studio`` or ``airflow vonage-studio``."""
    if entry == CONSOLE_SCRIPT:
        script = Path(sys.executable).with_name("vonage-studio")
        assert script.exists(), f"the vonage-studio console script is not installed beside {sys.executable}"
        return [str(script)]
    if not PROVIDER_CLI_SUPPORTED:
        pytest.skip("Airflow < 3.2 has no provider CLI commands; vonage-studio is the command there")
    return [airflow_bin(), "vonage-studio"]


ENTRIES = pytest.mark.parametrize("entry", [CONSOLE_SCRIPT, AIRFLOW_CLI])


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__VONAGE_STUDIO__STORE_URL=f"sqlite:///{home / 'vonage_studio.db'}",
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@ENTRIES
def test_help_lists_the_commands(tmp_path: Path, entry: str) -> None:
    proc = subprocess.run(
        [*_command(entry), "--help"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "callbacks" in proc.stdout and "dnc" in proc.stdout

    serve = subprocess.run(
        [*_command(entry), "callbacks", "serve", "--help"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 0, serve.stderr + serve.stdout
    for flag in ("--host", "--port", "--conn-id", "--outcome-view"):
        assert flag in serve.stdout


def test_cli_module_is_cheap_to_import() -> None:
    # Airflow builds its parser (airflow.cli.cli_config) on every command; what loads on top of
    # that is ours. (On Airflow 3.1, Airflow itself already loads phonenumbers via sqlalchemy_utils.)
    code = (
        "import sys; import airflow.cli.cli_config; before = set(sys.modules); "
        "import airflow_provider_vonage_studio.cli as c; cmds = c.get_cli_commands(); c.build_parser(); "
        "added = set(sys.modules) - before; "
        "print(cmds[0].name, *(any(m.split('.')[0] == h for m in added) "
        "for h in ('fastapi', 'uvicorn', 'phonenumbers', 'sqlalchemy')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Airflow may print its own notices first; ours is the last line.
    assert proc.stdout.strip().splitlines()[-1].split() == [
        "vonage-studio",
        "False",
        "False",
        "False",
        "False",
    ]


@pytest.fixture(params=[CONSOLE_SCRIPT, AIRFLOW_CLI])
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """``vonage-studio callbacks serve`` (or ``airflow vonage-studio ...``) output to a file."""
    command = _command(request.param)
    port = _free_port()
    log_path = tmp_path / "serve.log"
    env = _env(tmp_path, AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT=conn_json(callback_secret=TEST_SECRET))
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                *command,
                "callbacks",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield port, tmp_path, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_serve_records_a_signed_callback(served: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, home, proc = served
    store = CallStore(f"sqlite:///{home / 'vonage_studio.db'}")
    call_ref = make_call_ref("cli_dag", "run-1", "call")
    store.begin_call(call_ref, agent_id="agent-1", destination=NUMBER, dag_id="cli_dag", run_id="run-1")
    store.mark_placed(call_ref, str(uuid.uuid4()), datetime.now(timezone.utc))
    token = sign_token(call_ref, TEST_SECRET)
    payload = {
        "agent_id": "agent-1",
        "to": NUMBER,
        "conversation_uuid": "CON-cli",
        "status": "timeout",
        "timestamp": "2024-01-02T03:04:05.678Z",
    }
    with requests.Session() as http:
        http.trust_env = False
        resp = http.post(f"http://127.0.0.1:{port}/calls/{token}/status", json=payload, timeout=10)
        assert (resp.status_code, resp.json()) == (200, {"result": "recorded"})
        forged = http.post(
            f"http://127.0.0.1:{port}/calls/{call_ref}.{'Z' * 43}/status", json=payload, timeout=10
        )
        assert forged.status_code == 401
        # A standalone receiver usually faces the Internet: no outcome view unless asked for.
        assert http.get(f"http://127.0.0.1:{port}/outcomes", timeout=10).status_code == 404

    record = store.get_call(call_ref)
    assert record is not None and record.status == "timeout"
    store.dispose()

    proc.terminate()
    proc.wait(timeout=15)
    output = (home / "serve.log").read_text(errors="replace")
    # uvicorn's access log shows the request with the token elided (uvicorn quotes "*" as %2A).
    assert '"POST /calls/%2A%2A%2A/status HTTP/1.1" 200' in output or "POST /calls/***/status" in output, (
        output
    )
    assert token.rpartition(".")[2] not in output
    assert TEST_SECRET not in output
    assert NUMBER not in output


@ENTRIES
def test_serve_refuses_to_start_without_a_secret(tmp_path: Path, entry: str) -> None:
    proc = subprocess.run(
        [*_command(entry), "callbacks", "serve", "--port", str(_free_port())],
        env=_env(tmp_path, AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT=conn_json()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "callback_secret" in proc.stderr + proc.stdout


@ENTRIES
def test_serve_with_a_bad_callback_max_age_is_one_line_naming_the_setting(tmp_path: Path, entry: str) -> None:
    proc = subprocess.run(
        [*_command(entry), "callbacks", "serve", "--port", str(_free_port())],
        env=_env(
            tmp_path,
            AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT=conn_json(callback_secret=TEST_SECRET),
            AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE="six hours",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "[vonage_studio] callback_max_age" in line]
    assert len(errors) == 1, output
    assert errors[0].startswith("error: ") and "number of seconds" in errors[0], output


# ------------------------------------------------------------------------------------- dnc


def _cli_runner(entry: str) -> Callable[[list[str]], None]:
    """Run ``vonage-studio ARGV`` in this process: the console script's parser, or Airflow's."""
    if entry == CONSOLE_SCRIPT:
        from airflow_provider_vonage_studio.cli import main

        return lambda argv: main(argv[1:])
    _command(entry)  # skips where Airflow has no provider CLI commands
    from airflow.cli.cli_parser import get_parser

    def run(argv: list[str]) -> None:
        args = get_parser().parse_args(argv)
        args.func(args)

    return run


@ENTRIES
def test_dnc_add_list_remove_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry: str
) -> None:
    _run_cli = _cli_runner(entry)
    url = f"sqlite:///{tmp_path / 'dnc.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    try:
        _run_cli(["vonage-studio", "dnc", "add", "+44 7700 900123", "--reason", "asked not to be called"])
        _run_cli(["vonage-studio", "dnc", "add", "(212) 555-0100", "--default-country", "US"])
        added = capsys.readouterr().out
        assert "+44•••••0123 is on the do-not-call list" in added
        assert NUMBER not in added

        assert CallStore.default().dnc_filter([NUMBER, "12125550100", "447700900999"]) == {
            NUMBER,
            "12125550100",
        }

        _run_cli(["vonage-studio", "dnc", "list"])
        listed = capsys.readouterr().out
        assert "+44•••••0123" in listed and "+12•••••0100" in listed and "asked not to be called" in listed
        assert NUMBER not in listed

        _run_cli(["vonage-studio", "dnc", "list", "--show-numbers", "--output", "json"])
        rows = json.loads(capsys.readouterr().out)
        assert [row["number"] for row in rows] == ["12125550100", NUMBER]
        assert rows[1]["reason"] == "asked not to be called"

        _run_cli(["vonage-studio", "dnc", "remove", "447700900123"])
        assert "removed" in capsys.readouterr().out
        with pytest.raises(SystemExit) as not_listed:
            _run_cli(["vonage-studio", "dnc", "remove", "447700900123"])
        assert "was not on the do-not-call list" in str(not_listed.value.code)

        with pytest.raises(SystemExit) as bad:
            _run_cli(["vonage-studio", "dnc", "add", "not a number"])
        assert "error:" in str(bad.value.code)

        _run_cli(["vonage-studio", "dnc", "list", "--show-numbers"])
        remaining = capsys.readouterr().out
        assert "12125550100" in remaining and NUMBER not in remaining
    finally:
        CallStore._clear_default_cache(url)
