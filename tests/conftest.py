"""Session fixtures: the real local stand-ins (emulator, moto server, mlflow server) and Airflow.

Services start on free ports in a temporary state dir, through the same `candleflow.stack`
module `make up` uses, and only when a test asks for them. Airflow settings are put into the
environment here, before anything imports Airflow, so `dag.test()` runs against a private
sqlite metadata DB and this project's dags/ and plugins/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="candleflow-tests-"))

# Airflow reads its configuration at import time: set it before any test module imports it.
os.environ.update(
    {
        "AIRFLOW_HOME": str(_STATE / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
)


@pytest.fixture(scope="session")
def local_stack():
    """The stack object; services are started by the fixtures below on first use."""
    from candleflow.stack import LocalStack, Ports

    stack = LocalStack(_STATE / "stack", Ports.free(), emulator_clock="2024-10-30T00:30:00Z")
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def moto_server(local_stack):
    local_stack.start("moto")
    local_stack.ensure_buckets()
    return local_stack.s3_endpoint


@pytest.fixture(scope="session")
def emulator_server(local_stack):
    """The exchange emulator as a separate process, clock replaying from 2024-10-30T00:30Z."""
    local_stack.start("emulator")
    return local_stack.emulator_url


@pytest.fixture(scope="session")
def mlflow_server(local_stack, moto_server):
    local_stack.start("mlflow")
    return local_stack.mlflow_url


@pytest.fixture(scope="session")
def s3_client(moto_server):
    import boto3

    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def bucket(s3_client):
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated private Airflow metadata DB (sqlite) for dag.test() and DagBag tests."""
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture(scope="session")
def _pipeline_settings(local_stack, moto_server, emulator_server, mlflow_server):
    """The stand-ins' environment plus a demo-universe copy of include/config (made once)."""
    # The end-to-end runs use the demo universe (BTC, ETH, SOL): a copy of include/config with
    # universe.yaml narrowed to it, so a scheduled run plans 15 pairs, not 150. ccxt's throttle
    # stays on: the emulator enforces each exchange's published limits.
    import shutil

    import yaml

    config = _STATE / "config"
    shutil.copytree(REPO_ROOT / "include" / "config", config, dirs_exist_ok=True)
    universe = yaml.safe_load((config / "universe.yaml").read_text())
    demo = yaml.safe_load((config / "pipeline.yaml").read_text())["demo"]["symbols"]
    universe["symbols"] = demo
    universe["aliases"] = {k: v for k, v in (universe.get("aliases") or {}).items() if k in demo}
    (config / "universe.yaml").write_text(yaml.safe_dump(universe))
    return {**local_stack.pipeline_env(), "CANDLEFLOW_CONFIG_DIR": str(config)}


@pytest.fixture(scope="module")
def pipeline_env(_pipeline_settings):
    """Point pipeline code (DAG tasks run in-process by dag.test) at the session's stand-ins, for
    one test module: the environment is restored after it, so a later module reading the shipped
    config (e.g. the whole-universe backfill) is not silently narrowed to the demo universe."""
    env = _pipeline_settings
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def own_lake_bucket(pipeline_env, s3_client, monkeypatch):
    """A lake bucket of this test's own for DAG runs (CANDLEFLOW_LAKE_BUCKET): the session's shared
    lake stays exactly as the e2e scenario expects, whatever order the modules run in."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    monkeypatch.setenv("CANDLEFLOW_LAKE_BUCKET", name)
    return name


def _synthetic_candles(n: int, *, start: str = "2024-09-01", seed: int = 0, exchanges=("binance", "okx"),
                       symbol: str = "BTC", sigma: float = 0.01, wick: float = 0.001):
    """`n` hourly candles per exchange of one random walk (log-return deviation `sigma`), each
    exchange's close a little off it, open = previous close, high/low `wick` beyond the body."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq="1h", tz="UTC").as_unit("ms")
    base = 100 * np.exp(np.cumsum(rng.normal(0, sigma, n)))
    frames = []
    for ex in exchanges:
        close = base * (1 + rng.normal(0, 0.0005, n))
        open_ = np.r_[close[0], close[:-1]]
        frames.append(pd.DataFrame({"ts": ts, "exchange": ex, "symbol": symbol, "timeframe": "1h", "open": open_,
                                    "high": np.maximum(open_, close) * (1 + wick),
                                    "low": np.minimum(open_, close) * (1 - wick),
                                    "close": close, "volume": rng.uniform(10, 100, n)}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="session")
def synthetic_candles():
    """The candle generator shared by the training tests (a function: call it with n and options)."""
    return _synthetic_candles


@pytest.fixture(scope="module")
def emulator():
    """An in-process exchange emulator for one module, replaying from 2024-10-30T00:30Z with its
    rate limits off (tests about completeness and faults; pace is bench/backfill.py's). A module
    that needs other settings (limits on, another clock) defines its own `emulator`."""
    from candleflow.emulator import EmulatorServer

    with EmulatorServer(clock="2024-10-30T00:30:00Z", enforce_limits=False) as server:
        yield server


@pytest.fixture
def no_faults(emulator):
    """The module's emulator without injected faults before and after the test (a module opts in
    with `pytestmark = pytest.mark.usefixtures("no_faults")`; its own `emulator` fixture, if any,
    is the one cleaned)."""
    emulator.faults.set([])
    yield
    emulator.faults.set([])
