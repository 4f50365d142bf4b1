"""The OHLCV ingest task graph, shared by the scheduled `ohlcv_ingest_<tf>` DAGs and `ohlcv_backfill`.

    plan ──► ingest_<exchange> ──► verdict_<exchange>        (fails if a batch was quarantined)
                 │   (pool candleflow_<exchange>)
                 ├──► announce_<tf>   (emits the candleflow_ohlcv_<tf> asset once per run, listing what landed)
                 ├──► coverage_report (ohlcv_backfill only: the coverage table + heatmap of its months;
                 │                     pool candleflow_coverage; scheduled runs leave it to lake_compaction)
                 └──► fail_if_any_exchange_failed (watcher: a partial failure fails the run)

- ingest_<exchange>: one task per exchange, in that exchange's Airflow pool `candleflow_<exchange>`
  (created at startup with the slots of include/config/budgets.yaml `pool_slots`), so concurrent
  DAGs — the 1m schedule beside a backfill — never run more tasks against one exchange than its
  pool allows. (A mapped task has one pool for all its instances, hence one task per exchange.)
  It owns that exchange's async ccxt client and loops over the symbols
  (candleflow.ingest.ingest_exchange): collect → GX suite → lake or quarantine → gap ledger, per
  chunk, skipping chunks already complete unless `force`. Its requests go through the exchange's
  limiter (candleflow.ratelimit), shared by every task process on the host; a ban alerts through
  the `candleflow_alerts` webhook. An exchange the run does not cover is skipped. A symbol the
  exchange does not list is skipped with its reason. An exchange error that survives the in-task
  retries fails the task *after* the other symbols landed, so Airflow retries it (only the
  incomplete chunks are fetched again in a backfill).
- verdict: fails with the quality summary when any batch of that exchange was quarantined (no
  retry: bad data does not heal); alerts once per exchange.
- announce runs when every exchange is done: one asset event, so `train_models` starts once per
  run, not once per pair.

All stage logic lives in `candleflow`; these tasks resolve connections and pass small dicts.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task

from candleflow.config import COVERAGE_POOL, EXCHANGES, pool_name
from candleflow_airflow.assets import OHLCV_BY_TIMEFRAME
from candleflow_airflow.aws import s3_client
from candleflow_airflow.notifiers import ban_alert


def _requests(pairs: list[dict], *, force: bool = False, chunk_seconds: int | None = None,
              budget: str | None = None) -> list[dict]:
    """Group the planned (exchange, symbol) pairs into one request per exchange."""
    by_exchange: dict[str, dict] = {}
    for pair in pairs:
        request = by_exchange.setdefault(pair["exchange"], {
            "exchange": pair["exchange"], "symbols": [], "timeframe": pair["timeframe"], "quotes": pair["quotes"],
            "page_size": pair.get("page_size"), "start": pair["start"], "end": pair["end"], "force": force,
            "chunk_seconds": chunk_seconds, "names": {}, "budget": budget,
        })
        request["symbols"].append(pair["symbol"])
        request["names"][pair["symbol"]] = pair.get("names") or [pair["symbol"]]
    return list(by_exchange.values())


@task
def plan_interval(timeframe: str) -> list[dict]:
    """Every exchange of the universe for the run's data interval, plus the previous interval(s)
    again (`collect.overlap_intervals`) so candles an exchange published late are picked up;
    each interval keeps its own deterministic lake keys, so the overlap rewrites, never duplicates."""
    from candleflow.config import load_pipeline
    from candleflow.plan import plan_pairs

    ctx = get_current_context()
    start, end = ctx["data_interval_start"], ctx["data_interval_end"]
    overlap = load_pipeline().collect.overlap_intervals
    pairs = plan_pairs(exchanges=None, symbols=None, timeframe=timeframe, start=start - (end - start) * overlap,
                       end=end)
    return _requests(pairs, chunk_seconds=int((end - start).total_seconds()))


@task
def plan_from_params() -> list[dict]:
    """The exchanges, symbols and window of a form-triggered run, validated before any exchange is
    called; logs what the request will cost at the exchanges' rate limits."""
    import logging

    from candleflow.config import parse_budget
    from candleflow.plan import estimate_cost, plan_pairs

    params = get_current_context()["params"]
    # refused before any exchange is called, like the other params
    budget = parse_budget(params["budget"], "params.budget") if params.get("budget") else None
    pairs = plan_pairs(exchanges=params.get("exchanges"), symbols=params.get("symbols"),
                       timeframe=params["timeframe"], start=params["start"], end=params["end"])
    for line in estimate_cost(pairs, budget):
        logging.getLogger("candleflow.ingest").info(line)
    return _requests(pairs, force=bool(params.get("force")), budget=budget)


