"""What ``make test`` on a fresh machine relies on: PostgreSQL found, the browser provisioned.

The PostgreSQL cases run a small pytest session in a subprocess with the real
``tests.store_fixtures`` plugin, pointing its default server at a real PostgreSQL or at a port
where nothing listens. The browser cases run the Makefile's ``browser`` target.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.store_fixtures import POSTGRES_URL_ENV, require_postgres

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = "*PostgreSQL test case(s) skipped: nothing answered at*set VONAGE_STUDIO_TEST_POSTGRES_URL=*"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port bound but not listening: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, default_url: str) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    pytester.makeconftest(
        f"""
import tests.store_fixtures as store_fixtures

store_fixtures.DEFAULT_POSTGRES_URL = {default_url!r}
pytest_plugins = ["tests.store_fixtures"]
"""
    )
    pytester.makepyfile(
        """
def test_one(store_url):
    assert store_url.startswith(("sqlite:", "postgresql"))

def test_two(store_url):
    assert store_url
"""
    )


def test_postgres_cases_run_by_default_when_the_server_answers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = require_postgres()
    _session(pytester, monkeypatch, base)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4)
    assert "PostgreSQL test case(s) skipped" not in result.stdout.str()


def test_no_server_skips_with_one_summary_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    _session(pytester, monkeypatch, f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/test")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines([SUMMARY])
    assert result.stdout.str().count("PostgreSQL test case(s) skipped") == 1
    assert f"127.0.0.1:{closed_port}" in result.stdout.str()


def test_an_explicit_url_that_does_not_answer_fails_instead_of_skipping(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    _session(pytester, monkeypatch, "postgresql+psycopg://postgres@127.0.0.1:1/unused")
    monkeypatch.setenv(POSTGRES_URL_ENV, f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/test")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, errors=2)
    assert "PostgreSQL test case(s) skipped" not in result.stdout.str()


# ------------------------------------------------------------------ the browser, from the Makefile


def _make_browser(tmp_path: Path, *, chromium: str, chromedriver: str, prefix: tuple[str, ...] = ()) -> Any:
    # APT_GET=false: the "install" step fails at once instead of touching the machine. The suite
    # itself may run under make (make test): the inner make must not join the outer one's jobs.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        [
            *prefix,
            "make",
            "-s",
            "-C",
            str(ROOT),
            "browser",
            f"CHROMIUM={chromium}",
            f"CHROMEDRIVER={chromedriver}",
            "APT_GET=false",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_make_browser_is_quiet_when_chromium_and_chromedriver_are_there(tmp_path: Path) -> None:
    proc = _make_browser(tmp_path, chromium="/bin/sh", chromedriver="/bin/sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_make_browser_fails_with_one_line_when_it_cannot_install(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-chromium")
    proc = _make_browser(tmp_path, chromium=missing, chromedriver="/bin/sh")
    assert proc.returncode != 0
    (message,) = [line for line in proc.stderr.splitlines() if not line.startswith(("make: ", "make["))]
    assert missing in message and "apt-get install -y chromium chromium-driver" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run make as an unprivileged user")
def test_make_browser_as_a_user_says_what_to_run_as_root(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-chromium")
    os.chmod(tmp_path, 0o755)
    proc = _make_browser(
        tmp_path,
        chromium=missing,
        chromedriver="/bin/sh",
        prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
    )
    assert proc.returncode != 0
    (message,) = [line for line in proc.stderr.splitlines() if not line.startswith(("make: ", "make["))]
    assert "sudo apt-get install -y chromium chromium-driver" in message
    assert "Installing" not in proc.stdout
