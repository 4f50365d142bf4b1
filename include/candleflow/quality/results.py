"""Validation results kept in the lake: JSON beside the data, the `quality` table, GX Data Docs.

    <ohlcv>/exchange=…/symbol=…/timeframe=…/_quality/<from>_<to>.json      a published batch's GX result
    quarantine/exchange=…/…/window=<from>_<to>/report.json                   a quarantined batch's report
    <ohlcv>/_quality/<suite>/timeframe=<tf>/<from>_<to>.json                 a run-level suite's result
    quality/timeframe=<tf>/date=<YYYY-MM-DD>/<suite>-<exchange>-<symbol>-<from>_<to>.parquet
    reports/quality/data_docs/timeframe=<tf>/index.html                      the Data Docs site (latest run)
    reports/quality/data_docs/timeframe=<tf>/runs.html                       every run's pages, newest first

The JSON results are deterministic (no load times or run ids: a re-run writes the same bytes) and
sit in '_'-prefixed folders, which Hive-style readers (Athena, DuckDB's hive globbing, pyarrow
datasets) skip. The `quality` table has one row per expectation of every validation; `ts` is the
start of the window the validation judged, `date` its day.
"""

from __future__ import annotations

import functools
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from candleflow.quality.report import QualityReport


@functools.cache
def _table():
    import pyarrow as pa

    from candleflow.lake import TableSpec

    schema = pa.schema([
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),   # start of the judged window
        pa.field("window_end", pa.timestamp("ms", tz="UTC")),
        pa.field("suite", pa.string(), nullable=False),     # ohlcv_batch_<tf> | cross_exchange | freshness
        pa.field("exchange", pa.string(), nullable=False),  # "" for a run-level expectation over all pairs
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("rule", pa.string()),
        pa.field("expectation", pa.string(), nullable=False),
        pa.field("column", pa.string(), nullable=False),    # "" for table-level expectations
        pa.field("severity", pa.string()),                  # error | warn
        pa.field("success", pa.bool_()),
        pa.field("unexpected_count", pa.int64()),
        pa.field("element_count", pa.int64()),              # rows the validation judged
        pa.field("observed_value", pa.string()),
        pa.field("run_id", pa.string()),                    # the Airflow run (AIRFLOW_CTX_DAG_RUN_ID), "" outside Airflow
        pa.field("result_key", pa.string()),                # the validation's JSON result in the lake
    ])
    return TableSpec("quality", schema, ("timeframe", "date"),
                     unique_keys=("suite", "exchange", "symbol", "ts", "window_end", "expectation", "column"),
                     sort_keys=("ts", "suite", "exchange", "symbol", "expectation", "column"))


def __getattr__(name: str):
    # lazily: the spec needs pyarrow, and the dag processor imports this package
    if name == "TABLE_SPECS":
        return {"quality": _table()}
    raise AttributeError(name)


def _stamp(dt: datetime) -> str:
    from candleflow.lake import _stamp  # the lake's part-name stamp; imported late (pyarrow, pandas)

    return _stamp(dt)


def run_id() -> str:
    """The Airflow run this process works for (the task runner exports it), or "" outside Airflow."""
    return os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")


def batch_result_key(ohlcv_prefix: str, results_dir: str, exchange: str, symbol: str, timeframe: str,
                     window_start: datetime, window_end: datetime) -> str:
    return (f"{ohlcv_prefix}/exchange={exchange}/symbol={symbol}/timeframe={timeframe}/{results_dir}/"
            f"{_stamp(window_start)}_{_stamp(window_end)}.json")


def run_result_key(ohlcv_prefix: str, results_dir: str, suite: str, timeframe: str, window_start: datetime,
                   window_end: datetime) -> str:
    return (f"{ohlcv_prefix}/{results_dir}/{suite}/timeframe={timeframe}/"
            f"{_stamp(window_start)}_{_stamp(window_end)}.json")


def result_document(report: QualityReport, **identity) -> bytes:
    """The JSON kept in the lake: who was judged, the verdict per rule, GX's own result."""
    body = {**identity, "success": report.success, "row_count": report.row_count,
            "evaluated_expectations": report.evaluated_expectations, "failed": report.failed,
            "continuity": report.continuity, "summary": report.summary, "gx_result": report.gx_result}
    return json.dumps(body, indent=1, sort_keys=True, default=str).encode()


