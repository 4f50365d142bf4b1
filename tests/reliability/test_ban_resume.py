"""A ban from the exchange stops every collector of that exchange, alerts once, and the backfill
resumes after the ban window with nothing lost.

The emulator enforces the exchanges' limits and is told to ban the client IP (as continued
abuse would: binance 418 with Retry-After, bybit 403 with no duration); the limiter must stop at
the first refusal, wait out the ban, and the lake must end with every candle exactly once.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import ccxt.async_support  # noqa: F401 - imported here, so the ban is not over before the first request
import pandas as pd
import pytest

from candleflow import lake, ratelimit
from candleflow.config import CollectConfig, LakeConfig, load_budgets
from candleflow.emulator import EmulatorServer
from candleflow.ingest import ingest_exchange

pytestmark = pytest.mark.reliability

START, END = datetime(2024, 10, 26, tzinfo=UTC), datetime(2024, 10, 28, tzinfo=UTC)
SYMBOLS = ["BTC", "ETH", "SOL", "ADA"]
CFG = CollectConfig(max_attempts=4, backoff_seconds=0.05, timeout_ms=5000, enable_rate_limit=True,
                    empty_page_retries=1, budget="published", requests_in_flight=4, pairs_in_flight=4)
BAN_SECONDS = 3.0


@pytest.fixture
def emulator():
    with EmulatorServer(clock="2024-10-30T00:30:00Z", enforce_limits=True) as server:
        yield server


@pytest.mark.parametrize("exchange", ["binance", "bybit"])
def test_a_ban_stops_the_exchange_alerts_once_and_resumes_without_loss(emulator, s3_client, bucket, tmp_path,
                                                                       exchange):
    budgets, _, _ = load_budgets()
    # bybit's 403 says nothing about its length: the budget's ban_seconds (10 min) decides; shortened here
    budget = replace(budgets[exchange], ban_seconds=BAN_SECONDS)
    alerts = []
    limiter = ratelimit.Limiter(budget, tmp_path / "limiter", alert=alerts.append)
    emulator.limits.exchanges[exchange].force_ban(BAN_SECONDS)
    started = time.monotonic()
    report = ingest_exchange(s3_client, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange=exchange,
                             symbols=SYMBOLS, timeframe="1h", start=START, end=END, quotes=["USDT", "USD"],
                             page_size=12, mode="emulator", emulator_url=emulator.url, collect_cfg=CFG,
                             limiter=limiter)
    elapsed = time.monotonic() - started
    outcomes = emulator.outcomes[exchange]

    # the ban was met, respected (only the requests already on their way saw it), and waited out
    assert 1 <= outcomes["banned"] <= CFG.requests_in_flight, dict(outcomes)
    assert outcomes["rate_limited"] == 0
    assert elapsed >= BAN_SECONDS - 0.5
    assert len(alerts) == 1 and alerts[0]["candleflow"]["exchange"] == exchange
    assert alerts[0]["candleflow"]["event"] == "exchange_banned" and exchange in alerts[0]["text"]
    assert limiter.snapshot()["bans"] == 1

    # nothing lost: every pair complete, every candle once
    assert {c.status for c in report.chunks} == {"published"}, report.chunks
    frame = lake.read(s3_client, bucket, exchange=exchange, timeframe="1h")
    due = list(pd.date_range(START, END, freq="1h", inclusive="left"))
    for symbol in SYMBOLS:
        ts = frame.loc[frame["symbol"] == symbol, "ts"]
        assert list(ts) == due, symbol


def test_a_ban_seen_by_one_process_holds_the_others(tmp_path):
    """The ban lives in the shared state file: a second limiter (another Airflow task's process)
    waits too, and the alert is sent only by the one that met it."""
    budgets, _, _ = load_budgets()
    first_alerts, second_alerts = [], []
    first = ratelimit.Limiter(budgets["binance"], tmp_path, alert=first_alerts.append)
    second = ratelimit.Limiter(budgets["binance"], tmp_path, alert=second_alerts.append)
    url = "https://api.binance.com/api/v3/klines?symbol=BTCUSDT"
    first.observe(url, 418, {"Retry-After": "2"}, '{"code":-1003}')
    second.observe(url, 418, {"Retry-After": "2"}, '{"code":-1003}')   # an in-flight request of the other task
    assert len(first_alerts) == 1 and second_alerts == []

    import asyncio

    started = time.monotonic()
    asyncio.run(second.acquire(url))
    assert time.monotonic() - started >= 1.8
