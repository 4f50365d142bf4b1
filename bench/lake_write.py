"""Benchmark: writing 1 M 1m candles to the lake (S3 stand-in) vs pyarrow to local disk.

    .venv/bin/python bench/lake_write.py [--rows 1000000] [--repeat 3]

(a) `candleflow.lake.write_batch` to the moto server (started through `LocalStack` in a temp state
    dir, stopped at the end): one zstd parquet object per UTC date, exactly as the ingest writes;
(b) the same table written by pyarrow to local disk with the same partitioning and options
    (`pq.write_table` per date partition, zstd, dictionary on `market`, statistics).

Each is timed best of --repeat; the last line is `lake_write_ratio=<S3 rows/s / local rows/s>`
(issue 4 targets >= 0.5). A separate instrumented run breaks write_batch's time down into
partition slicing, Arrow conversion, parquet serialisation and the PUTs, plus a PUT-only replay of
the same bodies, so a low ratio says where the time goes. Both sides run on the same machine:
moto's HTTP server competes with the client for the CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from candleflow import lake
from candleflow.stack import AWS_KEY, AWS_REGION, LocalStack, Ports

EXCHANGE, SYMBOL, TIMEFRAME, MARKET = "binance", "BTC", "1m", "BTC/USDT"
START = datetime(2023, 1, 1, tzinfo=UTC)
SEED = 20240401


def make_candles(rows: int, seed: int = SEED, start: datetime = START, price: float = 30_000.0) -> pd.DataFrame:
    """`rows` consecutive 1m candles of one market: a GBM close path, opens at the previous close,
    wicks beyond the body, lognormal volume. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=rows, freq="1min", tz="UTC").astype("datetime64[ms, UTC]")
    log_ret = rng.normal(0.0, 0.0008, rows)
    close = price * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[price], close[:-1]])
    body_hi, body_lo = np.maximum(open_, close), np.minimum(open_, close)
    high = body_hi * (1 + np.abs(rng.normal(0, 0.0004, rows)))
    low = body_lo * (1 - np.abs(rng.normal(0, 0.0004, rows)))
    volume = rng.lognormal(mean=2.0, sigma=1.0, size=rows)
    return pd.DataFrame({"ts": ts, "open": np.round(open_, 2), "high": np.round(high, 2),
                         "low": np.round(low, 2), "close": np.round(close, 2), "volume": np.round(volume, 6)}
                        ).assign(high=lambda f: f[["open", "high", "close"]].max(axis=1),
                                 low=lambda f: f[["open", "low", "close"]].min(axis=1))


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


def write_local(table: pa.Table, root: Path, window_start: datetime, window_end: datetime) -> tuple[int, int]:
    """The pyarrow baseline: the same key layout and parquet options as the lake, on local disk.
    The table is sorted by ts, so each date is one contiguous slice found by binary search."""
    if root.exists():
        shutil.rmtree(root)
    ts = table.column("ts").to_numpy()
    files = size = 0
    for day, lo, hi in lake._days(window_start, window_end):
        a, b = np.searchsorted(ts, [np.datetime64(lo.replace(tzinfo=None), "ms"),
                                    np.datetime64(hi.replace(tzinfo=None), "ms")])
        if a == b:
            continue
        path = root / (lake.partition_prefix("ohlcv", EXCHANGE, SYMBOL, TIMEFRAME, day.strftime("%Y-%m-%d"))
                       + f"part-{lake._stamp(lo)}_{lake._stamp(hi)}.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(a, b - a), path, compression="zstd", use_dictionary=["market"],
                       write_statistics=True)
        files += 1
        size += path.stat().st_size
    return files, size


def write_s3(s3, bucket: str, candles: pd.DataFrame, window_start: datetime, window_end: datetime):
    return lake.write_batch(s3, bucket, candles, exchange=EXCHANGE, symbol=SYMBOL, timeframe=TIMEFRAME,
                            market=MARKET, window_start=window_start, window_end=window_end)


