"""The exchange emulator: a real HTTP server on 127.0.0.1 speaking the native REST formats of
binance, coinbase, kraken, bybit and okx, so unmodified ccxt talks to it (see `venues`), with
candles from recorded market data or a seeded generator (see `market_data`)."""

from candleflow.emulator.server import Clock, EmulatorServer, Faults

__all__ = ["Clock", "EmulatorServer", "Faults", "ccxt_urls"]


def ccxt_urls(api: dict | str, emulator_url: str, exchange_id: str, hostname: str | None = None):
    """ccxt's `urls['api']` with every endpoint re-rooted at the emulator's `/<exchange_id>` prefix
    (keeping each URL's path: binance's `/api/v3`, …)."""
    from urllib.parse import urlsplit

    if isinstance(api, dict):
        return {k: ccxt_urls(v, emulator_url, exchange_id, hostname) for k, v in api.items()}
    if not isinstance(api, str):
        return api
    url = api.replace("{hostname}", hostname or "")
    path = urlsplit(url).path
    return f"{emulator_url.rstrip('/')}/{exchange_id}{path}"
