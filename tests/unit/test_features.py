"""Features: no look-ahead per family, the joins' edge cases, labels, config errors, the Fear &
Greed source (emulator, fixture), and the lake round trip on the moto server."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from candleflow import features as F
from candleflow.config import ConfigError

START = pd.Timestamp("2024-08-01", tz="UTC")
EXCHANGES = ("binance", "kraken", "okx")
# Not on a 4h or day boundary: the 4h and 1d bars in progress at T must stay invisible before T.
T = pd.Timestamp("2024-08-21T02:00", tz="UTC")


def make_candles(hours: int = 24 * 30, exchanges=EXCHANGES, seed: int = 7, start=START) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    path = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    frames = []
    for ex in exchanges:
        c = path * (1 + rng.normal(0, 0.0005, hours))
        o = np.r_[c[0], c[:-1]]
        h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.002, hours)))
        low = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.002, hours)))
        frames.append(pd.DataFrame({"exchange": ex, "ts": ts, "open": o, "high": h, "low": low, "close": c,
                                    "volume": rng.uniform(1, 10, hours)}))
    return pd.concat(frames, ignore_index=True)


def make_fear_greed(days: int = 40, start=START, missing=()) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"day": pd.date_range(start, periods=days, freq="D", tz="UTC"),
                          "value": rng.integers(5, 95, days).astype(float)})
    return frame[~frame["day"].dt.strftime("%Y-%m-%d").isin(missing)].reset_index(drop=True)


def make_funding(days: int = 40, exchanges=("binance", "okx"), start=START) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frames = [pd.DataFrame({"exchange": ex, "ts": pd.date_range(start, periods=days * 3, freq="8h", tz="UTC"),
                            "funding_rate": rng.normal(0, 1e-4, days * 3), "interval_hours": 8})
              for ex in exchanges]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def cfg():
    return F.load_config()


def compute(cfg, candles, funding=None, fear_greed=None):
    return F.compute_features(candles, timeframe="1h", cfg=cfg, funding=funding, fear_greed=fear_greed)


# -- no look-ahead --------------------------------------------------------------------------------
def scale_future(candles: pd.DataFrame, t: pd.Timestamp, seed: int = 11) -> pd.DataFrame:
    """Every candle from t on changed: prices on another path, other volumes."""
    out = candles.copy()
    future = out["ts"] >= t
    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(0, 0.05, future.sum()))
    for col in ("open", "high", "low", "close"):
        out.loc[future, col] *= factor
    out.loc[future, "volume"] = rng.uniform(1, 50, future.sum())
    return out


def shift_future(candles: pd.DataFrame, t: pd.Timestamp, bars: int = 5) -> pd.DataFrame:
    """The future shifted in time: every candle from t on takes the values of the one `bars` later."""
    parts = []
    for _, one in candles.groupby("exchange", sort=False):
        one = one.sort_values("ts").copy()
        future = (one["ts"] >= t).to_numpy()
        for col in ("open", "high", "low", "close", "volume"):
            values = one[col].to_numpy().copy()
            idx = np.flatnonzero(future)
            values[idx[:-bars]] = values[idx[bars:]]
            one[col] = values
        parts.append(one.iloc[:-bars])   # the last `bars` have nothing to take: gone
    return pd.concat(parts, ignore_index=True)


def changed_before_after(before: pd.DataFrame, after: pd.DataFrame, columns, t) -> tuple[list, list]:
    """Columns whose values differ on rows with ts < t, and on rows with ts >= t (NaN == NaN)."""
    key = ["exchange", "ts"]
    merged = before.merge(after, on=key, suffixes=("_a", "_b"))
    past = merged["ts"] < t
    changed_past, changed_future = [], []
    for col in columns:
        a, b = merged[f"{col}_a"].to_numpy(), merged[f"{col}_b"].to_numpy()
        differs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if differs[past.to_numpy()].any():
            changed_past.append(col)
        if differs[~past.to_numpy()].any():
            changed_future.append(col)
    return changed_past, changed_future


CANDLE_FAMILIES = ["returns", "trend", "momentum", "volatility", "volume", "context", "cross_exchange"]


@pytest.mark.parametrize("perturb", [scale_future, shift_future], ids=["changed", "shifted"])
@pytest.mark.parametrize("family", CANDLE_FAMILIES)
def test_future_candles_change_no_past_feature(cfg, family, perturb):
    candles = make_candles()
    columns = F.FAMILY_COLUMNS[family]
    before = compute(cfg, candles)
    after = compute(cfg, perturb(candles, T))
    changed_past, changed_future = changed_before_after(before, after, columns, T)
    assert changed_past == [], f"{family}: {changed_past} changed on rows before {T}: look-ahead"
    # the perturbation reached this family at all (otherwise the check above proves nothing)
    assert changed_future, f"{family}: nothing changed after {T}; the test would not see a leak"


def test_future_candles_of_one_exchange_change_no_past_cross_exchange_feature(cfg):
    candles = make_candles()
    one = candles["exchange"] == "kraken"
    perturbed = pd.concat([scale_future(candles[one], T), candles[~one]], ignore_index=True)
    changed_past, changed_future = changed_before_after(compute(cfg, candles), compute(cfg, perturbed),
                                                        F.CROSS_EXCHANGE_COLUMNS, T)
    assert changed_past == [] and changed_future


def test_future_funding_and_fear_greed_change_no_past_feature(cfg):
    candles, funding, fear_greed = make_candles(), make_funding(), make_fear_greed()
    before = compute(cfg, candles, funding, fear_greed)
    # everything observed after T: settlements after T, index days published after T
    funding2 = funding.copy()
    funding2.loc[funding2["ts"] > T, "funding_rate"] += 0.01
    fear_greed2 = fear_greed.copy()
    published = fear_greed2["day"] + cfg.fear_greed_available_after
    fear_greed2.loc[published > T, "value"] = 100 - fear_greed2.loc[published > T, "value"]
    after = compute(cfg, candles, funding2, fear_greed2)
    changed_past, changed_future = changed_before_after(before, after, ["funding_rate", "fear_greed"], T)
    assert changed_past == []
    assert changed_future == ["funding_rate", "fear_greed"]


def test_the_look_ahead_check_catches_a_leak(cfg):
    """The check above has teeth: a feature built from the next candle's close is caught."""
    candles = make_candles()

    def leaky(c):
        out = compute(cfg, c)
        out["rsi"] = out.groupby("exchange")["close"].shift(-1)
        return out

    changed_past, _ = changed_before_after(leaky(candles), leaky(scale_future(candles, T)), ["rsi"], T)
    assert changed_past == ["rsi"]


