"""Where the emulator's candles come from: recorded market data where it covers a request, else a
seeded generator that is a pure function of (symbol, time), so every page, every run and every
machine sees the same candles.

The generator's log price is a sum of value-noise octaves (6 h … 120 d) whose amplitude grows
with the square root of the scale, which looks like a random walk but can be evaluated at any
instant without replaying history. A candle's open is the price at its start and its close the
price at its end, so consecutive candles join and coarser timeframes agree with finer ones at
their boundaries. Each exchange sees the same path shifted by its basis and a tiny per-candle
jitter, so cross-exchange checks have something realistic to compare.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
OCTAVES_MS = (6 * 3_600_000, 3 * DAY_MS, 20 * DAY_MS, 120 * DAY_MS)
NOT_LISTED = "not listed"

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@functools.lru_cache(maxsize=4096)
def _key(*parts: object) -> np.uint64:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: uint64 in, well-mixed uint64 out (wraps by design)."""
    with np.errstate(over="ignore"):
        x = x + _GOLD
        x ^= x >> _S30
        x *= _M1
        x ^= x >> _S27
        x *= _M2
        x ^= x >> _S31
        return x


def _uniform(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) for integer indices under a key."""
    bits = _mix(index.astype(np.int64).view(np.uint64) ^ key)
    return (bits >> _S11).astype(np.float64) / float(1 << 53)


def _knots(key: np.uint64, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The value-noise levels in [-1, 1) at knots k and k + 1. A page of candles spans only a
    few knots of each octave: each distinct knot is drawn once (the same numbers, elementwise)."""
    if k.size:
        lo, hi = int(k.min()), int(k.max())
        if hi - lo < k.size:
            level = _uniform(key, np.arange(lo, hi + 2, dtype=np.int64)) * 2 - 1
            i = k - lo
            return level[i], level[i + 1]
    return _uniform(key, k) * 2 - 1, _uniform(key, k + 1) * 2 - 1


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    price: float
    vol: float
    listed_ms: int
    volume: float


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    quote: str
    page_limit: int
    basis_bps: float
    default_limit: int | None = None
    history_page_limit: int | None = None
    recent_candles: int | None = None


@dataclass
class EmulatorConfig:
    seed: int
    exchanges: dict[str, ExchangeSpec]
    symbols: dict[str, SymbolSpec]
    listing_exceptions: dict[str, dict[str, str]] = field(default_factory=dict)
    renames: dict[str, dict[str, str]] = field(default_factory=dict)  # symbol -> {exchange: ticker}
    real_data: list[dict] = field(default_factory=list)
    real_data_dir: Path | None = None
    rate_limits: dict[str, dict] = field(default_factory=dict)
    archive: dict = field(default_factory=dict)
    derivatives: dict = field(default_factory=dict)  # the perpetuals' world (`derivatives:` in emulator.yaml)

    def listed_since(self, exchange: str, symbol: str) -> int | None:
        """First candle (ms) of `symbol` on `exchange`, or None if the exchange does not list it."""
        spec = self.symbols[symbol]
        exception = self.listing_exceptions.get(symbol, {}).get(exchange)
        if exception is None:
            return spec.listed_ms
        if exception == NOT_LISTED:
            return None
        return max(spec.listed_ms, _date_ms(exception))


def _date_ms(value: str) -> int:
    return int(datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp() * 1000)


def load_config(path: Path | None = None) -> EmulatorConfig:
    from candleflow.config import ConfigError, config_dir

    path = path or config_dir() / "emulator.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        exchanges = {name: ExchangeSpec(name=name, **spec) for name, spec in raw["exchanges"].items()}
        symbols = {
            sym: SymbolSpec(symbol=sym, price=float(s["price"]), vol=float(s["vol"]),
                            listed_ms=_date_ms(s["listed"]), volume=float(s["volume"]))
            for sym, s in raw["symbols"].items()
        }
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: invalid emulator config ({exc}); see the comments in that file") from exc
    data_dir = raw.get("real_data_dir")
    if data_dir:
        data_dir = Path(data_dir)
        if not data_dir.is_absolute():
            # relative to the project root (not to the config folder, which tests may copy elsewhere)
            data_dir = (Path(__file__).resolve().parents[3] / data_dir).resolve()
    return EmulatorConfig(
        seed=int(raw.get("seed", 0)), exchanges=exchanges, symbols=symbols,
        listing_exceptions=raw.get("listing_exceptions") or {}, renames=raw.get("renames") or {}, real_data=raw.get("real_data") or [],
        real_data_dir=data_dir, rate_limits=raw.get("rate_limits") or {}, archive=raw.get("archive") or {},
        derivatives=raw.get("derivatives") or {},
    )


