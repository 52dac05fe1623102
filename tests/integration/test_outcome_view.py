"""The outcome view: rendered by headless Chromium from the receiver under uvicorn, and its pure parts."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from airflow_provider_vonage_studio.callbacks import view
from airflow_provider_vonage_studio.callbacks.app import create_app
from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref, sign_token
from airflow_provider_vonage_studio.store import CallRecord, CallState, CallStore
from airflow_provider_vonage_studio.testing.servers import ThreadedServer
from tests.conftest import TEST_SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# (dag_id, run_id, key, destination, what happens)
CALLS = [
    ("reminder_calls", "scheduled__2024-06-01T00:00:00+00:00", "ann", "447700900101", "busy"),
    ("reminder_calls", "scheduled__2024-06-01T00:00:00+00:00", "bob", "447700900102", "timeout"),
    ("reminder_calls", "scheduled__2024-06-01T00:00:00+00:00", "cat", "447700900103", "placed"),
    ("reminder_calls", "scheduled__2024-06-01T00:00:00+00:00", "dan", "447700900104", "api-rejected"),
    ("call_and_branch", "manual__2024-06-02T08:00:00+00:00", "eve", "12125550100", "failed"),
    ("call_and_branch", "manual__2024-06-02T08:00:00+00:00", "fay", "12125550101", "unknown"),
    ("call_and_branch", "manual__2024-06-02T08:00:00+00:00", "gus", "sip:gus@pbx.example.com", "placed"),
]


@pytest.fixture
def served_view(tmp_path: Path) -> Iterator[tuple[str, CallStore]]:
    """The receiver (outcome view public) under uvicorn on 127.0.0.1, with a few calls recorded."""
    store = CallStore(f"sqlite:///{tmp_path / 'vonage_studio.db'}")
    app = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="public")
    server = ThreadedServer(app).start(timeout=30)
    base = server.url

    started = datetime.now(timezone.utc) - timedelta(hours=3)
    with requests.Session() as http:
        http.trust_env = False
        for i, (dag_id, run_id, key, destination, outcome) in enumerate(CALLS):
            call_ref = make_call_ref(dag_id, run_id, "call", key=key)
            store.begin_call(
                call_ref,
                agent_id="agent-7",
                destination=destination,
                dag_id=dag_id,
                run_id=run_id,
                task_id="call",
                map_index=i,
            )
            if outcome == "api-rejected":
                store.mark_rejected(call_ref, 400, "Bad destination number format")
                continue
            if outcome == "unknown":
                store.mark_unknown(call_ref, "read timeout after 30 s")
                continue
            store.mark_placed(call_ref, str(uuid.uuid4()), started + timedelta(minutes=40 * i))
            if outcome in ("busy", "timeout", "failed"):
                resp = http.post(
                    f"{base}/calls/{sign_token(call_ref, TEST_SECRET)}/status",
                    json={
                        "agent_id": "agent-7",
                        "to": destination,
                        "conversation_uuid": f"CON-{key}",
                        "status": outcome,
                        "timestamp": (started + timedelta(minutes=40 * i, seconds=30)).isoformat(),
                    },
                    timeout=10,
                )
                assert resp.status_code == 200, resp.text
    try:
        yield base, store
    finally:
        server.stop()
        store.dispose()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[object]:
    """Headless Debian Chromium driven by Selenium; fails (not skips) when it is not installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver) to run the outcome view's browser test"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vs-chromium-", dir=tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Decode an 8-bit, non-interlaced RGB(A) PNG: (width, height, distinct pixel values)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert header is not None
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous, pixels = bytearray(stride), set[bytes]()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:  # every 4th row is plenty to tell a page from a blank
            pixels.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp * 2))
        previous = line
    return width, height, pixels


