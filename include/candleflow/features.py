"""Features: model inputs computed from the lake's candles, written to the lake's `features` table.

Per symbol and base timeframe, one row per (exchange, candle) with:

- technical indicators (TA-Lib) in four families — trend, momentum, volatility, volume — whose
  parameters come from include/config/features.yaml; all are scale-free (ratios, oscillators), so
  one model can learn across symbols and price levels;
- multi-timeframe context: 1h/4h/1d bars aggregated from the base candles, joined as the last bar
  that had closed by the candle's close (a bar in progress is never seen);
- cross-exchange: the spread of the exchange's close to the median close of all exchanges at that
  instant, its share of their volume, how many exchanges traded;
- the funding rate from the lake's `funding` table where collected (last settlement, while current);
- the daily Crypto Fear & Greed index (alternative.me; a missing day is null, never 0);
- labels: log return and direction over a configured horizon — future by definition, kept in
  LABEL_COLUMNS and never in FEATURE_COLUMNS.

No look-ahead: a row's features use only what was observable at its candle's close (ts + one
base interval). tests/unit/test_features.py proves it per family by changing everything observed
later and comparing.

A day's partition is computed from the candles of [day - warmup_days, day + 1 day + horizon), not
from whatever window a run happened to read, so a day's bytes do not depend on how runs were
batched; a re-run rewrites identical bytes. Each object's parquet metadata lists its sources
(`candleflow.sources`: the ohlcv and funding object keys and the Fear & Greed URL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from candleflow import lake
from candleflow.config import TIMEFRAME_MS, ConfigError, config_dir, load_yaml, parse_timeframe

DAY = timedelta(days=1)
CONTEXT_TIMEFRAMES_MS = {"1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}


# -- indicators -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Indicator:
    family: str
    columns: tuple[str, ...]
    params: tuple[str, ...]                  # the parameters config may set (TA-Lib's names)
    compute: Callable[..., dict[str, np.ndarray]]


def _talib():
    import talib

    return talib


def _sma_ratio(o, h, l, c, v, p):  # noqa: E741 - o/h/l/c/v throughout
    return {"sma_ratio": c / _talib().SMA(c, **p) - 1}


def _ema_ratio(o, h, l, c, v, p):  # noqa: E741
    return {"ema_ratio": c / _talib().EMA(c, **p) - 1}


def _macd(o, h, l, c, v, p):  # noqa: E741
    macd, signal, hist = _talib().MACD(c, **p)
    return {"macd": macd / c, "macd_signal": signal / c, "macd_hist": hist / c}


def _adx(o, h, l, c, v, p):  # noqa: E741
    return {"adx": _talib().ADX(h, l, c, **p)}


def _rsi(o, h, l, c, v, p):  # noqa: E741
    return {"rsi": _talib().RSI(c, **p)}


def _stoch(o, h, l, c, v, p):  # noqa: E741
    k, d = _talib().STOCH(h, l, c, **p)
    return {"stoch_k": k, "stoch_d": d}


def _roc(o, h, l, c, v, p):  # noqa: E741
    return {"roc": _talib().ROC(c, **p)}


def _willr(o, h, l, c, v, p):  # noqa: E741
    return {"willr": _talib().WILLR(h, l, c, **p)}


def _natr(o, h, l, c, v, p):  # noqa: E741
    return {"natr": _talib().NATR(h, l, c, **p)}


def _bbands(o, h, l, c, v, p):  # noqa: E741
    upper, middle, lower = _talib().BBANDS(c, **p)
    return {"bb_pctb": (c - lower) / (upper - lower), "bb_width": (upper - lower) / middle}


def _realized_vol(o, h, l, c, v, p):  # noqa: E741
    return {"realized_vol": _talib().STDDEV(_log_returns(c), **p)}


def _obv_slope(o, h, l, c, v, p):  # noqa: E741
    # OBV itself is a running sum whose level depends on where the series starts; its change over
    # a window does not, and dividing by that window's volume makes it comparable across symbols.
    n = int(p.get("timeperiod", 24))
    obv = _talib().OBV(c, v)
    change = np.full_like(obv, np.nan)
    change[n:] = obv[n:] - obv[:-n]
    return {"obv_slope": change / _talib().SUM(v, timeperiod=n)}


def _mfi(o, h, l, c, v, p):  # noqa: E741
    return {"mfi": _talib().MFI(h, l, c, v, **p)}


def _volume_ratio(o, h, l, c, v, p):  # noqa: E741
    return {"volume_ratio": v / _talib().SMA(v, **p)}


INDICATORS: dict[str, Indicator] = {
    "sma_ratio": Indicator("trend", ("sma_ratio",), ("timeperiod",), _sma_ratio),
    "ema_ratio": Indicator("trend", ("ema_ratio",), ("timeperiod",), _ema_ratio),
    "macd": Indicator("trend", ("macd", "macd_signal", "macd_hist"), ("fastperiod", "slowperiod", "signalperiod"), _macd),
    "adx": Indicator("trend", ("adx",), ("timeperiod",), _adx),
    "rsi": Indicator("momentum", ("rsi",), ("timeperiod",), _rsi),
    "stoch": Indicator("momentum", ("stoch_k", "stoch_d"),
                       ("fastk_period", "slowk_period", "slowk_matype", "slowd_period", "slowd_matype"), _stoch),
    "roc": Indicator("momentum", ("roc",), ("timeperiod",), _roc),
    "willr": Indicator("momentum", ("willr",), ("timeperiod",), _willr),
    "natr": Indicator("volatility", ("natr",), ("timeperiod",), _natr),
    "bbands": Indicator("volatility", ("bb_pctb", "bb_width"), ("timeperiod", "nbdevup", "nbdevdn", "matype"), _bbands),
    "realized_vol": Indicator("volatility", ("realized_vol",), ("timeperiod",), _realized_vol),
    "obv_slope": Indicator("volume", ("obv_slope",), ("timeperiod",), _obv_slope),
    "mfi": Indicator("volume", ("mfi",), ("timeperiod",), _mfi),
    "volume_ratio": Indicator("volume", ("volume_ratio",), ("timeperiod",), _volume_ratio),
}
FAMILIES = ("trend", "momentum", "volatility", "volume")

# -- the table's columns: fixed here, whatever the config chooses ------------------------------------
RETURN_COLUMNS = ["log_return", "log_range"]
INDICATOR_COLUMNS = [c for ind in INDICATORS.values() for c in ind.columns]
CONTEXT_FIELDS = ("return", "range", "rsi", "trend")
CONTEXT_COLUMNS = [f"ctx_{tf}_{name}" for tf in CONTEXT_TIMEFRAMES_MS for name in CONTEXT_FIELDS]
CROSS_EXCHANGE_COLUMNS = ["xex_spread_bps", "xex_volume_share", "xex_exchanges"]
FUNDING_COLUMNS = ["funding_rate"]
FEAR_GREED_COLUMNS = ["fear_greed"]
FEATURE_COLUMNS = [*RETURN_COLUMNS, *INDICATOR_COLUMNS, *CONTEXT_COLUMNS, *CROSS_EXCHANGE_COLUMNS,
                   *FUNDING_COLUMNS, *FEAR_GREED_COLUMNS]
LABEL_COLUMNS = ["label_return", "label_direction"]
FAMILY_COLUMNS = {
    "returns": RETURN_COLUMNS,
    **{fam: [c for ind in INDICATORS.values() if ind.family == fam for c in ind.columns] for fam in FAMILIES},
    "context": CONTEXT_COLUMNS,
    "cross_exchange": CROSS_EXCHANGE_COLUMNS,
    "funding": FUNDING_COLUMNS,
    "fear_greed": FEAR_GREED_COLUMNS,
}

FEATURES_SCHEMA = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),   # the candle's open time
    pa.field("close", pa.float64()),                                 # reference price (not a feature)
    *(pa.field(c, pa.float64()) for c in FEATURE_COLUMNS),
    *(pa.field(c, pa.float64()) for c in LABEL_COLUMNS),
])
TABLE_SPECS = {
    "features": lake.TableSpec("features", FEATURES_SCHEMA, partition_keys=("symbol", "timeframe", "date"),
                               unique_keys=("exchange", "ts"), sort_keys=("exchange", "ts")),
}
SOURCES_METADATA = "candleflow.sources"


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeaturesConfig:
    timeframes: tuple[str, ...] = ("1h",)
    warmup_days: int = 45
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    context_timeframes: tuple[str, ...] = ("1h", "4h", "1d")
    context_rsi_period: int = 14
    context_trend_period: int = 20
    funding_table: str | None = "funding"
    fear_greed_url: str = "https://api.alternative.me/fng/"
    fear_greed_emulator_path: str = "/alternative.me/fng/"
    fear_greed_timeout_seconds: float = 15.0
    fear_greed_available_after: timedelta = timedelta(minutes=60)
    horizon_bars: int = 1
    direction_threshold: float = 0.0

    def fingerprint(self) -> str:
        """The settings that shape the values, as stable JSON (kept in each object's metadata)."""
        return json.dumps({"indicators": self.indicators, "context": [list(self.context_timeframes),
                           self.context_rsi_period, self.context_trend_period], "warmup_days": self.warmup_days,
                           "horizon_bars": self.horizon_bars, "direction_threshold": self.direction_threshold,
                           "fear_greed_available_after_s": self.fear_greed_available_after.total_seconds()},
                          sort_keys=True)


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {value!r} must be a whole number >= 1")
    return value


def _check_funding_table(name, where: str) -> None:
    """A mistyped table must fail at load, not read as a funding_rate that is always null."""
    try:
        spec = lake.table_spec(name) if isinstance(name, str) else None
    except KeyError as err:
        raise ConfigError(f"{where}: {err.args[0]}") from err
    if spec is None:
        raise ConfigError(f"{where}: {name!r} must be a lake table name")
    missing = [k for k in ("exchange", "symbol") if k not in spec.partition_keys]
    missing += [c for c in ("ts", "funding_rate", "interval_hours") if c not in spec.schema.names]
    if missing:
        raise ConfigError(f"{where}: table {name!r} has no {', '.join(missing)}; funding needs a table partitioned "
                          "by exchange and symbol with ts, funding_rate and interval_hours (e.g. funding)")


def load_config(data: dict | None = None) -> FeaturesConfig:
    """features.yaml (or `data`, the same mapping) as a FeaturesConfig; ConfigError names the field."""
    where = str(config_dir() / "features.yaml")
    if data is None:
        data = load_yaml("features.yaml")
    known = {"timeframes", "warmup_days", "indicators", "context", "funding", "fear_greed", "labels"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}; use {', '.join(sorted(known))}")
    timeframes = tuple(parse_timeframe(tf, f"{where}: timeframes") for tf in data.get("timeframes", ["1h"]))
    indicators: dict[str, dict[str, Any]] = {}
    for family, entries in (data.get("indicators") or {}).items():
        if family not in FAMILIES:
            raise ConfigError(f"{where}: indicators.{family} is not a family; use {', '.join(FAMILIES)}")
        for name, params in (entries or {}).items():
            ind = INDICATORS.get(name)
            if ind is None or ind.family != family:
                names = [n for n, i in INDICATORS.items() if i.family == family]
                raise ConfigError(f"{where}: indicators.{family}.{name} is unknown; {family} indicators are "
                                  f"{', '.join(names)}")
            params = dict(params or {})
            for param, value in params.items():
                if param not in ind.params:
                    raise ConfigError(f"{where}: indicators.{family}.{name}.{param} is not a parameter of {name}; "
                                      f"use {', '.join(ind.params)}")
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 and "matype" not in param:
                    raise ConfigError(f"{where}: indicators.{family}.{name}.{param} = {value!r} must be a positive number")
            indicators[name] = params
    sections = {"context": {"timeframes", "rsi_period", "trend_period"}, "funding": {"table"},
                "fear_greed": {"url", "emulator_path", "timeout_seconds", "available_after_minutes"},
                "labels": {"horizon_bars", "direction_threshold"}}
    for section, fields in sections.items():
        for key in data.get(section) or {}:
            if key not in fields:
                raise ConfigError(f"{where}: {section}.{key} is not a field; use {', '.join(sorted(fields))}")
    ctx = data.get("context") or {}
    ctx_tfs = tuple(ctx.get("timeframes", ["1h", "4h", "1d"]))
    for tf in ctx_tfs:
        if tf not in CONTEXT_TIMEFRAMES_MS:
            raise ConfigError(f"{where}: context.timeframes: {tf!r} is not supported; use {', '.join(CONTEXT_TIMEFRAMES_MS)}")
    fg = data.get("fear_greed") or {}
    labels = data.get("labels") or {}
    warmup = _positive_int(data.get("warmup_days", 45), f"{where}: warmup_days")
    threshold = labels.get("direction_threshold", 0.0)
    funding_table = (data.get("funding") or {}).get("table")
    if funding_table:
        _check_funding_table(funding_table, f"{where}: funding.table")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise ConfigError(f"{where}: labels.direction_threshold = {threshold!r} must be a number >= 0")
    return FeaturesConfig(
        timeframes=timeframes,
        warmup_days=warmup,
        indicators=indicators,
        context_timeframes=ctx_tfs,
        context_rsi_period=_positive_int(ctx.get("rsi_period", 14), f"{where}: context.rsi_period"),
        context_trend_period=_positive_int(ctx.get("trend_period", 20), f"{where}: context.trend_period"),
        funding_table=funding_table,
        fear_greed_url=str(fg.get("url", "https://api.alternative.me/fng/")),
        fear_greed_emulator_path=str(fg.get("emulator_path", "/alternative.me/fng/")),
        fear_greed_timeout_seconds=float(fg.get("timeout_seconds", 15)),
        fear_greed_available_after=timedelta(minutes=float(fg.get("available_after_minutes", 60))),
        horizon_bars=_positive_int(labels.get("horizon_bars", 1), f"{where}: labels.horizon_bars"),
        direction_threshold=float(threshold),
    )


# -- computing --------------------------------------------------------------------------------------
CANDLE_COLUMNS = ("exchange", "ts", "open", "high", "low", "close", "volume")


def _log_returns(c: np.ndarray) -> np.ndarray:
    out = np.full_like(c, np.nan)
    out[1:] = np.log(c[1:] / c[:-1])
    return out


def _epoch_ms(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True).astype("datetime64[ms, UTC]").astype("int64")


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype="float64")
    return np.where(np.isfinite(x), x, np.nan)


