"""The `lake_compaction` task graph: plan the finished days of the run's data interval, then one
mapped `compact` task per exchange merges, in each (symbol, timeframe, month) partition, the parts of
those days into one object (candleflow.compaction), and each pair's gap-ledger windows of those days
into one entry per covered stretch (candleflow.coverage.compact_day); then `coverage_reports`
rebuilds the coverage report of the timeframes those ledgers hold. XCom carries counts and names only."""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task

from candleflow.config import COVERAGE_POOL
from candleflow_airflow.aws import s3_client


@task
def plan_compaction() -> list[dict]:
    """One request per exchange of the universe: the finished UTC days of the data interval, plus
    `lookback_days` days before it (parts written late, after the day's first compaction)."""
    from datetime import timedelta

    from candleflow.config import ConfigError, load_universe

    ctx = get_current_context()
    start, end = ctx["data_interval_start"], ctx["data_interval_end"]
    lookback = ctx["params"].get("lookback_days", 1)
    if not isinstance(lookback, int) or lookback < 0:
        raise ConfigError(f"params.lookback_days {lookback!r}: use a whole number of days >= 0")
    day = start.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=lookback)
    dates = []
    while day + timedelta(days=1) <= end:  # only days the interval has finished
        dates.append(day.strftime("%Y-%m-%d"))
        day += timedelta(days=1)
    return [{"exchange": exchange, "dates": dates} for exchange in load_universe().exchanges]


@task(map_index_template="{{ exchange_label }}")
def compact(request: dict) -> dict:
    from candleflow import compaction, coverage, lake
    from candleflow.config import load_pipeline

    cfg = load_pipeline()
    get_current_context()["exchange_label"] = request["exchange"]
    s3 = s3_client(cfg.lake.aws_conn_id)
    spec = lake.ohlcv_spec(cfg.lake.ohlcv_prefix)
    totals = {"exchange": request["exchange"], "dates": request["dates"], "partitions": 0, "compacted": 0,
              "objects_merged": 0, "parts_kept": 0, "rows": 0, "ledger_days": 0, "ledger_objects_merged": 0,
              "ledger_timeframes": set()}
    # newest day first: its merge takes the earlier days of the same month too, which then have
    # nothing left to merge (one rewrite of the month's compacted object, not one per day)
    for date in sorted(request["dates"], reverse=True):
        for result in compaction.compact_day(s3, cfg.lake.bucket, spec, date, exchange=request["exchange"]):
            totals["partitions"] += 1
            if result.status == "compacted":
                totals["compacted"] += 1
                totals["objects_merged"] += result.merged
                totals["rows"] += result.rows
                totals["parts_kept"] += len(result.kept)
        # the gap ledger of the same day: its windows (a 1m ingest writes 1,440 per pair) → one entry
        for result in coverage.compact_day(s3, cfg.lake.bucket, date, exchange=request["exchange"]):
            totals["ledger_timeframes"].add(result["prefix"].split("/timeframe=", 1)[1].split("/", 1)[0])
            if result["status"] == "compacted":
                totals["ledger_days"] += 1
                totals["ledger_objects_merged"] += result["merged"]
                totals["parts_kept"] += len(result["kept"])
    totals["ledger_timeframes"] = sorted(totals["ledger_timeframes"])
    return totals


@task(trigger_rule=TriggerRule.ALL_DONE, pool=COVERAGE_POOL)
def coverage_reports(requests: list[dict], compacted) -> dict:
    """Rebuild the coverage report of each timeframe whose ledger the compaction found on those
    days, from the months of those days (one entry per pair and day now); the other months' daily
    tables are reused. It runs when an exchange's compaction failed too (it only reads the ledger):
    without that exchange's answer it rebuilds every timeframe. In the one-slot pool
    `candleflow_coverage` with ohlcv_backfill's `coverage_report`: a month's table is read, then
    written whole, so two at once could put back a stale one."""
    from candleflow import coverage
    from candleflow.config import TIMEFRAMES, load_pipeline

    cfg = load_pipeline()
    s3 = s3_client(cfg.lake.aws_conn_id)
    months = sorted({date[:7] for request in requests for date in request["dates"]})
    answers = [c for c in (compacted or []) if c]
    timeframes = (sorted({tf for c in answers for tf in c["ledger_timeframes"]}) if len(answers) == len(requests)
                  else TIMEFRAMES)
    return {timeframe: coverage.publish_report(s3, cfg.lake.bucket, timeframe, months=months)
            for timeframe in timeframes}


def lake_compaction_graph() -> None:
    requests = plan_compaction()
    coverage_reports(requests, compact.expand(request=requests))
