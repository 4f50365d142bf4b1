"""candleflow.derivatives against the real stand-ins: the exchange emulator (in-process, clock
replaying from 2024-10-30T00:30Z) and the moto S3 server. Nothing is mocked in Python."""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from candleflow import derivatives, lake
from candleflow.config import CollectConfig, ConfigError
from candleflow.emulator import EmulatorServer

CLOCK = "2024-10-30T00:30:00Z"
NOW_MS = int(datetime(2024, 10, 30, 0, 30, tzinfo=UTC).timestamp() * 1000)
START, END = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 30, tzinfo=UTC)
HOUR = 3_600_000
FAST = CollectConfig(enable_rate_limit=False, backoff_seconds=0.01, max_attempts=4)


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as server:
        yield server


@pytest.fixture
def faults(emulator):
    def set_faults(items):
        req = urllib.request.Request(f"{emulator.url}/__admin/faults", data=json.dumps(items).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    yield set_faults
    set_faults([])


@pytest.fixture(scope="module")
def cfg():
    return derivatives.load_config()


def _ingest(s3, bucket, emulator, cfg, exchange, symbols, start=START, end=END):
    return derivatives.ingest_exchange(s3, bucket, exchange, start, end, cfg=cfg, mode="emulator",
                                       emulator_url=emulator.url, collect_cfg=FAST, symbols=symbols)


def _by_symbol(report):
    return {s.symbol: s for s in report.symbols}


@pytest.mark.parametrize("exchange, expected_hours", [
    ("binance", {"BTC": 8, "SOL": 4, "CRV": 1}),
    ("bybit", {"BTC": 8, "SOL": 4, "CRV": 1}),
    ("okx", {"BTC": 8, "SOL": 8, "CRV": 4}),
])
def test_each_symbol_is_stored_at_the_interval_the_exchange_uses(s3_client, bucket, emulator, cfg, exchange,
                                                                 expected_hours):
    report = _ingest(s3_client, bucket, emulator, cfg, exchange, list(expected_hours))
    reps = _by_symbol(report)
    frame = lake.read(s3_client, bucket, "funding", exchange=exchange,
                      start=START, end=END)
    for symbol, hours in expected_hours.items():
        rows = frame[frame["symbol"] == symbol]
        assert reps[symbol].interval_hours == hours
        assert len(rows) == 10 * 24 // hours == reps[symbol].funding_expected, (symbol, len(rows))
        assert set(rows["interval_hours"]) == {hours}
        ts_ms = rows["ts"].astype("int64").to_numpy()
        # on the interval's grid (binance's few-ms-late stamps snapped), one settlement per interval
        assert (ts_ms % (hours * HOUR) == 0).all()
        assert set(ts_ms[1:] - ts_ms[:-1]) == {hours * HOUR}
        assert rows["market"].iloc[0] == f"{symbol}/USDT:USDT"
        assert reps[symbol].funding_gaps == 0
    # binance publishes the mark price of each settlement; the others do not
    assert frame["mark_price"].notna().all() if exchange == "binance" else frame["mark_price"].isna().all()


def test_open_interest_in_base_units_on_every_venue(s3_client, bucket, emulator, cfg):
    values = {}
    for exchange in ("binance", "bybit", "okx"):
        _ingest(s3_client, bucket, emulator, cfg, exchange, ["ETH"])
        oi = lake.read(s3_client, bucket, "open_interest", exchange=exchange, symbol="ETH", start=START, end=END)
        assert len(oi) == 10 * 24 and set(oi["period"]) == {"1h"}
        values[exchange] = oi["open_interest"].median()
        if exchange != "bybit":  # bybit publishes no value for linear contracts
            price = (oi["open_interest_value"] / oi["open_interest"]).median()
            assert 1000 < price < 5000, (exchange, price)  # ETH's price: okx's contracts were converted
        else:
            assert oi["open_interest_value"].isna().all()
    # same generator scale everywhere: okx's 0.01-ETH contracts would be 100x larger if unconverted
    assert max(values.values()) / min(values.values()) < 3, values


def test_perpetual_that_is_not_listed_is_skipped_with_its_reason(s3_client, bucket, emulator, cfg):
    # binance lists REN spot but no REN perpetual: the spot market must not be taken for it
    report = _ingest(s3_client, bucket, emulator, cfg, "binance", ["REN", "BTC"])
    ren = _by_symbol(report)["REN"]
    assert ren.market is None and ren.skipped_reason.startswith("not listed: binance has no active USDT-margined")
    assert "REN/USDT:USDT" in ren.skipped_reason
    assert _by_symbol(report)["BTC"].funding_rows == 30
    assert not lake.list_objects(s3_client, bucket, "funding/exchange=binance/symbol=REN/")


def test_renamed_asset_resolves_through_its_alias(s3_client, bucket, emulator, cfg):
    report = _ingest(s3_client, bucket, emulator, cfg, "okx", ["MATIC"])
    assert _by_symbol(report)["MATIC"].market == "POL/USDT:USDT"
    assert lake.list_objects(s3_client, bucket, "funding/exchange=okx/symbol=MATIC/month=2024-10/")


def test_rerun_is_byte_identical_and_a_later_window_merges(s3_client, bucket, emulator, cfg):
    _ingest(s3_client, bucket, emulator, cfg, "bybit", ["SOL"])
    first = lake.list_objects(s3_client, bucket, "funding/")
    _ingest(s3_client, bucket, emulator, cfg, "bybit", ["SOL"])
    assert lake.list_objects(s3_client, bucket, "funding/") == first
    # an hourly-style run over the last 8 h: the month object keeps the earlier settlements
    _ingest(s3_client, bucket, emulator, cfg, "bybit", ["SOL"], start=datetime(2024, 10, 29, 16, tzinfo=UTC),
            end=datetime(2024, 10, 30, 1, tzinfo=UTC))
    frame = lake.read(s3_client, bucket, "funding", exchange="bybit", symbol="SOL")
    assert frame["ts"].min() == START
    assert frame["ts"].max() == datetime(2024, 10, 30, tzinfo=UTC)  # settled before the clock's 00:30
    assert len(frame) == 10 * 6 + 1 and not frame["ts"].duplicated().any()


def test_window_across_months_writes_one_object_per_month(s3_client, bucket, emulator, cfg):
    _ingest(s3_client, bucket, emulator, cfg, "okx", ["BTC"], start=datetime(2024, 9, 28, tzinfo=UTC),
            end=datetime(2024, 10, 2, tzinfo=UTC))
    keys = sorted(lake.list_objects(s3_client, bucket, "funding/exchange=okx/symbol=BTC/"))
    assert keys == ["funding/exchange=okx/symbol=BTC/month=2024-09/part-00000.parquet",
                    "funding/exchange=okx/symbol=BTC/month=2024-10/part-00000.parquet"]
    frame = lake.read(s3_client, bucket, "funding", exchange="okx", symbol="BTC")
    assert len(frame) == 4 * 3 and set(frame["month"]) == {"2024-09", "2024-10"}


def test_history_beyond_the_venues_retention_is_a_recorded_gap(s3_client, bucket, emulator, cfg):
    # binance serves open interest for the last 30 days only
    start = datetime(2024, 9, 20, tzinfo=UTC)
    report = _ingest(s3_client, bucket, emulator, cfg, "binance", ["BTC"], start=start, end=END)
    btc = _by_symbol(report)["BTC"]
    horizon = NOW_MS - 30 * 86_400_000
    expected_missing = len(range(int(start.timestamp() * 1000), -(-horizon // HOUR) * HOUR, HOUR))
    assert btc.open_interest_gaps == expected_missing
    assert btc.open_interest_rows + btc.open_interest_gaps == btc.open_interest_expected
    gaps = derivatives.read_gaps(s3_client, bucket, "open_interest", exchange="binance", symbol="BTC")
    assert len(gaps) == expected_missing
    assert set(gaps["reason"]) == {"before binance's retention horizon (30 days): the exchange no longer serves it"}
    assert gaps["ts"].max() < datetime.fromtimestamp(horizon / 1000, UTC)
    assert derivatives.read_gaps(s3_client, bucket, "funding", exchange="binance", symbol="BTC").empty


def test_missing_settlements_are_recorded_and_cleared_once_fetched(s3_client, bucket, emulator, cfg, faults):
    faults([{"kind": "outage", "exchange": "bybit", "symbol": "BTC",
             "from": "2024-10-25T00:00:00Z", "to": "2024-10-25T12:00:00Z"}])
    report = _ingest(s3_client, bucket, emulator, cfg, "bybit", ["BTC"])
    btc = _by_symbol(report)["BTC"]
    assert (btc.funding_gaps, btc.open_interest_gaps) == (2, 12)  # 00:00 and 08:00; twelve hours
    gaps = derivatives.read_gaps(s3_client, bucket, "funding", exchange="bybit", symbol="BTC")
    assert list(gaps["ts"]) == [datetime(2024, 10, 25, 0, tzinfo=UTC), datetime(2024, 10, 25, 8, tzinfo=UTC)]
    assert set(gaps["reason"]) == {"the exchange returned none"}
    faults([])
    report = _ingest(s3_client, bucket, emulator, cfg, "bybit", ["BTC"])
    assert _by_symbol(report)["BTC"].funding_gaps == 0
    assert derivatives.read_gaps(s3_client, bucket, "funding", exchange="bybit", symbol="BTC").empty
    assert len(lake.read(s3_client, bucket, "funding", exchange="bybit", symbol="BTC")) == 30


def test_transient_errors_are_retried(s3_client, bucket, emulator, cfg, faults):
    faults([{"kind": "http_error", "exchange": "okx", "status": 503, "count": 2},
            {"kind": "http_error", "exchange": "okx", "status": 429, "retry_after": 0, "count": 1}])
    report = _ingest(s3_client, bucket, emulator, cfg, "okx", ["ETH"])
    eth = _by_symbol(report)["ETH"]
    assert eth.funding_rows == 30 and eth.funding_gaps == 0 and eth.error is None


def test_a_rate_limit_refusal_waits_the_retry_after_the_venue_sent(emulator, cfg, faults):
    import time

    client = derivatives.open_client("bybit", cfg.venues["bybit"], mode="emulator", emulator_url=emulator.url,
                                     collect_cfg=FAST)
    client.load_markets()
    call = derivatives.Caller(client, FAST)   # its own backoff: 0.01 s
    since = int(START.timestamp() * 1000)
    faults([{"kind": "http_error", "exchange": "bybit", "symbol": "ETH", "status": 429, "retry_after": 2,
             "count": 1}])
    began = time.monotonic()
    rows = call("funding", client.fetch_funding_rate_history, "ETH/USDT:USDT", since=since, limit=10,
                params={"until": since + 86_400_000})
    assert time.monotonic() - began >= 2
    assert len(rows) == 4 and call.requests == 2


def test_persistent_network_failure_fails_after_the_other_symbols_landed(s3_client, bucket, emulator, cfg, faults):
    # ETH's history requests keep failing (more 502s than retries); BTC's do not
    faults([{"kind": "http_error", "exchange": "binance", "symbol": "ETH", "status": 502, "count": 1000}])
    with pytest.raises(derivatives.DerivativesError, match=r"binance: 1 symbol\(s\) failed after retries.*ETH: "
                                                           r"ExchangeNotAvailable"):
        _ingest(s3_client, bucket, emulator, cfg, "binance", ["ETH", "BTC"])
    assert len(lake.read(s3_client, bucket, "funding", exchange="binance", symbol="BTC")) == 30
    assert not lake.list_objects(s3_client, bucket, "funding/exchange=binance/symbol=ETH/")


@pytest.mark.parametrize("kind", ["empty_page", "malformed_json"])
def test_an_empty_answer_where_rows_are_due_is_asked_again(s3_client, bucket, emulator, cfg, faults, kind):
    # ccxt returns [] for a 200 with an empty list or a broken body: not the end of the data
    faults([{"kind": kind, "exchange": "bybit", "symbol": "SOL", "count": 1}])
    report = _ingest(s3_client, bucket, emulator, cfg, "bybit", ["SOL"])
    sol = _by_symbol(report)["SOL"]
    assert (sol.funding_rows, sol.funding_gaps) == (60, 0)


def test_bad_configuration_names_the_field(tmp_path, monkeypatch, cfg):
    from candleflow.config import config_dir

    shutil.copytree(config_dir(), tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("CANDLEFLOW_CONFIG_DIR", str(tmp_path))
    text = (tmp_path / "derivatives.yaml").read_text()
    (tmp_path / "derivatives.yaml").write_text(text.replace("exchanges: [binance, bybit, okx]",
                                                            "exchanges: [binance, kraken]"))
    with pytest.raises(ConfigError, match="exchanges: 'kraken' has no perpetuals"):
        derivatives.load_config()
    (tmp_path / "derivatives.yaml").write_text(text.replace("open_interest_period: 1h", "open_interest_period: 2m"))
    with pytest.raises(ConfigError, match="open_interest_period: '2m' is invalid"):
        derivatives.load_config()


def test_window_must_be_ordered(s3_client, bucket, emulator, cfg):
    with pytest.raises(ConfigError, match="end: .* must be after start"):
        _ingest(s3_client, bucket, emulator, cfg, "bybit", ["BTC"], start=END, end=START)


def test_history_start_bounds_every_window(s3_client, bucket, emulator, cfg):
    late = replace(cfg, history_start=datetime(2024, 10, 29, tzinfo=UTC))
    report = _ingest(s3_client, bucket, emulator, late, "bybit", ["BTC"])
    assert _by_symbol(report)["BTC"].funding_rows == 3


def test_a_ban_met_by_the_derivatives_client_stops_the_exchanges_shared_limiter(s3_client, bucket, emulator, cfg,
                                                                                 faults, tmp_path, monkeypatch):
    # funding requests go through the same limiter as the candle collectors (bybit meters every
    # endpoint of an IP in one budget; a ban is per IP everywhere): a ban they meet holds every
    # collector of the host, alerts once, and the run resumes after it without loss
    import time

    from candleflow.ratelimit import limiter_for

    monkeypatch.setenv("CANDLEFLOW_LIMITER_STATE_DIR", str(tmp_path))
    alerts = []
    faults([{"kind": "http_error", "exchange": "binance", "symbol": "ETH", "status": 418, "retry_after": 1,
             "count": 1}])
    began = time.time()
    report = derivatives.ingest_exchange(s3_client, bucket, "binance", START, END, cfg=cfg, mode="emulator",
                                         emulator_url=emulator.url, collect_cfg=FAST, symbols=["ETH"],
                                         alert=alerts.append)
    eth = _by_symbol(report)["ETH"]
    assert eth.error is None and eth.funding_rows == 30 and eth.funding_gaps == 0
    assert len(alerts) == 1 and "binance" in alerts[0]["text"]
    # a candle collector's limiter on the same host sees the ban the derivatives client met
    banned_until = limiter_for("binance", FAST).snapshot().get("banned_until", 0.0)
    assert began + 0.9 <= banned_until <= time.time()