def test_labels_are_future_returns_and_never_features(cfg):
    assert not set(F.LABEL_COLUMNS) & set(F.FEATURE_COLUMNS)
    assert not [c for c in F.FEATURE_COLUMNS if c.startswith("label")]
    candles = make_candles(hours=48)
    gap_ts = START + pd.Timedelta(hours=10)
    candles = candles[~((candles["exchange"] == "okx") & (candles["ts"] == gap_ts))]
    cfg3 = replace(cfg, horizon_bars=3, direction_threshold=0.001)
    out = compute(cfg3, candles).set_index(["exchange", "ts"])
    close = candles.set_index(["exchange", "ts"])["close"]
    t0 = START + pd.Timedelta(hours=5)
    expected = np.log(close[("binance", t0 + pd.Timedelta(hours=3))] / close[("binance", t0)])
    assert out.loc[("binance", t0), "label_return"] == pytest.approx(expected)
    assert out.loc[("binance", t0), "label_direction"] == (1.0 if expected > 0.001 else 0.0)
    # the candle 3 h later is missing: unknown, not a return over some other span
    assert np.isnan(out.loc[("okx", gap_ts - pd.Timedelta(hours=3)), "label_return"])
    assert np.isnan(out.loc[("okx", gap_ts - pd.Timedelta(hours=3)), "label_direction"])
    # the last 3 candles have no future yet
    last = out.xs("binance").iloc[-3:]
    assert last["label_return"].isna().all() and last["label_direction"].isna().all()
    directions = set(out["label_direction"].dropna().unique())
    assert directions == {0.0, 1.0}


