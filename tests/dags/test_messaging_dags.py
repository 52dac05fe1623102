"""SMS and WhatsApp through the operators in real Airflow (`airflow dags test`) against the
strict emulator, with the status callbacks recorded by the real receiver."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

HERE = Path(__file__).resolve().parent
KEY = "messaging-dag-key-7d2c4e1b9a"
SECRET = "messaging-dag-callback-secret-5e"


def test_an_sms_and_a_whatsapp_are_sent_and_their_statuses_recorded(tmp_path, callback_receiver_factory):
    home = tmp_path / "home"
    home.mkdir()
    store_url = f"sqlite:///{home}/vonage_studio.db"
    receiver = callback_receiver_factory(store_url, SECRET)
    with Emulator(
        api_keys=(KEY,), agents=("msg-agent",), calls_per_second=1, callback_delay=0.05
    ) as emulator:
        emulator.script_message("447700900202", "read")
        env = airflow_env(
            home,
            HERE / "messaging_dags",
            {
                "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(
                    callback_base_url=receiver, callback_secret=SECRET
                )
            },
        )
        migrate(env)
        proc = dags_test("vs_messages", env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]

        messages = emulator.messages
        assert sorted((m.channel, m.to) for m in messages) == [
            ("sms", "447700900101"),
            ("sms", "447700900102"),
            ("whatsapp", "447700900201"),
            ("whatsapp", "447700900202"),
        ], output[-3000:]
        # The strict emulator (one budget of 1/s for the agent) never refused one.
        assert [r.status for r in emulator.requests] == [200] * 4, [r.to_dict() for r in emulator.requests]
        wa = [m for m in messages if m.channel == "whatsapp"]
        assert {m.template for m in wa} == {"appointment_reminder"}
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", wa[0].components[0]["parameters"][0]["text"])
        assert "{{" not in json.dumps(wa[0].components)
        assert {tuple(sorted((p["name"], p["value"]) for p in m.session_parameters)) for m in wa} == {
            (("CALLER_NAME", "Ann"),),
            (("CALLER_NAME", "Bob"),),
        }
        emulator.wait_for_message_callbacks(5, timeout=30)

    store = CallStore(store_url)
    try:
        rows = [r for r in store.recent_calls() if r.dag_id == "vs_messages"]
        assert sorted((r.task_id, r.map_index, r.channel, r.state.value) for r in rows) == [
            ("sms", 0, "sms", "placed"),
            ("sms", 1, "sms", "placed"),
            ("whatsapp", -1, "whatsapp", "placed"),
            ("whatsapp", -1, "whatsapp", "placed"),
        ]
        deadline = time.monotonic() + 10
        by_key = {}
        while time.monotonic() < deadline:
            by_key = {r.recipient_key: [h["status"] for h in store.status_history(r.call_ref)] for r in rows}
            if by_key.get("cust-202") == ["delivered", "read"]:
                break
            time.sleep(0.1)
        assert by_key["cust-202"] == ["delivered", "read"]
        assert by_key["cust-201"] == ["delivered"]
    finally:
        store.dispose()

    with sqlite3.connect(home / "airflow.db") as db:
        (value,) = db.execute(
            "select value from xcom where dag_id = 'vs_messages' and task_id = 'whatsapp' "
            "and key = 'return_value'"
        ).fetchone()
    results = json.loads(value)
    assert [(r["key"], r["result"], r["to"]) for r in results] == [
        ("cust-201", "sent", "+44•••••0201"),
        ("cust-202", "sent", "+44•••••0202"),
    ]
    logs = "\n".join(p.read_text() for p in (home / "logs").rglob("*") if p.is_file())
    assert KEY not in logs + output and SECRET not in logs + output
    assert "447700900201" not in logs + output
