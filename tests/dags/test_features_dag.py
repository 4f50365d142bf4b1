"""The `features` DAG with dag.test() against the real stand-ins: candles in the moto S3 lake, the
Fear & Greed index from the emulator (clock 2024-10-30T00:30Z), a features partition per symbol and
day, identical bytes on a re-run, and one `candleflow_features` asset event naming what was built."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

EXCHANGES = ("binance", "coinbase", "kraken", "bybit", "okx")
SEED_START = datetime(2024, 9, 25, tzinfo=UTC)
SEED_END = datetime(2024, 10, 12, tzinfo=UTC)


def _seed(s3, bucket: str, symbol: str, seed: int) -> None:
    from candleflow import lake

    rng = np.random.default_rng(seed)
    ts = pd.date_range(SEED_START, SEED_END, freq="h", tz="UTC", inclusive="left")
    path = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
    for ex in EXCHANGES[:3]:  # the other two exchanges have nothing: they just add no rows
        c = path * (1 + rng.normal(0, 0.0005, len(ts)))
        o = np.r_[c[0], c[:-1]]
        candles = pd.DataFrame({"ts": ts, "open": o, "high": np.maximum(o, c) * 1.001,
                                "low": np.minimum(o, c) * 0.999, "close": c, "volume": rng.uniform(1, 10, len(ts))})
        lake.write_batch(s3, bucket, candles, exchange=ex, symbol=symbol, timeframe="1h", market=f"{symbol}/USDT",
                         window_start=SEED_START, window_end=SEED_END)


@pytest.fixture
def lake_bucket(own_lake_bucket, s3_client):
    """This test's own lake (conftest), seeded with two symbols' candles."""
    _seed(s3_client, own_lake_bucket, "BTC", 1)
    _seed(s3_client, own_lake_bucket, "ETH", 2)
    return own_lake_bucket


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags/features.py").get_dag("features")


def _features_events(run):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.settings import Session
    from sqlalchemy import select

    with Session() as session:
        rows = session.execute(
            select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "candleflow_features", AssetEvent.source_run_id == run.run_id)
        ).all()
    return [r[0] for r in rows]


def test_features_dag_builds_partitions_identically_and_announces(airflow_db, emulator_server, s3_client, lake_bucket):
    from candleflow import features, lake

    conf = {"symbols": ["BTC", "ETH"], "start": "2024-10-07T00:00:00+00:00", "end": "2024-10-11T00:00:00+00:00"}
    run = _dag().test(run_conf=conf)
    assert run.state == "success"
    objects = lake.list_objects(s3_client, lake_bucket, "features/")
    # the window widened back by the label horizon (1 h) reaches into 2024-10-06
    days = ["2024-10-06", "2024-10-07", "2024-10-08", "2024-10-09", "2024-10-10"]
    assert sorted(objects) == sorted(f"features/symbol={s}/timeframe=1h/date={d}/part-00000.parquet"
                                     for s in ("BTC", "ETH") for d in days)
    assert lake.list_objects(s3_client, lake_bucket, "_staging/") == {}   # the run's F&G copy is cleaned up

    frame, keys = features.load_training_frame(s3_client, lake_bucket, "BTC", "1h",
                                               datetime(2024, 10, 7, tzinfo=UTC), datetime(2024, 10, 11, tzinfo=UTC))
    assert len(frame) == 4 * 24 * 3 and sorted(frame["exchange"].unique()) == ["binance", "coinbase", "kraken"]
    assert len(keys) == 4
    # the emulator's index has no 2024-10-08 and 2024-10-09: those days are gaps, the others are not
    fg = frame.set_index("ts")["fear_greed"]
    gap = (fg.index >= pd.Timestamp("2024-10-08T00:00Z")) & (fg.index < pd.Timestamp("2024-10-10T00:00Z"))
    assert fg[gap].isna().all() and fg[~gap].notna().all()
    assert frame["rsi"].notna().all() and frame["ctx_1d_return"].notna().all()
    sources = features.object_sources(s3_client, lake_bucket, keys[0])
    assert any(k.startswith("ohlcv/exchange=binance/symbol=BTC/timeframe=1h/") for k in sources)
    assert sources[-1].startswith("fear_greed:http://") and sources[-1].endswith("/alternative.me/fng/")

    (event,) = _features_events(run)
    assert event["symbols"] == ["BTC", "ETH"] and event["timeframe"] == "1h" and event["objects"] == 10
    assert event["start"] == "2024-10-06T23:00:00+00:00" and event["end"] == "2024-10-11T00:00:00+00:00"

    again = _dag().test(run_conf=conf)
    assert again.state == "success"
    assert lake.list_objects(s3_client, lake_bucket, "features/") == objects   # same keys, sizes, ETags


def test_features_dag_refuses_unknown_symbols(airflow_db, emulator_server, lake_bucket):
    run = _dag().test(run_conf={"symbols": ["NOPE"], "start": "2024-10-07T00:00:00+00:00",
                                "end": "2024-10-08T00:00:00+00:00"})
    assert run.state == "failed"
    from airflow.settings import Session

    with Session() as session:
        states = {ti.task_id: ti.state for ti in run.get_task_instances(session=session)}
    assert states["plan_features"] == "failed"     # a ConfigError: failed at once, nothing built


def test_window_from_triggering_events_keeps_its_timeframe():
    from candleflow_airflow.features import _window_from_events

    def event(**extra):
        return SimpleNamespace(extra=extra)

    ctx = {"triggering_asset_events": {"candleflow_ohlcv_1h": [
        event(symbols=["BTC"], timeframes=["1h"], start="2024-10-01T00:00:00+00:00", end="2024-10-02T00:00:00+00:00"),
        event(symbols=["SOL", "ETH"], timeframes=["1h"], start="2024-09-30T00:00:00+00:00",
              end="2024-10-01T05:00:00+00:00"),
        event(symbols=["XRP"], timeframes=["5m"], start="2024-01-01T00:00:00+00:00", end="2025-01-01T00:00:00+00:00"),
    ]}}
    symbols, start, end = _window_from_events(ctx, "1h")
    assert symbols == ["BTC", "ETH", "SOL"]
    assert start == datetime(2024, 9, 30, tzinfo=UTC) and end == datetime(2024, 10, 2, tzinfo=UTC)
    assert _window_from_events({}, "1h") == ([], None, None)
    assert end - start == timedelta(days=2)
