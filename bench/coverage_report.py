"""Benchmark: the coverage report rebuilt from the whole gap ledger vs from the one month that changed.

    .venv/bin/python bench/coverage_report.py [--exchanges 5] [--symbols 6] [--days 120]

The ledger as `lake_compaction` leaves it: one entry per pair and day (the day's window, every 1h
candle present), for exchanges × symbols pairs over `days` days ending 2024-10-31, written to the
S3 stand-in (moto, started through `LocalStack`). Then, timed:
- **full**: `coverage.publish_report(months=None)`, what every ingest run did before the month
  tables (and what the first report of a timeframe without them does): it lists and GETs every
  entry of the timeframe;
- **incremental**: a later run re-fetched one hour of the last day; `publish_report(months=[its
  month])`, what `ohlcv_backfill` and `lake_compaction` do now: that month's entries are read, the
  other months' daily tables are reused.
Both reports are compared (they must be equal). It prints seconds, GETs and LISTs of each, and the
last line `coverage_full_over_incremental=<seconds ratio>`. The ratio grows with the history: the
full rebuild reads every month, the incremental one a month plus one small table per month.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from candleflow import coverage
from candleflow.config import TIMEFRAME_MS
from candleflow.lake import _in_flight
from candleflow.stack import LocalStack, Ports

EXCHANGES = ["binance", "coinbase", "kraken", "bybit", "okx"]
SYMBOLS = ["BTC", "ETH", "SOL", "ADA", "DOT", "AVAX", "LINK", "LTC", "XLM", "ATOM"]
HOUR = TIMEFRAME_MS["1h"]


def day_entry(exchange: str, symbol: str, day: datetime, present_hours=range(24)):
    return coverage.build_entries(exchange=exchange, symbol=symbol, timeframe="1h", tf_ms=HOUR, window_start=day,
                                  window_end=day + timedelta(days=1),
                                  present_ms=[int((day + timedelta(hours=h)).timestamp() * 1000) for h in present_hours],
                                  market=f"{symbol}/USDT", status="complete")


def counted(s3, fn):
    """(seconds, result, {operation: calls}) of fn()."""
    calls: Counter[str] = Counter()

    def count(model, **_):
        calls[model.name] += 1

    s3.meta.events.register("before-call.s3", count)
    try:
        started = time.perf_counter()
        result = fn()
        return time.perf_counter() - started, result, calls
    finally:
        s3.meta.events.unregister("before-call.s3", count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--days", type=int, default=120)
    args = parser.parse_args()
    pairs = [(e, s) for e in EXCHANGES[: args.exchanges] for s in SYMBOLS[: args.symbols]]
    last = datetime(2024, 10, 31, tzinfo=UTC)
    days = [last - timedelta(days=i) for i in range(args.days)][::-1]

    with tempfile.TemporaryDirectory(prefix="candleflow-bench-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", ports=Ports.free(), lake_bucket="candleflow-bench")
        try:
            stack.start("moto")
            stack.ensure_buckets()
            s3, bucket = stack.s3_client(), stack.lake_bucket
            started = time.perf_counter()
            _in_flight(lambda job: coverage.write_entries(s3, bucket, day_entry(*job)),
                       [(e, s, d) for e, s in pairs for d in days])
            months = sorted({d.strftime("%Y-%m") for d in days})
            print(f"ledger: {len(pairs)} pairs x {len(days)} days = {len(pairs) * len(days):,} entries over "
                  f"{len(months)} months ({months[0]} .. {months[-1]}), written in {time.perf_counter() - started:.1f} s")

            full_s, _, full_calls = counted(s3, lambda: coverage.publish_report(s3, bucket, "1h"))
            # a later run re-fetched one hour of the last day
            hour = last + timedelta(hours=5)
            coverage.write_entries(s3, bucket, coverage.build_entries(
                exchange=pairs[0][0], symbol=pairs[0][1], timeframe="1h", tf_ms=HOUR, window_start=hour,
                window_end=hour + timedelta(hours=1), present_ms=[int(hour.timestamp() * 1000)],
                market=f"{pairs[0][1]}/USDT", status="complete"))
            inc_s, published, inc_calls = counted(
                s3, lambda: coverage.publish_report(s3, bucket, "1h", months=[last.strftime("%Y-%m")]))
            report = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=published["table"])["Body"].read()))
            expected = coverage.coverage_table(coverage.read_entries(s3, bucket, timeframe="1h"))
            pd.testing.assert_frame_equal(report.reset_index(drop=True), expected.reset_index(drop=True),
                                          check_dtype=False)
        finally:
            stack.stop("moto")

    def line(name, seconds, calls):
        return (f"{name:<12} {seconds:7.2f} s   GET {calls['GetObject']:>6,}   LIST {calls['ListObjectsV2']:>4,}   "
                f"PUT {calls['PutObject']:>3}")

    print(line("full", full_s, full_calls))
    print(line("incremental", inc_s, inc_calls) + "   (the report equals a full rebuild)")
    print(f"coverage_full_over_incremental={full_s / inc_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
