"""candleflow.candle_pages: the fast parse_ohlcvs returns exactly ccxt's rows (values and Python
types), on the emulator's real pages through unmodified ccxt, and hands anything unusual to ccxt."""

from __future__ import annotations

import asyncio
import random
import struct
from datetime import UTC, datetime

import ccxt
import pytest

from candleflow import candle_pages, collect
from candleflow.collect import make_exchange
from candleflow.config import CollectConfig, ConfigError, _collect_config, load_pipeline

H = 3_600_000
SYMBOLS = {"binance": "BTC/USDT", "bybit": "BTC/USDT", "okx": "BTC/USDT", "kraken": "BTC/USD",
           "coinbase": "BTC/USD"}
PAGE = {"binance": 1000, "bybit": 1000, "okx": 100, "kraken": 720, "coinbase": 300}
UNTIL = {"binance", "bybit", "okx", "coinbase"}
OPEN_1H = int(datetime(2024, 10, 30, tzinfo=UTC).timestamp() * 1000)   # the emulator clock's open 1h candle
SPOT = {"type": "spot", "spot": True, "inverse": None}


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def assert_same(got, want):
    """Equal values, equal Python types, and the same repr (so -0.0 / 0.0 and nan count too)."""
    assert got == want or repr(got) == repr(want)
    assert [[type(x) for x in row] for row in got] == [[type(x) for x in row] for row in want]
    assert repr(got) == repr(want)


def ccxt_parse(client, *args):
    """ccxt's own parse_ohlcvs for this client, whatever is installed on the instance."""
    return type(client).parse_ohlcvs(client, *args)


def fast_path_taken(client, ohlcvs, market) -> bool:
    layout = candle_pages.layout_for(client, market)
    return layout is not None and candle_pages.parse_page(ohlcvs, layout) is not None


class Spy:
    """Wraps a client's (fast) parse_ohlcvs and records each raw page, its arguments and result."""

    def __init__(self, client):
        self.client, self.inner, self.calls = client, client.parse_ohlcvs, []
        client.parse_ohlcvs = self

    def __call__(self, ohlcvs, market=None, timeframe="1m", since=None, limit=None, tail=False):
        result = self.inner(ohlcvs, market, timeframe, since, limit, tail)
        self.calls.append((ohlcvs, (market, timeframe, since, limit, tail), result))
        return result


@pytest.fixture(scope="module")
def clients(emulator):
    """Per exchange: (ccxt's parse, fast parse) sync clients with markets loaded."""
    made = {}
    for exchange in SYMBOLS:
        plain = make_exchange(exchange, mode="emulator", emulator_url=emulator.url, enable_rate_limit=False,
                              fast_parse=False)
        fast = make_exchange(exchange, mode="emulator", emulator_url=emulator.url, enable_rate_limit=False)
        plain.load_markets()
        fast.load_markets()
        made[exchange] = (plain, fast)
    return made


