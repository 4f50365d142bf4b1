"""The emulator renders candle pages in bulk (`candleflow.emulator.render`); every byte must be what
the straightforward per-row rendering gave: a list comprehension calling `_num` on each number,
then `json.dumps(body, separators=(",", ":"))`. That rendering is kept here as the reference."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from candleflow.emulator import market_data, render
from candleflow.emulator.market_data import CandleSource
from candleflow.emulator.server import encode_reply
from candleflow.emulator.venues import Binance, Bybit, Coinbase, Kraken, Okx

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

CLOCK = "2024-10-30T00:30:00Z"
OCT1 = 1727740800000
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


# -- the reference: the per-row rendering the bulk renderer replaced ----------------------------
def _num(x: float) -> str:
    return f"{x:.10g}" if x >= 1 or x <= -1 else f"{x:.8g}"


def ref_binance(rows, tf):
    return [[int(r[0]), _num(r[1]), _num(r[2]), _num(r[3]), _num(r[4]), _num(r[5]), int(r[0]) + tf - 1,
             _num(r[5] * r[4]), 100, _num(r[5] / 2), _num(r[5] * r[4] / 2), "0"] for r in np.asarray(rows).tolist()]


def ref_coinbase(rows):
    return [{"start": str(int(r[0]) // 1000), "low": _num(r[3]), "high": _num(r[2]), "open": _num(r[1]),
             "close": _num(r[4]), "volume": _num(r[5])} for r in np.asarray(rows).tolist()]


def ref_kraken(rows):
    return [[int(r[0]) // 1000, _num(r[1]), _num(r[2]), _num(r[3]), _num(r[4]),
             _num((r[2] + r[3] + r[4]) / 3), _num(r[5]), 50] for r in np.asarray(rows).tolist()]


def ref_bybit(rows):
    return [[str(int(r[0])), _num(r[1]), _num(r[2]), _num(r[3]), _num(r[4]), _num(r[5]),
             _num(r[5] * r[4])] for r in np.asarray(rows).tolist()]


def ref_okx(rows, current):
    return [[str(int(r[0])), _num(r[1]), _num(r[2]), _num(r[3]), _num(r[4]), _num(r[5]),
             _num(r[5] * r[4]), _num(r[5] * r[4]), "0" if int(r[0]) == current else "1"]
            for r in np.asarray(rows).tolist()]


def dumps(body) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# name -> (bulk renderer, reference), both taking (rows, tf)
RENDERERS = {
    "binance": (lambda rows, tf: Binance.kline_page(rows, tf), ref_binance),
    "coinbase": (lambda rows, tf: Coinbase.candle_page(rows), lambda rows, tf: ref_coinbase(rows)),
    "kraken": (lambda rows, tf: Kraken.ohlc_page(rows), lambda rows, tf: ref_kraken(rows)),
    "bybit": (lambda rows, tf: Bybit.kline_page(rows), lambda rows, tf: ref_bybit(rows)),
    "okx": (lambda rows, tf: Okx.candle_page(rows, OCT1 + 7 * tf), lambda rows, tf: ref_okx(rows, OCT1 + 7 * tf)),
}


# the numbers formatting gets wrong most easily: both sides of 1 (%.10g / %.8g) and of 1e-4 (fixed
# / exponent notation), carries into one more digit, ties, trailing zeros, zeros, not finite
SPECIAL = np.array([
    0.0, -0.0, 1.0, 0.1, 0.5, 0.25, 0.125, 1.5, 2.5, 1e-4, 9.9999999e-5, 5e-5, 1e-5, 3.2e-9, 0.99999999,
    0.999999995, 0.9999999949, 0.99999999999, 9.9999999995, 99999.999995, 1e9, 1e10, 9999999999.5,
    9999999999.4, 123456789012.0, 1234.5678905, 1.00000000005, 0.1 + 0.2, 56382.08063, 20.1587281,
    -1.5, -0.3, np.nan, np.inf, -np.inf, 5e-324, 1e300, np.nextafter(1, 0), np.nextafter(1e-4, 0),
    np.nextafter(1e-4, 1), np.nextafter(10, 0), np.nextafter(1e10, 0)])


def awkward_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Prices and volumes of every size, and SPECIAL."""
    ties = np.concatenate([  # an exact or near tie one digit past the last one printed
        (rng.integers(10**9, 10**10, n) * 10 + 5) / 10.0 ** rng.integers(1, 10, n),
        (rng.integers(10**7, 10**8, n) * 10 + 5) / 10.0 ** rng.integers(8, 13, n)])
    powers = 10.0 ** np.arange(-12, 13)
    return np.concatenate([
        SPECIAL, ties, powers, np.nextafter(powers, 0), np.nextafter(powers, np.inf), powers * (1 - 5e-11),
        10 ** rng.uniform(-12, 13, 4 * n),                                               # every magnitude
        np.concatenate([np.round(10 ** rng.uniform(-5, 11, n), d) for d in range(12)]),  # trailing zeros
    ])