def _check_candles(candles: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in CANDLE_COLUMNS if c not in candles.columns]
    if missing:
        raise ValueError(f"candles: missing column(s) {missing}; expected {', '.join(CANDLE_COLUMNS)} "
                         "(lake.read of the ohlcv table gives them)")
    frame = candles.loc[:, list(CANDLE_COLUMNS)].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ms, UTC]")
    for c in ("open", "high", "low", "close", "volume"):
        frame[c] = frame[c].astype("float64")
    if frame.duplicated(["exchange", "ts"]).any():
        raise ValueError("candles: duplicate (exchange, ts) rows; read them through lake.read, which deduplicates")
    return frame.sort_values(["exchange", "ts"], kind="stable").reset_index(drop=True)


def _indicators(o, h, l, c, v, cfg: FeaturesConfig) -> dict[str, np.ndarray]:  # noqa: E741
    out = {"log_return": _log_returns(c), "log_range": np.log(h / l)}
    for name, params in cfg.indicators.items():
        out.update(INDICATORS[name].compute(o, h, l, c, v, params))
    return {k: _finite(x) for k, x in out.items()}


def _context(t: np.ndarray, o, h, l, c, known: np.ndarray, base_ms: int, tf: str,  # noqa: E741
             cfg: FeaturesConfig) -> dict[str, np.ndarray]:
    """The last CLOSED `tf` bar at each row's close: bars aggregated from one exchange's base candles
    (t sorted, ms), UTC-aligned; a bar missing any base candle is a gap (null), never a shorter bar."""
    talib = _talib()
    span = CONTEXT_TIMEFRAMES_MS[tf]
    names = [f"ctx_{tf}_{f}" for f in CONTEXT_FIELDS]
    out = {name: np.full(len(t), np.nan) for name in names}
    bucket = t - t % span
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(t)]
    complete = (ends - starts) == span // base_ms
    if not complete.any():
        return out
    bo, bc = o[starts][complete], c[ends - 1][complete]
    bh, bl = np.maximum.reduceat(h, starts)[complete], np.minimum.reduceat(l, starts)[complete]
    closed_at = bucket[starts][complete] + span
    values = [np.log(bc / bo), (bh - bl) / bc, talib.RSI(bc, timeperiod=cfg.context_rsi_period),
              bc / talib.SMA(bc, timeperiod=cfg.context_trend_period) - 1]
    # the bar that closed last at or before the row's close; if that one is a gap, the row's is too
    j = np.searchsorted(closed_at, known, side="right") - 1
    ok = j >= 0
    ok[ok] = known[ok] - closed_at[j[ok]] < span
    for name, vals in zip(names, values, strict=True):
        out[name][ok] = vals[j[ok]]
    return {k: _finite(x) for k, x in out.items()}


