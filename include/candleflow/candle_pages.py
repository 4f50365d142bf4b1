"""Vectorised parsing of the exchanges' candle pages: a drop-in for ccxt's `parse_ohlcvs`.

Why: ccxt turns a page of candles into `[ts, open, high, low, close, volume]` rows one Python call
per field (`parse_ohlcv` → `safe_integer` / `safe_number` → `safe_string` → `parse_number`). On a
busy backfill that was most of a collector process's CPU (py-spy: 59 % in `parse_ohlcvs` for bybit
pages of 1000 candles). `install(client)` replaces, on that client instance only, `parse_ohlcvs`
with a version that handles a whole page at once and returns exactly what ccxt's would.

How: the page's columns are cut out with C-level `zip` / `itemgetter`; the number strings of the
page are joined into one JSON array and parsed by a single `orjson.loads` (the parser ccxt itself
uses for responses). That is the part that matters: `float(str)` and numpy's string → float64
conversion both cost ~170 ns a value on the collector box, orjson ~20 ns. Both are correctly
rounded decimal → double conversions, so the numbers are bit-for-bit `float(token)`, which is what
ccxt's `safe_number` computes (`self.number` is `float` for these clients; checked per call).
The joined text may hold nothing but digits, `. - + e E` and the commas, so each token parses as
exactly one JSON number or the page falls back; integer tokens (orjson: `int`) become floats
through `float(int)`, also correctly rounded; the one token whose value would differ, `-0`
(orjson: int 0, `float("-0")`: -0.0), falls back. Raw values that are JSON numbers go through
`str()` first, as in ccxt's `safe_string`. Timestamps follow `safe_integer` (`int(float(x))`) or,
for kraken and coinbase whose candles carry seconds, `safe_timestamp` (`int(float(x) * 1000)`).
Rows are then sorted with ccxt's own `sort_by` (stable) and cut with `filter_by_since_limit`'s
semantics (its `since` loop is re-implemented without a call per row, a bisection when `since`
is a positive number; the limit part is ccxt's `filter_by_limit`). About 0.5 ms for a 1000-candle
binance or bybit page where ccxt takes ~2.7 ms (bench/candle_parse.py).

Layouts (read from ccxt 4.5's `<id>.parse_ohlcv`, identical in `async_support`):

| exchange | rows | timestamp | open..close | volume |
|---|---|---|---|---|
| binance | lists | `[0]` ms | `[1]..[4]` | `[5]`; `[7]` for inverse markets |
| bybit | lists of strings | `[0]` ms | `[1]..[4]` | `[5]`; `[6]` for inverse markets |
| okx | lists of strings | `[0]` ms | `[1]..[4]` | `[5]` for spot, `[6]` otherwise |
| kraken | lists | `[0]` seconds | `[1]..[4]` | `[6]` (`[5]` is the vwap) |
| coinbase | dicts | `start` seconds | `open`..`close` | `volume` |

Fallback: anything this module does not recognise is handed to ccxt's original bound method for
that call, never guessed at: another exchange id or a subclass with its own `parse_ohlcv`, no
market or a market type other than spot/swap/future, a page that is not a list or is empty, rows
of another type or too short, a missing, `None`, empty, bool or non-JSON-number value (ccxt turns
those into `None`, or accepts spellings like `"1."`, `" 1"`, `"nan"` that JSON does not), a
timestamp that is not a number or a numeric string, `self.number` not `float`. (Strings are taken to be
`str` itself, not a subclass, which ccxt's `safe_string` would refuse: JSON decoders make no other.)
`install` also compares both parsers on a small synthetic page for the client's layout and does
not install if they disagree (a changed ccxt layout).

The collector installs it on every client it makes (`collect.make_exchange`), governed by
`collect.fast_candle_parse` in include/config/pipeline.yaml.
"""

from __future__ import annotations

import logging
import sys
from bisect import bisect_left
from dataclasses import dataclass
from operator import itemgetter