def test_num_cells_prints_every_float_as_num_does():
    rng = np.random.default_rng(7)
    values = awkward_values(rng, 20_000)
    assert render.text_of(render.num_cells(values)) == [_num(x) for x in values.tolist()]
    grid = values[:3000].reshape(3, 1000)  # any shape: cells first, then the array's own axes
    cells = render.num_cells(grid)
    assert cells.shape[1:] == (3, 1000)
    assert render.text_of(cells[:, 2]) == [_num(x) for x in grid[2].tolist()]


def test_int_cells_prints_every_int64_as_str_does():
    rng = np.random.default_rng(8)
    values = np.concatenate([
        rng.integers(-2**63, 2**63 - 1, 5000, dtype=np.int64), rng.integers(0, 10**16, 5000),
        rng.integers(0, 10**5, 5000), 2**53 + np.arange(-3, 4), OCT1 + np.arange(0, 1000) * MIN,
        np.array([0, 1, 9, 10, 9999, 10**4, 10**8 - 1, 10**8, 10**12, 2**63 - 1, -2**63, -1])])
    assert render.text_of(render.int_cells(values)) == [str(v) for v in values.tolist()]


def synthetic_rows(rng: np.random.Generator, n: int, tf: int) -> np.ndarray:
    """Candles with prices from 1e-6 to 1e6 (both sides of 1), tiny to huge volumes, zeros."""
    price = 10 ** rng.uniform(-6, 6, n)
    wiggle = lambda: price * (1 + rng.normal(0, 0.01, n))  # noqa: E731
    volume = np.where(rng.random(n) < 0.05, 0.0, 10 ** rng.uniform(-9, 9, n))
    rows = np.column_stack([OCT1 + np.arange(n) * tf, wiggle(), wiggle(), wiggle(), wiggle(), volume])
    rows[:40, 1:] = rng.choice(SPECIAL, size=(40, 5))[:n]
    return rows


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0 in the columns
@pytest.mark.parametrize("exchange", list(RENDERERS))
def test_a_bulk_page_is_byte_identical_to_the_per_row_rendering(exchange):
    bulk, reference = RENDERERS[exchange]
    rng = np.random.default_rng(list(RENDERERS).index(exchange))
    for tf in (MIN, HOUR, DAY):
        rows = synthetic_rows(rng, 1500, tf)
        page = bulk(rows, tf)
        assert render.encode_json(page) == dumps(reference(rows, tf))
        assert page.rows() == reference(rows, tf)  # what faults edit: the same plain rows, same types
    for rows in (np.empty((0, 6)), [], synthetic_rows(rng, 1, MIN), synthetic_rows(rng, 2, MIN)[::-1]):
        assert render.encode_json(bulk(rows, MIN)) == dumps(reference(rows, MIN))


@pytest.mark.parametrize("exchange", list(RENDERERS))
def test_generated_pages_are_byte_identical(exchange):
    """The emulator's own candles, every symbol (prices from 0.025 to 60000), three timeframes."""
    bulk, reference = RENDERERS[exchange]
    source = CandleSource(market_data.load_config())
    for symbol in source.config.symbols:
        for tf, start in ((MIN, OCT1), (HOUR, OCT1 - 900 * HOUR), (DAY, OCT1 - 1000 * DAY)):
            rows = source.candles("binance", symbol, tf, start, start + 1000 * tf)
            assert render.encode_json(bulk(rows, tf)) == dumps(reference(rows, tf)), (symbol, tf)


