"""When did a market start trading? Discovered once per (exchange, symbol, timeframe), cached in the lake.

A backfill from 2017 of a pair listed in 2020 would otherwise spend three years of empty pages
(and their empty-page retries) before reaching data. The first candle comes from, in order:
1. the market's own listing time, where the exchange publishes one (okx `listTime`, ccxt `created`);
2. binance: klines from startTime=0 answer the first candles the pair ever had;
3. elsewhere, a binary search for the earliest page-sized window holding a candle (a dozen or
   two requests, once): the predicate "a candle exists in [t, t + one page)" is false before
   the listing and true after it, as long as the pair has no gap longer than a page.

Cached under `listings/exchange=<ex>/symbol=<SYM>/timeframe=<tf>.json` so every later backfill
starts at the listing with no requests. Kraken is not searched: its OHLC endpoint serves only its
720 most recent candles, so there is no history to find.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from candleflow.config import TIMEFRAME_MS

log = logging.getLogger(__name__)

LISTINGS_PREFIX = "listings"
SEARCH_FROM_MS = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp() * 1000)


def cache_key(exchange: str, symbol: str, timeframe: str, prefix: str = LISTINGS_PREFIX) -> str:
    return f"{prefix}/exchange={exchange}/symbol={symbol}/timeframe={timeframe}.json"


def read_cached(s3, bucket: str, exchange: str, symbol: str, timeframe: str) -> int | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=cache_key(exchange, symbol, timeframe))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return int(json.loads(body)["first_candle_ms"])


def write_cached(s3, bucket: str, exchange: str, symbol: str, timeframe: str, market: str, first_ms: int,
                 source: str) -> None:
    body = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe, "market": market,
            "first_candle_ms": first_ms, "first_candle": datetime.fromtimestamp(first_ms / 1000, UTC).isoformat(),
            "source": source}
    s3.put_object(Bucket=bucket, Key=cache_key(exchange, symbol, timeframe),
                  Body=json.dumps(body, sort_keys=True).encode(), ContentType="application/json")


def discover_first_candle(client, market: str, timeframe: str, *, page_size: int, now_ms: int,
                          fetch=None, retry=None) -> tuple[int | None, str]:
    """(first candle ms or None, how it was found). `fetch(since, until)` returns a page; by default
    ccxt's fetch_ohlcv bounded by `until`, each call through `retry(call, what)` if given."""
    retry = retry or (lambda call, what: call())
    tf_ms = TIMEFRAME_MS[timeframe]
    created = (client.markets.get(market) or {}).get("created")
    if created:
        return -(-int(created) // tf_ms) * tf_ms, "listing time published by the exchange"
    if client.id == "kraken":
        return None, "kraken serves only its 720 most recent candles; nothing to search"

    def default_fetch(since: int, until: int):
        params = {"until": until} if client.id != "kraken" else {}
        return retry(lambda: client.fetch_ohlcv(market, timeframe, since=since, limit=page_size, params=params),
                     f"{client.id} {market} listing search at {client.iso8601(since)}")

    fetch = fetch or default_fetch
    if client.id == "binance":
        page = retry(lambda: client.fetch_ohlcv(market, timeframe, since=0, limit=1),
                     f"binance {market} first kline")
        return (int(page[0][0]), "binance klines from startTime=0") if page else (None, "binance has no klines")
    span = page_size * tf_ms
    lo, hi = SEARCH_FROM_MS // span, now_ms // span  # in page units: is there a candle in page k?
    if not fetch(hi * span, min(now_ms, (hi + 1) * span) - 1):
        hi -= 1
        if hi < lo or not fetch(hi * span, (hi + 1) * span - 1):
            return None, "no recent candles"
    while lo < hi:  # smallest page index holding a candle
        mid = (lo + hi) // 2
        if fetch(mid * span, (mid + 1) * span - 1):
            hi = mid
        else:
            lo = mid + 1
    page = fetch(lo * span, (lo + 1) * span - 1)
    return (min(int(c[0]) for c in page), "binary search over pages") if page else (None, "search found nothing")


def first_candle(s3, bucket: str, client, exchange: str, symbol: str, market: str, timeframe: str, *,
                 page_size: int, now_ms: int, retry=None) -> int | None:
    """The pair's first candle (ms), from the lake's cache or discovered once and cached."""
    cached = read_cached(s3, bucket, exchange, symbol, timeframe)
    if cached is not None:
        return cached
    first, source = discover_first_candle(client, market, timeframe, page_size=page_size, now_ms=now_ms,
                                          retry=retry)
    if first is not None:
        write_cached(s3, bucket, exchange, symbol, timeframe, market, first, source)
        log.info("%s %s (%s) %s: first candle %s (%s)", exchange, symbol, market, timeframe,
                 datetime.fromtimestamp(first / 1000, UTC).isoformat(), source)
    return first