# -- real pages through ccxt ------------------------------------------------------------------
def _requests(exchange):
    """(timeframe, since, limit, params) of real fetch_ohlcv calls: a full page of closed 1h
    candles; 1m candles from a since in mid-minute (ccxt's since-filter drops a candle); no since,
    the last 5 candles."""
    since_1h = ms(2024, 10, 29) - PAGE[exchange] * H
    until = {"until": since_1h + PAGE[exchange] * H - 1} if exchange in UNTIL else {}
    requests = [("1h", since_1h, PAGE[exchange], until), ("1m", ms(2024, 10, 29, 12) + 30_000, PAGE[exchange], {})]
    if exchange != "coinbase":   # without since ccxt asks coinbase for the hours before the real clock's now
        requests.append(("1h", None, 5, {}))
    return requests


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_real_pages_parse_exactly_as_ccxt(clients, exchange):
    plain, fast = clients[exchange]
    assert fast._candleflow_fast_parse and not hasattr(plain, "_candleflow_fast_parse")
    spy = Spy(fast)
    try:
        for timeframe, since, limit, params in _requests(exchange):
            got = fast.fetch_ohlcv(SYMBOLS[exchange], timeframe, since=since, limit=limit, params=dict(params))
            want = plain.fetch_ohlcv(SYMBOLS[exchange], timeframe, since=since, limit=limit, params=dict(params))
            raw, args, result = spy.calls[-1]
            assert result is got and len(raw) > 0
            # the very page ccxt received, parsed by ccxt itself: identical, and through the fast path
            assert_same(got, ccxt_parse(fast, raw, *args))
            assert fast_path_taken(fast, raw, args[0]), f"{exchange} {timeframe}: fell back on a real page"
            # two independent fetches, with and without the fast parse (the open candle may move on)
            assert_same([r for r in got if r[0] < OPEN_1H], [r for r in want if r[0] < OPEN_1H])
            assert len(got) == len(want)
            if since is not None:
                assert got and got[0][0] >= since
    finally:
        fast.parse_ohlcvs = spy.inner


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_since_limit_and_tail_on_a_real_page(clients, exchange):
    plain, fast = clients[exchange]
    spy = Spy(fast)
    try:
        fast.fetch_ohlcv(SYMBOLS[exchange], "1h", since=ms(2024, 10, 20), limit=PAGE[exchange])
    finally:
        fast.parse_ohlcvs = spy.inner
    raw, (market, timeframe, *_), _ = spy.calls[-1]
    stamps = sorted(r[0] for r in ccxt_parse(fast, raw, market, timeframe))
    middle = stamps[len(stamps) // 2]
    for since in (None, 0, -1, stamps[0], middle, middle + 1, middle + 0.5, stamps[-1] + H):
        for limit in (None, 0, 1, 7, len(raw) + 5):
            for tail in (False, True):
                assert_same(fast.parse_ohlcvs(raw, market, timeframe, since, limit, tail),
                            ccxt_parse(fast, raw, market, timeframe, since, limit, tail))
    assert fast_path_taken(fast, raw, market)


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_async_clients_parse_exactly_as_ccxt(emulator, exchange):
    async def run():
        client = make_exchange(exchange, mode="emulator", emulator_url=emulator.url, enable_rate_limit=False,
                               asynchronous=True)
        try:
            assert client._candleflow_fast_parse
            spy = Spy(client)
            got = await client.fetch_ohlcv(SYMBOLS[exchange], "1h", since=ms(2024, 10, 10), limit=PAGE[exchange])
            raw, args, _ = spy.calls[-1]
            return got, ccxt_parse(client, raw, *args), fast_path_taken(client, raw, args[0])
        finally:
            await client.close()

    got, want, fast = asyncio.run(run())
    assert got and fast
    assert_same(got, want)


def test_the_fast_rows_have_cxxts_types(clients):
    _, fast = clients["okx"]   # okx candles are all strings, prices often integers ("24344")
    raw = [["1728079200000", "54212", "54498.5", "54208", "54363.88301", "816", "4", "4", "1"]]
    rows = fast.parse_ohlcvs(raw, SPOT, "1h")
    assert rows == [[1728079200000, 54212.0, 54498.5, 54208.0, 54363.88301, 816.0]]
    assert [type(x) for x in rows[0]] == [int, float, float, float, float, float]
    assert fast_path_taken(fast, raw, SPOT)


# -- hand-made pages --------------------------------------------------------------------------
def _page(exchange, n=6):
    """Raw candles in the exchange's format (as the emulator and the real exchange send them)."""
    rows = []
    for i in range(n):
        t, p = 1_727_000_000 + 3600 * i, f"{60000 + i}.{i}5"
        if exchange == "binance":
            rows.append([t * 1000, p, p, p, p, f"{i}.5", t * 1000 + H - 1, "9.1", 40, "1.0", "2.0", "0"])
        elif exchange == "bybit":
            rows.append([str(t * 1000), p, p, p, p, f"{i}.5", "123.4"])
        elif exchange == "okx":
            rows.append([str(t * 1000), p, p, p, p, f"{i}.5", "2.5", "62800", "1"])
        elif exchange == "kraken":
            rows.append([t, p, p, p, p, "60000.1", f"{i}.5", 5])
        else:
            rows.append({"start": str(t), "low": p, "high": p, "open": p, "close": p, "volume": f"{i}.5"})
    return rows


def _cells(exchange):
    """(row index or key) of each field ccxt reads: ts, open, high, low, close, volume."""
    if exchange == "coinbase":
        return ["start", "open", "high", "low", "close", "volume"]
    return [0, 1, 2, 3, 4, 6 if exchange == "kraken" else 5]


BAD_VALUES = [None, "", "junk", "nan", "inf", " 1.5", "1.5 ", "1.", ".5", "+1", "01", "1,5", "[1]", '"1"',
              "-0", "1e400", "0x10", "1_000", "\u0661\u0662", "true", "null", True, {"x": 1}, [1]]
BAD_STAMPS = [None, "", "junk", "nan", "1e400", True, "1_727_000_000", " 1727000000", float("nan")]


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_unusual_values_get_ccxts_own_answer(clients, exchange):
    _, fast = clients[exchange]
    good = _page(exchange)
    assert fast_path_taken(fast, good, SPOT)
    assert_same(fast.parse_ohlcvs(good, SPOT, "1h"), ccxt_parse(fast, good, SPOT, "1h"))
    cells = _cells(exchange)
    cases = [(cell, bad) for cell in cells[1:] for bad in BAD_VALUES] + [(cells[0], bad) for bad in BAD_STAMPS]
    for cell, bad in cases:
        page = _page(exchange)
        page[3][cell] = bad
        for since, limit in ((None, None), (good and 1_727_000_000_000 + 2 * H, 3)):
            want = ccxt_parse(fast, page, SPOT, "1h", since, limit)
            assert_same(fast.parse_ohlcvs(page, SPOT, "1h", since, limit), want)
        assert not fast_path_taken(fast, page, SPOT), f"{exchange} {cell}={bad!r} was parsed, not handed to ccxt"


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_odd_shapes_get_ccxts_own_answer(clients, exchange):
    _, fast = clients[exchange]
    missing = _page(exchange)
    if exchange == "coinbase":
        del missing[2]["volume"]
        odd_rows = [["1727000000", "1", "2", "3", "4", "5"]]
    else:
        missing[2] = missing[2][:_cells(exchange)[-1]]   # one row too short to hold the volume
        odd_rows = [{"open": "1"}]
    pages = [missing, _page(exchange)[:2] + odd_rows, _page(exchange)[:2] + ["1727000000,1,2,3,4,5,6,7,8"], []]
    for page in pages:
        assert_same(fast.parse_ohlcvs(page, SPOT, "1h"), ccxt_parse(fast, page, SPOT, "1h"))
        assert not fast_path_taken(fast, page, SPOT)
    assert fast.parse_ohlcvs(None, SPOT, "1h") == ccxt_parse(fast, None, SPOT, "1h") == []
    as_tuple = tuple(_page(exchange))
    assert_same(fast.parse_ohlcvs(as_tuple, SPOT, "1h"), ccxt_parse(fast, as_tuple, SPOT, "1h"))


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_numbers_instead_of_strings_are_parsed_as_ccxt_does(clients, exchange):
    _, fast = clients[exchange]
    page = _page(exchange)
    cells = _cells(exchange)
    page[1][cells[1]], page[2][cells[4]], page[3][cells[5]] = 60001, 60002.25, 0.1 + 0.2
    page[4][cells[2]], page[5][cells[3]] = "-0.0", "6.0001e4"
    page[0][cells[0]] = page[0][cells[0]] + 0.75 if type(page[0][cells[0]]) is int else page[0][cells[0]] + ".75"
    assert fast_path_taken(fast, page, SPOT)
    assert_same(fast.parse_ohlcvs(page, SPOT, "1h"), ccxt_parse(fast, page, SPOT, "1h"))


@pytest.mark.parametrize("exchange", list(SYMBOLS))
def test_out_of_order_and_duplicate_candles_come_out_as_ccxts(clients, exchange):
    _, fast = clients[exchange]
    page = _page(exchange, 40)
    ts = _cells(exchange)[0]
    for i in (5, 6, 7):                      # three candles for one timestamp, each different
        page[i][ts] = page[4][ts]
    random.Random(7).shuffle(page)
    descending = list(reversed(_page(exchange, 40)))   # bybit, okx and coinbase answer newest first
    for raw in (page, descending):
        assert fast_path_taken(fast, raw, SPOT)
        for since, limit in ((None, None), (None, 10), (1_727_000_000_000 + 5 * H, 10), (1_727_000_000_000 + 4 * H, 2)):
            assert_same(fast.parse_ohlcvs(raw, SPOT, "1h", since, limit), ccxt_parse(fast, raw, SPOT, "1h", since, limit))
    rows = fast.parse_ohlcvs(page, SPOT, "1h")
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


@pytest.mark.parametrize("exchange,market,volume", [
    ("binance", {"type": "swap", "spot": False, "linear": False, "inverse": True}, 7),
    ("binance", {"type": "swap", "spot": False, "linear": True, "inverse": False}, 5),
    ("bybit", {"type": "swap", "spot": False, "linear": False, "inverse": True}, 6),
    ("bybit", {"type": "future", "spot": False, "linear": True, "inverse": False}, 5),
    ("okx", {"type": "swap", "spot": False, "linear": True, "inverse": False}, 6),
    ("okx", SPOT, 5),
])
def test_the_volume_column_follows_the_market_type(clients, exchange, market, volume):
    _, fast = clients[exchange]
    page = [[str(1_727_000_000_000 + H * i), "1.5", "2.5", "0.5", "1.25", "10.5", "20.5", "30.5", "40.5", "0"]
            for i in range(3)]
    rows = fast.parse_ohlcvs(page, market, "1h")
    assert [r[5] for r in rows] == [float(page[0][volume])] * 3
    assert_same(rows, ccxt_parse(fast, page, market, "1h"))
    assert fast_path_taken(fast, page, market)


def test_uncovered_markets_and_number_types_use_ccxt(clients, monkeypatch):
    _, fast = clients["binance"]
    option = [{"openTime": 1677096900000, "open": "32.2", "high": "32.2", "low": "32.2", "close": "32.3",
               "volume": "0"}]
    option_market = {"type": "option", "spot": False, "inverse": False}
    assert candle_pages.layout_for(fast, option_market) is None and candle_pages.layout_for(fast, None) is None
    assert_same(fast.parse_ohlcvs(option, option_market, "1h"), ccxt_parse(fast, option, option_market, "1h"))
    page = _page("binance")
    assert_same(fast.parse_ohlcvs(page, None, "1h"), ccxt_parse(fast, page, None, "1h"))
    monkeypatch.setattr(fast, "number", str)   # ccxt's "numbers as strings" mode: its own parse
    rows = fast.parse_ohlcvs(page, SPOT, "1h")
    assert type(rows[0][1]) is str
    assert_same(rows, ccxt_parse(fast, page, SPOT, "1h"))


# -- the number parser ------------------------------------------------------------------------
def _tokens(rng: random.Random) -> list[str]:
    """Exchange-shaped decimals plus the hard cases of decimal → double conversion."""
    tokens = ["0", "0.0", "-0.0", "1E5", "1e+5", "2.5e-3", "4.9e-324", "2.2250738585072011e-308",
              "1.7976931348623157e308", "9007199254740993", "18446744073709551616",
              "123456789012345678901234567890", "0.1", "0.30000000000000004", "1e-400"]
    for _ in range(4000):
        x = rng.uniform(0, 10 ** rng.randint(-8, 8))
        tokens.append(f"{x:.{rng.randint(0, 12)}f}")
        tokens.append(repr(x))
        up = struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack("<d", x))[0] + 1))[0]
        from decimal import Decimal

        half = (Decimal(x) + Decimal(up)) / 2          # exactly halfway: round-half-even decides
        tokens.append(f"{half:f}")
        tokens.append(f"{half + Decimal('1e-60'):f}")  # a hair above the midpoint
        tokens.append(str(rng.randint(0, 2 ** rng.randint(1, 70))))
    return tokens