# -- multi-timeframe: the last closed bar ------------------------------------------------------------
def test_context_is_the_last_closed_bar_and_a_gap_stays_a_gap(cfg):
    candles = make_candles(hours=24 * 3, exchanges=("binance",))
    out = compute(cfg, candles).set_index("ts")
    c = candles.set_index("ts")
    day = START + pd.Timedelta(days=1)
    # the 03:00 candle closes at 04:00: the 00:00-04:00 bar has closed, made of candles 00..03
    row = day + pd.Timedelta(hours=3)
    assert out.loc[row, "ctx_4h_return"] == pytest.approx(np.log(c.loc[row, "close"] / c.loc[day, "open"]))
    high = c.loc[day:row, "high"].max()
    low = c.loc[day:row, "low"].min()
    assert out.loc[row, "ctx_4h_range"] == pytest.approx((high - low) / c.loc[row, "close"])
    # at 02:00 that bar is still in progress: the row sees the 20:00-24:00 bar before it
    prev = day - pd.Timedelta(hours=4)
    expected = np.log(c.loc[day - pd.Timedelta(hours=1), "close"] / c.loc[prev, "open"])
    for h in (0, 1, 2):
        assert out.loc[day + pd.Timedelta(hours=h), "ctx_4h_return"] == pytest.approx(expected)
    # the 1d bar of `day` is visible from its last candle (23:00) on, not before
    assert out.loc[day + pd.Timedelta(hours=22), "ctx_1d_return"] == pytest.approx(
        np.log(c.loc[day - pd.Timedelta(hours=1), "close"] / c.loc[day - pd.Timedelta(days=1), "open"]))
    assert out.loc[day + pd.Timedelta(hours=23), "ctx_1d_return"] == pytest.approx(
        np.log(c.loc[day + pd.Timedelta(hours=23), "close"] / c.loc[day, "open"]))
    # a missing candle makes its 4h bar a gap for the rows that would see it, not a 3-candle bar
    holed = compute(cfg, candles[candles["ts"] != day + pd.Timedelta(hours=1)]).set_index("ts")
    for h in (3, 4, 5, 6):
        assert np.isnan(holed.loc[day + pd.Timedelta(hours=h), "ctx_4h_return"])
    assert holed.loc[day + pd.Timedelta(hours=7), "ctx_4h_return"] == pytest.approx(
        out.loc[day + pd.Timedelta(hours=7), "ctx_4h_return"])


# -- cross-exchange ----------------------------------------------------------------------------------
def test_cross_exchange_spread_to_median_and_volume_share(cfg):
    ts = pd.date_range(START, periods=2, freq="h", tz="UTC")
    candles = pd.DataFrame({
        "exchange": ["binance", "kraken", "okx", "binance", "okx"],
        "ts": [ts[0], ts[0], ts[0], ts[1], ts[1]],
        "open": [100.0, 101, 99, 100, 100], "high": [102.0, 102, 102, 102, 102], "low": [98.0, 98, 98, 98, 98],
        "close": [100.0, 101.0, 99.0, 100.0, 102.0], "volume": [1.0, 3.0, 6.0, 2.0, 2.0],
    })
    out = compute(cfg, candles).set_index(["exchange", "ts"])
    assert out.loc[("kraken", ts[0]), "xex_spread_bps"] == pytest.approx(100.0)    # 101 vs median 100
    assert out.loc[("okx", ts[0]), "xex_spread_bps"] == pytest.approx(-100.0)
    assert out.loc[("binance", ts[0]), "xex_spread_bps"] == pytest.approx(0.0)
    assert out.loc[("okx", ts[0]), "xex_volume_share"] == pytest.approx(0.6)
    assert out.loc[("binance", ts[1]), "xex_spread_bps"] == pytest.approx(-99.00990099, rel=1e-6)  # median 101
    assert out.loc[("binance", ts[1]), "xex_exchanges"] == 2.0
    assert out.xs(ts[0], level="ts")["xex_volume_share"].sum() == pytest.approx(1.0)


