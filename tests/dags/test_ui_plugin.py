"""The candleflow UI plugin: Airflow loads it, and its page serves the coverage heatmap from the lake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_airflow_loads_the_plugin_with_its_coverage_links(airflow_db):
    airflow = Path(sys.executable).parent / "airflow"
    out = subprocess.run([str(airflow), "plugins", "--output", "json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"candleflow"' in out.stdout and "OHLCV coverage 1h" in out.stdout


def test_the_coverage_page_is_served_from_the_lake(pipeline_env, s3_client):
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
    from candleflow import coverage
    from candleflow.config import load_pipeline
    from candleflow_airflow.ui_plugin import CandleflowPlugin, app

    client = TestClient(app)
    assert client.get("/coverage/2h").status_code == 404
    bucket = load_pipeline().lake.bucket
    s3_client.delete_object(Bucket=bucket, Key="reports/coverage/timeframe=5m/coverage.html")
    assert client.get("/coverage/5m").status_code == 404  # nothing published yet: says so
    coverage.publish_report(s3_client, bucket, "5m")
    page = client.get("/coverage/5m")
    assert page.status_code == 200 and "OHLCV coverage, 5m" in page.text
    assert all(not v["href"].startswith("/") for v in CandleflowPlugin.external_views)