def test_the_json_number_parser_is_float_bit_for_bit():
    tokens = _tokens(random.Random(3))
    got = candle_pages._numbers(tokens, floats=True)
    assert got is not None and len(got) == len(tokens)
    want = [float(t) for t in tokens]
    assert all(type(x) is float for x in got)
    assert struct.pack(f"<{len(want)}d", *got) == struct.pack(f"<{len(want)}d", *want)


@pytest.mark.parametrize("token", ["-0", "1.", " 1", "1e400", "nan", "1,5", "", "[1]", "\u0661"])
def test_tokens_json_reads_otherwise_are_refused(token):
    assert candle_pages._numbers(["1.5", token, "2.5"], floats=True) is None


# -- installation and configuration -----------------------------------------------------------
@pytest.mark.parametrize("asynchronous", [False, True])
def test_make_exchange_installs_it_on_the_five_exchanges(emulator, asynchronous):
    for exchange in SYMBOLS:
        on = make_exchange(exchange, mode="emulator", emulator_url=emulator.url, asynchronous=asynchronous)
        off = make_exchange(exchange, mode="emulator", emulator_url=emulator.url, asynchronous=asynchronous,
                            fast_parse=False)
        assert on._candleflow_fast_parse and on.parse_ohlcvs.__doc__.startswith("candleflow.candle_pages")
        assert off.parse_ohlcvs.__func__ is ccxt.Exchange.parse_ohlcvs
        assert candle_pages.install(on) is True   # twice is harmless
        if asynchronous:
            asyncio.run(on.close())
            asyncio.run(off.close())