@task
def ingest(requests: list[dict], exchange: str) -> dict:
    """This exchange's part of the plan (skipped when the run does not cover it)."""
    from dataclasses import replace
    from datetime import timedelta

    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow.config import load_pipeline, load_universe, parse_budget, parse_utc
    from candleflow.ingest import ingest_exchange

    request = next((r for r in requests or [] if r["exchange"] == exchange), None)
    if request is None:
        raise AirflowSkipException(f"{exchange} is not part of this run")
    cfg = load_pipeline()
    collect_cfg = cfg.collect
    if request.get("budget"):
        collect_cfg = replace(collect_cfg, budget=parse_budget(request["budget"], "budget"))
    page_size = request.get("page_size") or load_universe().exchanges[exchange].page_size
    chunk = timedelta(seconds=request["chunk_seconds"]) if request.get("chunk_seconds") else None
    report = ingest_exchange(
        s3_client(cfg.lake.aws_conn_id), cfg.lake, exchange=exchange, symbols=request["symbols"],
        timeframe=request["timeframe"], start=parse_utc(request["start"], "start"), end=parse_utc(request["end"], "end"),
        quotes=request["quotes"], page_size=page_size, mode=cfg.exchange_mode, emulator_url=cfg.emulator_url,
        collect_cfg=collect_cfg, force=request.get("force", False), chunk=chunk, names=request.get("names"),
        alert=ban_alert(cfg.alerts_conn_id),
    )
    failed = report.by_status("failed")
    if failed:
        # The other symbols landed; fail so Airflow retries (a retry re-fetches idempotently).
        details = "; ".join(f"{c.symbol} {c.start} → {c.end}: {c.detail}" for c in failed[:5])
        raise RuntimeError(f"{exchange}: {len(failed)} chunk(s) failed after retries: {details}")
    summary = report.to_json()
    for chunk_outcome in summary["chunks"]:
        # XCom carries counts, not the object keys (years of objects would bloat the metadata DB)
        chunk_outcome["objects"] = len(chunk_outcome.pop("keys"))
    return summary


@task
def verdict(report: dict) -> dict:
    """Fail, with the quality summary, when any batch of this exchange was quarantined
    (QualityError: the retry policy fails it at once, a retry would not change the data)."""
    import logging

    from candleflow.quality import QualityError

    quarantined = [c for c in report["chunks"] if c["status"] == "quarantined"]
    warned = [c for c in report["chunks"] if c["status"] == "published" and c.get("detail")]
    for chunk in warned:  # warn-level rules: published and tagged; said here, the run carries on
        logging.getLogger("candleflow.quality").warning(chunk["detail"])
    if quarantined:
        # the log ends with the summary: which rule, how many rows, three example rows
        raise QualityError("\n".join(c["detail"] for c in quarantined))
    return {"exchange": report["exchange"], "published": sum(c["status"] == "published" for c in report["chunks"]),
            "warned": len(warned)}


@task(trigger_rule=TriggerRule.ALL_DONE)
def quality_checks(reports) -> dict:
    """The run-level quality suites once every exchange finished: cross-exchange closes (and, in
    scheduled runs, freshness) over what the run landed; results and the run's GX Data Docs go to
    the lake. Fails with the summary (no retry) when an error-level rule failed."""
    from candleflow import lake
    from candleflow.config import load_pipeline, parse_utc
    from candleflow.quality import QualityError, results
    from candleflow.quality.runs import check_run
    from candleflow.quality.settings import load_quality

    cfg, qcfg = load_pipeline(), load_quality()
    ctx = get_current_context()
    s3 = s3_client(cfg.lake.aws_conn_id)
    scheduled = getattr(ctx["dag"], "schedule", None) is not None  # ohlcv_backfill's windows are history
    out, errors = {}, []
    for timeframe in sorted({r["timeframe"] for r in (reports or []) if r}):
        mine = [r for r in reports if r and r["timeframe"] == timeframe]
        chunks = [(r["exchange"], c) for r in mine for c in r["chunks"]]
        pairs = sorted({(ex, c["symbol"]) for ex, c in chunks if c["status"] != "skipped"})
        judged = []  # batches whose results the run's Data Docs show
        for ex, c in chunks:
            lo, hi = parse_utc(c["start"], "start"), parse_utc(c["end"], "end")
            label = f"{ex}-{c['symbol']}-{lo:%Y%m%dT%H%M%SZ}_{hi:%Y%m%dT%H%M%SZ}"
            if c["status"] == "quarantined":
                base = lake.partition_prefix(cfg.lake.quarantine_prefix, ex, c["symbol"], timeframe)
                judged.append((label, f"{base}window={lo:%Y%m%dT%H%M%SZ}_{hi:%Y%m%dT%H%M%SZ}/report.json"))
            elif c["status"] == "published" and (c.get("detail") or qcfg.data_docs_include_passed):
                judged.append((label, results.batch_result_key(cfg.lake.ohlcv_prefix, qcfg.results_dir, ex,
                                                               c["symbol"], timeframe, lo, hi)))
        summary = check_run(s3, cfg.lake.bucket, ohlcv_prefix=cfg.lake.ohlcv_prefix, timeframe=timeframe,
                            window_start=min(parse_utc(r["start"], "start") for r in mine),
                            window_end=max(parse_utc(r["end"], "end") for r in mine), pairs=pairs,
                            scheduled=scheduled, batch_results=judged, run_name=ctx["run_id"], config=qcfg)
        errors += summary.pop("errors")
        out[timeframe] = summary
    if errors:
        raise QualityError("\n".join(errors))
    return out