def table_rows(report: QualityReport, *, suite: str, exchange: str, symbol: str, window_start: datetime,
               window_end: datetime, result_key: str, per_pair: dict | None = None) -> list[dict]:
    """One row per expectation of the validation (failed ones with their counts)."""
    failed = {(f["expectation"], f.get("column") or f.get("column_A") or ""): f for f in report.failed}
    rows = []
    for item in report.gx_result.get("results", []):
        cfg = item.get("expectation_config") or {}
        kwargs = cfg.get("kwargs") or {}
        column = kwargs.get("column") or kwargs.get("column_A") or ""
        meta = cfg.get("meta") or {}
        res = item.get("result") or {}
        failure = failed.get((cfg.get("type"), column))
        count = failure.get("unexpected_count") if failure else res.get("unexpected_count", 0)
        if cfg.get("type") == "expect_table_row_count_to_be_between":  # missing candles, also within the limit
            count = report.continuity.get("missing", count)
        observed = failure.get("observed_value") if failure else res.get("observed_value")
        base = dict(ts=window_start, window_end=window_end, suite=suite, rule=meta.get("rule", ""),
                    expectation=cfg.get("type", ""), column=column, severity=meta.get("severity", "error"),
                    element_count=int(report.row_count), run_id=run_id(), result_key=result_key)
        if per_pair:  # a run-level expectation: one row per pair it judged
            for (pair_exchange, pair_symbol), (pair_count, pair_rows) in sorted(per_pair.items()):
                rows.append({**base, "exchange": pair_exchange, "symbol": pair_symbol, "success": pair_count == 0,
                             "unexpected_count": int(pair_count), "element_count": int(pair_rows),
                             "observed_value": None})
            continue
        rows.append({**base, "exchange": exchange, "symbol": symbol, "success": bool(item.get("success")),
                     "unexpected_count": int(count or 0),
                     "observed_value": None if observed is None else json.dumps(observed, default=str)[:200]})
    return rows


def write_table_rows(s3, bucket: str, rows: list[dict], *, timeframe: str, suite: str, exchange: str, symbol: str,
                     window_start: datetime, window_end: datetime):
    import pandas as pd

    from candleflow import lake

    frame = pd.DataFrame(rows, columns=_table().schema.names)
    name = f"{suite}-{exchange or 'all'}-{symbol or 'all'}-{_stamp(window_start)}_{_stamp(window_end)}.parquet"
    return lake.write_partition(s3, bucket, _table(), frame, object_name=name,
                                partition={"timeframe": timeframe, "date": window_start.astimezone(UTC).strftime("%Y-%m-%d")})


def keep_batch_result(s3, bucket: str, report: QualityReport, *, ohlcv_prefix: str, exchange: str, symbol: str,
                      timeframe: str, market: str | None, window_start: datetime, window_end: datetime,
                      result_key: str | None = None, config=None) -> str:
    """Write a batch's JSON result (unless `result_key` names where it already is, e.g. the
    quarantine's report.json) and its rows of the `quality` table; returns the JSON's key."""
    from candleflow.lake import _put
    from candleflow.quality.settings import load_quality

    config = config or load_quality()
    if result_key is None:
        result_key = batch_result_key(ohlcv_prefix, config.results_dir, exchange, symbol, timeframe, window_start,
                                      window_end)
        _put(s3, bucket, result_key, result_document(
            report, exchange=exchange, symbol=symbol, timeframe=timeframe, market=market,
            window_start=window_start.isoformat(), window_end=window_end.isoformat()), content_type="application/json")
    suite = f"ohlcv_batch_{timeframe}"
    rows = table_rows(report, suite=suite, exchange=exchange, symbol=symbol, window_start=window_start,
                      window_end=window_end, result_key=result_key)
    write_table_rows(s3, bucket, rows, timeframe=timeframe, suite="batch", exchange=exchange, symbol=symbol,
                     window_start=window_start, window_end=window_end)
    return result_key


# -- GX Data Docs ---------------------------------------------------------------------------------
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css", ".js": "application/javascript",
                  ".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".ico": "image/x-icon",
                  ".otf": "font/otf", ".json": "application/json"}