def _read_recorded(path: Path) -> pd.DataFrame:
    """A recorded candle file as a frame indexed by open time (ms): open, high, low, close, volume."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
        frame.columns = [c.lower() for c in frame.columns]
        ts = pd.to_datetime(frame.pop("timestamp"), utc=True)
    elif path.suffix == ".json":
        frame = pd.DataFrame(json.loads(path.read_text()))
        ts = pd.to_datetime(frame.pop("date"), unit="ms", utc=True)
    else:
        frame = pd.read_feather(path)
        ts = pd.to_datetime(frame.pop("date"), utc=True)
    frame.index = ts.astype("datetime64[ms, UTC]").astype("int64")
    return frame[["open", "high", "low", "close", "volume"]].astype("float64").sort_index()


class CandleSource:
    """Candles per (exchange, symbol, timeframe) for any window: recorded where available."""

    def __init__(self, config: EmulatorConfig):
        self.config = config
        self._recorded: dict[str, list[tuple[int, pd.DataFrame]]] = {}
        self._resampled: dict[tuple[str, int, int], pd.DataFrame] = {}
        for entry in config.real_data:
            if config.real_data_dir is None:
                continue
            path = config.real_data_dir / entry["file"]
            if not path.exists():
                log.info("recorded data %s absent: %s comes from the generator", path, entry["symbol"])
                continue
            from candleflow.config import TIMEFRAME_MS

            self._recorded.setdefault(entry["symbol"], []).append(
                (TIMEFRAME_MS[entry["timeframe"]], _read_recorded(path)))

    # -- generator -------------------------------------------------------------------------
    def _log_price(self, symbol: str, t: np.ndarray) -> np.ndarray:
        spec = self.config.symbols[symbol]
        out = np.full(t.shape, np.log(spec.price))
        for scale in OCTAVES_MS:
            key = _key(self.config.seed, symbol, scale)
            k = np.floor_divide(t, scale)
            frac = (t - k * scale) / scale
            a, b = _knots(key, k)
            w = (1 - np.cos(np.pi * frac)) / 2
            amp = spec.vol * np.sqrt(scale / DAY_MS)
            out += amp * (a * (1 - w) + b * w)
        return out

    def prices(self, exchange: str, symbol: str, ts: np.ndarray) -> np.ndarray:
        """The generator's price of `symbol` at instants `ts` as `exchange` quotes it (its basis):
        what the perpetuals' mark price follows."""
        basis = 1 + self.config.exchanges[exchange].basis_bps * 1e-4 if exchange in self.config.exchanges else 1.0
        return np.exp(self._log_price(symbol, np.asarray(ts, dtype=np.int64))) * basis

    def _generate(self, symbol: str, ts: np.ndarray, tf_ms: int) -> np.ndarray:
        spec = self.config.symbols[symbol]
        if len(ts) and (np.diff(ts) == tf_ms).all():
            # consecutive candles: each close is the next open, one evaluation of the path for both
            edges = np.exp(self._log_price(symbol, np.append(ts, ts[-1] + tf_ms)))
            opens, closes = edges[:-1], edges[1:]
        else:
            opens = np.exp(self._log_price(symbol, ts))
            closes = np.exp(self._log_price(symbol, ts + tf_ms))
        wick_scale = spec.vol * np.sqrt(tf_ms / DAY_MS) * 0.6
        idx = ts // tf_ms
        up = _uniform(_key(self.config.seed, symbol, tf_ms, "up"), idx) * wick_scale
        down = _uniform(_key(self.config.seed, symbol, tf_ms, "down"), idx) * wick_scale
        highs = np.maximum(opens, closes) * (1 + up)
        lows = np.minimum(opens, closes) * (1 - down)
        activity = 0.4 + 1.2 * _uniform(_key(self.config.seed, symbol, tf_ms, "vol"), idx)
        volumes = spec.volume * (tf_ms / 3_600_000) * activity
        return np.column_stack([ts, opens, highs, lows, closes, volumes])

    # -- recorded --------------------------------------------------------------------------
    def _recorded_for(self, symbol: str, tf_ms: int) -> pd.DataFrame | None:
        for source_tf, frame in self._recorded.get(symbol, []):
            if tf_ms % source_tf == 0:
                key = (symbol, source_tf, tf_ms)
                if key not in self._resampled:
                    self._resampled[key] = _resample(frame, source_tf, tf_ms)
                return self._resampled[key]
        return None

    def candles(self, exchange: str, symbol: str, tf_ms: int, start_ms: int, end_ms: int) -> np.ndarray:
        """Rows [ts, open, high, low, close, volume] with start <= ts < end, aligned to the
        timeframe, none before the listing date; empty if the exchange does not list it."""
        listed = self.config.listed_since(exchange, symbol)
        if listed is None:
            return np.empty((0, 6))
        first = max(start_ms, listed)
        first = -(-first // tf_ms) * tf_ms
        if first >= end_ms:
            return np.empty((0, 6))
        ts = np.arange(first, end_ms, tf_ms, dtype=np.int64)
        rows = self._generate(symbol, ts, tf_ms)
        recorded = self._recorded_for(symbol, tf_ms)
        if recorded is not None:
            # Inside the recording's span serve exactly what was recorded, gaps included.
            lo, hi = recorded.index[0], recorded.index[-1]
            inside = (ts >= lo) & (ts <= hi)
            keep = ~inside | np.isin(ts, recorded.index.to_numpy())
            sel = ts[inside & keep]
            rows[inside & keep, 1:] = recorded.loc[sel, ["open", "high", "low", "close", "volume"]].to_numpy()
            rows = rows[keep]
        return self._for_exchange(exchange, symbol, tf_ms, rows)

    def _for_exchange(self, exchange: str, symbol: str, tf_ms: int, rows: np.ndarray) -> np.ndarray:
        spec = self.config.exchanges[exchange]
        idx = rows[:, 0].astype(np.int64) // tf_ms
        jitter = (_uniform(_key(self.config.seed, exchange, symbol, tf_ms), idx) - 0.5) * 2e-4
        factor = 1 + spec.basis_bps * 1e-4 + jitter
        out = rows.copy()
        out[:, 1:5] *= factor[:, None]
        share = 0.5 + _uniform(_key(self.config.seed, exchange, symbol, "share"), idx)
        out[:, 5] *= share
        return out


def _resample(frame: pd.DataFrame, source_tf: int, tf_ms: int) -> pd.DataFrame:
    if source_tf == tf_ms:
        return frame
    bins = frame.index // tf_ms * tf_ms
    grouped = frame.groupby(bins)
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    complete = grouped.size() == tf_ms // source_tf  # a bin with missing parts is not a real candle
    return out[complete]


class DerivativesSource:
    """Funding rates and open interest of the emulated linear USDT perpetuals (binance, bybit,
    okx), pure functions of (seed, exchange, symbol, time) like the candles.

    - A perpetual exists from max(the symbol's `listed`, the exchange's `launched`) unless the
      exchange is configured not to list it.
    - Funding settles every `interval_hours` (8 unless configured: some symbols 4 h or 1 h, as on
      the real venues), at multiples of the interval from 00:00 UTC. The rate is a slow value-noise
      walk around `mean` plus per-settlement noise, scaled to the interval (a 1 h rate is 1/8 of
      an 8 h one) and clipped to ±`cap`; the mark price is the candle generator's price.
    - Open interest (base units) is the symbol's hourly volume × `open_interest.volume_hours`
      modulated by a slow walk; its value is that × the price at the same instant.
    """

    def __init__(self, config: EmulatorConfig, candles: CandleSource):
        self.config = config
        self.spec = config.derivatives or {}
        self.candles = candles
        self._launched = {ex: _date_ms(day) for ex, day in (self.spec.get("launched") or {}).items()}

    # listings and intervals ------------------------------------------------------------------
    def exchanges(self) -> list[str]:
        return list(self._launched)

    def listed_since(self, exchange: str, symbol: str) -> int | None:
        """First instant (ms) of `symbol`'s USDT perpetual on `exchange`, None if not listed."""
        if exchange not in self._launched or symbol not in self.config.symbols:
            return None
        if symbol in (self.spec.get("not_listed") or {}).get(exchange, []):
            return None
        listed = max(self.config.symbols[symbol].listed_ms, self._launched[exchange])
        return -(-listed // 3_600_000) * 3_600_000  # perps open on the hour

    def listed(self, exchange: str) -> list[str]:
        return [s for s in self.config.symbols if self.listed_since(exchange, s) is not None]

    def interval_hours(self, exchange: str, symbol: str) -> int:
        per = (self.spec.get("funding_interval_hours") or {}).get(exchange) or {}
        return int(per.get(symbol, self.spec.get("default_interval_hours", 8)))

    def page(self, exchange: str, endpoint: str) -> tuple[int, int]:
        """(default, max) rows per request of `endpoint` ("funding" | "open_interest")."""
        spec = ((self.spec.get("pages") or {}).get(exchange) or {}).get(endpoint) or {}
        return int(spec.get("default", 100)), int(spec.get("max", 100))

    def retention_start(self, exchange: str, endpoint: str, now_ms: int) -> int | None:
        """The oldest instant the venue still serves for `endpoint`, None if it keeps everything."""
        days = ((self.spec.get("retention_days") or {}).get(exchange) or {}).get(endpoint)
        return None if days is None else now_ms - int(days) * DAY_MS

    # data -----------------------------------------------------------------------------------
    def _walk(self, key_parts: tuple, t: np.ndarray, scale_ms: int) -> np.ndarray:
        """A smooth value-noise walk in [-1, 1] with one knot per `scale_ms`."""
        key = _key(self.config.seed, *key_parts, scale_ms)
        k = np.floor_divide(t, scale_ms)
        frac = (t - k * scale_ms) / scale_ms
        w = (1 - np.cos(np.pi * frac)) / 2
        return (_uniform(key, k) * 2 - 1) * (1 - w) + (_uniform(key, k + 1) * 2 - 1) * w

    def funding(self, exchange: str, symbol: str, start_ms: int, end_ms: int) -> np.ndarray:
        """Rows [funding time, rate, mark price] for settlements in [start, end)."""
        listed = self.listed_since(exchange, symbol)
        if listed is None:
            return np.empty((0, 3))
        step = self.interval_hours(exchange, symbol) * 3_600_000
        first = -(-max(start_ms, listed) // step) * step
        if first >= end_ms:
            return np.empty((0, 3))
        ts = np.arange(first, end_ms, step, dtype=np.int64)
        spec = self.spec.get("funding_rate") or {}
        mean, vol, cap = float(spec.get("mean", 0.0001)), float(spec.get("vol", 0.0003)), float(spec.get("cap", 0.003))
        slow = self._walk(("funding", exchange, symbol), ts, 3 * DAY_MS)
        noise = _uniform(_key(self.config.seed, "funding-noise", exchange, symbol), ts // 3_600_000) * 2 - 1
        per_8h = mean + vol * (0.8 * slow + 0.2 * noise)
        rate = np.clip(np.round(per_8h * step / (8 * 3_600_000), 8), -cap, cap)
        return np.column_stack([ts, rate, self._price(exchange, symbol, ts)])

    def _price(self, exchange: str, symbol: str, ts: np.ndarray) -> np.ndarray:
        """The 1 h candle open at each instant (recorded data where it exists, so the mark price
        agrees with the candles), the generator's price where there is no candle."""
        out = self.candles.prices(exchange, symbol, ts)
        hourly = ts % 3_600_000 == 0
        if hourly.any() and exchange in self.config.exchanges:
            rows = self.candles.candles(exchange, symbol, 3_600_000, int(ts[hourly].min()), int(ts[hourly].max()) + 1)
            if len(rows):
                opens = dict(zip(rows[:, 0].astype(np.int64).tolist(), rows[:, 1].tolist(), strict=True))
                out = np.array([opens.get(int(t), p) for t, p in zip(ts, out, strict=True)])
        return out

    def open_interest(self, exchange: str, symbol: str, period_ms: int, start_ms: int, end_ms: int) -> np.ndarray:
        """Rows [ts, open interest (base units), open interest value (quote)] for ts in [start, end)."""
        listed = self.listed_since(exchange, symbol)
        if listed is None:
            return np.empty((0, 3))
        first = -(-max(start_ms, listed) // period_ms) * period_ms
        if first >= end_ms:
            return np.empty((0, 3))
        ts = np.arange(first, end_ms, period_ms, dtype=np.int64)
        hours = float((self.spec.get("open_interest") or {}).get("volume_hours", 30))
        base = self.config.symbols[symbol].volume * hours
        walk = self._walk(("oi", exchange, symbol), ts, 2 * DAY_MS)
        jitter = self._walk(("oi-fast", exchange, symbol), ts, 3_600_000)
        amount = np.round(base * np.exp(0.35 * walk + 0.03 * jitter), 3)
        value = amount * self._price(exchange, symbol, ts)
        return np.column_stack([ts, amount, value])