# -- the whole HTTP body, through dispatch and the server's encoding -----------------------------
def requests_for(start: int) -> dict[str, tuple[str, dict]]:
    return {
        "binance": ("/binance/api/v3/klines", {"symbol": "ADAUSDT", "interval": "1m", "startTime": str(start),
                                               "limit": "1000"}),
        "coinbase": ("/coinbase/api/v3/brokerage/market/products/BTC-USD/candles",
                     {"granularity": "ONE_MINUTE", "start": str(start // 1000), "end": str((start + 350 * MIN) // 1000)}),
        "kraken": ("/kraken/0/public/OHLC", {"pair": "XXBTZUSD", "interval": "60"}),
        "bybit": ("/bybit/v5/market/kline", {"category": "spot", "symbol": "XLMUSDT", "interval": "1",
                                             "start": str(start), "end": str(start + 1000 * MIN - 1), "limit": "1000"}),
        "okx": ("/okx/api/v5/market/history-candles", {"instId": "VET-USDT", "bar": "1m",
                                                       "after": str(start + 100 * MIN), "before": str(start - 1),
                                                       "limit": "100"}),
    }


@pytest.fixture
def rendered(monkeypatch):
    """Records, per rendering call, the rows a venue rendered and the plain rows the reference
    makes of them."""
    seen: list[tuple[render.Page, list]] = []

    def spy(cls, name, reference):
        bulk = getattr(cls, name)

        def wrapper(rows, *args):
            page = bulk(rows, *args)
            seen.append((page, reference(rows, *args)))
            return page
        monkeypatch.setattr(cls, name, staticmethod(wrapper))

    spy(Binance, "kline_page", ref_binance)
    spy(Coinbase, "candle_page", ref_coinbase)
    spy(Kraken, "ohlc_page", ref_kraken)
    spy(Bybit, "kline_page", ref_bybit)
    spy(Okx, "candle_page", ref_okx)
    return seen


def with_reference_rows(body, seen):
    """The reply body as the per-row rendering built it: each page replaced by the plain rows."""
    pages = {id(page): rows for page, rows in seen}
    if isinstance(body, render.Page):
        return pages[id(body)]
    if isinstance(body, dict):
        return {k: with_reference_rows(v, seen) for k, v in body.items()}
    return body


@pytest.mark.parametrize("exchange", list(RENDERERS))
def test_every_candle_reply_is_byte_identical_to_json_dumps_of_the_per_row_body(emulator, rendered, exchange):
    for start in (OCT1, OCT1 + 7 * DAY + 13 * MIN, OCT1 + 28 * DAY):
        path, query = requests_for(start)[exchange]
        reply = emulator.dispatch("GET", path, dict(query), b"")
        payload, content_type, _ = encode_reply(reply)
        assert reply.status == 200 and content_type == "application/json"
        assert payload == dumps(with_reference_rows(reply.body, rendered))
        assert len(emulator.venues[exchange].candle_list(json.loads(payload))) > 1


@pytest.mark.parametrize("exchange", list(RENDERERS))
@pytest.mark.parametrize("faults", [[{"kind": "out_of_order"}], [{"kind": "short_page"}, {"kind": "out_of_order"}],
                                    [{"kind": "empty_page"}], [{"kind": "malformed_json"}]])
def test_faulted_pages_are_edited_as_plain_rows(emulator, rendered, exchange, faults):
    """A page fault gets the page as the plain rows it always edited; malformed JSON is half of
    the very text that would have been served."""
    path, query = requests_for(OCT1 + 3 * DAY)[exchange]
    clean = encode_reply(emulator.dispatch("GET", path, dict(query), b""))[0]
    emulator.faults.set([{**f, "exchange": exchange} for f in faults])
    reply = emulator.dispatch("GET", path, dict(query), b"")
    payload = encode_reply(reply)[0]
    if faults[0]["kind"] == "malformed_json":
        assert payload == clean[: len(clean) // 2]
        return
    served = json.loads(payload)
    assert payload == dumps(served)  # compact JSON as before
    venue = emulator.venues[exchange]
    candles, original = venue.candle_list(served), venue.candle_list(json.loads(clean))
    if faults[0]["kind"] == "empty_page":
        assert candles == []
        return
    if len(faults) == 2:  # the chronologically first half, then shuffled
        half = len(original) // 2
        original = original[len(original) - half:] if venue.newest_first else original[:half]
    assert candles != original and sorted(map(json.dumps, candles)) == sorted(map(json.dumps, original))


def test_real_http_bodies_are_the_reference_bytes(emulator, rendered):
    for exchange in ("binance", "bybit"):
        path, query = requests_for(OCT1 + 11 * DAY)[exchange]
        url = emulator.url + path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
            assert int(resp.headers["Content-Length"]) == len(body)
        page, reference = rendered[-1]
        assert page.json == dumps(reference) and page.json in body
        assert body == page.json if exchange == "binance" else body.startswith(b'{"retCode":0,"retMsg":"OK"')


def test_bodies_without_pages_encode_as_json_dumps():
    for body in ({"a": [1, 2.5, "é", None, True], "b": {"c": {"d": 1e-7}}}, [], "x", 3, {"retCode": 0, "result": {}}):
        assert render.encode_json(body) == dumps(body)
    page = render.page(2, "[", render.int_cells(np.array([1, 2])), "]")
    nested = {"retCode": 0, "result": {"list": page, "next": "é\x00"}, "x": [1.5]}
    assert render.encode_json(nested) == dumps({"retCode": 0, "result": {"list": [[1], [2]], "next": "é\x00"},
                                                "x": [1.5]})
    assert nested["result"]["list"] is page  # encoding leaves the reply alone


# -- the candle generator evaluates the price path once per candle edge -------------------------
def reference_uniform(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """`market_data._uniform` as it was (splitmix64, one temporary per step)."""
    with np.errstate(over="ignore"):
        x = index.astype(np.int64).view(np.uint64) ^ key
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def reference_candles(source: CandleSource, symbol: str, ts: np.ndarray, tf_ms: int) -> np.ndarray:
    """`CandleSource._generate` as it was: the path evaluated at every open and every close, each
    octave's noise drawn per candle."""
    spec, seed = source.config.symbols[symbol], source.config.seed

    def log_price(t):
        out = np.full(t.shape, np.log(spec.price))
        for scale in market_data.OCTAVES_MS:
            key = market_data._key(seed, symbol, scale)
            k = np.floor_divide(t, scale)
            frac = (t - k * scale) / scale
            a = reference_uniform(key, k) * 2 - 1
            b = reference_uniform(key, k + 1) * 2 - 1
            w = (1 - np.cos(np.pi * frac)) / 2
            out += spec.vol * np.sqrt(scale / DAY) * (a * (1 - w) + b * w)
        return out

    opens, closes = np.exp(log_price(ts)), np.exp(log_price(ts + tf_ms))
    wick = spec.vol * np.sqrt(tf_ms / DAY) * 0.6
    idx = ts // tf_ms
    up = reference_uniform(market_data._key(seed, symbol, tf_ms, "up"), idx) * wick
    down = reference_uniform(market_data._key(seed, symbol, tf_ms, "down"), idx) * wick
    activity = 0.4 + 1.2 * reference_uniform(market_data._key(seed, symbol, tf_ms, "vol"), idx)
    return np.column_stack([ts, opens, np.maximum(opens, closes) * (1 + up), np.minimum(opens, closes) * (1 - down),
                            closes, spec.volume * (tf_ms / HOUR) * activity])


def test_generated_candles_are_bit_identical_to_the_per_candle_evaluation():
    index = np.arange(-5000, 5000, 7, dtype=np.int64) * 1_000_003
    for key in (market_data._key(0, "BTC", 60_000), market_data._key(1, "x")):
        assert market_data._uniform(key, index).tobytes() == reference_uniform(key, index).tobytes()
    source = CandleSource(market_data.load_config())
    rng = np.random.default_rng(3)
    for symbol in source.config.symbols:
        for tf in (MIN, 5 * MIN, HOUR, 4 * HOUR, DAY):
            for n in (1, 2, 7, 1000):
                first = (OCT1 - int(rng.integers(0, 3000)) * tf) // tf * tf
                ts = np.arange(first, first + n * tf, tf, dtype=np.int64)
                got, want = source._generate(symbol, ts, tf), reference_candles(source, symbol, ts, tf)
                assert got.tobytes() == want.tobytes(), (symbol, tf, n)
    ts = np.array([OCT1, OCT1 + 5 * HOUR, OCT1 + 9 * DAY], dtype=np.int64)  # not consecutive
    assert source._generate("BTC", ts, HOUR).tobytes() == reference_candles(source, "BTC", ts, HOUR).tobytes()