# -- funding and Fear & Greed: as-of, gaps are gaps ------------------------------------------------
def test_funding_is_the_last_settlement_while_current_and_null_where_not_collected(cfg):
    candles = make_candles(hours=48)
    funding = pd.DataFrame({"exchange": ["binance", "binance", "binance"],
                            "ts": pd.to_datetime(["2024-08-01T00:00Z", "2024-08-01T08:00Z", "2024-08-01T16:00Z"]),
                            "funding_rate": [0.0001, 0.0002, 0.0003], "interval_hours": [8, 8, 8]})
    out = compute(cfg, candles, funding=funding).set_index(["exchange", "ts"])
    at = lambda h: (("binance", START + pd.Timedelta(hours=h)))  # noqa: E731
    assert out.loc[at(0), "funding_rate"] == 0.0001          # closes 01:00: the 00:00 settlement
    assert out.loc[at(6), "funding_rate"] == 0.0001          # closes 07:00
    assert out.loc[at(7), "funding_rate"] == 0.0002          # closes 08:00: that settlement is known
    assert out.loc[at(22), "funding_rate"] == 0.0003
    assert np.isnan(out.loc[at(24), "funding_rate"])         # the 00:00 settlement never came: stale
    assert out.xs("kraken")["funding_rate"].isna().all()      # not collected for kraken
    assert compute(cfg, candles)["funding_rate"].isna().all()  # no funding table at all


def test_fear_greed_missing_day_is_null_not_zero_nor_yesterday(cfg):
    candles = make_candles(hours=24 * 5, exchanges=("binance",))
    fg = make_fear_greed(days=5, missing=("2024-08-03",))
    out = compute(cfg, candles, fear_greed=fg).set_index("ts")["fear_greed"]
    value = fg.set_index(fg["day"].dt.strftime("%Y-%m-%d"))["value"]
    day2, day3, day4 = (START + pd.Timedelta(days=d) for d in (1, 2, 3))
    # published 60 min after midnight: the 00:00 candle (closes 01:00) already has today's value
    assert out[day2] == value["2024-08-02"]
    assert out[day2 - pd.Timedelta(hours=1)] == value["2024-08-01"]
    assert out[day3 - pd.Timedelta(hours=1)] == value["2024-08-02"]
    assert out[day3:day4 - pd.Timedelta(hours=1)].isna().all()   # the missing day: null, all 24 h
    assert out[day4] == value["2024-08-04"]
    assert (out.dropna() > 0).all()


# -- configuration -----------------------------------------------------------------------------------
def test_config_chooses_the_indicators_and_names_bad_fields():
    base = {"indicators": {"momentum": {"rsi": {"timeperiod": 7}}}}
    cfg = F.load_config(base)
    out = compute(cfg, make_candles(hours=24 * 3))
    assert out["rsi"].notna().any() and out["macd"].isna().all()   # left out: its column stays, null
    rsi_14 = compute(F.load_config(), make_candles(hours=24 * 3))["rsi"]
    assert not np.allclose(out["rsi"].iloc[-10:], rsi_14.iloc[-10:])   # period 7, not the shipped 14
    with pytest.raises(ConfigError, match=r"indicators\.momentum\.macd is unknown; momentum indicators are rsi"):
        F.load_config({"indicators": {"momentum": {"macd": {}}}})
    with pytest.raises(ConfigError, match=r"indicators\.momentum\.rsi\.period is not a parameter of rsi; use timeperiod"):
        F.load_config({"indicators": {"momentum": {"rsi": {"period": 14}}}})
    with pytest.raises(ConfigError, match=r"labels\.horizon_bars: 0 must be a whole number >= 1"):
        F.load_config({"labels": {"horizon_bars": 0}})
    with pytest.raises(ConfigError, match=r"context\.timeframes: '2h' is not supported"):
        F.load_config({"context": {"timeframes": ["2h"]}})
    with pytest.raises(ConfigError, match=r"labels\.horizon is not a field; use direction_threshold, horizon_bars"):
        F.load_config({"labels": {"horizon": 4}})
    with pytest.raises(ConfigError, match=r"unknown field 'indicator'"):
        F.load_config({"indicator": {}})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['volume'\]"):
        compute(cfg, make_candles(hours=5).drop(columns=["volume"]))


def test_shipped_config_loads_every_indicator():
    cfg = F.load_config()
    assert set(cfg.indicators) == set(F.INDICATORS)
    out = compute(cfg, make_candles())
    assert out[F.FEATURE_COLUMNS[:-2]].iloc[-24:].notna().all().all()   # warm: all but funding / F&G