def test_other_clients_keep_ccxts_parse(monkeypatch):
    class Tweaked(ccxt.bybit):
        def parse_ohlcv(self, ohlcv, market=None):
            return super().parse_ohlcv(ohlcv, market)

    for client in (ccxt.binanceus(), Tweaked(), ccxt.bitstamp()):
        assert candle_pages.install(client) is False
        assert client.parse_ohlcvs.__func__ is ccxt.Exchange.parse_ohlcvs
    # a layout that no longer matches ccxt's parse_ohlcv (say after an upgrade) is not installed
    monkeypatch.setitem(candle_pages._LAYOUTS, "kraken",
                        lambda client, market: candle_pages.Layout(list, 0, (1, 2, 3, 4, 5), seconds=True))
    kraken = ccxt.kraken()
    assert candle_pages.install(kraken) is False
    assert kraken.parse_ohlcvs.__func__ is ccxt.Exchange.parse_ohlcvs


def test_the_flag_is_configured_and_threaded(monkeypatch, emulator):
    assert load_pipeline().collect.fast_candle_parse is True
    assert _collect_config({"fast_candle_parse": False}, "p.yaml").fast_candle_parse is False
    with pytest.raises(ConfigError, match="collect.fast_candle_parse 'no' is invalid"):
        _collect_config({"fast_candle_parse": "no"}, "p.yaml")

    seen = []
    real = collect.make_exchange

    def recording(*args, **kwargs):
        client = real(*args, **kwargs)
        seen.append(getattr(client, "_candleflow_fast_parse", False))
        return client

    monkeypatch.setattr(collect, "make_exchange", recording)
    start, end = datetime(2024, 10, 28, tzinfo=UTC), datetime(2024, 10, 29, tzinfo=UTC)
    results = [collect.collect_pair("bybit", "BTC", "1h", start, end, quotes=["USDT"], mode="emulator",
                                    emulator_url=emulator.url, enable_rate_limit=False,
                                    cfg=CollectConfig(fast_candle_parse=flag))
               for flag in (True, False)]
    assert seen == [True, False]
    assert len(results[0].candles) == 24
    assert results[0].candles.equals(results[1].candles)