def profile_write_batch(s3, bucket: str, candles: pd.DataFrame, window_start: datetime, window_end: datetime):
    """One write_batch run with lake.to_table / to_parquet_bytes / _put wrapped in timers."""
    spent = {"to_table": 0.0, "to_parquet_bytes": 0.0, "put": 0.0}
    originals = {"to_table": lake.to_table, "to_parquet_bytes": lake.to_parquet_bytes, "_put": lake._put}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    lake.to_table = timed("to_table", originals["to_table"])
    lake.to_parquet_bytes = timed("to_parquet_bytes", originals["to_parquet_bytes"])
    lake._put = timed("put", originals["_put"])
    try:
        t0 = time.perf_counter()
        write_s3(s3, bucket, candles, window_start, window_end)
        total = time.perf_counter() - t0
    finally:
        lake.to_table, lake.to_parquet_bytes, lake._put = (originals["to_table"], originals["to_parquet_bytes"],
                                                           originals["_put"])
    spent["slicing+checks (rest of write_batch)"] = total - sum(spent.values())
    return total, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import boto3
    from botocore.config import Config

    t0 = time.perf_counter()
    candles = make_candles(args.rows)
    window_start = START
    window_end = START + timedelta(minutes=args.rows)
    table = lake.to_table(candles, MARKET)
    days = sum(1 for _ in lake._days(window_start, window_end))
    print(f"data: {args.rows:,} 1m candles of {EXCHANGE}/{SYMBOL} ({MARKET}), {window_start:%Y-%m-%d} → "
          f"{window_end:%Y-%m-%d %H:%M}, {days} date partitions, seed {SEED} "
          f"(generated in {time.perf_counter() - t0:.2f} s); in-memory Arrow {table.nbytes / 1e6:.1f} MB")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, pyarrow {pa.__version__}, "
          f"pandas {pd.__version__}, boto3 {boto3.__version__}")

    with tempfile.TemporaryDirectory(prefix="candleflow-bench-") as tmp:
        tmp = Path(tmp)
        stack = LocalStack(tmp / "stack", ports=Ports.free(), lake_bucket="candleflow-bench")
        try:
            pid = stack.start("moto")
            stack.ensure_buckets()
            print(f"moto: pid {pid} at {stack.s3_endpoint} (state {stack.state_dir})")
            s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name=AWS_REGION,
                              aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_KEY,
                              config=Config(retries={"max_attempts": 2, "mode": "standard"}))
            bucket = stack.lake_bucket

            # (b) local disk (runs first: no warm-up needed beyond pyarrow itself)
            local_root = tmp / "lake"
            local_s, local_all, (files, local_bytes) = best_of(
                args.repeat, lambda: write_local(table, local_root, window_start, window_end))
            # (b') the same, including the pandas -> Arrow conversion of the whole frame once
            local_conv_s, _, _ = best_of(
                args.repeat, lambda: write_local(lake.to_table(candles, MARKET), local_root, window_start, window_end))

            # (a) S3 stand-in through the lake's own writer
            s3_s, s3_all, written = best_of(args.repeat, lambda: write_s3(s3, bucket, candles, window_start, window_end))
            s3_bytes = sum(w.bytes for w in written)
            listed = lake.list_objects(s3, bucket, "ohlcv/")
            assert len(listed) == len(written) == files, (len(listed), len(written), files)
            assert sum(w.rows for w in written) == args.rows

            fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
            print()
            print(f"S3 (moto) write_batch : best {s3_s:7.2f} s  [{fmt(s3_all)}]  {args.rows / s3_s:12,.0f} rows/s  "
                  f"{len(written)} objects, {s3_bytes / 1e6:.2f} MB")
            print(f"local pyarrow         : best {local_s:7.2f} s  [{fmt(local_all)}]  {args.rows / local_s:12,.0f} "
                  f"rows/s  {files} files, {local_bytes / 1e6:.2f} MB")
            print(f"local pyarrow + to_table of the frame: best {local_conv_s:.2f} s  "
                  f"{args.rows / local_conv_s:,.0f} rows/s")

            # where write_batch's time goes
            total, spent = profile_write_batch(s3, bucket, candles, window_start, window_end)
            bodies = {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in listed}
            t0, c0 = time.perf_counter(), time.process_time()
            for key, body in bodies.items():
                lake._put(s3, bucket, key, body)
            put_only, put_cpu = time.perf_counter() - t0, time.process_time() - c0
            from concurrent.futures import ThreadPoolExecutor
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda kv: lake._put(s3, bucket, kv[0], kv[1]), bodies.items()))
            put_threads = time.perf_counter() - t0
            print()
            print(f"breakdown of one instrumented write_batch ({total:.2f} s, {len(bodies)} objects):")
            for name, secs in spent.items():
                print(f"  {name:<38} {secs:7.2f} s  {100 * secs / total:5.1f} %  "
                      f"({1000 * secs / len(bodies):.2f} ms/object)")
            print(f"  serialisation (to_table + to_parquet_bytes) {spent['to_table'] + spent['to_parquet_bytes']:.2f} s "
                  f"vs PUT {spent['put']:.2f} s")
            print(f"PUT-only replay of the same {len(bodies)} bodies: sequential {put_only:.2f} s "
                  f"({1000 * put_only / len(bodies):.2f} ms/PUT, of which boto3 client CPU {1000 * put_cpu / len(bodies):.2f} ms; "
                  f"the rest is moto serving it), 8 threads {put_threads:.2f} s")

            ratio = (args.rows / s3_s) / (args.rows / local_s)
            print()
            print(f"lake_write_ratio={ratio:.2f}")
        finally:
            stack.stop("moto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
