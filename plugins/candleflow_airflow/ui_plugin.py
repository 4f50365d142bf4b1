"""The coverage heatmaps and the GX Data Docs in the Airflow UI: a small FastAPI app served by
Airflow's API server and links to it in the UI's Browse menu (Airflow 3 plugin `fastapi_apps` +
`external_views`).

- `GET /candleflow/coverage/<timeframe>` returns the page rebuilt by the last backfill or daily
  `lake_compaction` (`reports/coverage/timeframe=<tf>/coverage.html` in the lake bucket).
- `GET /candleflow/quality/<timeframe>/<path>` serves the static GX Data Docs site the ingest's
  `quality_checks` task writes (`reports/quality/data_docs/timeframe=<tf>/…`, see docs/quality.md):
  `index.html` lists the last run's validations, its relative links to pages and assets resolve
  under the same route.

Both are read through the `aws_default` connection, so the lake needs no public access. They show
data quality only; put the API server's auth in front of them like the rest of the UI if that is
sensitive.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from candleflow import config
from candleflow_airflow.aws import s3_client

# the menu lists the hourly pages first
TIMEFRAMES = tuple(reversed(config.TIMEFRAMES))
app = FastAPI(title="candleflow", description="Coverage heatmaps and quality Data Docs of the candleflow lake")


def _lake_client():
    cfg = config.load_pipeline()
    return s3_client(cfg.lake.aws_conn_id), cfg.lake.bucket


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


@app.get("/quality/{timeframe}/{path:path}")
def quality_docs(timeframe: str, path: str) -> Response:
    from candleflow.quality.results import content_type
    from candleflow.quality.settings import load_quality

    if timeframe not in TIMEFRAMES:
        raise HTTPException(404, f"timeframe {timeframe!r}: use one of {', '.join(TIMEFRAMES)}")
    path = path or "index.html"
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise HTTPException(404, f"{path!r}: not a page of the Data Docs site")
    s3, bucket = _lake_client()
    key = f"{load_quality().data_docs_prefix}/timeframe={timeframe}/{path}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        if path == "index.html":
            return HTMLResponse(f"<p>No {timeframe} quality Data Docs yet: they are written by the "
                                f"quality_checks task of the first ingest or backfill run of that timeframe.</p>",
                                status_code=404)
        raise HTTPException(404, f"{path!r}: no such page in the {timeframe} Data Docs") from None
    return Response(body, media_type=content_type(path))


class CandleflowPlugin(AirflowPlugin):
    name = "candleflow"
    fastapi_apps = [{"app": app, "url_prefix": "/candleflow", "name": "candleflow coverage and quality"}]
    external_views = [
        # relative href: resolved against the API server, also behind a reverse proxy
        *({"name": f"OHLCV coverage {tf}", "href": f"candleflow/coverage/{tf}", "destination": "nav",
           "category": "browse"} for tf in TIMEFRAMES),
        *({"name": f"Quality Data Docs {tf}", "href": f"candleflow/quality/{tf}/index.html", "destination": "nav",
           "category": "browse"} for tf in TIMEFRAMES),
    ]
