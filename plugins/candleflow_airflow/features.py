"""The task graph of the `features` DAG:

    plan_features ─► build_features[symbol] ─► announce_features (asset candleflow_features) (+ watcher)

`plan_features` decides the symbols and the window (the form, else what the triggering ohlcv asset
events say landed), widens the window back by the label horizon (those candles' labels can now be
computed), and fetches the Fear & Greed index once for the whole run (staged in S3, so the mapped
tasks do not each call the external source). Each mapped task builds one symbol's daily partitions
from every exchange of the universe (candleflow.features.build_features). XCom carries counts.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task

from candleflow_airflow.assets import FEATURES
from candleflow_airflow.aws import s3_client


def _window_from_events(ctx, timeframe: str):
    """(symbols, start, end) of what the triggering ohlcv asset events of this timeframe landed."""
    from candleflow.config import parse_utc

    symbols, start, end = set(), None, None
    for events in (ctx.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            if timeframe not in (extra.get("timeframes") or [timeframe]):
                continue
            symbols.update(extra.get("symbols") or [])
            if extra.get("start"):
                s = parse_utc(extra["start"], "asset event start")
                start = min(start, s) if start else s
            if extra.get("end"):
                e = parse_utc(extra["end"], "asset event end")
                end = max(end, e) if end else e
    return sorted(symbols), start, end


@task
def plan_features() -> list[dict]:
    """One request per symbol: {symbol, timeframe, start, end, fear_greed_key}."""
    import re
    from datetime import UTC, datetime, timedelta

    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow import features
    from candleflow.config import (
        TIMEFRAME_MS,
        ConfigError,
        load_pipeline,
        load_universe,
        parse_timeframe,
        parse_utc,
    )

    ctx = get_current_context()
    params = ctx["params"]
    cfg = features.load_config()
    universe = load_universe()
    timeframe = parse_timeframe(params.get("timeframe") or cfg.timeframes[0], "timeframe")
    if timeframe not in cfg.timeframes:
        raise AirflowSkipException(f"features are built for {', '.join(cfg.timeframes)} (features.yaml timeframes), "
                                   f"not {timeframe}")
    event_symbols, event_start, event_end = _window_from_events(ctx, timeframe)
    symbols = [s.upper() for s in (params.get("symbols") or [])] or event_symbols or list(universe.symbols)
    unknown = [s for s in symbols if s not in universe.symbols]
    if unknown:
        raise ConfigError(f"symbols: {', '.join(unknown)} not in the universe ({', '.join(universe.symbols)})")
    end = parse_utc(params["end"], "end") if params.get("end") else event_end or datetime.now(UTC)
    start = parse_utc(params["start"], "start") if params.get("start") else event_start or end - timedelta(days=1)
    if end <= start:
        raise ConfigError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    # the candles before the new ones can now get their labels: rebuild back one horizon
    start -= timedelta(milliseconds=TIMEFRAME_MS[timeframe] * cfg.horizon_bars)

    pipeline = load_pipeline()
    url = features.fear_greed_url(cfg, pipeline)
    frame = features.fetch_fear_greed(url, cfg.fear_greed_timeout_seconds)
    # run-scoped scratch space between tasks (lake.staging_prefix in pipeline.yaml)
    key = f"{pipeline.lake.staging_prefix}/features/{re.sub(r'[^A-Za-z0-9._-]+', '_', ctx['run_id'])}/fear_greed.json"
    features.stage_fear_greed(s3_client(pipeline.lake.aws_conn_id), pipeline.lake.bucket, key, frame,
                              source="fear_greed:" + url.split("?")[0])
    return [{"symbol": s, "timeframe": timeframe, "start": start.isoformat(), "end": end.isoformat(),
             "fear_greed_key": key} for s in symbols]


@task
def build_features(request: dict) -> dict:
    from candleflow import features
    from candleflow.config import load_pipeline, load_universe, parse_utc

    pipeline = load_pipeline()
    s3 = s3_client(pipeline.lake.aws_conn_id)
    fear_greed, source = features.read_staged_fear_greed(s3, pipeline.lake.bucket, request["fear_greed_key"])
    days = features.build_features(
        s3, pipeline.lake.bucket, request["symbol"], request["timeframe"],
        parse_utc(request["start"], "start"), parse_utc(request["end"], "end"),
        exchanges=list(load_universe().exchanges), fear_greed=fear_greed, fear_greed_source=source,
    )
    return {"symbol": request["symbol"], "timeframe": request["timeframe"], "start": request["start"],
            "end": request["end"], "days": len(days), "objects": sum(1 for d in days if d["key"]),
            "rows": sum(d["rows"] for d in days)}


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[FEATURES])
def announce_features(results, requests, outlet_events=None) -> dict:
    """One candleflow_features event per run naming what was rebuilt; nothing written, no event.
    Also drops the run's staged Fear & Greed copy."""
    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow.config import load_pipeline

    pipeline = load_pipeline()
    for key in sorted({r["fear_greed_key"] for r in (requests or []) if r}):
        s3_client(pipeline.lake.aws_conn_id).delete_object(Bucket=pipeline.lake.bucket, Key=key)
    done = [r for r in (results or []) if r and r["objects"]]
    if not done:
        raise AirflowSkipException("no features partition was written in this run")
    summary = {
        "symbols": sorted({r["symbol"] for r in done}),
        "timeframe": done[0]["timeframe"],
        "start": min(r["start"] for r in done),
        "end": max(r["end"] for r in done),
        "objects": sum(r["objects"] for r in done),
        "rows": sum(r["rows"] for r in done),
    }
    outlet_events[FEATURES].extra = summary
    return summary


# The watcher only mirrors failures that already alerted: no alert, no retry of its own.
@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_symbol_failed() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("features failed for at least one symbol (see the failed tasks); the others landed")


def features_graph() -> None:
    requests = plan_features()
    results = build_features.expand(request=requests)
    announced = announce_features(results, requests)
    [results, announced] >> fail_if_any_symbol_failed()
