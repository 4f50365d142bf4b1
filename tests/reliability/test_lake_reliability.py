"""The lake under real faults: the S3 stand-in stopped mid-write, corrupt batches, racing writers.

Nothing is mocked: the S3 stand-in is a moto server process (a private one where the test stops
it), the exchanges are the emulator, and faults happen for real — the moto process is frozen with
SIGSTOP in the middle of a multi-object write, the emulator serves bad prints, writer processes
race on the same keys.

"The same ingest run twice, and one backfill twice, leave identical object lists and bytes" is
proved end to end with dag.test() in tests/e2e/test_pipeline_e2e.py
(`test_rerunning_the_backfill_leaves_identical_objects`: a forced re-run of a 10-day backfill of
15 pairs; `test_hourly_ingest_run_writes_its_interval`: an `ohlcv_ingest` run re-run), comparing
key, size and ETag (the MD5 of the bytes) of every object; it is not repeated here.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from candleflow import lake
from candleflow.config import CollectConfig, LakeConfig
from candleflow.stack import AWS_KEY, AWS_REGION, LocalStack, Ports

pytestmark = pytest.mark.reliability

START = datetime(2024, 10, 1, tzinfo=UTC)
FAST = CollectConfig(max_attempts=4, backoff_seconds=0.05, timeout_ms=5000, enable_rate_limit=False, chunk_days=3)


def client(endpoint: str, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name=AWS_REGION, aws_access_key_id=AWS_KEY,
                        aws_secret_access_key=AWS_KEY, config=Config(**config) if config else None)


def candles(start: datetime, hours: int, price: float = 100.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=hours, freq="1h").astype("datetime64[ms, UTC]")
    close = price + np.arange(hours, dtype="float64")
    return pd.DataFrame({"ts": ts, "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(hours, 3.0)})


def write(s3, bucket, frame, start, end, symbol="BTC"):
    return lake.write_batch(s3, bucket, frame, exchange="binance", symbol=symbol, timeframe="1h",
                            market=f"{symbol}/USDT", window_start=start, window_end=end)


def bodies(s3, bucket, prefix="ohlcv/") -> dict[str, bytes]:
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in lake.list_objects(s3, bucket, prefix)}


def settled_listing(s3, bucket, prefix="ohlcv/", quiet=1.0, limit=30.0):
    """The listing once it stopped changing (a resumed server works off requests queued while frozen)."""
    deadline = time.monotonic() + limit
    last = lake.list_objects(s3, bucket, prefix)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = lake.list_objects(s3, bucket, prefix)
        if now == last:
            return now
        last = now
    raise AssertionError("the S3 stand-in kept changing")


@pytest.fixture
def own_moto(tmp_path):
    """A private moto server this test may freeze; always thawed and stopped afterwards."""
    stack = LocalStack(tmp_path / "stack", Ports.free())
    pid = stack.start("moto")
    try:
        yield stack.s3_endpoint, pid
    finally:
        try:
            os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        stack.stop("moto")


def freeze_after(s3, pid: int, puts: int, prefix: str = "ohlcv/") -> list[str]:
    """SIGSTOP the moto server right after the `puts`-th successful PUT under prefix: the S3
    stand-in stops answering in the middle of the write. Returns the keys PUT before that."""
    done: list[str] = []

    def remember_key(params, context, **_):
        context["candleflow_key"] = params["Key"]

    def after_put(http_response, context, **_):
        key = context.get("candleflow_key", "")
        if http_response.status_code == 200 and key.startswith(prefix) and len(done) < puts:
            done.append(key)
            if len(done) == puts:
                os.killpg(pid, signal.SIGSTOP)

    s3.meta.events.register("provide-client-params.s3.PutObject", remember_key)
    s3.meta.events.register("after-call.s3.PutObject", after_put)
    return done


# -- (a) the S3 stand-in stops in the middle of a multi-object write ---------------------------------
def test_s3_frozen_mid_write_fails_the_write_leaves_no_partial_object_and_the_retry_completes(own_moto):
    endpoint, pid = own_moto
    s3 = client(endpoint)
    for name in ("reference", "lake"):
        s3.create_bucket(Bucket=name)
    # 20 month objects, well beyond the PUTs write_batch keeps in flight (lake.PUT_CONCURRENCY)
    start, end = datetime(2023, 3, 1, tzinfo=UTC), datetime(2024, 11, 1, tzinfo=UTC)
    frame = candles(start, int((end - start) / timedelta(hours=1)))
    write(s3, "reference", frame, start, end)
    expected = bodies(s3, "reference")
    assert len(expected) == 20

    # short timeouts, no retries: the frozen server makes each remaining PUT fail within a second
    flaky = client(endpoint, connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
    before_freeze = freeze_after(flaky, pid, puts=4)
    with pytest.raises((BotoCoreError, ClientError)):
        write(flaky, "lake", frame, start, end)
    assert len(before_freeze) == 4
    os.killpg(pid, signal.SIGCONT)

    visible = settled_listing(s3, "lake")
    # what is visible is whole: every object has exactly the bytes of a complete write, and readers
    # get exactly its candles; PUTs the client gave up on may still have landed (S3 semantics)
    assert set(before_freeze) <= set(visible) and len(visible) < len(expected)
    got = bodies(s3, "lake")
    assert all(got[k] == expected[k] for k in got)
    partial = lake.read(s3, "lake", exchange="binance")
    reference = lake.read(s3, "reference", exchange="binance")
    months = {k.split("month=")[1][:7] for k in visible}
    pd.testing.assert_frame_equal(partial, reference[reference["month"].isin(months)].reset_index(drop=True))

    # the retry (Airflow's, or the next run) completes: the same lake as a write that never failed
    write(s3, "lake", frame, start, end)
    assert lake.list_objects(s3, "lake", "ohlcv/") == lake.list_objects(s3, "reference", "ohlcv/")
    pd.testing.assert_frame_equal(lake.read(s3, "lake"), lake.read(s3, "reference"))


def test_ingest_task_fails_when_s3_stops_and_its_retry_lands_everything(own_moto):
    """The same fault through candleflow.ingest.ingest_exchange (what the Airflow ingest task runs):
    the task raises, the re-run (Airflow's retry, same arguments) leaves the lake of a clean run."""
    from candleflow.emulator import EmulatorServer
    from candleflow.ingest import ingest_exchange

    endpoint, pid = own_moto
    s3 = client(endpoint)
    for name in ("reference", "lake"):
        s3.create_bucket(Bucket=name)
    start, end = datetime(2024, 10, 15, tzinfo=UTC), datetime(2024, 10, 27, tzinfo=UTC)

    def run(s3_client, bucket):
        return ingest_exchange(s3_client, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange="binance",
                               symbols=["BTC", "ETH"], timeframe="1h", start=start, end=end, quotes=["USDT"],
                               page_size=100, mode="emulator", emulator_url=emulator.url,
                               collect_cfg=FAST)  # 4 chunks of 3 days per symbol, one object each

    with EmulatorServer(clock="2024-10-30T00:30:00Z", enforce_limits=False) as emulator:
        clean = run(s3, "reference")
        assert {c.status for c in clean.chunks} == {"published"} and clean.rows == 2 * 12 * 24
        flaky = client(endpoint, connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
        freeze_after(flaky, pid, puts=5)
        with pytest.raises((BotoCoreError, ClientError)):
            run(flaky, "lake")
        os.killpg(pid, signal.SIGCONT)
        settled_listing(s3, "lake")
        expected = bodies(s3, "reference")
        got = bodies(s3, "lake")
        assert 5 <= len(got) < len(expected) and all(got[k] == expected[k] for k in got)

        retry = run(s3, "lake")
    assert {c.status for c in retry.chunks} <= {"published", "complete"}
    assert lake.list_objects(s3, "lake", "ohlcv/") == lake.list_objects(s3, "reference", "ohlcv/")
    frame = lake.read(s3, "lake", exchange="binance", timeframe="1h")
    assert frame.groupby("symbol").size().to_dict() == {"BTC": 288, "ETH": 288} and not frame.duplicated(
        ["symbol", "ts"]).any()


# -- (b) a corrupt batch is quarantined with its report; the good batches of the run land ---------------
def test_a_bad_print_is_quarantined_with_its_report_while_the_other_symbols_land(s3_client, bucket):
    import json

    from candleflow.emulator import EmulatorServer
    from candleflow.ingest import ingest_exchange

    start, end = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 23, tzinfo=UTC)
    with EmulatorServer(clock="2024-10-30T00:30:00Z", enforce_limits=False) as emulator:
        emulator.faults.set([{"exchange": "okx", "symbol": "ETH", "kind": "ohlc_inconsistent"}])  # high < low
        report = ingest_exchange(s3_client, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange="okx",
                                 symbols=["BTC", "ETH", "SOL"], timeframe="1h", start=start, end=end,
                                 quotes=["USDT"], page_size=100, mode="emulator", emulator_url=emulator.url,
                                 collect_cfg=FAST)
    assert {(c.symbol, c.status) for c in report.chunks} == {("BTC", "published"), ("ETH", "quarantined"),
                                                             ("SOL", "published")}
    frame = lake.read(s3_client, bucket, exchange="okx", timeframe="1h")
    assert frame.groupby("symbol").size().to_dict() == {"BTC": 72, "SOL": 72}
    quarantined = lake.list_objects(s3_client, bucket, "quarantine/")
    assert sorted(k.rsplit("/", 1)[1] for k in quarantined) == ["candles.parquet", "report.json"]
    assert all("exchange=okx/symbol=ETH/timeframe=1h/" in k for k in quarantined)
    report_key = next(k for k in quarantined if k.endswith("report.json"))
    kept = json.loads(s3_client.get_object(Bucket=bucket, Key=report_key)["Body"].read())
    assert kept["success"] is False
    assert any(f["expectation"] == "expect_column_pair_values_a_to_be_greater_than_b" for f in kept["failed"])


CORRUPTIONS = {
    "high_below_low": lambda f: f.assign(high=np.where(f.index == 5, f["low"] - 1, f["high"])),
    "duplicated_timestamps": lambda f: pd.concat([f, f.iloc[[7]].assign(close=f["close"].iloc[7] * 2)])
    .sort_values("ts", kind="stable").reset_index(drop=True),
    "nan_close": lambda f: f.assign(close=np.where(f.index == 3, np.nan, f["close"])),
}
EXPECTATION = {
    "high_below_low": "expect_column_pair_values_a_to_be_greater_than_b",
    "duplicated_timestamps": "expect_column_values_to_be_unique",
    "nan_close": "expect_column_values_to_not_be_null",
}


def test_every_kind_of_corrupt_batch_is_quarantined_and_never_reaches_the_lake(s3_client, bucket):
    """The emulator cannot serve NaN or conflicting twins: the run's batches go through the quality
    and lake functions ingest uses (candleflow.ingest._publish_chunk), one symbol per corruption."""
    from candleflow import quality

    day = datetime(2024, 10, 20, tzinfo=UTC)
    good = candles(day, 24)
    batches = {"BTC": good, **{f"X{i}": fn(good) for i, fn in enumerate(CORRUPTIONS.values())}}
    outcome = {}
    for symbol, frame in batches.items():
        checked = quality.validate_ohlcv(frame, "1h", context_label=f"okx {symbol} 1h")
        if checked.success:
            outcome[symbol] = write(s3_client, bucket, frame, day, day + timedelta(days=1), symbol=symbol)
        else:
            outcome[symbol] = lake.quarantine_batch(s3_client, bucket, frame, checked.to_json(), exchange="binance",
                                                    symbol=symbol, timeframe="1h", market=f"{symbol}/USDT",
                                                    window_start=day, window_end=day + timedelta(days=1))
            failed = {f["expectation"] for f in checked.to_json()["failed"] if f["severity"] == "error"}
            assert EXPECTATION[list(CORRUPTIONS)[int(symbol[1:])]] in failed, (symbol, failed)
    assert isinstance(outcome["BTC"], list) and len(outcome["BTC"]) == 1
    assert lake.read(s3_client, bucket)["symbol"].unique().tolist() == ["BTC"]
    for i in range(len(CORRUPTIONS)):
        key = outcome[f"X{i}"]
        kept = pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pandas()
        assert len(kept) == len(batches[f"X{i}"])  # kept as collected, defects included
        assert s3_client.head_object(Bucket=bucket, Key=key.replace("candles.parquet", "report.json"))
    # the lake itself refuses conflicting twins even if a caller skipped the checks
    with pytest.raises(ValueError, match="duplicate timestamps"):
        write(s3_client, bucket, batches["X1"], day, day + timedelta(days=1), symbol="X1")


# -- (c) two runs writing the same partition at once ---------------------------------------------------
_RACER = """
import os, sys, time
import boto3, pandas as pd
from datetime import datetime
from candleflow import lake
endpoint, bucket, frame_path, go, rounds, start, end = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing")
frame = pd.read_parquet(frame_path)
while not os.path.exists(go):
    time.sleep(0.002)
for _ in range(int(rounds)):
    lake.write_batch(s3, bucket, frame, exchange="binance", symbol="BTC", timeframe="1h", market="BTC/USDT",
                     window_start=datetime.fromisoformat(start), window_end=datetime.fromisoformat(end))
"""


def race(tmp_path, endpoint, bucket, frames: list[pd.DataFrame], start, end, rounds=5):
    go = tmp_path / "go"
    procs = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"frame{i}.parquet"
        frame.to_parquet(path)
        procs.append(subprocess.Popen([sys.executable, "-c", _RACER, endpoint, bucket, str(path), str(go), str(rounds),
                                       start.isoformat(), end.isoformat()], stderr=subprocess.PIPE))
    time.sleep(3)  # let every writer import and wait at the line
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]


