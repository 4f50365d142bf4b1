"""Run-level suites, over what one ingest run landed (all exchanges, after they finished).

- cross_exchange: for each symbol and candle, one exchange's close against the median close of
  the other exchanges; |close / median − 1| beyond `max_deviation` is a bad print on that exchange
  or a wrong symbol mapping. Needs `min_others` other exchanges with that candle.
- freshness (scheduled runs): the newest candle of every pair the run collected is at most
  `max_lag_intervals[tf]` intervals older than the last candle the run's data interval closes.

Each is one GX validation of a small derived frame (one expectation), so its cost does not grow
with the number of pairs; `check_run` keeps their results (JSON, `quality` table rows), renders
the Data Docs of a run that found something and says whether an error-level rule failed. A long
window (a backfill of years) is judged one UTC month at a time — read, validated, kept, released
— so memory holds one month of the run's pairs, not the whole window.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from candleflow.config import TIMEFRAME_MS
from candleflow.quality.report import QualityReport, describe_failures, summarise
from candleflow.quality.suite import (
    GX_LOCK,
    GX_SEVERITY,
    clean_result,
    dataframe_batch_definition,
    gx_context,
)

if TYPE_CHECKING:
    import pandas as pd

    from candleflow.quality.settings import QualityConfig, Rule

log = logging.getLogger(__name__)


def _validate(frame, suite_name: str, rule_name: str, rule: Rule, expectation, label: str,
              example_columns: list[str]) -> QualityReport:
    gx, context = gx_context()
    expectation.severity = GX_SEVERITY[rule.severity]
    expectation.meta = {"rule": rule_name, "severity": rule.severity}
    with GX_LOCK:
        suite = gx.ExpectationSuite(name=suite_name)
        suite.add_expectation(expectation)
        suite = context.suites.add_or_update(suite)
        batch = dataframe_batch_definition(context, suite_name).get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 3})
    evaluated = int(result.statistics["evaluated_expectations"])
    failed = describe_failures(result, frame, example_columns, {}, "")
    return QualityReport(success=not any(f["severity"] == "error" for f in failed), evaluated_expectations=evaluated,
                         failed=failed, row_count=len(frame), summary=summarise(label, failed, evaluated, len(frame)),
                         gx_result=clean_result(result))


def cross_exchange_frame(candles: pd.DataFrame, min_others: int) -> pd.DataFrame:
    """exchange, symbol, ts, close, others_median, others, deviation (NaN where fewer than
    `min_others` other exchanges have the candle)."""
    import numpy as np
    import pandas as pd

    columns = ["exchange", "symbol", "ts", "close", "others_median", "others", "deviation"]
    if candles.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    wide = candles.pivot_table(index=["symbol", "ts"], columns="exchange", values="close", aggfunc="last")
    matrix = wide.to_numpy(dtype="float64")
    parts = []
    for i, exchange in enumerate(wide.columns):
        others = np.delete(matrix, i, axis=1)
        count = (~np.isnan(others)).sum(axis=1)
        with np.errstate(all="ignore"):
            median = np.nanmedian(others, axis=1) if others.shape[1] else np.full(len(matrix), np.nan)
            deviation = np.abs(matrix[:, i] / median - 1.0)
        deviation[(count < min_others) | ~np.isfinite(deviation)] = np.nan
        part = pd.DataFrame({"exchange": exchange, "symbol": wide.index.get_level_values(0),
                             "ts": wide.index.get_level_values(1), "close": matrix[:, i], "others_median": median,
                             "others": count, "deviation": deviation})
        parts.append(part[~np.isnan(part["close"].to_numpy())])
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(["symbol", "ts", "exchange"], kind="stable").reset_index(drop=True)[columns]


def cross_exchange(candles: pd.DataFrame, timeframe: str, config: QualityConfig,
                   label: str = "run") -> tuple[QualityReport, pd.DataFrame]:
    """The cross-exchange suite on candles of several exchanges (columns exchange, symbol, ts, close)."""
    import great_expectations.expectations as gxe

    rule = config.cross_exchange
    frame = cross_exchange_frame(candles, int(rule["min_others"]))
    expectation = gxe.ExpectColumnValuesToBeBetween(column="deviation", max_value=rule["max_deviation"])
    report = _validate(frame, f"cross_exchange_{timeframe}", "cross_exchange", rule, expectation,
                       f"cross-exchange closes, {label}", ["exchange", "symbol", "ts", "close", "others_median"])
    return report, frame


def freshness_frame(newest: dict[tuple[str, str], datetime | None], reference_end: datetime, timeframe: str,
                    lookback_intervals: int) -> pd.DataFrame:
    """exchange, symbol, newest (open time), age_intervals: 0 when the interval's last candle is
    there; `lookback_intervals` when the pair has no candle in the lookback at all."""
    import pandas as pd

    tf = timedelta(milliseconds=TIMEFRAME_MS[timeframe])
    rows = []
    for (exchange, symbol), ts in sorted(newest.items()):
        age = lookback_intervals if ts is None else max(0.0, (reference_end - (ts + tf)) / tf)
        rows.append({"exchange": exchange, "symbol": symbol, "newest": "none" if ts is None else ts.isoformat(),
                     "age_intervals": float(age)})
    return pd.DataFrame(rows, columns=["exchange", "symbol", "newest", "age_intervals"])


def freshness(newest: dict, reference_end: datetime, timeframe: str, config: QualityConfig,
              label: str = "run") -> tuple[QualityReport, pd.DataFrame]:
    import great_expectations.expectations as gxe

    max_lag = config.freshness_max_lag[timeframe]
    frame = freshness_frame(newest, reference_end, timeframe, lookback_intervals=max_lag + 2)
    expectation = gxe.ExpectColumnValuesToBeBetween(column="age_intervals", max_value=max_lag)
    report = _validate(frame, f"freshness_{timeframe}", "freshness", config.freshness, expectation,
                       f"freshness at {reference_end.isoformat()}, {label}", ["exchange", "symbol", "newest",
                                                                              "age_intervals"])
    return report, frame


def _per_pair(frame, column: str, limit: float) -> dict:
    import numpy as np

    out = {}
    if frame.empty:
        return out
    bad = frame[column].to_numpy(dtype="float64") > limit
    for (exchange, symbol), idx in frame.groupby(["exchange", "symbol"], sort=True).indices.items():
        out[(exchange, symbol)] = (int(np.count_nonzero(bad[idx])), len(idx))
    return out


def check_run(s3, bucket: str, *, ohlcv_prefix: str, timeframe: str, window_start: datetime, window_end: datetime,
              pairs: list[tuple[str, str]], scheduled: bool, batch_results: list[tuple[str, str]] = (),
              run_name: str = "", config: QualityConfig | None = None) -> dict:
    """The run-level suites over the lake's candles of [window_start, window_end) for `pairs`
    ((exchange, symbol) the run collected), their results kept, and the run's Data Docs (with the
    batch results listed in `batch_results` as (label, JSON key)) when anything failed or warned
    or `data_docs_include_passed` is set (`data_docs` is None otherwise). Returns a summary with
    `errors` (error-level failures' summaries), `warnings` and `results` ({suite: [result keys]}:
    a backfill's cross-exchange suite has one per UTC month of its window)."""
    import json

    from candleflow import lake
    from candleflow.lake import _put
    from candleflow.quality import results
    from candleflow.quality.settings import load_quality

    config = config or load_quality()
    tf = timedelta(milliseconds=TIMEFRAME_MS[timeframe])
    summary: dict = {"timeframe": timeframe, "window_start": window_start.isoformat(),
                     "window_end": window_end.isoformat(), "pairs": len(pairs), "errors": [], "warnings": [],
                     "results": {}}
    docs: list[tuple[str, dict]] = []
    findings = False  # anything failed or warned: only then are the run's Data Docs published
    spec = lake.ohlcv_spec(ohlcv_prefix)
    import pandas as pd

    def read(start: datetime, end: datetime) -> pd.DataFrame:
        """The pairs' closes in [start, end): one read per pair, a few at once (a scheduled run
        judges up to 150 pairs, each read S3 latency), keeping only the columns judged."""
        columns = ["exchange", "symbol", "ts", "close"]
        frames = lake._in_flight(lambda pair: lake.read(s3, bucket, spec, exchange=pair[0], symbol=pair[1],
                                                        timeframe=timeframe, start=start, end=end)[columns],
                                 sorted(set(pairs)))
        frames = [frame for frame in frames if len(frame)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            {"exchange": [], "symbol": [], "ts": pd.Series(dtype="datetime64[ms, UTC]"), "close": []})

    def keep(suite: str, report: QualityReport, per_pair: dict, lo: datetime, hi: datetime, label: str) -> None:
        nonlocal findings
        key = results.run_result_key(ohlcv_prefix, config.results_dir, suite, timeframe, lo, hi)
        _put(s3, bucket, key, results.result_document(report, suite=suite, timeframe=timeframe,
                                                      window_start=lo.isoformat(), window_end=hi.isoformat()),
             content_type="application/json")
        rows = results.table_rows(report, suite=suite, exchange="", symbol="", window_start=lo, window_end=hi,
                                  result_key=key, per_pair=per_pair)
        results.write_table_rows(s3, bucket, rows, timeframe=timeframe, suite=suite, exchange="", symbol="",
                                 window_start=lo, window_end=hi)
        summary["results"].setdefault(suite, []).append(key)
        if report.errors:
            summary["errors"].append(report.summary)
        elif report.warnings:
            summary["warnings"].append(report.summary)
        log.log(logging.ERROR if report.errors else logging.WARNING if report.warnings else logging.INFO,
                report.summary)
        docs.append((label, report.gx_result))
        findings = findings or bool(report.failed)

    if scheduled:
        # its interval (plus the overlap re-fetched) and the freshness lookback: one read for both
        lookback = window_start
        if config.freshness.on:
            lookback = min(window_start, window_end - tf * (config.freshness_max_lag[timeframe] + 2))
        slices, candles = [(window_start, window_end)], read(lookback, window_end)
    else:
        slices = [(lo, hi) for _, lo, hi in lake.time_slices(window_start, window_end, "month")]
        candles = None
    if config.cross_exchange.on:
        for lo, hi in slices:
            month = candles[candles["ts"] >= window_start] if candles is not None else read(lo, hi)
            report, frame = cross_exchange(month, timeframe, config, label=f"{timeframe} {lo.isoformat()}")
            keep("cross_exchange", report, _per_pair(frame, "deviation", config.cross_exchange["max_deviation"]),
                 lo, hi, f"cross_exchange-{timeframe}" + (f"-{lo:%Y-%m}" if len(slices) > 1 else ""))
            del month, frame   # a backfill's next month reuses the memory
    if scheduled and config.freshness.on:
        newest = {pair: None for pair in set(pairs)}
        for (exchange, symbol), group in candles.groupby(["exchange", "symbol"]):
            newest[(exchange, symbol)] = group["ts"].max().to_pydatetime()
        report, frame = freshness(newest, window_end, timeframe, config, label=f"{timeframe} run")
        keep("freshness", report, _per_pair(frame, "age_intervals", config.freshness_max_lag[timeframe]),
             window_start, window_end, f"freshness-{timeframe}")
    for label, key in batch_results:
        try:
            document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            continue
        docs.append((label, document["gx_result"]))
        findings = True  # the caller lists failed or warned batches (every batch with include_passed)
    # A clean run renders nothing: no GX rendering per run, no orphan pages, and the index keeps
    # showing the last run that found something. A run with findings shows its suites, passed too.
    summary["data_docs"] = results.publish_data_docs(
        s3, bucket, docs, timeframe=timeframe, run_name=run_name, run_time=window_end.astimezone(UTC),
        prefix=config.data_docs_prefix, history_runs=config.data_docs_history_runs,
    ) if findings or config.data_docs_include_passed else None
    return summary