# -- Fear & Greed source ----------------------------------------------------------------------------
def test_served_index_is_the_generators_deterministic_output_with_its_gap_days():
    from candleflow.emulator import feargreed

    # every day, as served by an emulator whose clock is past the series' last day
    after_last_day_ms = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    shipped = feargreed.FearGreedIndex(lambda: after_last_day_ms).serve("GET", {"limit": "0"}).body
    shipped["data"][0].pop("time_until_update")
    assert shipped["data"] == feargreed.generate()
    days = {datetime.fromtimestamp(int(e["timestamp"]), UTC).strftime("%Y-%m-%d") for e in shipped["data"]}
    assert set(feargreed.MISSING_DAYS).isdisjoint(days)
    assert all(1 <= int(e["value"]) <= 100 for e in shipped["data"])


def test_emulator_serves_fear_greed_as_of_its_clock_and_fetch_keeps_gaps():
    from candleflow.emulator import EmulatorServer

    with EmulatorServer(clock="2024-10-10T12:00:00Z", enforce_limits=False) as server:
        url = server.url + "/alternative.me/fng/"
        latest = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert [e["timestamp"] for e in latest["data"]] == [str(int(datetime(2024, 10, 10, tzinfo=UTC).timestamp()))]
        assert latest["data"][0]["time_until_update"] == str(12 * 3600)
        frame = F.fetch_fear_greed(url)
        assert frame["day"].max() == pd.Timestamp("2024-10-10", tz="UTC")    # nothing from the future
        assert not frame["day"].isin(pd.to_datetime(["2024-10-08", "2024-10-09"], utc=True)).any()
        assert frame["day"].is_monotonic_increasing and frame["value"].between(1, 100).all()
        with pytest.raises(RuntimeError, match="HTTP 400.*format=json"):
            F.fetch_fear_greed(url + "?date_format=world")
    with pytest.raises(RuntimeError, match="unreachable"):
        F.fetch_fear_greed(url, timeout=2)


def test_fear_greed_url_follows_exchange_mode(cfg):
    from candleflow.config import load_pipeline

    pipeline = load_pipeline()
    emulated = replace(pipeline, exchange_mode="emulator", emulator_url="http://127.0.0.1:9/")
    assert F.fear_greed_url(cfg, emulated) == "http://127.0.0.1:9/alternative.me/fng/"
    assert F.fear_greed_url(cfg, replace(pipeline, exchange_mode="live")) == "https://api.alternative.me/fng/"


# -- the lake: partitions, sources, re-runs, training frame --------------------------------------------
def _seed_lake(s3, bucket, candles: pd.DataFrame, symbol="BTC", prefix="ohlcv") -> None:
    """The candles as daily ingest runs write them: one object per exchange and day."""
    from candleflow import lake

    for (ex, day), one in candles.groupby(["exchange", candles["ts"].dt.floor("D")]):
        start = day.to_pydatetime()
        lake.write_batch(s3, bucket, one.drop(columns=["exchange"]), exchange=ex, symbol=symbol, timeframe="1h",
                         market=f"{symbol}/USDT", window_start=start, window_end=start + timedelta(days=1),
                         prefix=prefix)


