"""Candle-page parse time: ccxt's `parse_ohlcvs` against `candleflow.candle_pages`' fast one.

    .venv/bin/python bench/candle_parse.py [--exchanges binance,bybit,...] [--repeat 7] [--number 50]

Takes one real raw page per exchange from the emulator (in-process, limits off, 1m candles, the
largest page each serves: binance and bybit 1000, kraken 720, coinbase 300, okx 100), exactly as
ccxt's `fetch_ohlcv` hands it to `parse_ohlcvs` (same market, since and limit), checks both
parsers return the same rows, and prints the best-of-`repeat` time per call of each (ms) and the
ratio. Last line `candle_parse_speedup=<min ratio over the exchanges>`.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from candleflow import candle_pages  # noqa: E402
from candleflow.collect import make_exchange  # noqa: E402
from candleflow.emulator import EmulatorServer  # noqa: E402

CLOCK = "2024-10-30T00:30:00Z"
SYMBOLS = {"binance": "BTC/USDT", "bybit": "BTC/USDT", "okx": "BTC/USDT", "kraken": "BTC/USD",
           "coinbase": "BTC/USD"}
SINCE = 1_730_160_000_000   # 2024-10-29T00:00Z: 1000 one-minute candles before the clock


def raw_page(emulator_url: str, exchange: str):
    """(client without the fast parse, the raw page and the parse_ohlcvs arguments ccxt used)."""
    client = make_exchange(exchange, mode="emulator", emulator_url=emulator_url, enable_rate_limit=False,
                           fast_parse=False)
    client.load_markets()
    seen = {}
    original = client.parse_ohlcvs

    def spy(ohlcvs, market=None, timeframe="1m", since=None, limit=None, tail=False):
        seen.update(ohlcvs=ohlcvs, args=(market, timeframe, since, limit, tail))
        return original(ohlcvs, market, timeframe, since, limit, tail)

    client.parse_ohlcvs = spy
    client.fetch_ohlcv(SYMBOLS[exchange], "1m", since=SINCE, limit=1000)
    client.parse_ohlcvs = original
    return client, seen["ohlcvs"], seen["args"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", default="binance,bybit,okx,kraken,coinbase")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=50)
    opts = parser.parse_args()

    ratios = []
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as emulator:
        print(f"{'exchange':<10}{'rows':>6}{'ccxt ms':>10}{'fast ms':>10}{'ratio':>8}")
        for exchange in opts.exchanges.split(","):
            client, page, args = raw_page(emulator.url, exchange)
            ccxt_parse = client.parse_ohlcvs
            if not candle_pages.install(client):
                print(f"{exchange:<10} not covered by candle_pages")
                return 1
            fast_parse = client.parse_ohlcvs
            want, got = ccxt_parse(page, *args), fast_parse(page, *args)
            if got != want or [list(map(type, r)) for r in got] != [list(map(type, r)) for r in want]:
                print(f"{exchange:<10} MISMATCH between ccxt and candle_pages")
                return 1
            times = []
            for parse in (ccxt_parse, fast_parse):
                best = min(timeit.repeat(lambda parse=parse, page=page, args=args: parse(page, *args), number=opts.number,
                                         repeat=opts.repeat))
                times.append(best / opts.number * 1e3)
            ratios.append(times[0] / times[1])
            print(f"{exchange:<10}{len(page):>6}{times[0]:>10.3f}{times[1]:>10.3f}{ratios[-1]:>7.1f}x")
    print(f"candle_parse_speedup={min(ratios):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