def test_concurrent_runs_of_the_same_window_end_with_one_correct_object_per_key(tmp_path, s3_client, moto_server):
    start, end = START, START + timedelta(days=3)
    frame = candles(start, 72)
    for name in ("race-same", "race-reference"):
        s3_client.create_bucket(Bucket=name)
    write(s3_client, "race-reference", frame, start, end)
    # four processes, the same interval (a re-run overlapping a retry): the lake of one write
    race(tmp_path, moto_server, "race-same", [frame.sample(frac=1.0, random_state=i) for i in range(4)], start, end)
    assert lake.list_objects(s3_client, "race-same", "ohlcv/") == lake.list_objects(s3_client, "race-reference", "ohlcv/")


def test_concurrent_runs_with_different_candles_leave_each_object_whole_from_one_run(tmp_path, s3_client, moto_server):
    start = START + timedelta(days=30)   # October 31 to November 2: two month objects
    end = start + timedelta(days=3)
    versions = [candles(start, 72, price=p) for p in (100.0, 500.0)]
    references = []
    for i, frame in enumerate(versions):
        s3_client.create_bucket(Bucket=f"race-v{i}")
        write(s3_client, f"race-v{i}", frame, start, end)
        references.append(lake.list_objects(s3_client, f"race-v{i}", "ohlcv/"))
    s3_client.create_bucket(Bucket="race-mixed")
    race(tmp_path, moto_server, "race-mixed", versions * 2, start, end)
    listing = lake.list_objects(s3_client, "race-mixed", "ohlcv/")
    assert set(listing) == set(references[0])
    # S3 keeps the last PUT of each key whole: each month's object is exactly one run's object
    assert len(listing) == 2 and all(listing[k] in (references[0][k], references[1][k]) for k in listing)
    frame = lake.read(s3_client, "race-mixed")
    assert len(frame) == 72 and frame["ts"].is_unique
    assert all(len(set(rows["close"] - np.arange(len(rows)))) == 1 for _, rows in frame.groupby("month"))
