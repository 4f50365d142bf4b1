"""The `derivatives_ingest` DAG with dag.test() against the real stand-ins: the exchange emulator
(its own process, clock replaying from 2024-10-30T00:30Z) and the moto S3 server. One scheduled
interval lands funding and open interest of BTC, ETH, SOL on binance, bybit and okx; a re-run writes
identical bytes; each table's asset gets one event; bad params fail the plan before any exchange."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest

SYMBOLS = ["BTC", "ETH", "SOL"]
EXCHANGES = ["binance", "bybit", "okx"]
LOGICAL_DATE = datetime(2024, 10, 29, 23, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def derivatives_env(local_stack, moto_server, emulator_server, s3_client, tmp_path_factory):
    """Pipeline code pointed at the stand-ins (no MLflow needed), a bucket of its own and a config
    copy whose derivatives.yaml lists the three demo symbols."""
    import os

    from candleflow.config import config_dir

    config = tmp_path_factory.mktemp("config")
    shutil.copytree(config_dir(), config, dirs_exist_ok=True)
    text = (config / "derivatives.yaml").read_text()
    (config / "derivatives.yaml").write_text(text.replace("symbols: universe", f"symbols: [{', '.join(SYMBOLS)}]"))
    bucket = f"deriv-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    env = {**local_stack.pipeline_env(), "CANDLEFLOW_CONFIG_DIR": str(config), "CANDLEFLOW_LAKE_BUCKET": bucket}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield bucket
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags/derivatives_ingest.py").get_dag("derivatives_ingest")


def _states(run) -> dict[tuple[str, int], str]:
    from airflow.settings import Session

    with Session() as session:
        return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances(session=session)}


def _events(run, asset: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.settings import Session
    from sqlalchemy import select

    with Session() as session:
        rows = session.execute(
            select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset, AssetEvent.source_run_id == run.run_id)).all()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def runs(airflow_db, derivatives_env, s3_client):
    from candleflow import lake

    first = _dag().test(logical_date=LOGICAL_DATE)
    # read the first run's record before the re-run (same logical date) replaces it
    states = _states(first)
    events = {name: _events(first, name) for name in ("candleflow_funding", "candleflow_open_interest")}
    objects = {p: lake.list_objects(s3_client, derivatives_env, f"{p}/") for p in ("funding", "open_interest")}
    again = _dag().test(logical_date=LOGICAL_DATE)
    objects_again = {p: lake.list_objects(s3_client, derivatives_env, f"{p}/") for p in ("funding", "open_interest")}
    return {"first": first, "states": states, "events": events, "again": again, "objects": objects,
            "objects_again": objects_again}


def test_scheduled_run_lands_both_tables_for_every_exchange(runs, derivatives_env, s3_client):
    from candleflow import lake

    run = runs["first"]
    assert run.state == "success"
    states = runs["states"]
    assert [states[("ingest_derivatives", i)] for i in range(3)] == ["success"] * 3
    assert states[("announce_derivatives", -1)] == "success"
    assert states[("fail_if_any_exchange_failed", -1)] == "skipped"

    # the window: the data interval and lookback_hours (8) before it
    start, end = run.data_interval_start - timedelta(hours=8), run.data_interval_end
    assert end - start == timedelta(hours=9)
    funding = lake.read(s3_client, derivatives_env, "funding")
    assert {(e, s) for e, s in zip(funding["exchange"], funding["symbol"], strict=True)} == \
        {(e, s) for e in EXCHANGES for s in SYMBOLS}
    assert funding["ts"].min() >= start and funding["ts"].max() < end
    by_pair = funding.groupby(["exchange", "symbol"])
    for (exchange, symbol), rows in by_pair:
        hours = 4 if symbol == "SOL" and exchange in ("binance", "bybit") else 8
        assert set(rows["interval_hours"]) == {hours}, (exchange, symbol)
        grid = [t for t in range(int(start.timestamp()) // 3600, int(end.timestamp()) // 3600 + 1) if t % hours == 0
                and start.timestamp() <= t * 3600 < end.timestamp()]
        assert len(rows) == len(grid), (exchange, symbol, rows["ts"].tolist())
    oi = lake.read(s3_client, derivatives_env, "open_interest")
    assert oi.groupby(["exchange", "symbol"]).size().to_dict() == {(e, s): 9 for e in EXCHANGES for s in SYMBOLS}


def test_rerun_rewrites_identical_bytes(runs):
    assert runs["again"].state == "success"
    assert runs["objects"]["funding"] and runs["objects"]["open_interest"]
    assert runs["objects_again"] == runs["objects"]


def test_each_table_announces_once_per_run(runs):
    funding, oi = runs["events"]["candleflow_funding"], runs["events"]["candleflow_open_interest"]
    assert len(funding) == 1 and len(oi) == 1
    assert funding[0]["exchanges"] == EXCHANGES and funding[0]["symbols"] == SYMBOLS
    assert oi[0]["rows"] == 9 * 3 * 3


def test_unknown_symbol_param_fails_the_plan_before_any_exchange(airflow_db, derivatives_env):
    run = _dag().test(run_conf={"symbols": ["DOGE"], "start": "2024-10-01T00:00:00Z", "end": "2024-10-02T00:00:00Z"})
    assert run.state == "failed"
    states = _states(run)
    assert states[("plan_derivatives", -1)] == "failed"
    assert all(state != "success" for (task, _), state in states.items() if task == "ingest_derivatives")