def content_type(path: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def publish_data_docs(s3, bucket: str, results: list[tuple[str, dict]], *, timeframe: str, run_name: str,
                      run_time: datetime, prefix: str, history_runs: int = 50) -> str | None:
    """Render GX Data Docs for these (batch label, GX result JSON) pairs and upload the site to
    `<prefix>/timeframe=<tf>/`. The index lists this run's validations; earlier runs' pages stay
    where they were written, and `runs.html` (linked from the index) lists the newest
    `history_runs` runs with a link to each page and its verdict. Static assets are uploaded once
    per site. Returns the index key."""
    import tempfile

    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from candleflow.lake import _put
    from candleflow.quality.suite import GX_LOCK, gx_context

    if not results:
        return None
    site_prefix = f"{prefix.strip('/')}/timeframe={timeframe}/"
    pages: list[str] = []
    with GX_LOCK, tempfile.TemporaryDirectory(prefix="candleflow-docs-") as out:
        gx, _ = gx_context()
        context = gx.get_context(mode="ephemeral")  # its own stores: the site shows only these results
        context.add_data_docs_site("lake", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": out},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        run = RunIdentifier(run_name=run_name or "manual", run_time=run_time)
        schema = ExpectationSuiteValidationResultSchema()
        for label, gx_json in results:
            result = schema.load(gx_json)
            key = ValidationResultIdentifier(ExpectationSuiteIdentifier(gx_json["suite_name"]), run,
                                             label.replace("/", "_"))
            context.validation_results_store.set(key, result)
        context.build_data_docs(site_names=["lake"])
        have_static = "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=site_prefix + "static/", MaxKeys=1)
        for root, _dirs, files in os.walk(out):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, out).replace(os.sep, "/")
                if rel.startswith("static/") and have_static:
                    continue
                with open(path, "rb") as fh:
                    body = fh.read()
                if rel == "index.html":
                    body = body.replace(b"<body>", b'<body><p style="margin:8px 16px"><a href="runs.html">'
                                                   b"Earlier runs of this timeframe</a></p>", 1)
                elif rel.startswith("validations/"):
                    pages.append(rel)
                _put(s3, bucket, site_prefix + rel, body, content_type=content_type(rel))
    published = datetime.now(UTC)
    run_entry = {"run_name": run_name or "manual", "run_time": run_time.astimezone(UTC).isoformat(),
                 "published": published.isoformat(timespec="seconds"),
                 "validations": [{"label": label, "suite": gx_json["suite_name"], "verdict": _verdict(gx_json),
                                  "page": next((p for p in pages if p.endswith("/" + label.replace("/", "_") + ".html")),
                                               None)} for label, gx_json in results]}
    safe_run = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_entry["run_name"])
    # keyed by when it published, not by its data window: a backfill of 2023 finishing now is news
    _put(s3, bucket, f"{site_prefix}runs/{published:%Y%m%dT%H%M%S%fZ}_{safe_run}.json",
         json.dumps(run_entry, indent=1, sort_keys=True).encode(), content_type="application/json")
    _put(s3, bucket, site_prefix + "runs.html", _runs_page(s3, bucket, site_prefix, timeframe, history_runs),
         content_type="text/html")
    return site_prefix + "index.html"


_MARKS = {"passed": "✓", "warned": "!", "failed": "✗"}


def _verdict(gx_json: dict) -> str:
    """passed, warned (only warn-severity expectations failed: the batch was kept) or failed."""
    if gx_json.get("success"):
        return "passed"
    failed = [r for r in gx_json.get("results", []) if not r.get("success")]
    severities = {((r.get("expectation_config") or {}).get("meta") or {}).get("severity") for r in failed}
    return "warned" if failed and severities == {"warn"} else "failed"


def _runs_page(s3, bucket: str, site_prefix: str, timeframe: str, limit: int) -> bytes:
    """runs.html: the newest `limit` runs' entries (`runs/<published>_<run>.json`, one object per
    run, so concurrent runs never overwrite each other's), newest first, each validation a link to
    its page with its verdict; older entries are deleted. Rebuilt from the listing by every run
    that publishes (two publishing at once: the later rebuild may miss the other's entry until the
    next publish; the entry itself is never lost)."""
    from html import escape

    from candleflow.lake import list_objects

    keys = sorted(list_objects(s3, bucket, site_prefix + "runs/"), reverse=True)
    for old in keys[limit:]:   # the list stays bounded (their pages stay where they are)
        s3.delete_object(Bucket=bucket, Key=old)
    keys = keys[:limit]
    rows = []
    for key in keys:
        entry = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        links = " ".join(
            (f'<a class="{v["verdict"]}" href="{escape(v["page"])}">' if v["page"] else f'<span class="{v["verdict"]}">')
            + f'{_MARKS[v["verdict"]]} {escape(v["label"])}' + ("</a>" if v["page"] else "</span>")
            for v in entry["validations"])
        verdicts = {v["verdict"] for v in entry["validations"]}
        verdict = next(v for v in ("failed", "warned", "passed") if v in verdicts or v == "passed")
        rows.append(f'<tr><td>{escape(entry["published"])}</td><td>{escape(entry["run_name"])}</td>'
                    f'<td>{escape(entry["run_time"])}</td><td class="{verdict}">{verdict}</td><td>{links}</td></tr>')
    return (f"""<!doctype html>
<html><head><meta charset="utf-8"><title>candleflow quality runs, {escape(timeframe)}</title>
<style>body{{font-family:sans-serif;margin:16px}} table{{border-collapse:collapse}}
td,th{{padding:4px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}}
.passed{{color:#176f2c}} .warned{{color:#9a6700}} .failed{{color:#b00020}} a{{margin-right:10px}}</style></head>
<body><h1>Quality runs, {escape(timeframe)}</h1>
<p>The {len(rows)} run(s) that published Data Docs most recently (at most {limit}), newest first.
<a href="index.html">The latest run's Data Docs</a>.</p>
<table><tr><th>published (UTC)</th><th>run</th><th>data up to</th><th>verdict</th><th>validations</th></tr>
{chr(10).join(rows)}
</table></body></html>
""").encode()