try:  # a ccxt dependency in requirements.lock; without it numbers go through float() (exact, slower)
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

log = logging.getLogger(__name__)

EXCHANGES = ("binance", "bybit", "okx", "kraken", "coinbase")
MARKET_TYPES = ("spot", "swap", "future")   # option candles have other shapes (binance: dicts)

_INT_MS_MAX = 2 ** 53            # int(float(x)) == x for ints up to here
_INT_S_MAX = 2 ** 53 // 1000     # int(float(x) * 1000) == x * 1000 for ints up to here
_THOUSAND = 1000.0               # ccxt: float(x) * 1000 (the int factor is converted to this double)
_STR_OR_NUMBER = frozenset({str, int, float})
_NUMBERS = frozenset({int, float})
_INT = {int}
_TS = itemgetter(0)
_NUMBER_BYTES = b"0123456789.-+eE,"  # what a JSON array of numbers holds besides its brackets


@dataclass(frozen=True)
class Layout:
    """Where ccxt's `parse_ohlcv` reads each field of one raw candle, for one exchange and market."""
    row_type: type            # list or dict
    ts: int | str             # key of the timestamp
    values: tuple             # keys of open, high, low, close, volume
    seconds: bool = False     # timestamp in seconds: ccxt's safe_timestamp (x 1000)


def _binance(client, market) -> Layout:
    volume = 7 if client.safe_bool(market, "inverse") is True else 5
    return Layout(list, 0, (1, 2, 3, 4, volume))


def _bybit(client, market) -> Layout:
    volume = 6 if client.safe_bool(market, "inverse") is True else 5
    return Layout(list, 0, (1, 2, 3, 4, volume))


def _okx(client, market) -> Layout:
    market_type = client.handle_market_type_and_params("fetchOHLCV", market, None)[0]
    return Layout(list, 0, (1, 2, 3, 4, 5 if market_type == "spot" else 6))


def _kraken(client, market) -> Layout:
    return Layout(list, 0, (1, 2, 3, 4, 6), seconds=True)


def _coinbase(client, market) -> Layout:
    return Layout(dict, "start", ("open", "high", "low", "close", "volume"), seconds=True)


_STRING_TIMESTAMPS = ("bybit", "okx")   # their raw candles are all strings
_LAYOUTS = {"binance": _binance, "bybit": _bybit, "okx": _okx, "kraken": _kraken, "coinbase": _coinbase}


def layout_for(client, market) -> Layout | None:
    """The column layout ccxt's parse_ohlcv uses for this client and market, or None (not covered)."""
    if not isinstance(market, dict) or market.get("type") not in MARKET_TYPES:
        return None
    return _LAYOUTS[client.id](client, market)


def supported(client) -> bool:
    """True when `client` is one of the covered ccxt classes (sync or async) with their own
    `parse_ohlcv` and the base `parse_ohlcvs`, i.e. the code whose layout this module mirrors."""
    exchange_id = getattr(client, "id", None)
    if exchange_id not in _LAYOUTS:
        return False
    import ccxt

    cls = type(client)
    # the client's own module is loaded; the other one need not be (async_support costs ~0.2 s)
    stock = [getattr(module, exchange_id).parse_ohlcv
             for module in (sys.modules.get("ccxt"), sys.modules.get("ccxt.async_support")) if module is not None]
    return cls.parse_ohlcv in stock and cls.parse_ohlcvs is ccxt.Exchange.parse_ohlcvs


