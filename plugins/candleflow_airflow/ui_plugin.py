"""The coverage heatmaps in the Airflow UI: a small FastAPI app served by Airflow's API server and
links to it in the UI's Browse menu (Airflow 3 plugin `fastapi_apps` + `external_views`).

`GET /candleflow/coverage/<timeframe>` returns the page `coverage_report` rebuilt after the last
ingest run (`reports/coverage/timeframe=<tf>/coverage.html` in the lake bucket), read through the
`aws_default` connection, so the lake needs no public access. It shows data coverage only; put
the API server's auth in front of it like the rest of the UI if that is sensitive.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse

TIMEFRAMES = ("1h", "15m", "5m", "1m")
app = FastAPI(title="candleflow", description="Coverage heatmaps of the candleflow lake")


def _lake_client():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from candleflow.config import load_pipeline

    cfg = load_pipeline()
    return S3Hook(aws_conn_id=cfg.lake.aws_conn_id).get_conn(), cfg.lake.bucket


@app.get("/coverage/{timeframe}", response_class=HTMLResponse)
def coverage_page(timeframe: str) -> HTMLResponse:
    from candleflow.coverage import REPORT_PREFIX

    if timeframe not in TIMEFRAMES:
        raise HTTPException(404, f"timeframe {timeframe!r}: use one of {', '.join(TIMEFRAMES)}")
    s3, bucket = _lake_client()
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{REPORT_PREFIX}/timeframe={timeframe}/coverage.html")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return HTMLResponse(f"<p>No {timeframe} coverage report yet: it is written after the first "
                            f"ingest or backfill run of that timeframe.</p>", status_code=404)
    return HTMLResponse(body.decode())


class CandleflowPlugin(AirflowPlugin):
    name = "candleflow"
    fastapi_apps = [{"app": app, "url_prefix": "/candleflow", "name": "candleflow coverage"}]
    external_views = [
        # relative href: resolved against the API server, also behind a reverse proxy
        {"name": f"OHLCV coverage {tf}", "href": f"candleflow/coverage/{tf}", "destination": "nav",
         "category": "browse"}
        for tf in TIMEFRAMES
    ]
