"""The lake_compaction DAG with dag.test() against the moto server: per exchange, the finished
day of the data interval and the lookback day become one object per partition, and the gap
ledger's windows of a finished day one entry; the unfinished day and other prefixes are untouched;
a re-run changes nothing."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from candleflow import coverage, lake

REPO = Path(__file__).resolve().parents[2]


def _hourly(s3, bucket, exchange, symbol, day, hours=24):
    for h in range(hours):
        lo = day + timedelta(hours=h)
        close = 100.0 + h
        frame = pd.DataFrame({"ts": [pd.Timestamp(lo)], "open": [close], "high": [close + 1], "low": [close - 1],
                              "close": [close], "volume": [1.0]})
        lake.write_batch(s3, bucket, frame, exchange=exchange, symbol=symbol, timeframe="1h", market=f"{symbol}/USDT",
                         window_start=lo, window_end=lo + timedelta(hours=1))


def test_lake_compaction_dag_compacts_the_finished_days_per_exchange(airflow_db, local_stack, s3_client, bucket,
                                                                      monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.settings import Session

    for key, value in {**local_stack.pipeline_env(), "CANDLEFLOW_LAKE_BUCKET": bucket}.items():
        monkeypatch.setenv(key, value)
    day = datetime(2024, 10, 20, tzinfo=UTC)
    for exchange, symbol in (("binance", "BTC"), ("binance", "ETH"), ("okx", "BTC")):
        for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
            _hourly(s3_client, bucket, exchange, symbol, d, hours=24 if d <= day else 3)
    # the gap ledger of okx BTC: hourly windows (hour 7 missing) on the 20th and the unfinished 21st
    for d, hours in ((day, 24), (day + timedelta(days=1), 3)):
        for h in range(hours):
            lo = d + timedelta(hours=h)
            coverage.write_entries(s3_client, bucket, coverage.build_entries(
                exchange="okx", symbol="BTC", timeframe="1h", tf_ms=3_600_000, window_start=lo,
                window_end=lo + timedelta(hours=1), present_ms=[] if (d, h) == (day, 7) else [int(lo.timestamp() * 1000)],
                market="BTC/USDT", status="complete"))
    s3_client.put_object(Bucket=bucket, Key="quarantine/exchange=okx/symbol=BTC/timeframe=1h/window=x/report.json",
                         Body=b"{}")
    ledger_before = coverage.read_entries(s3_client, bucket, exchange="okx")
    before = lake.read(s3_client, bucket, timeframe="1h")
    dag = DagBag(dag_folder=str(REPO / "dags" / "lake_compaction.py")).get_dag("lake_compaction")

    # a manual run at 10-21 00:15 covers the interval that just ended: [10-20 00:15, 10-21 00:15)
    run = dag.test(logical_date=day + timedelta(days=1, minutes=15))
    assert run.state == "success"
    assert (run.data_interval_start, run.data_interval_end) == (day + timedelta(minutes=15),
                                                                day + timedelta(days=1, minutes=15))
    with Session() as session:
        tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances(session=session)}
    assert [tis[("compact", i)].state for i in range(5)] == ["success"] * 5
    assert tis[("coverage_reports", -1)].state == "success"
    # only the timeframe whose ledger the compaction found is rebuilt (no pair scans for 1m/5m/15m)
    from airflow.models.xcom import XComModel

    with Session() as session:
        [published] = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids="lake_compaction",
                                                         task_ids="coverage_reports", key="return_value")).all()
    assert sorted(XComModel.deserialize_value(published)) == ["1h"]
    listing = lake.list_objects(s3_client, bucket)
    by_partition: dict[str, list[str]] = {}
    for key in listing:
        path, name = key.rsplit("/", 1)
        if not path.startswith("reports/"):
            by_partition.setdefault(path, []).append(name)
    assert sorted(k for k in listing if k.startswith("reports/")) == [
        "reports/coverage/timeframe=1h/coverage.html", "reports/coverage/timeframe=1h/coverage.parquet",
        "reports/coverage/timeframe=1h/days/month=2024-10.parquet"]
    for path, names in by_partition.items():
        if path.endswith("date=2024-10-20"):   # the ledger's finished day: one entry, hour 7 a gap
            assert names == ["compacted-20241020T000000Z_20241021T000000Z.json"], path
        elif path.startswith("coverage/"):     # the unfinished day: left alone
            assert len(names) == 3 and all(n.startswith("window-20241021T") for n in names), path
        elif path.startswith("quarantine/"):
            assert names == ["report.json"]
        else:
            # 10-19 (the lookback day) and 10-20 in one object; 10-21 is not finished: left alone
            assert names[0] == "compacted-20241019T000000Z_20241021T000000Z.parquet", path
            assert len(names) == 4 and all(n.startswith("part-20241021T") for n in names[1:]), path
    assert len(by_partition) == 3 + 2 + 1
    ledger = coverage.read_entries(s3_client, bucket, exchange="okx")
    for date in ("2024-10-20", "2024-10-21"):
        assert coverage.day_counts([e for e in ledger if e.date == date]) == coverage.day_counts(
            [e for e in ledger_before if e.date == date])
    assert coverage.day_counts([e for e in ledger if e.date == "2024-10-20"])["gaps_exchange_returned_none"] == 1
    # the coverage report was rebuilt from October's (now compacted) ledger: what the ledger says
    report = pd.read_parquet(io.BytesIO(s3_client.get_object(
        Bucket=bucket, Key="reports/coverage/timeframe=1h/coverage.parquet")["Body"].read()))
    pd.testing.assert_frame_equal(report, coverage.coverage_table(ledger), check_dtype=False)
    assert report["missing"].tolist() == [1]
    after = lake.read(s3_client, bucket, timeframe="1h")
    pd.testing.assert_frame_equal(after, before)
    assert np.array_equal(after.groupby(["exchange", "symbol"]).size().to_numpy(), [51, 51, 51])

    again = dag.test(logical_date=day + timedelta(days=1, minutes=15))
    assert again.state == "success"
    assert lake.list_objects(s3_client, bucket) == listing