def test_outcome_page_in_headless_chromium(
    served_view: tuple[str, CallStore], chromium: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(chromium, WebDriver)
    base, _ = served_view
    chromium.get(f"{base}/outcomes")
    WebDriverWait(chromium, 20).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "section.run"))
    )
    assert chromium.title.startswith("Call outcomes")

    runs = chromium.find_elements(By.CSS_SELECTOR, "section.run")
    assert [r.get_attribute("data-dag-id") for r in runs] == ["call_and_branch", "reminder_calls"]

    def outcomes(run: object) -> dict[str, str]:
        rows = run.find_elements(By.CSS_SELECTOR, "tbody tr")  # type: ignore[attr-defined]
        return {
            row.find_element(By.CSS_SELECTOR, '[data-col="to"]').text: row.find_element(
                By.CSS_SELECTOR, '[data-col="outcome"]'
            ).get_attribute("data-outcome")
            for row in rows
        }

    assert outcomes(runs[1]) == {
        "+44•••••0101": "busy",
        "+44•••••0102": "timeout",
        "+44•••••0103": "no_failure_reported",
        "+44•••••0104": "rejected_by_api",
    }
    assert outcomes(runs[0]) == {
        "+12•••••0100": "failed",
        "+12•••••0101": "outcome_unknown",
        "sip:•••@pbx.example.com": "no_failure_reported",
    }
    reminder_text = runs[1].text
    assert "no failure reported" in reminder_text and "400: Bad destination number format" in reminder_text

    totals = {
        el.get_attribute("data-count"): int(el.text)
        for el in chromium.find_elements(By.CSS_SELECTOR, '[data-testid="total-counts"] [data-count]')
    }
    assert totals == {
        "no_failure_reported": 2,
        "busy": 1,
        "timeout": 1,
        "failed": 1,
        "rejected_by_api": 1,
        "outcome_unknown": 1,
    }
    bars = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-testid="chart"] rect[data-outcome]')
    assert {b.get_attribute("data-outcome") for b in bars} == set(totals)
    assert chromium.find_element(By.CSS_SELECTOR, 'svg[data-testid="chart"]').size["height"] > 100

    source = chromium.page_source
    for number in ("447700900101", "447700900104", "12125550100", "sip:gus@"):
        assert number not in source
    # Self-contained: no scripts, styles, images or frames to fetch, and nothing was fetched.
    assert (
        chromium.execute_script(
            "return document.querySelectorAll("
            "'script, link:not([href^=\"data:\"]), img, iframe, object, embed').length"
        )
        == 0
    )
    fetched = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == [], fetched

    shot = tmp_path / "outcomes.png"
    assert chromium.save_screenshot(str(shot))
    data = shot.read_bytes()
    width, height, pixels = _png_pixels(data)
    assert (width, height) >= (1000, 800), (width, height)
    assert len(data) > 20_000
    assert len(pixels) > 20, "the screenshot is (nearly) blank"
    if os.environ.get("VONAGE_STUDIO_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VONAGE_STUDIO_KEEP_SCREENSHOT"])

    # The per-run link of the plugin: ?dag_id=...&run_id=... narrows the page to one run.
    chromium.get(f"{base}/outcomes?dag_id=call_and_branch&run_id=manual__2024-06-02T08:00:00%2B00:00")
    WebDriverWait(chromium, 20).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "section.run"))
    )
    assert [
        r.get_attribute("data-dag-id") for r in chromium.find_elements(By.CSS_SELECTOR, "section.run")
    ] == ["call_and_branch"]


def test_outcomes_json_twin(served_view: tuple[str, CallStore]) -> None:
    base, _ = served_view
    with requests.Session() as http:
        http.trust_env = False
        data = http.get(f"{base}/outcomes.json", timeout=10).json()
        assert http.get(f"{base}/outcomes.json?limit=0", timeout=10).status_code == 422
        assert http.get(f"{base}/outcomes.json?limit=abc", timeout=10).status_code == 422
        narrowed = http.get(
            f"{base}/outcomes.json", params={"dag_id": "reminder_calls", "limit": "3"}, timeout=10
        )
    assert data["total"] == len(CALLS)
    assert data["counts"]["no_failure_reported"] == 2
    assert [run["dag_id"] for run in data["runs"]] == ["call_and_branch", "reminder_calls"]
    assert all(call["to"].count("•") for run in data["runs"] for call in run["calls"])
    assert sum(sum(b["counts"].values()) for b in data["timeline"]["buckets"]) == len(CALLS)
    assert data["timeline"]["unit"] == "hour"
    assert {c["dag_id"] for run in narrowed.json()["runs"] for c in run["calls"]} <= {"reminder_calls"}


# ------------------------------------------------------------------------------ pure parts


def _record(**overrides: object) -> CallRecord:
    now = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
    base = CallRecord(
        call_ref="vs-1",
        agent_id="agent",
        destination="447700900123",
        state=CallState.PLACED,
        dag_id="dag",
        run_id="run",
        task_id="task",
        map_index=-1,
        recipient_key=None,
        session_id="s",
        session_start_time=now,
        error_status=None,
        error_message=None,
        status=None,
        status_at=None,
        conversation_uuid=None,
        callback_payload=None,
        parameters=None,
        created_at=now,
        updated_at=now,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_html_escapes_everything_and_redacts_numbers_in_errors() -> None:
    evil = _record(
        dag_id="<script>alert(1)</script>",
        run_id='"><img src=x>',
        state=CallState.REJECTED,
        error_status=400,
        error_message="Bad destination number format: 447700900123",
    )
    page = view.render_outcomes_html([evil])
    assert "<script>alert" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;" in page
    assert "447700900123" not in page and "+44•••••0123" in page


def test_empty_store_renders_a_friendly_page() -> None:
    page = view.render_outcomes_html([])
    assert 'data-testid="empty"' in page and "No calls recorded yet" in page
    assert view.outcomes_payload([])["runs"] == []


def test_timeline_switches_to_days_for_long_spans_and_caps_buckets() -> None:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    calls = [
        _record(
            call_ref=f"vs-{i}",
            session_start_time=start + timedelta(days=i),
            created_at=start + timedelta(days=i),
        )
        for i in range(0, 100, 7)
    ]
    timeline = view.outcomes_payload(calls)["timeline"]
    assert timeline["unit"] == "day"
    assert len(timeline["buckets"]) == 60  # the newest 60 days
    assert timeline["buckets"][-1]["start"].startswith("2024-04-08")


def test_unknown_future_status_is_shown_as_is() -> None:
    page = view.render_outcomes_html([_record(status="voicemail")])
    assert 'data-outcome="voicemail"' in page
