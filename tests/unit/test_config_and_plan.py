"""Configuration loading and request planning: bad input is refused naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from candleflow import config
from candleflow.config import ConfigError
from candleflow.plan import plan_pairs

REPO_CONFIG = Path(config.__file__).resolve().parents[1] / "config"


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A writable copy of include/config that a test can break."""
    for path in REPO_CONFIG.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    monkeypatch.setenv(config.CONFIG_DIR_ENV, str(tmp_path))
    return tmp_path


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_shipped_config_loads():
    universe = config.load_universe()
    assert {"BTC", "ETH", "SOL"} <= set(universe.symbols)
    assert set(universe.exchanges) == set(config.EXCHANGES)
    pipeline = config.load_pipeline()
    assert pipeline.demo_start < pipeline.demo_end
    training = config.load_training()
    assert training.backend in ("local", "sagemaker")
    assert training.sagemaker.max_wait_seconds >= training.sagemaker.max_run_seconds


def test_environment_overrides_config(monkeypatch):
    monkeypatch.setenv("CANDLEFLOW_LAKE_BUCKET", "other-bucket")
    monkeypatch.setenv("CANDLEFLOW_TRAINING_BACKEND", "sagemaker")
    assert config.load_pipeline().lake.bucket == "other-bucket"
    assert config.load_training().backend == "sagemaker"


def test_unknown_exchange_in_universe_names_field(config_dir):
    _edit(config_dir / "universe.yaml", lambda d: d["exchanges"].update({"mtgox": {"quotes": ["USD"]}}))
    with pytest.raises(ConfigError, match=r"exchanges\.mtgox is not supported"):
        config.load_universe()


def test_bad_timeframe_and_mode_name_the_fix(config_dir, monkeypatch):
    _edit(config_dir / "universe.yaml", lambda d: d.update({"timeframes": ["2h"]}))
    with pytest.raises(ConfigError, match="unknown timeframe '2h'; use one of 1m, 5m, 15m, 1h"):
        config.load_universe()
    monkeypatch.setenv("CANDLEFLOW_EXCHANGE_MODE", "paper")
    with pytest.raises(ConfigError, match="exchange_mode 'paper' is invalid"):
        config.load_pipeline()


def test_spot_training_needs_max_wait_at_least_max_run(config_dir):
    _edit(config_dir / "training.yaml", lambda d: d["sagemaker"].update({"max_wait_seconds": 10}))
    with pytest.raises(ConfigError, match="max_wait_seconds must be >= max_run_seconds"):
        config.load_training()


def test_naive_time_is_refused():
    with pytest.raises(ConfigError, match="no time zone"):
        config.parse_utc("2024-10-01T00:00:00", "start")


def test_plan_lists_every_pair_with_quotes():
    pairs = plan_pairs(exchanges=None, symbols=None, timeframe="1h",
                       start="2024-10-01T00:00:00Z", end="2024-10-02T00:00:00Z")
    universe = config.load_universe()
    assert len(pairs) == len(universe.exchanges) * len(universe.symbols)
    kraken_btc = next(p for p in pairs if p["exchange"] == "kraken" and p["symbol"] == "BTC")
    assert kraken_btc["quotes"] == list(universe.exchanges["kraken"].quotes)
    assert kraken_btc["start"] == "2024-10-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbols": ["DOGE"]}, r"symbols: DOGE not in the universe"),
        ({"exchanges": ["mtgox"]}, r"exchanges: mtgox not in the universe"),
        ({"end": "2024-09-30T00:00:00Z"}, r"end: .* is not after start"),
        ({"start": "2024-10-01T00:30:00Z"}, r"start: .* is not on a 1h candle boundary"),
        ({"timeframe": "4h"}, r"unknown timeframe '4h'"),
    ],
)
def test_plan_refuses_bad_requests_naming_the_field(kwargs, message):
    request = {"exchanges": None, "symbols": None, "timeframe": "1h",
               "start": "2024-10-01T00:00:00Z", "end": "2024-10-02T00:00:00Z", **kwargs}
    with pytest.raises(ConfigError, match=message):
        plan_pairs(**request)


def test_the_cost_estimate_uses_ccxts_spacing_per_candle_request_and_the_published_budget_when_chosen():
    import re

    import ccxt

    from candleflow.plan import ccxt_spacing_ms, estimate_cost, plan_pairs

    # ccxt charges bybit's kline endpoint 5 × its 20 ms rateLimit: 100 ms, not 20
    assert ccxt_spacing_ms(ccxt.bybit()) == 100
    assert ccxt_spacing_ms(ccxt.binance()) == 20
    pairs = plan_pairs(exchanges=["bybit"], symbols=["BTC"], timeframe="1m",
                       start="2024-01-01T00:00:00Z", end="2024-02-01T00:00:00Z")

    def seconds(lines):
        return int(re.search(r"≈ (\d+) s", lines[0]).group(1))

    slow, fast = estimate_cost(pairs, "ccxt"), estimate_cost(pairs, "published")
    requests = int(re.search(r"~(\d+) requests", slow[0]).group(1))
    assert seconds(slow) == round(requests * 0.1)
    # bybit publishes 600 requests per 5 s; at the default 80 % margin that is 96 requests/s
    assert seconds(fast) == round(requests / 96)
    assert "budget published" in fast[-1] and "budget ccxt" in slow[-1]