def _asof(known: np.ndarray, available: np.ndarray, values: np.ndarray, max_age) -> np.ndarray:
    """For each row's `known` instant (ms), the latest observation available at or before it and no
    older than max_age (scalar or per observation): a stale value is a gap, not a carry-over."""
    order = np.argsort(available, kind="stable")
    available, values = available[order], values[order]
    max_age = np.broadcast_to(np.asarray(max_age, dtype="int64"), available.shape)[order]
    out = np.full(len(known), np.nan)
    j = np.searchsorted(available, known, side="right") - 1
    ok = j >= 0
    ok[ok] = known[ok] - available[j[ok]] <= max_age[j[ok]]
    out[ok] = values[j[ok]]
    return out


def compute_features(candles: pd.DataFrame, *, timeframe: str, cfg: FeaturesConfig,
                     funding: pd.DataFrame | None = None, fear_greed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features and labels for every candle of one symbol (all its exchanges).

    candles: exchange, ts (open time), open, high, low, close, volume — every exchange of the symbol.
    funding: exchange, ts, funding_rate, interval_hours (the lake's funding table), or None.
    fear_greed: day (UTC midnight), value (alternative.me), or None.
    Returns exchange, ts, close, FEATURE_COLUMNS, LABEL_COLUMNS sorted by exchange, ts.
    """
    base_ms = TIMEFRAME_MS[parse_timeframe(timeframe)]
    frame = _check_candles(candles)
    n = len(frame)
    cols = {name: np.full(n, np.nan) for name in [*FEATURE_COLUMNS, *LABEL_COLUMNS]}
    # a row knows what its candle's close knows; instants are int64 ms from here on
    t_all = frame["ts"].astype("int64").to_numpy()
    known_all = t_all + base_ms
    horizon = base_ms * cfg.horizon_bars
    exchange = frame["exchange"].to_numpy()
    ohlcv = {k: frame[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close", "volume")}
    bounds = np.flatnonzero(np.r_[True, exchange[1:] != exchange[:-1], True]) if n else np.array([0])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        o, h, l, c, v = (ohlcv[k][a:b] for k in ("open", "high", "low", "close", "volume"))  # noqa: E741
        t, known = t_all[a:b], known_all[a:b]
        for name, values in _indicators(o, h, l, c, v, cfg).items():
            cols[name][a:b] = values
        for tf in cfg.context_timeframes:
            if CONTEXT_TIMEFRAMES_MS[tf] >= base_ms:
                for name, values in _context(t, o, h, l, c, known, base_ms, tf, cfg).items():
                    cols[name][a:b] = values
        # labels: the close `horizon` later by time (a missing candle there is an unknown label, not a guess)
        pos = np.minimum(np.searchsorted(t, t + horizon), len(t) - 1)
        future = np.where(t[pos] == t + horizon, c[pos], np.nan)
        ret = _finite(np.log(future / c))
        cols["label_return"][a:b] = ret
        cols["label_direction"][a:b] = np.where(np.isnan(ret), np.nan, (ret > cfg.direction_threshold) * 1.0)

    if n:
        # cross-exchange: only candles of the same instant
        by_ts = frame.groupby("ts")
        median = by_ts["close"].transform("median").to_numpy()
        total_volume = by_ts["volume"].transform("sum").to_numpy()
        cols["xex_spread_bps"] = _finite((ohlcv["close"] / median - 1.0) * 1e4)
        cols["xex_volume_share"] = _finite(ohlcv["volume"] / total_volume)
        cols["xex_exchanges"] = by_ts["close"].transform("size").to_numpy(dtype="float64")

    if n and funding is not None and not funding.empty:
        f_ex = funding["exchange"].astype(str).to_numpy()
        f_at = _epoch_ms(funding["ts"]).to_numpy()
        f_rate = funding["funding_rate"].to_numpy(dtype="float64")
        f_age = (funding["interval_hours"].to_numpy(dtype="float64") * 3_600_000).astype("int64")
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            mine = f_ex == exchange[a]
            if mine.any():
                cols["funding_rate"][a:b] = _asof(known_all[a:b], f_at[mine], f_rate[mine], f_age[mine])
    if n and fear_greed is not None and not fear_greed.empty:
        delay = int(cfg.fear_greed_available_after.total_seconds() * 1000)
        # a day's value stands for that one day: a missing next day is a gap, not a carry-over
        cols["fear_greed"] = _asof(known_all, _epoch_ms(fear_greed["day"]).to_numpy() + delay,
                                   fear_greed["value"].to_numpy(dtype="float64"), 86_400_000 - 1)

    result = frame[["exchange", "ts", "close"]].copy()
    return pd.concat([result, pd.DataFrame(cols, index=frame.index)], axis=1)


# -- external source: Fear & Greed -------------------------------------------------------------------
def fear_greed_url(cfg: FeaturesConfig, pipeline=None) -> str:
    """The index's address: the emulator's in emulator mode (pipeline.yaml), else the configured one."""
    if pipeline is None:
        from candleflow.config import load_pipeline

        pipeline = load_pipeline()
    if pipeline.exchange_mode == "emulator":
        return pipeline.emulator_url.rstrip("/") + cfg.fear_greed_emulator_path
    return cfg.fear_greed_url


def fetch_fear_greed(url: str, timeout: float = 15.0) -> pd.DataFrame:
    """Every published day of the index as (day, value), oldest first, from alternative.me's /fng/ JSON."""
    import urllib.error
    import urllib.request

    full = url + ("&" if "?" in url else "?") + "limit=0&format=json"
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:   # noqa: S310 - configured https/http URL
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        detail = err.read()[:300].decode(errors="replace")
        raise RuntimeError(f"fear & greed: {full} answered HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, TimeoutError) as err:
        raise RuntimeError(f"fear & greed: {full} unreachable ({err}); check fear_greed.url in features.yaml") from err
    except ValueError as err:
        raise RuntimeError(f"fear & greed: {full} did not answer JSON ({err})") from err
    error = (body.get("metadata") or {}).get("error") if isinstance(body, dict) else "not a JSON object"
    if error:
        raise RuntimeError(f"fear & greed: {full} reported an error: {error}")
    days, values = [], []
    for i, entry in enumerate(body.get("data") or []):
        try:
            days.append(int(entry["timestamp"]))
            values.append(float(entry["value"]))
        except (KeyError, TypeError, ValueError) as err:
            raise RuntimeError(f"fear & greed: data[{i}] {entry!r} needs numeric 'timestamp' and 'value'") from err
    frame = pd.DataFrame({"day": pd.to_datetime(np.array(days, dtype="int64"), unit="s", utc=True)
                          .astype("datetime64[ms, UTC]"), "value": values})
    return frame.drop_duplicates("day", keep="first").sort_values("day").reset_index(drop=True)


def stage_fear_greed(s3, bucket: str, key: str, frame: pd.DataFrame, source: str) -> None:
    """Keep one fetch of the index for every task of a run (one request to the source per run)."""
    body = {"source": source, "day": _epoch_ms(frame["day"]).tolist(), "value": frame["value"].tolist()}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json")


def read_staged_fear_greed(s3, bucket: str, key: str) -> tuple[pd.DataFrame, str]:
    body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    frame = pd.DataFrame({"day": pd.to_datetime(np.array(body["day"], dtype="int64"), unit="ms", utc=True)
                          .astype("datetime64[ms, UTC]"), "value": np.array(body["value"], dtype="float64")})
    return frame, body["source"]


# -- lake in, lake out -------------------------------------------------------------------------------
def _day_floor(dt: datetime) -> datetime:
    dt = dt.astimezone(UTC)
    return datetime(dt.year, dt.month, dt.day, tzinfo=UTC)


def days_of(start: datetime, end: datetime) -> list[datetime]:
    """UTC midnights of the dates [start, end) touches."""
    day, last = _day_floor(start), _day_floor(end - timedelta(milliseconds=1))
    out = []
    while day <= last:
        out.append(day)
        day += DAY
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _key_meets(key: str, lo: datetime, hi: datetime) -> bool:
    """Whether an object can hold rows in [lo, hi): judged by the window its name carries (an
    ohlcv part or compacted object, lake.object_window), else by its time partition
    (lake.TIME_PARTITIONS: date=YYYY-MM-DD, month=YYYY-MM), else yes."""
    window = lake.object_window(key)
    if window is None:
        for part in key.split("/"):
            name, _, value = part.partition("=")
            if name in lake.TIME_PARTITIONS:
                window = lake.partition_window(name, value)
                break
    return window is None or (window[0] < hi and lo < window[1])


def read_funding(s3, bucket: str, cfg: FeaturesConfig, symbol: str, exchanges, start: datetime,
                 end: datetime) -> tuple[pd.DataFrame | None, list[str]]:
    """The symbol's funding settlements in [start, end) on these exchanges, with their object keys,
    or (None, []) where none are collected (yet): funding_rate then stays null."""
    if not cfg.funding_table:
        return None, []
    spec = lake.table_spec(cfg.funding_table)  # load_config checked it is partitioned by exchange, symbol
    frames, keys = [], []
    for exchange in sorted(exchanges):
        frame, used = lake.read_table(s3, bucket, spec, start=start, end=end, exchange=exchange, symbol=symbol)
        if not frame.empty:
            frames.append(frame)
            keys += used
    if not frames:
        return None, []
    return pd.concat(frames, ignore_index=True), keys


def build_features(s3, bucket: str, symbol: str, timeframe: str, start: datetime, end: datetime, *,
                   exchanges: list[str] | tuple[str, ...], cfg: FeaturesConfig | None = None,
                   fear_greed: pd.DataFrame | None = None, fear_greed_source: str = "",
                   ohlcv_prefix: str | None = None) -> list[dict]:
    """Compute and write the features partitions of every date [start, end) touches, for one symbol
    and base timeframe, from every listed exchange's candles; one object per date (an empty date
    deletes its object). Returns one summary per date: date, key, rows, sources. The candles are
    read under `ohlcv_prefix`, by default pipeline.yaml's lake.ohlcv_prefix."""
    cfg = cfg or load_config()
    base = timedelta(milliseconds=TIMEFRAME_MS[parse_timeframe(timeframe)])
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise ValueError(f"window {start.isoformat()} → {end.isoformat()}: give time-zone-aware start < end")
    days = days_of(start, end)
    warmup = timedelta(days=cfg.warmup_days)
    horizon = base * cfg.horizon_bars
    read_start, read_end = days[0] - warmup, days[-1] + DAY + horizon
    if ohlcv_prefix is None:
        from candleflow.config import load_pipeline

        ohlcv_prefix = load_pipeline().lake.ohlcv_prefix
    ohlcv = lake.ohlcv_spec(ohlcv_prefix)
    frames, keys = [], []
    for exchange in sorted(exchanges):
        part, used = lake.read_table(s3, bucket, ohlcv, exchange=exchange, symbol=symbol, timeframe=timeframe,
                                     start=read_start, end=read_end)
        if not part.empty:
            frames.append(part)
            keys += used
    candles = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CANDLE_COLUMNS))
    if not candles.empty:
        candles["ts"] = candles["ts"].astype("datetime64[ms, UTC]")
        candles = candles.sort_values(["ts", "exchange"], kind="stable").reset_index(drop=True)
    # a row takes a settlement at most one interval old: the day before is plenty
    funding, funding_keys = read_funding(s3, bucket, cfg, symbol, exchanges, days[0] - DAY, days[-1] + DAY)
    times = candles["ts"].astype("int64").to_numpy() if not candles.empty else np.array([], "int64")
    spec = TABLE_SPECS["features"]
    summaries = []
    for day in days:
        lo, hi = np.searchsorted(times, [_ms(day - warmup), _ms(day + DAY + horizon)])
        window = candles.iloc[int(lo):int(hi)]
        features = compute_features(window, timeframe=timeframe, cfg=cfg, funding=funding, fear_greed=fear_greed)
        features = features[(features["ts"] >= day) & (features["ts"] < day + DAY)]
        # only the objects this day's rows can depend on, so the list does not depend on batching either
        sources = sorted(k for k in keys if _key_meets(k, day - warmup, day + DAY + horizon))
        sources += sorted(k for k in funding_keys if _key_meets(k, day - DAY, day + DAY))
        if fear_greed_source:
            sources.append(fear_greed_source)
        written = lake.write_partition(
            s3, bucket, spec, features, partition={"symbol": symbol, "timeframe": timeframe, "date": day.strftime("%Y-%m-%d")},
            metadata={SOURCES_METADATA: json.dumps(sources), "candleflow.features_config": cfg.fingerprint()},
        )
        summaries.append({"date": day.strftime("%Y-%m-%d"), "key": written.key if written else None,
                          "rows": written.rows if written else 0, "sources": len(sources)})
    return summaries


def object_sources(s3, bucket: str, key: str) -> list[str]:
    """The input keys (and external sources) a features object was computed from."""
    import io

    import pyarrow.parquet as pq

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    meta = pq.read_schema(io.BytesIO(body)).metadata or {}
    return json.loads(meta.get(SOURCES_METADATA.encode(), b"[]"))


def load_training_inputs(s3, bucket: str, symbol: str, timeframe: str, start: datetime,
                         end: datetime) -> tuple[pd.DataFrame, list[str], list[str]]:
    """`load_training_frame`'s rows and keys, plus the sorted union of those objects' own inputs
    (their `candleflow.sources`), taken from the objects as they are read: no second GET each."""
    frame, keys, metadata = lake.read_table(s3, bucket, "features", with_metadata=True, symbol=symbol,
                                            timeframe=timeframe, start=start, end=end)
    frame = frame.drop(columns=["date"])
    frame["ts"] = frame["ts"].astype("datetime64[ms, UTC]")
    columns = ["exchange", "symbol", "timeframe", "ts", "close", *FEATURE_COLUMNS, *LABEL_COLUMNS]
    frame = frame[columns].sort_values(["exchange", "ts"], kind="stable").reset_index(drop=True)
    inputs = sorted({src for key in keys for src in json.loads(metadata[key].get(SOURCES_METADATA, "[]"))})
    return frame, keys, inputs


def load_training_frame(s3, bucket: str, symbol: str, timeframe: str, start: datetime,
                        end: datetime) -> tuple[pd.DataFrame, list[str]]:
    """Feature rows of [start, end) for one symbol (every exchange) and the features object keys they
    came from (each object's own inputs: `object_sources`, or all at once: `load_training_inputs`).
    Columns: exchange, symbol, timeframe, ts, close, FEATURE_COLUMNS, LABEL_COLUMNS; sorted by
    exchange, ts. Labels near `end` look past it by construction: hold out a horizon between
    training and evaluation windows."""
    frame, keys, _ = load_training_inputs(s3, bucket, symbol, timeframe, start, end)
    return frame, keys