# -- the page parser --------------------------------------------------------------------------
def _numbers(tokens, floats: bool) -> list | None:
    """`float(token)` of every token (`floats`), or the JSON numbers themselves (ints stay ints);
    None when a token is not a plain JSON number whose value that is for sure, or not a str: the
    caller falls back (ccxt's answer for it may be None, or a spelling JSON rejects)."""
    try:
        text = ("[" + ",".join(tokens) + "]").encode("ascii")
    except (TypeError, UnicodeEncodeError):          # a non-str value; non-ASCII digits
        return None
    if orjson is None:                               # float() itself: the same numbers, slower
        try:
            return list(map(float, tokens))
        except ValueError:
            return None
    # Only digits . - + e E between the commas: nothing but numbers can come out of the parse (no
    # strings, true/null, nesting, whitespace), so every token is exactly one JSON number.
    if text.translate(None, _NUMBER_BYTES) != b"[]":
        return None
    if b"-" in text and (b"-0," in text or b"-0]" in text):
        return None                                  # integer "-0": orjson gives int 0, float() -0.0
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:                   # '', '1.', '.5', '01', '1e400', '1-2', ',,'...
        return None
    if len(parsed) != len(tokens):                   # a token held a comma
        return None
    if floats and text.count(b".") != len(tokens):   # some integer tokens (a valid one has <= 1 '.')
        return list(map(float, parsed))              # float(int) is float(str) of it: both correctly rounded
    return parsed


def _timestamps(raw, seconds: bool, types: set | None = None) -> list[int] | None:
    """ccxt's safe_integer (int(float(x))) or safe_timestamp (int(float(x) * 1000)) of numbers."""
    types = types if types is not None else set(map(type, raw))
    if types == _INT:
        limit = _INT_S_MAX if seconds else _INT_MS_MAX
        if -limit <= min(raw) and max(raw) <= limit:
            return list(map((1000).__mul__, raw)) if seconds else list(raw)
    if not types <= _NUMBERS:
        return None
    values = map(float, raw)
    if seconds:
        values = map(_THOUSAND.__mul__, values)
    try:
        return list(map(int, values))
    except (ValueError, OverflowError):   # nan, inf: ccxt gives None
        return None


def parse_page(ohlcvs, layout: Layout) -> list[list] | None:
    """The unsorted `[ts, o, h, l, c, v]` rows of a raw page, as ccxt's parse_ohlcv would make
    them, or None when any value is not one this parser reproduces exactly."""
    n = len(ohlcvs)
    if n == 0 or set(map(type, ohlcvs)) != {layout.row_type}:
        return None
    try:
        if layout.row_type is list:
            columns = tuple(zip(*ohlcvs, strict=False))   # as many columns as the narrowest row has
            if len(columns) <= max(layout.ts, *layout.values):
                return None                         # a short row: ccxt reads None there
            ts_col, value_cols = columns[layout.ts], [columns[i] for i in layout.values]
        else:
            ts_col, *value_cols = zip(*map(itemgetter(layout.ts, *layout.values), ohlcvs), strict=True)
    except (KeyError, IndexError, TypeError):       # a missing key: ccxt reads None there
        return None

    tokens: list = []
    for col in value_cols:
        tokens.extend(col)
    numbers = _numbers(tokens, floats=True)
    if numbers is None:                             # a value that is not a str (JSON number, None...)
        numbers = _numbers(_safe_strings(tokens), floats=True)
        if numbers is None:
            return None
    ts_types = set(map(type, ts_col))
    if ts_types <= _NUMBERS:
        ts = _timestamps(ts_col, layout.seconds, ts_types)
    else:                                           # numeric strings (others: None)
        ts_raw = _numbers(ts_col, floats=False)
        ts = _timestamps(ts_raw, layout.seconds) if ts_raw is not None else None
    if ts is None:
        return None
    return list(map(list, zip(ts, numbers[:n], numbers[n:2 * n], numbers[2 * n:3 * n],
                              numbers[3 * n:4 * n], numbers[4 * n:], strict=True)))


def _safe_strings(values) -> list | None:
    """ccxt's safe_string of raw values that are str, int or float (others are None to it)."""
    if not set(map(type, values)) <= _STR_OR_NUMBER:
        return None
    return [v if type(v) is str else str(v) for v in values]