def test_build_writes_daily_partitions_with_sources_identically_however_batched(s3_client, bucket, cfg):
    from candleflow import lake

    cfg = replace(cfg, warmup_days=3)
    candles = make_candles(hours=24 * 8)
    _seed_lake(s3_client, bucket, candles)
    fg = make_fear_greed(days=8)
    start, end = datetime(2024, 8, 5, tzinfo=UTC), datetime(2024, 8, 7, tzinfo=UTC)
    done = F.build_features(s3_client, bucket, "BTC", "1h", start, end, exchanges=list(EXCHANGES), cfg=cfg,
                            fear_greed=fg, fear_greed_source="fear_greed:test")
    assert [d["date"] for d in done] == ["2024-08-05", "2024-08-06"]
    assert [d["rows"] for d in done] == [72, 72]
    key = "features/symbol=BTC/timeframe=1h/date=2024-08-05/part-00000.parquet"
    assert done[0]["key"] == key
    sources = F.object_sources(s3_client, bucket, key)
    # the warm-up days before, the day itself and the next (the labels' horizon), every exchange:
    # the objects of the other days (the same month partition) are not read
    dates = sorted({k.split("part-")[1][:8] for k in sources if k.startswith("ohlcv/")})
    assert dates == ["20240802", "20240803", "20240804", "20240805", "20240806"]
    assert {k.split("/")[1] for k in sources if k.startswith("ohlcv/")} == {f"exchange={e}" for e in EXCHANGES}
    assert sources[-1] == "fear_greed:test"
    first = lake.list_objects(s3_client, bucket, "features/")

    # a re-run, and the same days built one at a time: identical keys and bytes
    F.build_features(s3_client, bucket, "BTC", "1h", start, end, exchanges=list(EXCHANGES), cfg=cfg,
                     fear_greed=fg, fear_greed_source="fear_greed:test")
    assert lake.list_objects(s3_client, bucket, "features/") == first
    for day in (start, start + timedelta(days=1)):
        F.build_features(s3_client, bucket, "BTC", "1h", day, day + timedelta(hours=1), exchanges=list(EXCHANGES),
                         cfg=cfg, fear_greed=fg, fear_greed_source="fear_greed:test")
    assert lake.list_objects(s3_client, bucket, "features/") == first

    # what lands equals computing over the raw candles directly (the lake round trip loses nothing)
    frame, keys = F.load_training_frame(s3_client, bucket, "BTC", "1h", start, end)
    assert sorted(keys) == sorted(first)
    assert list(frame.columns) == ["exchange", "symbol", "timeframe", "ts", "close", *F.FEATURE_COLUMNS,
                                   *F.LABEL_COLUMNS]
    window = candles[(candles["ts"] >= pd.Timestamp(start) - pd.Timedelta(days=3))
                     & (candles["ts"] < pd.Timestamp("2024-08-06T01:00", tz="UTC"))]
    direct = compute(cfg, window, fear_greed=fg)
    direct = direct[(direct["ts"] >= pd.Timestamp(start)) & (direct["ts"] < pd.Timestamp("2024-08-06", tz="UTC"))]
    got = frame[frame["ts"] < pd.Timestamp("2024-08-06", tz="UTC")]
    pd.testing.assert_frame_equal(got[direct.columns].reset_index(drop=True), direct.reset_index(drop=True),
                                  check_dtype=False)
    assert got["funding_rate"].isna().all()          # no funding collected in this bucket: null, not 0
    assert got["fear_greed"].notna().all()


def test_a_day_without_candles_leaves_no_object(s3_client, bucket, cfg):
    from candleflow import lake

    cfg = replace(cfg, warmup_days=1)
    candles = make_candles(hours=24 * 3)
    _seed_lake(s3_client, bucket, candles)
    day = datetime(2024, 8, 2, tzinfo=UTC)
    F.build_features(s3_client, bucket, "BTC", "1h", day, day + timedelta(days=1), exchanges=list(EXCHANGES), cfg=cfg)
    assert len(lake.list_objects(s3_client, bucket, "features/")) == 1
    for key in lake.list_objects(s3_client, bucket, "ohlcv/"):
        if "/part-20240802T000000Z_" in key:   # the day's object of each exchange
            s3_client.delete_object(Bucket=bucket, Key=key)
    done = F.build_features(s3_client, bucket, "BTC", "1h", day, day + timedelta(days=1), exchanges=list(EXCHANGES),
                            cfg=cfg)
    assert done[0]["date"] == "2024-08-02" and done[0]["key"] is None and done[0]["rows"] == 0
    assert lake.list_objects(s3_client, bucket, "features/") == {}


