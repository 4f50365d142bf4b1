"""The derivatives task graph (DAG `derivatives_ingest`): funding rates and open interest of the
linear USDT perpetuals into the lake (logic: candleflow.derivatives).

    plan ──► ingest_derivatives[exchange] ──► announce_derivatives   (candleflow_funding, candleflow_open_interest)
                                          └─► fail_if_any_exchange_failed (watcher)

- plan: the window — a manual run's `start`/`end` params, else the run's data interval widened by
  `lookback_hours` (include/config/derivatives.yaml) — and one request per exchange; bad params
  fail here (ConfigError, no retry) before any exchange is called.
- ingest_derivatives: one mapped task per exchange, owning its ccxt client and rate limit, loops
  over the symbols. A symbol without a perpetual is skipped with its reason; one that still fails
  after the in-task retries fails the task after the others landed, so Airflow retries it.
- announce: one asset event per table and run, listing what landed; skipped if nothing did.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task

from candleflow_airflow.assets import FUNDING, OPEN_INTEREST
from candleflow_airflow.aws import s3_client
from candleflow_airflow.notifiers import ban_alert


@task
def plan_derivatives() -> list[dict]:
    from candleflow.config import ConfigError, parse_utc
    from candleflow.derivatives import load_config

    ctx = get_current_context()
    params = ctx.get("params") or {}
    cfg = load_config()
    if params.get("start") or params.get("end"):
        if not (params.get("start") and params.get("end")):
            raise ConfigError("start/end: give both (ISO instants, e.g. 2024-10-01T00:00:00Z) or neither")
        start, end = parse_utc(params["start"], "start"), parse_utc(params["end"], "end")
    else:
        start, end = ctx["data_interval_start"] - cfg.lookback, ctx["data_interval_end"]
    if end <= start:
        raise ConfigError(f"end: {end.isoformat()} must be after start ({start.isoformat()})")
    exchanges = params.get("exchanges") or list(cfg.exchanges)
    unknown = [ex for ex in exchanges if ex not in cfg.venues]
    if unknown:
        raise ConfigError(f"exchanges: {unknown} are not configured; use some of {', '.join(cfg.venues)}")
    symbols = [str(s).upper() for s in (params.get("symbols") or cfg.symbols)]
    bad = [s for s in symbols if s not in cfg.symbols]
    if bad:
        raise ConfigError(f"symbols: {bad} are not in derivatives.yaml's symbols; use some of {', '.join(cfg.symbols)}")
    return [{"exchange": ex, "symbols": symbols, "start": start.isoformat(), "end": end.isoformat()}
            for ex in exchanges]


@task(map_index_template="{{ exchange_label }}")
def ingest_derivatives(request: dict) -> dict:
    from candleflow import derivatives
    from candleflow.config import load_pipeline, parse_utc

    get_current_context()["exchange_label"] = request["exchange"]
    pipeline = load_pipeline()
    report = derivatives.ingest_exchange(
        s3_client(pipeline.lake.aws_conn_id), pipeline.lake.bucket, request["exchange"],
        parse_utc(request["start"], "start"), parse_utc(request["end"], "end"), cfg=derivatives.load_config(),
        mode=pipeline.exchange_mode, emulator_url=pipeline.emulator_url, collect_cfg=pipeline.collect,
        symbols=request["symbols"], alert=ban_alert(pipeline.alerts_conn_id))
    return report.summary()


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[FUNDING, OPEN_INTEREST])
def announce_derivatives(reports, outlet_events=None) -> dict:
    """One event per table for the run (what landed); skip if no exchange landed anything."""
    from airflow.sdk.exceptions import AirflowSkipException

    reports = [r for r in (reports or []) if r]
    summary = {}
    for asset, kind in ((FUNDING, "funding"), (OPEN_INTEREST, "open_interest")):
        landed = [(r["exchange"], s["symbol"], s[f"{kind}_rows"]) for r in reports for s in r["symbols"]
                  if s[f"{kind}_rows"]]
        if landed:
            summary[kind] = {"exchanges": sorted({e for e, _, _ in landed}), "symbols": sorted({s for _, s, _ in landed}),
                             "rows": sum(n for _, _, n in landed), "start": min(r["start"] for r in reports),
                             "end": max(r["end"] for r in reports)}
            outlet_events[asset].extra = summary[kind]
    if not summary:
        raise AirflowSkipException("no exchange landed funding or open interest in this run")
    return summary


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_exchange_failed() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("at least one exchange failed (see the failed tasks); everything else landed")


def derivatives_graph() -> None:
    reports = ingest_derivatives.expand(request=plan_derivatives())
    announced = announce_derivatives(reports)
    watcher = fail_if_any_exchange_failed()
    [reports, announced] >> watcher
