"""Failure alerting end to end: a real task failure posts a real HTTP webhook to a local receiver."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture
def webhook_receiver():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    old = os.environ.get("AIRFLOW_CONN_CANDLEFLOW_ALERTS")
    os.environ["AIRFLOW_CONN_CANDLEFLOW_ALERTS"] = json.dumps({"conn_type": "http", "host": url})
    yield received
    server.shutdown()
    if old is None:
        os.environ.pop("AIRFLOW_CONN_CANDLEFLOW_ALERTS", None)
    else:
        os.environ["AIRFLOW_CONN_CANDLEFLOW_ALERTS"] = old


def test_failed_task_posts_webhook_naming_task_and_error(airflow_db, webhook_receiver):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder="dags/ohlcv_backfill.py").get_dag("ohlcv_backfill")
    # end before start: the plan task refuses it (ConfigError: no retry) and the notifier fires.
    run = dag.test(run_conf={"symbols": ["BTC"], "start": "2024-10-02T00:00:00+00:00",
                             "end": "2024-10-01T00:00:00+00:00"})
    assert run.state == "failed"
    assert len(webhook_receiver) == 1, webhook_receiver
    alert = webhook_receiver[0]
    assert alert["path"] == "/alerts"
    facts = alert["json"]["candleflow"]
    assert facts["dag_id"] == "ohlcv_backfill"
    assert facts["task_id"] == "plan_from_params"
    assert "ConfigError" in facts["error"] and "end:" in facts["error"]
    assert "plan_from_params" in alert["json"]["text"] and "ohlcv_backfill" in alert["json"]["text"]
