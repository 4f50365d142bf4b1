"""Turn an ingest request (exchanges, symbols, timeframe, window) into the pairs to collect.

Validation happens here, before any task touches an exchange: an unknown exchange or symbol, a
timeframe outside the universe, or an end before the start is refused with a `ConfigError`
naming the field and the fix. Whether an exchange lists a symbol is only known from its markets,
so that is decided later, per pair, by `candleflow.collect`.
"""

from __future__ import annotations

from datetime import datetime

from candleflow.config import TIMEFRAME_MS, ConfigError, load_universe, parse_timeframe, parse_utc


def _align(dt: datetime, timeframe: str) -> bool:
    return int(dt.timestamp() * 1000) % TIMEFRAME_MS[timeframe] == 0


def plan_pairs(*, exchanges: list[str] | None, symbols: list[str] | None, timeframe: str,
               start: str | datetime, end: str | datetime) -> list[dict]:
    universe = load_universe()
    timeframe = parse_timeframe(timeframe, "timeframe")
    if timeframe not in universe.timeframes:
        raise ConfigError(f"timeframe: {timeframe!r} is not collected; the universe has "
                          f"{', '.join(universe.timeframes)} (include/config/universe.yaml)")
    chosen_exchanges = list(exchanges) if exchanges else list(universe.exchanges)
    unknown = [e for e in chosen_exchanges if e not in universe.exchanges]
    if unknown:
        raise ConfigError(f"exchanges: {', '.join(unknown)} not in the universe; choose from "
                          f"{', '.join(universe.exchanges)}")
    chosen_symbols = [s.upper() for s in symbols] if symbols else list(universe.symbols)
    unknown = [s for s in chosen_symbols if s not in universe.symbols]
    if unknown:
        raise ConfigError(f"symbols: {', '.join(unknown)} not in the universe; choose from "
                          f"{', '.join(universe.symbols)} or add them to include/config/universe.yaml")
    start_dt = parse_utc(start, "start")
    end_dt = parse_utc(end, "end")
    if end_dt <= start_dt:
        raise ConfigError(f"end: {end_dt.isoformat()} is not after start {start_dt.isoformat()}; "
                          "swap them or widen the window")
    for name, value in (("start", start_dt), ("end", end_dt)):
        if not _align(value, timeframe):
            raise ConfigError(f"{name}: {value.isoformat()} is not on a {timeframe} candle boundary; "
                              f"round it to a multiple of {timeframe}")
    return [
        {
            "exchange": ex,
            "symbol": sym,
            "timeframe": timeframe,
            "quotes": list(universe.exchanges[ex].quotes),
            "start": start_dt.isoformat(),
            "end": end_dt.isoformat(),
        }
        for ex in chosen_exchanges
        for sym in chosen_symbols
    ]
