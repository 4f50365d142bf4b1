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


def test_the_quality_data_docs_are_served_from_the_lake(pipeline_env, s3_client):
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
    from candleflow.config import load_pipeline
    from candleflow.quality import results
    from candleflow.quality.runs import freshness
    from candleflow.quality.settings import load_quality
    from candleflow_airflow.ui_plugin import CandleflowPlugin, app

    client = TestClient(app)
    bucket, prefix = load_pipeline().lake.bucket, load_quality().data_docs_prefix
    for page in s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/timeframe=15m/").get("Contents", []):
        s3_client.delete_object(Bucket=bucket, Key=page["Key"])
    missing = client.get("/quality/15m/index.html")
    assert missing.status_code == 404 and "No 15m quality Data Docs yet" in missing.text
    end = datetime(2024, 10, 21, tzinfo=UTC)
    report, _ = freshness({("okx", "BTC"): None}, end, "15m", load_quality())
    results.publish_data_docs(s3_client, bucket, [("freshness-15m", report.gx_result)], timeframe="15m",
                              run_name="scheduled__2024-10-21", run_time=end, prefix=prefix)
    index = client.get("/quality/15m/index.html")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "freshness_15m" in index.text
    # the index's relative links resolve under the same route: a validation page and a stylesheet
    page = next(k for k in (o["Key"] for o in s3_client.list_objects_v2(
        Bucket=bucket, Prefix=f"{prefix}/timeframe=15m/validations/")["Contents"]))
    rel = page.split("timeframe=15m/", 1)[1]
    assert rel in index.text and client.get(f"/quality/15m/{rel}").status_code == 200
    css = client.get("/quality/15m/static/styles/data_docs_default_styles.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/quality/15m/../coverage.html").status_code == 404
    assert client.get("/quality/2h/index.html").status_code == 404
    assert any(v["name"] == "Quality Data Docs 1h" and v["href"] == "candleflow/quality/1h/index.html"
               for v in CandleflowPlugin.external_views)