@task(trigger_rule=TriggerRule.ALL_DONE)
def announce(reports, timeframe: str, outlet_events=None) -> dict:
    """Emit one `candleflow_ohlcv_<tf>` asset event for the run, listing what landed; skip (and
    emit nothing) if nothing of that timeframe did."""
    from airflow.sdk.exceptions import AirflowSkipException

    landed = [(r, c) for r in (reports or []) if r and r["timeframe"] == timeframe
              for c in r["chunks"] if c["status"] == "published"]
    if not landed:
        raise AirflowSkipException(f"no exchange published {timeframe} candles in this run")
    summary = {
        "pairs": len({(r["exchange"], c["symbol"]) for r, c in landed}),
        "rows": sum(c["rows"] for _, c in landed),
        "symbols": sorted({c["symbol"] for _, c in landed}),
        "exchanges": sorted({r["exchange"] for r, _ in landed}),
        "timeframes": sorted({r["timeframe"] for r, _ in landed}),
        "start": min(c["start"] for _, c in landed),
        "end": max(c["end"] for _, c in landed),
    }
    outlet_events[OHLCV_BY_TIMEFRAME[timeframe]].extra = summary
    return summary


@task(trigger_rule=TriggerRule.ALL_DONE, pool=COVERAGE_POOL)
def coverage_report(reports) -> dict:
    """Rebuild the coverage table and heatmap of the timeframe(s) a backfill touched, from the
    ledger of the months its chunks cover. In the one-slot pool `candleflow_coverage`, like
    lake_compaction's `coverage_reports`: a month's table is read, then written whole."""
    from candleflow import coverage, lake
    from candleflow.config import load_pipeline, parse_utc

    cfg = load_pipeline()
    s3 = s3_client(cfg.lake.aws_conn_id)
    published = {}
    for timeframe in sorted({r["timeframe"] for r in (reports or []) if r}):
        months = {month for r in reports if r and r["timeframe"] == timeframe for c in r["chunks"]
                  for month, _, _ in lake.time_slices(parse_utc(c["start"], "start"), parse_utc(c["end"], "end"))}
        published[timeframe] = coverage.publish_report(s3, cfg.lake.bucket, timeframe, months=sorted(months))
    return published


# The watcher only mirrors failures that already alerted: no alert, no retry of its own.
@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_exchange_failed() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("at least one exchange failed or quarantined a batch (see the failed tasks); "
                               "everything else landed")


def ohlcv_ingest_graph(requests, timeframes: tuple[str, ...], *, coverage: bool = False) -> None:
    """Wire ingest and verdict per exchange (each ingest in its exchange's pool), announce (one per
    timeframe the DAG may collect), quality checks, the coverage report (`coverage`: ohlcv_backfill)
    and the watcher after a plan task. The scheduled DAGs have no coverage report task:
    re-reading a month of ledger every minute (a 1m ingest) would cost more than the collection;
    lake_compaction rebuilds it daily."""
    reports = [ingest.override(task_id=f"ingest_{exchange}", pool=pool_name(exchange))(requests, exchange=exchange)
               for exchange in EXCHANGES]
    verdicts = [verdict.override(task_id=f"verdict_{exchange}")(report)
                for exchange, report in zip(EXCHANGES, reports, strict=True)]
    done = [announce.override(task_id=f"announce_{tf}", outlets=[OHLCV_BY_TIMEFRAME[tf]])(reports, timeframe=tf)
            for tf in timeframes]
    checks = quality_checks(reports)
    watcher = fail_if_any_exchange_failed()
    [*reports, *verdicts, checks] >> watcher
    done >> watcher
    if coverage:
        coverage_report(reports) >> watcher