def test_funding_from_the_lakes_funding_table_where_collected(s3_client, bucket, cfg):
    from candleflow import lake

    cfg = replace(cfg, warmup_days=1)
    _seed_lake(s3_client, bucket, make_candles(hours=24 * 4))
    settlements = pd.date_range("2024-08-01", "2024-08-05", freq="8h", tz="UTC", inclusive="left")
    rates = np.linspace(1e-4, 2e-4, len(settlements))
    lake.write_partition(s3_client, bucket, "funding", pd.DataFrame({
        "market": "BTC/USDT:USDT", "ts": settlements, "funding_rate": rates, "interval_hours": 8, "mark_price": None,
    }), partition={"exchange": "binance", "symbol": "BTC", "month": "2024-08"})
    day = datetime(2024, 8, 3, tzinfo=UTC)
    done = F.build_features(s3_client, bucket, "BTC", "1h", day, day + timedelta(days=1), exchanges=list(EXCHANGES),
                            cfg=cfg)
    frame, _ = F.load_training_frame(s3_client, bucket, "BTC", "1h", day, day + timedelta(days=1))
    binance = frame[frame["exchange"] == "binance"].set_index("ts")["funding_rate"]
    # 08:00 closes at 09:00: the 08:00 settlement is the last known one
    assert binance[pd.Timestamp("2024-08-03T08:00Z")] == pytest.approx(rates[list(settlements).index(
        pd.Timestamp("2024-08-03T08:00Z"))])
    assert binance.notna().all()
    assert frame[frame["exchange"] != "binance"]["funding_rate"].isna().all()   # not collected there
    sources = F.object_sources(s3_client, bucket, done[0]["key"])
    assert "funding/exchange=binance/symbol=BTC/month=2024-08/part-00000.parquet" in sources


def test_build_refuses_an_empty_or_naive_window(cfg):
    for start, end in ((datetime(2024, 8, 2, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC)),
                       (datetime(2024, 8, 1), datetime(2024, 8, 2))):
        with pytest.raises(ValueError, match="give time-zone-aware start < end"):
            F.build_features(None, "unused", "BTC", "1h", start, end, exchanges=["binance"], cfg=cfg)


def test_build_reads_candles_under_the_configured_ohlcv_prefix(s3_client, bucket, cfg):
    cfg = replace(cfg, warmup_days=1)
    _seed_lake(s3_client, bucket, make_candles(hours=24 * 3), prefix="candles")
    day = datetime(2024, 8, 2, tzinfo=UTC)
    [done] = F.build_features(s3_client, bucket, "BTC", "1h", day, day + timedelta(days=1),
                              exchanges=list(EXCHANGES), cfg=cfg, ohlcv_prefix="candles")
    assert done["rows"] == 72
    sources = F.object_sources(s3_client, bucket, done["key"])
    assert sources and all(k.startswith("candles/exchange=") for k in sources)


def test_training_inputs_come_from_the_objects_as_read_without_a_second_get(s3_client, bucket, cfg):
    cfg = replace(cfg, warmup_days=1)
    _seed_lake(s3_client, bucket, make_candles(hours=24 * 4))
    start, end = datetime(2024, 8, 2, tzinfo=UTC), datetime(2024, 8, 4, tzinfo=UTC)
    F.build_features(s3_client, bucket, "BTC", "1h", start, end, exchanges=list(EXCHANGES), cfg=cfg,
                     fear_greed_source="fear_greed:test")
    gets = []

    def count(params, **_):
        gets.append(params["Key"])

    s3_client.meta.events.register("before-parameter-build.s3.GetObject", count)
    try:
        frame, keys, inputs = F.load_training_inputs(s3_client, bucket, "BTC", "1h", start, end)
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.GetObject", count)
    assert sorted(gets) == sorted(keys) and len(keys) == 2
    assert inputs == sorted({src for key in keys for src in F.object_sources(s3_client, bucket, key)})
    assert "fear_greed:test" in inputs and any(k.startswith("ohlcv/") for k in inputs)
    same, same_keys = F.load_training_frame(s3_client, bucket, "BTC", "1h", start, end)
    pd.testing.assert_frame_equal(same, frame)
    assert same_keys == keys


def test_a_mistyped_funding_table_is_a_config_error_not_a_null_column():
    with pytest.raises(ConfigError, match=r"funding\.table: table 'fundings': unknown lake table"):
        F.load_config({"funding": {"table": "fundings"}})
    with pytest.raises(ConfigError, match=r"funding\.table: table 'features' has no exchange, interval_hours"):
        F.load_config({"funding": {"table": "features"}})
    assert F.load_config({"funding": {"table": "funding"}}).funding_table == "funding"