def since_limit(client, rows: list[list], since, limit, tail) -> list[list]:
    """ccxt's `filter_by_since_limit(rows, since, limit, 0, tail)` for rows sorted by timestamps
    that are ints round-tripping through float (so its `safe_integer(row, 0)` is `row[0]`)."""
    since_defined = client.value_is_defined(since)
    result = rows
    if since_defined:
        if type(since) in (int, float) and since > 0:   # sorted, and ts >= since > 0 implies ts != 0
            result = rows[bisect_left(rows, since, key=_TS):]
        else:
            result = [row for row in rows if row[0] != 0 and row[0] >= since]
    if tail and limit is not None:
        return client.array_slice(result, -limit)
    return client.filter_by_limit(result, limit, 0, not tail and since_defined)


def _fast_parse_ohlcvs(client, original):
    def parse_ohlcvs(ohlcvs, market=None, timeframe="1m", since=None, limit=None, tail=False):
        if type(ohlcvs) is list and client.number is float:
            layout = layout_for(client, market)
            rows = parse_page(ohlcvs, layout) if layout is not None else None
            if rows is not None:
                return since_limit(client, client.sort_by(rows, 0), since, limit, tail)
        return original(ohlcvs, market, timeframe, since, limit, tail)

    parse_ohlcvs.__doc__ = f"candleflow.candle_pages: fast {client.id} parse_ohlcvs (falls back to ccxt's)"
    return parse_ohlcvs


# -- installation -----------------------------------------------------------------------------
def _sample(exchange_id: str, layout: Layout) -> list:
    """A small raw page in the layout: every column distinct, out of order, one duplicate ts."""
    rows = []
    for i, stamp in enumerate([3, 1, 2, 2, 5]):
        ts = stamp * 3600 if layout.seconds else stamp * 3_600_000
        if layout.row_type is dict:
            row = {k: f"{10 * j + i + 1}.{j + 1}5" for j, k in enumerate(("low", "high", "open", "close", "volume"))}
            row["start"] = str(ts)
        else:
            row = [f"{10 * j + i}.{j}25" for j in range(max(layout.values) + 3)]
            row[layout.ts] = str(ts) if exchange_id in _STRING_TIMESTAMPS else ts
        rows.append(row)
    return rows


def _agrees(client, original, fast) -> bool:
    markets = [{"type": "spot", "spot": True, "inverse": None}]
    if client.id in ("binance", "bybit", "okx"):
        markets += [{"type": "swap", "spot": False, "linear": False, "inverse": True},
                    {"type": "swap", "spot": False, "linear": True, "inverse": False}]
    for market in markets:
        page = _sample(client.id, layout_for(client, market))
        for since, limit, tail in ((None, None, False), (2 * 3_600_000, 2, False), (None, 2, True)):
            want, got = original(page, market, "1h", since, limit, tail), fast(page, market, "1h", since, limit, tail)
            if want != got or [list(map(type, r)) for r in want] != [list(map(type, r)) for r in got]:
                return False
            if parse_page(page, layout_for(client, market)) is None:
                return False   # the sample must take the fast path, or the comparison proves nothing
    return True


def install(client) -> bool:
    """Replace `client.parse_ohlcvs` (this instance only) with the fast version; True if done.

    A client this module does not cover, or one whose ccxt parse disagrees with the fast one on
    a synthetic page, keeps ccxt's method (logged)."""
    if getattr(client, "_candleflow_fast_parse", False):
        return True
    if not supported(client):
        log.info("fast candle parsing: %s not covered, ccxt parses its candles", getattr(client, "id", client))
        return False
    original = client.parse_ohlcvs
    fast = _fast_parse_ohlcvs(client, original)
    if not _agrees(client, original, fast):
        import ccxt

        log.warning("fast candle parsing: %s disagrees with ccxt %s on a sample page; not installed",
                    client.id, ccxt.__version__)
        return False
    client.parse_ohlcvs = fast
    client._candleflow_fast_parse = True
    return True
