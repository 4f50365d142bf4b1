"""The quality wiring in a real Airflow run (dag.test, emulator, moto): `ohlcv_backfill` with a bad
print on one exchange quarantines that pair and fails its verdict with the summary, while
`quality_checks` judges the other exchanges against each other and publishes the run's Data Docs."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = [pytest.mark.slow]

EXCHANGES = ["binance", "bybit", "okx"]


def _states(run) -> dict[str, str]:
    from airflow.settings import Session

    with Session() as session:
        return {ti.task_id: ti.state for ti in run.get_task_instances(session=session)}


def test_a_backfill_quarantines_the_bad_pair_and_checks_the_run(airflow_db, own_lake_bucket, emulator_server,
                                                                 s3_client):
    from airflow.dag_processing.dagbag import DagBag

    from candleflow import lake
    from candleflow.config import load_pipeline

    def faults(body, method="POST"):
        data = None if body is None else json.dumps(body).encode()
        urllib.request.urlopen(urllib.request.Request(f"{emulator_server}/__admin/faults", data=data, method=method,
                                                      headers={"Content-Type": "application/json"}), timeout=10)

    bucket = load_pipeline().lake.bucket
    faults([{"exchange": "okx", "symbol": "SOL", "kind": "ohlc_inconsistent"}])
    try:
        dag = DagBag(dag_folder="dags/ohlcv_backfill.py").get_dag("ohlcv_backfill")
        run = dag.test(run_conf={"exchanges": EXCHANGES, "symbols": ["SOL"], "timeframe": "15m",
                                 "start": "2024-10-25T00:00:00+00:00", "end": "2024-10-26T00:00:00+00:00",
                                 "force": True})
    finally:
        faults(None, method="DELETE")
    states = _states(run)
    assert [states[f"verdict_{ex}"] for ex in EXCHANGES] == ["success", "success", "failed"]
    assert states["quality_checks"] == "success" and run.state == "failed"
    # the quarantined batch's report and the published ones' results, all in the quality table
    day = datetime(2024, 10, 25, tzinfo=UTC)
    table = lake.read(s3_client, bucket, "quality", timeframe="15m", start=day, end=datetime(2024, 10, 26, tzinfo=UTC))
    batches = table[table["suite"] == "ohlcv_batch_15m"]
    assert set(batches["exchange"]) == set(EXCHANGES)
    failed = batches[~batches["success"]]
    assert set(failed["exchange"]) == {"okx"} and set(failed["rule"]) == {"ohlc_consistency"}
    assert failed["result_key"].str.startswith("quarantine/exchange=okx/symbol=SOL/").all()
    assert failed["run_id"].str.startswith("manual__").all()
    # okx's candles were quarantined: the cross-exchange suite judged binance and bybit (one other
    # exchange each, fewer than min_others: nothing to flag), every candle of the day present
    cross = table[table["suite"] == "cross_exchange"]
    assert set(cross["exchange"]) == {"binance", "bybit"} and cross["success"].all()
    assert "freshness" not in set(table["suite"])  # a backfill's window is history
    index = s3_client.get_object(Bucket=bucket, Key="reports/quality/data_docs/timeframe=15m/index.html")
    page = index["Body"].read().decode()
    assert "cross_exchange_15m" in page and "okx-SOL" in page


def test_a_scheduled_run_checks_freshness_of_every_pair_it_collected(airflow_db, own_lake_bucket, s3_client):
    from airflow.dag_processing.dagbag import DagBag

    from candleflow import lake
    from candleflow.config import load_pipeline

    bucket = load_pipeline().lake.bucket
    dag = DagBag(dag_folder="dags/ohlcv_ingest.py").get_dag("ohlcv_ingest")
    end = datetime(2024, 10, 29, 21, tzinfo=UTC)   # data interval 20:00 → 21:00, plus the overlap before
    run = dag.test(logical_date=end)
    assert _states(run)["quality_checks"] == "success"
    table = lake.read(s3_client, bucket, "quality", timeframe="1h", start=end - timedelta(hours=2), end=end)
    # the quality table keeps every run's verdicts (an audit trail): judge this run's rows
    assert set(table["run_id"]) == {run.run_id}
    fresh = table[table["suite"] == "freshness"]
    # every listed pair of the demo universe (BTC, ETH, SOL × five exchanges) has its 20:00 candle
    assert len(fresh) == 15 and fresh["success"].all() and fresh["unexpected_count"].eq(0).all()
    cross = table[table["suite"] == "cross_exchange"]
    assert len(cross) == 15 and cross["success"].all()
