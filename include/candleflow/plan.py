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
            "names": list(universe.names(sym)),
            "start": start_dt.isoformat(),
            "end": end_dt.isoformat(),
        }
        for ex in chosen_exchanges
        for sym in chosen_symbols
    ]


# Each exchange's candle endpoint as its published limits meter it (include/config/budgets.yaml).
CANDLE_PATHS = {
    "binance": "/api/v3/klines",
    "coinbase": "/api/v3/brokerage/market/products/BTC-USD/candles",
    "kraken": "/0/public/OHLC",
    "bybit": "/v5/market/kline",
    "okx": "/api/v5/market/history-candles",   # what a backfill pages (ccxt picks it by age)
}


# The same endpoint in ccxt's API table: ccxt spaces its requests rateLimit × the endpoint's cost.
CCXT_CANDLE_ENDPOINTS = {
    "binance": (("public", "get"), "klines"),
    "coinbase": (("v3", "public", "get"), "brokerage/market/products/{product_id}/candles"),
    "kraken": (("public", "get"), "OHLC"),
    "bybit": (("public", "get"), "v5/market/kline"),
    "okx": (("public", "get"), "market/history-candles"),
}


def ccxt_spacing_ms(client) -> float:
    """Milliseconds ccxt's throttle puts between two candle requests of this client."""
    keys, endpoint = CCXT_CANDLE_ENDPOINTS[client.id]
    table = client.api
    for key in keys:
        table = table.get(key, {})
    config = table.get(endpoint, {}) if isinstance(table, dict) else {}
    cost = config.get("cost", 1) if isinstance(config, dict) else 1
    return client.rateLimit * float(cost)


def _published_rate(exchange: str) -> float | None:
    """Candle requests per second the published budget allows (margin applied), or None."""
    from candleflow.config import load_budgets

    budget = load_budgets()[0].get(exchange)
    if budget is None:
        return None
    path = CANDLE_PATHS[exchange]
    rates = [bucket.rate * budget.margin / cost for bucket in budget.buckets
             if (cost := bucket.cost(path))]
    return min(rates) if rates else None


def estimate_cost(pairs: list[dict], budget: str | None = None) -> list[str]:
    """What a request costs per exchange: OHLCV requests at the configured page size and the
    wall time at the chosen budget's pace — ccxt's request spacing (`rateLimit`), or the
    exchange's published limit × margin — printed before anything is fetched."""
    import math

    import ccxt

    from candleflow.config import load_pipeline

    budget = budget or load_pipeline().collect.budget
    universe = load_universe()
    lines, total_seconds = [], 0.0
    by_exchange: dict[str, list[dict]] = {}
    for pair in pairs:
        by_exchange.setdefault(pair["exchange"], []).append(pair)
    for exchange, group in by_exchange.items():
        tf_ms = TIMEFRAME_MS[group[0]["timeframe"]]
        page = universe.exchanges[exchange].page_size
        candles = [(int(parse_utc(p["end"], "end").timestamp() * 1000)
                    - int(parse_utc(p["start"], "start").timestamp() * 1000)) // tf_ms for p in group]
        if exchange == "kraken":
            candles = [min(c, 720) for c in candles]  # its OHLC endpoint serves the 720 most recent only
        requests = sum(math.ceil(c / page) + 1 for c in candles) + 2  # + fetch_time per pair, + markets
        spacing_ms = ccxt_spacing_ms(getattr(ccxt, exchange)())
        published = _published_rate(exchange) if budget == "published" else None
        if published:
            seconds = requests / published
            pace = f"the published limit × margin ({published:.1f} candle requests/s)"
        else:
            seconds = requests * spacing_ms / 1000
            pace = f"ccxt's {spacing_ms:.0f} ms spacing per candle request"
        total_seconds = max(total_seconds, seconds)  # exchanges run in parallel
        lines.append(f"cost: {exchange}: {len(group)} symbol(s) × up to {max(candles)} candles → ~{requests} requests "
                     f"at {page}/page, ≈ {seconds:.0f} s at {pace}")
    lines.append(f"cost: projected wall time ≈ {total_seconds:.0f} s (exchanges in parallel, budget {budget})")
    return lines
