"""Benchmark: writing 1 M 1m candles to the lake (S3 stand-in) vs pyarrow to local disk.

    .venv/bin/python bench/lake_write.py [--rows 1000000] [--repeat 3] [--concurrency 4,8,16]

(a) `candleflow.lake.write_batch` to the moto server (started through `LocalStack` in a temp state
    dir, stopped at the end): one zstd parquet object per UTC month, exactly as the ingest writes
    (a backfill chunk is a month);
(b) the same table written by pyarrow to local disk with the same partitioning and options
    (`pq.write_table` per month partition, zstd, dictionary on `market`, statistics).

Each is timed best of --repeat; the last line is `lake_write_ratio=<S3 rows/s / local rows/s>`
(issue 4 targets >= 0.5). For contrast it also times both sides with one object per UTC date (the
lake's layout before month partitions: 695 objects of 1.4k rows instead of 23 of 43k). Then it says
where the S3 side's time goes, per object:

- encode: Arrow slice → parquet bytes (`lake.to_parquet_bytes`), serially;
- PUT, serially: wall time and this process's CPU (boto3 building, signing, checksumming);
- the moto server's own CPU per PUT, measured in-process without HTTP (its WSGI app called
  directly), as shipped and with its per-request module-directory scan cached;
- write_batch at other PUT concurrencies (--concurrency).

The bound line is what the ratio could reach if the moto server were the only cost: moto serves
one request at a time (one interpreter, and a global lock around its dispatch), so N objects cost
at least N × its per-PUT CPU. Two stand-in experiments repeat (a) against a moto server whose
module scan is cached, then one that also keeps HTTP connections alive (patches in a launcher here,
not in the stack), to show how much of the ratio is the stand-in rather than the writer. Both
sides run on the same machine: moto's HTTP server competes with the client for the CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from candleflow import lake
from candleflow.stack import AWS_KEY, AWS_REGION, LocalStack, Ports, free_port

EXCHANGE, SYMBOL, TIMEFRAME, MARKET = "binance", "BTC", "1m", "BTC/USDT"
START = datetime(2023, 1, 1, tzinfo=UTC)
SEED = 20240401
# moto as shipped lists its package directory (~180 stat calls) on every request, under a global
# lock, and answers HTTP/1.0 (a new TCP connection and server thread per request); the stand-in
# experiments compute that list once, then also keep connections alive as S3 does
_CACHED_MOTO = ("import sys, moto.backends as b; m = tuple(b.list_of_moto_modules()); "
                "b.list_of_moto_modules = lambda: m; {keep_alive}from moto.server import main; main(sys.argv[1:])")
_KEEP_ALIVE = "from moto.moto_server.werkzeug_app import MotoRequestHandler as H; H.protocol_version = 'HTTP/1.1'; "


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


def slices(table: pa.Table, window_start: datetime, window_end: datetime, partition: str = "month"):
    """(key, slice) per time partition (`month`: as write_batch cuts them; `date`: the old daily
    layout); the table is sorted by ts."""
    ts = table.column("ts").to_numpy()
    for value, lo, hi in lake.time_slices(window_start, window_end, partition):
        a, b = np.searchsorted(ts, [np.datetime64(lo.replace(tzinfo=None), "ms"),
                                    np.datetime64(hi.replace(tzinfo=None), "ms")])
        if a < b:
            key = (f"ohlcv/exchange={EXCHANGE}/symbol={SYMBOL}/timeframe={TIMEFRAME}/{partition}={value}/"
                   + lake.part_name(lo, hi))
            yield key, table.slice(a, b - a)


def write_local(table: pa.Table, root: Path, window_start: datetime, window_end: datetime,
                partition: str = "month") -> tuple[int, int]:
    """The pyarrow baseline: the same key layout and parquet options as the lake, on local disk."""
    if root.exists():
        shutil.rmtree(root)
    files = size = 0
    for key, part in slices(table, window_start, window_end, partition):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path, compression="zstd", use_dictionary=["market"], write_statistics=True)
        files += 1
        size += path.stat().st_size
    return files, size


def write_s3(s3, bucket: str, candles: pd.DataFrame, window_start: datetime, window_end: datetime):
    return lake.write_batch(s3, bucket, candles, exchange=EXCHANGE, symbol=SYMBOL, timeframe=TIMEFRAME,
                            market=MARKET, window_start=window_start, window_end=window_end)


def write_s3_daily(s3, bucket: str, candles: pd.DataFrame, window_start: datetime, window_end: datetime):
    """write_batch as it was before month partitions: the same conversion and writer, one object
    per UTC date (under `daily/`, beside the month objects)."""
    table = lake.to_table(candles, MARKET)
    jobs = [("daily/" + key, part) for key, part in slices(table, window_start, window_end, "date")]
    return lake._in_flight(lambda job: lake.write_object(s3, bucket, job[0], job[1]), jobs)


def serial_breakdown(s3, bucket: str, table: pa.Table, window_start: datetime, window_end: datetime) -> dict:
    """Encode and PUT every object one after the other: wall and client CPU of each step."""
    out = {"encode_wall": 0.0, "encode_cpu": 0.0, "put_wall": 0.0, "put_cpu": 0.0, "objects": 0}
    for key, part in slices(table, window_start, window_end):
        t0, c0 = time.perf_counter(), time.process_time()
        body = lake.to_parquet_bytes(part)
        t1, c1 = time.perf_counter(), time.process_time()
        lake._put(s3, bucket, key, body)
        out["encode_wall"] += t1 - t0
        out["encode_cpu"] += c1 - c0
        out["put_wall"] += time.perf_counter() - t1
        out["put_cpu"] += time.process_time() - c1
        out["objects"] += 1
    return out


def moto_cpu_per_put(bodies: list[bytes], cached: bool) -> float:
    """The moto server's own CPU seconds per PUT of these bodies: its WSGI app called in-process
    (no sockets, no client), a fresh app and backend."""
    import moto.backends
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import Client

    original = moto.backends.list_of_moto_modules
    if cached:
        modules = tuple(original())
        moto.backends.list_of_moto_modules = lambda: modules
    try:
        client = Client(DomainDispatcherApplication(create_backend_app))
        auth = f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/20240101/{AWS_REGION}/s3/aws4_request, SignedHeaders=host, Signature=x"
        headers = {"Authorization": auth, "Host": "127.0.0.1", "Content-Type": "application/vnd.apache.parquet"}
        bucket = f"inproc-{'cached' if cached else 'shipped'}"
        client.put(f"/{bucket}", headers=headers)
        for i, body in enumerate(bodies[:20]):  # warm-up
            client.put(f"/{bucket}/warm/{i}", data=body, headers=headers)
        c0 = time.process_time()
        for i, body in enumerate(bodies):
            response = client.put(f"/{bucket}/ohlcv/month={i}/part.parquet", data=body, headers=headers)
            assert response.status_code == 200, response.status
        return (time.process_time() - c0) / len(bodies)
    finally:
        moto.backends.list_of_moto_modules = original


def start_patched_moto(state: Path, keep_alive: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (state / "moto-patched.log").open("ab")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_KEY, "AWS_DEFAULT_REGION": AWS_REGION}
    code = _CACHED_MOTO.format(keep_alive=_KEEP_ALIVE if keep_alive else "")
    proc = subprocess.Popen([sys.executable, "-c", code, "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            return proc, endpoint
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("the patched moto server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", default="4,16", help="other PUT concurrencies to time write_batch at")
    args = parser.parse_args(argv)

    import boto3
    from botocore.config import Config

    def client(endpoint: str):
        return boto3.client("s3", endpoint_url=endpoint, region_name=AWS_REGION, aws_access_key_id=AWS_KEY,
                            aws_secret_access_key=AWS_KEY, config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                                         max_pool_connections=32))

    t0 = time.perf_counter()
    candles = make_candles(args.rows)
    window_start = START
    window_end = START + timedelta(minutes=args.rows)
    table = lake.to_table(candles, MARKET)
    months = sum(1 for _ in lake.time_slices(window_start, window_end, "month"))
    print(f"data: {args.rows:,} 1m candles of {EXCHANGE}/{SYMBOL} ({MARKET}), {window_start:%Y-%m-%d} → "
          f"{window_end:%Y-%m-%d %H:%M}, {months} month partitions, seed {SEED} "
          f"(generated in {time.perf_counter() - t0:.2f} s); in-memory Arrow {table.nbytes / 1e6:.1f} MB")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}, "
          f"pyarrow {pa.__version__}, pandas {pd.__version__}, boto3 {boto3.__version__}; "
          f"lake.PUT_CONCURRENCY={lake.PUT_CONCURRENCY}")

    with tempfile.TemporaryDirectory(prefix="candleflow-bench-") as tmp:
        tmp = Path(tmp)
        stack = LocalStack(tmp / "stack", ports=Ports.free(), lake_bucket="candleflow-bench")
        patched: list[subprocess.Popen] = []
        try:
            pid = stack.start("moto")
            stack.ensure_buckets()
            print(f"moto: pid {pid} at {stack.s3_endpoint} (state {stack.state_dir})")
            s3 = client(stack.s3_endpoint)
            bucket = stack.lake_bucket

            # (b) local disk
            local_root = tmp / "lake"
            local_s, local_all, (files, local_bytes) = best_of(
                args.repeat, lambda: write_local(table, local_root, window_start, window_end))
            local_conv_s, _, _ = best_of(
                args.repeat, lambda: write_local(lake.to_table(candles, MARKET), local_root, window_start, window_end))

            # (a) S3 stand-in through the lake's own writer
            s3_s, s3_all, written = best_of(args.repeat, lambda: write_s3(s3, bucket, candles, window_start, window_end))
            s3_bytes = sum(w.bytes for w in written)
            listed = lake.list_objects(s3, bucket, "ohlcv/")
            assert len(listed) == len(written) == files, (len(listed), len(written), files)
            assert sum(w.rows for w in written) == args.rows
            n = len(written)

            fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
            print()
            print(f"S3 (moto) write_batch : best {s3_s:7.2f} s  [{fmt(s3_all)}]  {args.rows / s3_s:12,.0f} rows/s  "
                  f"{n} objects, {s3_bytes / 1e6:.2f} MB, {1000 * s3_s / n:.2f} ms/object")
            print(f"local pyarrow         : best {local_s:7.2f} s  [{fmt(local_all)}]  {args.rows / local_s:12,.0f} "
                  f"rows/s  {files} files, {local_bytes / 1e6:.2f} MB, {1000 * local_s / files:.2f} ms/file")
            print(f"local pyarrow + to_table of the frame: best {local_conv_s:.2f} s  "
                  f"{args.rows / local_conv_s:,.0f} rows/s")
            daily_local_s, _, (daily_files, _) = best_of(
                args.repeat, lambda: write_local(table, tmp / "lake-daily", window_start, window_end, "date"))
            daily_s3_s, _, _ = best_of(args.repeat, lambda: write_s3_daily(s3, bucket, candles, window_start, window_end))
            print(f"the daily layout (before month partitions), {daily_files} objects: S3 {daily_s3_s:.2f} s, "
                  f"local {daily_local_s:.2f} s → ratio {daily_local_s / daily_s3_s:.2f}")

            # where the S3 side's time goes
            serial = serial_breakdown(s3, bucket, table, window_start, window_end)
            bodies = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(listed)]
            moto_shipped = moto_cpu_per_put(bodies, cached=False)
            moto_cached = moto_cpu_per_put(bodies, cached=True)
            print()
            print(f"per object, serially ({serial['objects']} objects, {s3_bytes / n / 1e3:.1f} kB each):")
            print(f"  encode (to_parquet_bytes)        {1000 * serial['encode_wall'] / n:6.2f} ms wall "
                  f"{1000 * serial['encode_cpu'] / n:6.2f} ms CPU")
            print(f"  PUT (boto3 → moto over HTTP)     {1000 * serial['put_wall'] / n:6.2f} ms wall "
                  f"{1000 * serial['put_cpu'] / n:6.2f} ms CPU in this process (boto3)")
            print(f"  moto's own CPU per PUT (in-process WSGI, no HTTP): {1000 * moto_shipped:.2f} ms as shipped, "
                  f"{1000 * moto_cached:.2f} ms with its module scan cached")
            print(f"  serial total {serial['encode_wall'] + serial['put_wall']:.2f} s vs write_batch {s3_s:.2f} s "
                  f"with {lake.PUT_CONCURRENCY} in flight")
            bound = local_s / (n * moto_shipped)
            print(f"bound if moto's CPU were the only cost (it serves one request at a time): "
                  f"{n} × {1000 * moto_shipped:.2f} ms = {n * moto_shipped:.2f} s → ratio ≤ {bound:.2f}")

            for workers in [int(w) for w in args.concurrency.split(",") if w.strip()]:
                saved, lake.PUT_CONCURRENCY = lake.PUT_CONCURRENCY, workers
                try:
                    secs, _, _ = best_of(max(1, args.repeat - 1),
                                         lambda: write_s3(s3, bucket, candles, window_start, window_end))
                finally:
                    lake.PUT_CONCURRENCY = saved
                print(f"write_batch with {workers:2d} PUTs in flight: {secs:.2f} s ({args.rows / secs:,.0f} rows/s, "
                      f"ratio {local_s / secs:.2f})")

            # stand-in experiments: the same writer against a moto with its per-request costs cut
            for keep_alive, label in ((False, "module scan cached"), (True, "module scan cached + keep-alive")):
                proc, endpoint = start_patched_moto(stack.state_dir, keep_alive)
                patched.append(proc)
                fast = client(endpoint)
                fast.create_bucket(Bucket=bucket)
                fast_s, fast_all, _ = best_of(args.repeat,
                                              lambda fast=fast: write_s3(fast, bucket, candles, window_start, window_end))
                assert lake.list_objects(fast, bucket, "ohlcv/") == listed  # same keys, same bytes
                print(f"stand-in experiment, moto with {label}: best {fast_s:.2f} s [{fmt(fast_all)}] "
                      f"→ ratio {local_s / fast_s:.2f}")

            ratio = (args.rows / s3_s) / (args.rows / local_s)
            print()
            print(f"lake_write_ratio={ratio:.2f}")
        finally:
            for proc in patched:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            stack.stop("moto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
