"""The OHLCV ingest task graph, shared by `ohlcv_ingest` (scheduled) and `ohlcv_backfill` (form).

    plan ──► pair[exchange, symbol] (mapped task group) ──► announce (emits the ohlcv asset)
                collect ─► validate ─► publish              └► fail_if_any_pair_failed

- collect: ccxt fetches exactly the window, pages through it, drops the open candle and stages
  the batch in S3 (`_staging/…`, keyed by run and pair, so a retry overwrites). A pair the exchange
  does not list is skipped with its reason.
- validate: the GX suite; a failing batch is copied to `quarantine/…` with its report and the task
  fails at once (no retry: bad data does not heal) with a one-paragraph summary.
- publish: writes the batch to the Hive-partitioned lake under deterministic keys and removes the
  staged copy.
- announce: runs when every pair is done and emits one asset event listing what landed, so the
  training DAG starts once per run, not once per pair. The watcher fails the run if any pair
  failed (a leaf that succeeds would otherwise mark the run green).

All stage logic lives in `candleflow`; the tasks here only resolve connections and hand over keys.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task, task_group

from candleflow_airflow.assets import OHLCV


def _s3_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


@task
def plan_interval(timeframe: str) -> list[dict]:
    """Every (exchange, symbol) of the universe for the run's data interval (scheduled runs and
    the UI's native backfill)."""
    from candleflow.plan import plan_pairs

    ctx = get_current_context()
    return plan_pairs(exchanges=None, symbols=None, timeframe=timeframe,
                      start=ctx["data_interval_start"], end=ctx["data_interval_end"])


@task
def plan_from_params() -> list[dict]:
    """The pairs and window of a form-triggered run, validated before any exchange is called."""
    from candleflow.plan import plan_pairs

    params = get_current_context()["params"]
    return plan_pairs(exchanges=params.get("exchanges"), symbols=params.get("symbols"),
                      timeframe=params["timeframe"], start=params["start"], end=params["end"])


@task
def collect(pair: dict) -> dict:
    import logging

    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow import lake
    from candleflow.collect import collect_pair
    from candleflow.config import load_pipeline, parse_utc

    log = logging.getLogger("candleflow.ingest")
    cfg = load_pipeline()
    result = collect_pair(
        pair["exchange"], pair["symbol"], pair["timeframe"],
        parse_utc(pair["start"], "start"), parse_utc(pair["end"], "end"),
        quotes=pair["quotes"], mode=cfg.exchange_mode, emulator_url=cfg.emulator_url,
        cfg=cfg.collect, enable_rate_limit=cfg.collect.enable_rate_limit,
    )
    for note in result.notes:
        log.warning("%s %s: %s", pair["exchange"], pair["symbol"], note)
    if result.skipped_reason:
        raise AirflowSkipException(result.skipped_reason)
    ctx = get_current_context()
    key = lake.stage_key(ctx["run_id"], pair["exchange"], pair["symbol"], pair["timeframe"])
    lake.write_staged(_s3_client(cfg.lake.aws_conn_id), cfg.lake.bucket, key, result.candles, result.market)
    log.info("%s %s (%s) %s: %d candles of %d expected, %d missing, %d requests",
             pair["exchange"], pair["symbol"], result.market, pair["timeframe"], len(result.candles),
             result.expected, result.missing, result.requests)
    return {**pair, "market": result.market, "staged_key": key, "rows": len(result.candles),
            "expected": result.expected, "missing": result.missing, "notes": list(result.notes)}


@task
def validate(batch: dict) -> dict:
    import logging

    from candleflow import lake, quality
    from candleflow.config import load_pipeline, parse_utc

    log = logging.getLogger("candleflow.ingest")
    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    candles, market = lake.read_staged(s3, cfg.lake.bucket, batch["staged_key"])
    label = f"{batch['exchange']} {market} {batch['timeframe']} {batch['start']} → {batch['end']}"
    report = quality.validate_ohlcv(candles, batch["timeframe"], context_label=label)
    if not report.success:
        key = lake.quarantine_batch(
            s3, cfg.lake.bucket, candles, report.to_json(),
            exchange=batch["exchange"], symbol=batch["symbol"], timeframe=batch["timeframe"], market=market,
            window_start=parse_utc(batch["start"], "start"), window_end=parse_utc(batch["end"], "end"),
        )
        raise quality.QualityError(f"{report.summary} Quarantined at s3://{cfg.lake.bucket}/{key}.")
    log.info("quality: %s", report.summary)
    return {**batch, "quality": {"success": True, "evaluated": report.evaluated_expectations}}


@task
def publish(batch: dict) -> dict:
    from candleflow import lake
    from candleflow.config import load_pipeline, parse_utc

    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    candles, market = lake.read_staged(s3, cfg.lake.bucket, batch["staged_key"])
    written = lake.write_batch(
        s3, cfg.lake.bucket, candles,
        exchange=batch["exchange"], symbol=batch["symbol"], timeframe=batch["timeframe"], market=market,
        window_start=parse_utc(batch["start"], "start"), window_end=parse_utc(batch["end"], "end"),
        prefix=cfg.lake.ohlcv_prefix,
    )
    lake.delete_staged(s3, cfg.lake.bucket, batch["staged_key"])
    return {"exchange": batch["exchange"], "symbol": batch["symbol"], "timeframe": batch["timeframe"],
            "start": batch["start"], "end": batch["end"],
            "rows": sum(o.rows for o in written), "keys": [o.key for o in written]}


@task_group(group_id="pair")
def ingest_pair(pair: dict):
    return publish(validate(collect(pair)))


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[OHLCV])
def announce(published, outlet_events=None) -> dict:
    """Emit one ohlcv asset event for the run, listing what landed; skip if nothing did."""
    from airflow.sdk.exceptions import AirflowSkipException

    landed = [p for p in (published or []) if p]
    if not landed:
        raise AirflowSkipException("no pair published any candles in this run")
    summary = {
        "pairs": len(landed),
        "rows": sum(p["rows"] for p in landed),
        "symbols": sorted({p["symbol"] for p in landed}),
        "timeframes": sorted({p["timeframe"] for p in landed}),
        "start": min(p["start"] for p in landed),
        "end": max(p["end"] for p in landed),
    }
    outlet_events[OHLCV].extra = summary
    return summary


# The watcher only mirrors failures that already alerted: no alert, no retry of its own.
@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_pair_failed() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("at least one pair failed (see the failed tasks above); the others landed")


def ohlcv_ingest_graph(pairs) -> None:
    """Wire the per-pair group, the asset announcement and the watcher after a plan task."""
    published = ingest_pair.expand(pair=pairs)
    done = announce(published)
    watcher = fail_if_any_pair_failed()
    published >> watcher
    done >> watcher
