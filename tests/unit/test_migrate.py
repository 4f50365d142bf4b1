"""candleflow.migrate against the moto server: a lake written with date partitions reads the same
after `ohlcv-months` as the old reader read it, with newer writes still winning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from candleflow import lake, migrate

DAY = datetime(2024, 10, 30, tzinfo=UTC)


def candles(start: datetime, hours: int, price: float) -> pd.DataFrame:
    ts = pd.date_range(start, periods=hours, freq="1h").astype("datetime64[ms, UTC]")
    close = price + np.arange(hours, dtype="float64")
    return pd.DataFrame({"ts": ts, "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(hours, 3.0)})


def old_write(s3, bucket, frame, name, exchange="binance"):
    """An object exactly where the old writer put it: ohlcv/…/date=<YYYY-MM-DD>/<name>."""
    date = frame["ts"].iloc[0].strftime("%Y-%m-%d")
    key = f"ohlcv/exchange={exchange}/symbol=BTC/timeframe=1h/date={date}/{name}"
    lake.write_object(s3, bucket, key, lake.to_table(frame, "BTC/USDT"))
    return key


def old_lake(s3, bucket):
    """Three days of an old lake: a daily part, a compacted day with a later hourly revision, and
    another exchange; returns the candles the old reader returned (later name wins in a date)."""
    day2, day3 = DAY + timedelta(days=1), DAY + timedelta(days=2)
    old_write(s3, bucket, candles(DAY, 24, 100.0), lake.part_name(DAY, day2))
    old_write(s3, bucket, candles(day2, 24, 200.0), "compacted.parquet")
    hour = day2 + timedelta(hours=5)
    old_write(s3, bucket, candles(hour, 1, -1.0), lake.part_name(hour, hour + timedelta(hours=1)))
    old_write(s3, bucket, candles(day3, 24, 300.0), lake.part_name(day3, day3 + timedelta(days=1)))
    old_write(s3, bucket, candles(DAY, 24, 400.0), lake.part_name(DAY, day2), exchange="okx")
    binance = pd.concat([candles(DAY, 24, 100.0), candles(day2, 24, 200.0), candles(day3, 24, 300.0)], ignore_index=True)
    binance.loc[binance["ts"] == pd.Timestamp(hour), ["open", "high", "low", "close"]] = [-1.5, 0.0, -2.0, -1.0]
    return {"binance": binance, "okx": candles(DAY, 24, 400.0)}


def test_date_partitions_become_month_objects_that_read_as_the_old_reader_did(s3_client, bucket):
    expected = old_lake(s3_client, bucket)
    # written since the upgrade: a revised 2024-11-01 03:00, which must still win over the migrated rows
    late = DAY + timedelta(days=2, hours=3)
    lake.write_batch(s3_client, bucket, candles(late, 1, -7.0), exchange="binance", symbol="BTC", timeframe="1h",
                     market="BTC/USDT", window_start=late, window_end=late + timedelta(hours=1))
    assert len(lake.read(s3_client, bucket)) == 1   # the old candles are invisible until migrated
    before = lake.list_objects(s3_client, bucket, "ohlcv/")

    planned = migrate.ohlcv_days_to_months(s3_client, bucket, dry_run=True)
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == before and [p.rows for p in planned] == [0, 0, 0]

    done = migrate.ohlcv_days_to_months(s3_client, bucket)
    base = "ohlcv/exchange={}/symbol=BTC/timeframe=1h/month={}/"
    assert [(r.key, r.rows, len(r.sources), len(r.deleted)) for r in done] == [
        (base.format("binance", "2024-10") + "compacted-20241030T000000Z_20241101T000000Z.parquet", 48, 3, 3),
        (base.format("binance", "2024-11") + "compacted-20241101T000000Z_20241102T000000Z.parquet", 24, 1, 1),
        (base.format("okx", "2024-10") + "compacted-20241030T000000Z_20241031T000000Z.parquet", 24, 1, 1)]
    assert [p.key for p in planned] == [r.key for r in done]
    listing = lake.list_objects(s3_client, bucket, "ohlcv/")
    assert not any("/date=" in k for k in listing) and len(listing) == 4   # 3 migrated + the newer part

    got = lake.read(s3_client, bucket, timeframe="1h")
    binance = expected["binance"].copy()
    binance.loc[binance["ts"] == pd.Timestamp(late), ["open", "high", "low", "close"]] = [-7.5, -6.0, -8.0, -7.0]
    for exchange, frame in (("binance", binance), ("okx", expected["okx"])):
        rows = got[got["exchange"] == exchange].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows[["ts", "open", "high", "low", "close", "volume"]], frame)

    # migrating twice is migrating once
    assert migrate.ohlcv_days_to_months(s3_client, bucket) == []
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == listing


def test_the_cli_migrates_the_bucket_the_environment_points_at(s3_client, bucket, moto_server, monkeypatch, capsys):
    old_lake(s3_client, bucket)
    for key, value in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    assert migrate.main(["ohlcv-months", "--bucket", bucket]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"months": 3, "objects": 5, "rows": 96, "kept": 0, "dry_run": False}
    assert not any("/date=" in k for k in lake.list_objects(s3_client, bucket, "ohlcv/"))
