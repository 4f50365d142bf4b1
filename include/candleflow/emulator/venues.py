"""Each emulated exchange's native REST surface: the markets and OHLCV endpoints ccxt calls, with
the exchange's own JSON shapes, paging rules and error bodies, so an unmodified ccxt client parses
them exactly as it parses the real venue.

| exchange | markets                                   | candles                                   | page (max)            |
|----------|-------------------------------------------|-------------------------------------------|-----------------------|
| binance  | GET /api/v3/exchangeInfo                  | GET /api/v3/klines (ascending)            | 1000, default 500     |
| coinbase | GET /api/v3/brokerage/market/products     | GET …/products/{id}/candles (newest first)| 350 per start..end    |
| kraken   | GET /0/public/AssetPairs                  | GET /0/public/OHLC                        | the 720 most recent   |
| bybit    | GET /v5/market/instruments-info           | GET /v5/market/kline (newest first)       | 1000, default 200     |
| okx      | GET /api/v5/public/instruments            | GET /api/v5/market/(history-)candles      | 300 (recent), 100     |

The linear USDT perpetuals of binance, bybit and okx (funding rates, open interest) are served
by the same classes; endpoints, page sizes and retention are in docs/derivatives.md.

| exchange | perp markets                               | funding history (page max)           | open interest history (page max)              |
|----------|--------------------------------------------|--------------------------------------|-----------------------------------------------|
| binance  | GET /fapi/v1/exchangeInfo, /fapi/v1/fundingInfo | GET /fapi/v1/fundingRate (1000, ascending) | GET /futures/data/openInterestHist (500, last 30 days) |
| bybit    | GET /v5/market/instruments-info?category=linear (fundingInterval) | GET /v5/market/funding/history (200, newest first) | GET /v5/market/open-interest (200, newest first) |
| okx      | GET /api/v5/public/instruments?instType=SWAP, /public/funding-rate | GET /api/v5/public/funding-rate-history (400, newest first, last 3 months) | GET /api/v5/rubik/stat/contracts/open-interest-history (100, newest first) |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import numpy as np

from candleflow.emulator import render
from candleflow.emulator.market_data import CandleSource, DerivativesSource, EmulatorConfig

BINANCE_INTERVALS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
                     "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "1d": 86_400_000}
COINBASE_GRANULARITY = {"ONE_MINUTE": 60_000, "FIVE_MINUTE": 300_000, "FIFTEEN_MINUTE": 900_000,
                        "THIRTY_MINUTE": 1_800_000, "ONE_HOUR": 3_600_000, "TWO_HOUR": 7_200_000,
                        "SIX_HOUR": 21_600_000, "ONE_DAY": 86_400_000}
KRAKEN_INTERVALS = {str(m): m * 60_000 for m in (1, 5, 15, 30, 60, 240, 1440)}
BYBIT_INTERVALS = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000,
                   "60": 3_600_000, "120": 7_200_000, "240": 14_400_000, "D": 86_400_000}
OKX_BARS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
            "1H": 3_600_000, "2H": 7_200_000, "4H": 14_400_000, "1Dutc": 86_400_000}
# kraken still names the oldest assets with an X prefix (and bitcoin XBT)
KRAKEN_LEGACY = {"BTC": "XXBT", "ETH": "XETH", "LTC": "XLTC", "XLM": "XXLM", "ETC": "XETC"}


@dataclass
class Reply:
    status: int
    body: object
    headers: dict[str, str] | None = None


class BadRequest(Exception):
    def __init__(self, reply: Reply):
        super().__init__(str(reply.body))
        self.reply = reply


# how the venues print a price or a volume: %.10g from 1 up, %.8g below. Candle pages print
# theirs in bulk (`render`: same bytes, a fraction of the CPU); callers of `_num` pass Python
# floats (formatting numpy scalars one by one is several times slower)
_num = render.num_text


def _int(query: dict, name: str, default: int | None, error) -> int | None:
    if name not in query:
        return default
    try:
        return int(float(query[name]))
    except ValueError:
        raise BadRequest(error(f"invalid {name}: {query[name]!r}")) from None


class Venue:
    """One exchange: resolves its market ids and serves candles through the shared source."""

    name = ""

    def __init__(self, config: EmulatorConfig, source: CandleSource, now_ms, faults):
        self.config = config
        self.spec = config.exchanges[self.name]
        self.source = source
        self.now_ms = now_ms
        self.faults = faults
        self.derivatives = DerivativesSource(config, source)
        self._symbols: dict[str, str] | None = None       # market id -> symbol (the config is fixed)
        self._perp_symbols: dict[str, str] | None = None

    # market ids ------------------------------------------------------------------------------
    def listed(self) -> list[str]:
        return [s for s in self.config.symbols if self.config.listed_since(self.name, s) is not None]

    def market_id(self, symbol: str) -> str:
        raise NotImplementedError

    def ticker(self, symbol: str) -> str:
        """The ticker this venue lists `symbol` under (MATIC trades as POL after its rename)."""
        return self.config.renames.get(symbol, {}).get(self.name, symbol)

    def symbol_for(self, market_id: str) -> str | None:
        if self._symbols is None:  # every request asks (twice): a lookup, not a scan of the listing
            by_id: dict[str, str] = {}
            for symbol in self.listed():
                by_id.setdefault(self.market_id(symbol), symbol)
            self._symbols = by_id  # complete before other threads see it
        return self._symbols.get(market_id)

    def rows(self, symbol: str, tf_ms: int, start_ms: int, end_ms: int) -> np.ndarray:
        """Candles the exchange has in [start, end): nothing after the current open candle."""
        now = self.now_ms()
        end_ms = min(end_ms, now // tf_ms * tf_ms + tf_ms)
        rows = self.source.candles(self.name, symbol, tf_ms, start_ms, end_ms)
        return self.faults.apply_to_candles(self.name, symbol, rows)

    def routes(self) -> dict:
        raise NotImplementedError

    # hooks the fault injector uses: which candle request is this, and where are the candles --
    candle_routes: dict[str, str] = {}  # route pattern -> query field naming the market ("*" = path arg)

    def candle_symbol(self, pattern: str, query: dict, args: tuple) -> str | None:
        """The symbol a candle request asks for ("" if the market is unknown), None if this is
        not a candle request."""
        field = self.candle_routes.get(pattern)
        if field is None:
            # the perpetuals' history requests take the same per-symbol faults as candle requests
            field = self.derivative_routes.get(pattern)
            return None if field is None else (self.perp_symbol_for(query.get(field, "")) or "")
        market_id = args[0] if field == "*" and args else query.get(field, "")
        return self.symbol_for(market_id) or ""

    def candle_list(self, body) -> list | None:
        """The list of candles inside this venue's 200 body (mutable in place), or None. Candle
        endpoints answer a `render.Page` in its place: `render.expand_pages(body)` first."""
        raise NotImplementedError

    newest_first = False  # the order the venue serves a page in
    derivative_routes: dict[str, str] = {}  # funding / open-interest history route -> query field naming the perp

    # perpetuals ------------------------------------------------------------------------------
    def perp_id(self, symbol: str) -> str:
        return self.market_id(symbol)

    def perp_symbol_for(self, market_id: str) -> str | None:
        if self._perp_symbols is None:
            by_id: dict[str, str] = {}
            for symbol in self.derivatives.listed(self.name):
                by_id.setdefault(self.perp_id(symbol), symbol)
            self._perp_symbols = by_id
        return self._perp_symbols.get(market_id)

    def funding_rows(self, symbol: str, lo: int | None, hi: int | None) -> np.ndarray:
        """Settlements with lo <= time <= hi that have happened by now and are still served."""
        now = self.now_ms()
        hi = now if hi is None else min(hi, now)
        retained = self.derivatives.retention_start(self.name, "funding", now)
        lo = max(x for x in (lo, retained, 0) if x is not None)
        rows = self.derivatives.funding(self.name, symbol, lo, hi + 1) if lo <= hi else np.empty((0, 3))
        return self._outages(symbol, rows)

    def oi_rows(self, symbol: str, period_ms: int, lo: int | None, hi: int | None) -> np.ndarray:
        now = self.now_ms()
        hi = now if hi is None else min(hi, now)
        retained = self.derivatives.retention_start(self.name, "open_interest", now)
        lo = max(x for x in (lo, retained, 0) if x is not None)
        rows = self.derivatives.open_interest(self.name, symbol, period_ms, lo, hi + 1) if lo <= hi else np.empty((0, 3))
        return self._outages(symbol, rows)

    def _outages(self, symbol: str, rows: np.ndarray) -> np.ndarray:
        """An `outage` fault removes settlements and statistics too: nothing exists in [from, to)."""
        for lo, hi in self.faults.outages(self.name, symbol):
            rows = rows[(rows[:, 0] < lo) | (rows[:, 0] >= hi)]
        return rows


def _rate(x: float) -> str:
    """A funding rate as the venues print it: plain decimal, no exponent."""
    text = f"{x:.8f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _window(rows: np.ndarray, limit: int, *, from_start: bool) -> np.ndarray:
    """The first (`from_start`) or the newest `limit` rows of an ascending array."""
    return rows[:limit] if from_start else rows[-limit:] if limit else rows[:0]


class Binance(Venue):
    name = "binance"

    def market_id(self, symbol):
        return f"{self.ticker(symbol)}{self.spec.quote}"

    candle_routes = {"/api/v3/klines": "symbol"}
    derivative_routes = {"/fapi/v1/fundingRate": "symbol", "/futures/data/openInterestHist": "symbol"}

    def candle_list(self, body):
        return body if isinstance(body, list) else None

    def _error(self, msg, code=-1100):
        return Reply(400, {"code": code, "msg": msg})

    @staticmethod
    def kline_rows(rows: np.ndarray, tf: int) -> list[list]:
        """Binance's 12 kline columns (REST and the public data archive share them)."""
        return [[int(r[0]), _num(r[1]), _num(r[2]), _num(r[3]), _num(r[4]), _num(r[5]), int(r[0]) + tf - 1,
                 _num(r[5] * r[4]), 100, _num(r[5] / 2), _num(r[5] * r[4] / 2), "0"] for r in np.asarray(rows).tolist()]

    @staticmethod
    def kline_page(rows: np.ndarray, tf: int) -> render.Page:
        """`kline_rows` as the REST body's JSON text, rendered in bulk (the same bytes as
        `json.dumps(kline_rows(rows, tf), separators=(",", ":"))`)."""
        rows = render.as_rows(rows)
        t, o, h, low, c, v = rows.T
        ts = render.to_int(t)
        times = render.int_cells(np.stack([ts, ts + (tf - 1)]))
        quote = v * c
        num = render.num_cells(np.stack([o, h, low, c, v, quote, v / 2, quote / 2]))
        return render.page(len(rows), "[", times[:, 0], ',"', num[:, 0], '","', num[:, 1], '","', num[:, 2], '","',
                           num[:, 3], '","', num[:, 4], '",', times[:, 1], ',"', num[:, 5], '",100,"', num[:, 6],
                           '","', num[:, 7], '","0"]')

    def routes(self):
        return {"/api/v3/exchangeInfo": self.exchange_info, "/api/v3/klines": self.klines,
                "/api/v3/time": lambda q: Reply(200, {"serverTime": self.now_ms()}),
                "/api/v3/ping": lambda q: Reply(200, {}),
                # USDⓈ-M futures (fapi) and its statistics API
                "/fapi/v1/exchangeInfo": self.fapi_exchange_info, "/fapi/v1/fundingRate": self.funding_rate,
                "/fapi/v1/fundingInfo": self.funding_info,
                "/fapi/v1/time": lambda q: Reply(200, {"serverTime": self.now_ms()}),
                "/futures/data/openInterestHist": self.open_interest_hist}

    # -- USDⓈ-M perpetuals ----------------------------------------------------------------------
    FUTURES_PERIODS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000,
                       "4h": 14_400_000, "6h": 21_600_000, "12h": 43_200_000, "1d": 86_400_000}
    FUNDING_JITTER_MS = 20  # binance stamps settlements a few ms after the hour (…T08:00:00.011Z)

    def _jitter(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        from candleflow.emulator.market_data import _key, _uniform

        return (_uniform(_key(self.config.seed, "binance-funding-jitter", symbol), ts // 3_600_000)
                * self.FUNDING_JITTER_MS).astype(np.int64)

    def fapi_exchange_info(self, query):
        symbols = []
        for s in self.derivatives.listed(self.name):
            symbols.append({
                "symbol": self.perp_id(s), "pair": self.perp_id(s), "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000, "onboardDate": self.derivatives.listed_since(self.name, s),
                "status": "TRADING", "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                "baseAsset": self.ticker(s), "quoteAsset": self.spec.quote, "marginAsset": self.spec.quote,
                "pricePrecision": 4, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
                "underlyingType": "COIN", "underlyingSubType": [], "triggerProtect": "0.0500",
                "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.0001", "maxPrice": "1000000", "tickSize": "0.0001"},
                    {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000000", "stepSize": "0.001"},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "100000", "stepSize": "0.001"},
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MIN_NOTIONAL", "notional": "5"},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                     "multiplierDecimal": "4"},
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                               "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
            })
        return Reply(200, {"timezone": "UTC", "serverTime": self.now_ms(), "futuresType": "U_MARGINED",
                           "rateLimits": [
                               {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                               {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}],
                           "exchangeFilters": [], "assets": [], "symbols": symbols})

    def funding_info(self, query):
        # binance lists only the symbols whose cap, floor or interval was adjusted: a perp that
        # is not here settles every 8 h
        return Reply(200, [
            {"symbol": self.perp_id(s), "adjustedFundingRateCap": "0.02000000",
             "adjustedFundingRateFloor": "-0.02000000", "fundingIntervalHours": self.derivatives.interval_hours(self.name, s),
             "disclaimer": False}
            for s in self.derivatives.listed(self.name) if self.derivatives.interval_hours(self.name, s) != 8])

    def _perp(self, query):
        market_id = query.get("symbol")
        if not market_id:
            raise BadRequest(self._error("Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.", -1102))
        symbol = self.perp_symbol_for(market_id)
        if symbol is None:
            raise BadRequest(self._error("Invalid symbol.", -1121))
        return symbol

    def _limit(self, query, endpoint):
        default, cap = self.derivatives.page(self.name, endpoint)
        limit = _int(query, "limit", default, self._error)
        if not 1 <= limit <= cap:
            raise BadRequest(self._error(f"Illegal characters found in parameter 'limit'; legal range is '1..{cap}'.", -1100))
        return limit

    def funding_rate(self, query):
        symbol = self._perp(query)
        limit = self._limit(query, "funding")
        start = _int(query, "startTime", None, self._error)
        end = _int(query, "endTime", None, self._error)
        rows = self.funding_rows(symbol, None if start is None else start - self.FUNDING_JITTER_MS, end)
        times = rows[:, 0].astype(np.int64) + self._jitter(symbol, rows[:, 0].astype(np.int64))
        keep = np.ones(len(rows), dtype=bool)
        if start is not None:
            keep &= times >= start
        if end is not None:
            keep &= times <= end
        keep &= times <= self.now_ms()
        rows, times = rows[keep], times[keep]
        # "If the number of data between startTime and endTime is larger than limit, return as
        # startTime + limit"; without startTime the most recent `limit`
        first = start is not None
        rows, times = _window(rows, limit, from_start=first), _window(times, limit, from_start=first)
        return Reply(200, [{"symbol": self.perp_id(symbol), "fundingTime": int(t), "fundingRate": f"{r[1]:.8f}",
                            "markPrice": f"{r[2]:.8f}"} for t, r in zip(times, rows, strict=True)])

    def open_interest_hist(self, query):
        symbol = self._perp(query)
        period = self.FUTURES_PERIODS.get(query.get("period", ""))
        if period is None:
            return self._error("Data sent for parameter 'period' is not valid.", -1130)
        limit = self._limit(query, "open_interest")
        start = _int(query, "startTime", None, self._error)
        end = _int(query, "endTime", None, self._error)
        rows = _window(self.oi_rows(symbol, period, start, end), limit, from_start=start is not None)
        return Reply(200, [{"symbol": self.perp_id(symbol), "sumOpenInterest": f"{r[1]:.8f}",
                            "sumOpenInterestValue": f"{r[2]:.8f}", "timestamp": int(r[0])} for r in rows])

    def exchange_info(self, query):
        symbols = []
        for s in self.listed():
            symbols.append({
                "symbol": self.market_id(s), "status": "TRADING", "baseAsset": self.ticker(s), "baseAssetPrecision": 8,
                "quoteAsset": self.spec.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
                "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000.00000000",
                     "tickSize": "0.00000001"},
                    {"filterType": "LOT_SIZE", "minQty": "0.00000100", "maxQty": "9000000.00000000",
                     "stepSize": "0.00000100"},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        return Reply(200, {"timezone": "UTC", "serverTime": self.now_ms(), "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}],
            "exchangeFilters": [], "symbols": symbols})

    def klines(self, query):
        symbol = self.symbol_for(query.get("symbol", ""))
        if symbol is None:
            return self._error("Invalid symbol.", -1121)
        tf = BINANCE_INTERVALS.get(query.get("interval", ""))
        if tf is None:
            return self._error("Invalid interval.", -1120)
        limit = _int(query, "limit", self.spec.default_limit or 500, self._error)
        if not 1 <= limit <= self.spec.page_limit:
            return self._error("Illegal characters found in parameter 'limit'; legal range is '1..1000'.", -1100)
        start = _int(query, "startTime", None, self._error)
        end = _int(query, "endTime", None, self._error)
        if start is not None:
            # binance answers the first `limit` candles at or after startTime: from before the
            # listing that is the listing's first candles (how clients discover a listing date)
            first = max(start, self.config.listed_since(self.name, symbol) or start)
            hi = (end + 1) if end is not None else first + tf * limit
            rows = self.rows(symbol, tf, start, min(hi, first + tf * limit))[:limit] if first < hi else np.empty((0, 6))
        else:
            hi = (end + 1) if end is not None else self.now_ms() + tf
            rows = self.rows(symbol, tf, hi - tf * (limit + 1), hi)[-limit:]
        return Reply(200, self.kline_page(rows, tf))


class Coinbase(Venue):
    name = "coinbase"
    MAX_CANDLES = 350

    candle_routes = {"/api/v3/brokerage/market/products/*/candles": "*"}
    newest_first = True

    def candle_list(self, body):
        return body.get("candles") if isinstance(body, dict) else None

    def market_id(self, symbol):
        return f"{self.ticker(symbol)}-{self.spec.quote}"

    def routes(self):
        return {"/api/v3/brokerage/market/products": self.products,
                "/api/v3/brokerage/market/products/*/candles": self.candles,
                "/v2/time": self.time, "/api/v3/brokerage/time": self.time,
                "/v2/currencies": self.fiat_currencies, "/v2/currencies/crypto": self.crypto_currencies,
                "/v2/exchange-rates": self.exchange_rates}

    # load_markets() also fetches currencies (v2 "track" API), even for public market data
    def fiat_currencies(self, query):
        return Reply(200, {"data": [{"id": "USD", "name": "US Dollar", "min_size": "0.01"}]})

    def crypto_currencies(self, query):
        return Reply(200, {"data": [
            {"asset_id": f"emulated-{s.lower()}", "code": self.ticker(s), "name": self.ticker(s), "color": "#000000",
             "sort_index": i, "exponent": 8, "type": "crypto", "address_regex": ".*"}
            for i, s in enumerate(self.listed())]})

    def exchange_rates(self, query):
        return Reply(200, {"data": {"currency": "USD", "rates": {self.ticker(s): "1" for s in self.listed()}}})

    def time(self, query):
        now = self.now_ms()
        iso = datetime.fromtimestamp(now / 1000, UTC).isoformat().replace("+00:00", "Z")
        return Reply(200, {"data": {"iso": iso, "epoch": now // 1000}, "iso": iso,
                           "epochSeconds": str(now // 1000), "epochMillis": str(now)})

    def _error(self, msg):
        return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": msg, "message": msg})

    def products(self, query):
        products = []
        for s in self.listed():
            products.append({
                "product_id": self.market_id(s), "price": "1", "price_percentage_change_24h": "0",
                "volume_24h": "0", "volume_percentage_change_24h": "0", "base_increment": "0.00000001",
                "quote_increment": "0.01", "quote_min_size": "1", "quote_max_size": "150000000",
                "base_min_size": "0.00000001", "base_max_size": "3400", "base_name": s, "quote_name": "US Dollar",
                "watched": False, "is_disabled": False, "new": False, "status": "online", "cancel_only": False,
                "limit_only": False, "post_only": False, "trading_disabled": False, "auction_mode": False,
                "product_type": "SPOT", "quote_currency_id": self.spec.quote, "base_currency_id": self.ticker(s),
                "fcm_trading_session_details": None, "mid_market_price": "", "alias": "", "alias_to": [],
                "base_display_symbol": s, "quote_display_symbol": self.spec.quote, "view_only": False,
                "price_increment": "0.01", "display_name": self.market_id(s), "product_venue": "CBE",
            })
        return Reply(200, {"products": products, "num_products": len(products)})

    def candles(self, query, product_id):
        symbol = self.symbol_for(product_id)
        if symbol is None:
            return Reply(404, {"error": "NOT_FOUND", "error_details": "ProductID is invalid", "message": "ProductID is invalid"})
        tf = COINBASE_GRANULARITY.get(query.get("granularity", ""))
        if tf is None:
            return self._error("Unsupported granularity")
        start = _int(query, "start", None, self._error)
        end = _int(query, "end", None, self._error)
        if start is None or end is None:
            return self._error("start and end are required")
        if (end - start) * 1000 // tf > self.MAX_CANDLES:
            return self._error(f"number of candles requested should be less than {self.MAX_CANDLES}")
        rows = self.rows(symbol, tf, start * 1000, end * 1000)[::-1]
        return Reply(200, {"candles": self.candle_page(rows)})

    @staticmethod
    def candle_page(rows: np.ndarray) -> render.Page:
        """[{"start": str(int(t) // 1000), "low": _num(low), "high": …, "open": …, "close": …, "volume": …}]"""
        rows = render.as_rows(rows)
        t, o, h, low, c, v = rows.T
        start = render.int_cells(render.to_int(t) // 1000)
        num = render.num_cells(np.stack([low, h, o, c, v]))
        return render.page(len(rows), '{"start":"', start, '","low":"', num[:, 0], '","high":"', num[:, 1],
                           '","open":"', num[:, 2], '","close":"', num[:, 3], '","volume":"', num[:, 4], '"}')


class Kraken(Venue):
    name = "kraken"
    candle_routes = {"/0/public/OHLC": "pair"}

    def candle_list(self, body):
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            return None
        return next((v for k, v in result.items() if k != "last"), None)

    def _base(self, symbol):
        return KRAKEN_LEGACY.get(symbol, self.ticker(symbol))

    def market_id(self, symbol):
        base = self._base(symbol)
        return f"{base}Z{self.spec.quote}" if symbol in KRAKEN_LEGACY else f"{base}{self.spec.quote}"

    def routes(self):
        return {"/0/public/AssetPairs": self.asset_pairs, "/0/public/Assets": self.assets,
                "/0/public/OHLC": self.ohlc, "/0/public/Time": self.time}

    def time(self, query):
        now = self.now_ms()
        return Reply(200, {"error": [], "result": {
            "unixtime": now // 1000,
            "rfc1123": format_datetime(datetime.fromtimestamp(now / 1000, UTC), usegmt=True)}})

    def assets(self, query):
        result = {}
        for s in self.listed():
            base = self._base(s)
            result[base] = {"aclass": "currency", "altname": "XBT" if s == "BTC" else self.ticker(s), "decimals": 10,
                            "display_decimals": 5, "collateral_value": 1.0, "status": "enabled"}
        result["ZUSD"] = {"aclass": "currency", "altname": "USD", "decimals": 4, "display_decimals": 2,
                          "collateral_value": 1.0, "status": "enabled"}
        return Reply(200, {"error": [], "result": result})

    def asset_pairs(self, query):
        result = {}
        for s in self.listed():
            base = self._base(s)
            alt = "XBT" if s == "BTC" else self.ticker(s)
            result[self.market_id(s)] = {
                "altname": f"{alt}{self.spec.quote}", "wsname": f"{alt}/{self.spec.quote}",
                "aclass_base": "currency", "base": base, "aclass_quote": "currency",
                "quote": f"Z{self.spec.quote}", "lot": "unit", "cost_decimals": 5, "pair_decimals": 5,
                "lot_decimals": 8, "lot_multiplier": 1, "leverage_buy": [], "leverage_sell": [],
                "fees": [[0, 0.4], [10000, 0.35]], "fees_maker": [[0, 0.25], [10000, 0.2]],
                "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40, "ordermin": "0.0001",
                "costmin": "0.5", "tick_size": "0.00001", "status": "online",
            }
        return Reply(200, {"error": [], "result": result})

    def ohlc(self, query):
        pair = query.get("pair", "")
        symbol = self.symbol_for(pair)
        if symbol is None:
            return Reply(200, {"error": ["EQuery:Unknown asset pair"]})
        tf = KRAKEN_INTERVALS.get(query.get("interval", "1"))
        if tf is None:
            return Reply(200, {"error": ["EGeneral:Invalid arguments"]})
        # Kraken serves only its most recent 720 candles (the last one still open), whatever `since` says.
        now = self.now_ms()
        hi = now // tf * tf + tf
        rows = self.rows(symbol, tf, hi - tf * self.spec.page_limit, hi)
        since = _int(query, "since", None, lambda m: Reply(200, {"error": [f"EGeneral:{m}"]}))
        if since is not None:
            rows = rows[rows[:, 0] > since * 1000] if len(rows) else rows
        seconds = render.to_int(render.as_rows(rows)[:, 0]) // 1000
        last = int(seconds[-2]) if len(rows) >= 2 else (int(seconds[-1]) if len(rows) else (since or 0))
        return Reply(200, {"error": [], "result": {pair: self.ohlc_page(rows), "last": last}})

    @staticmethod
    def ohlc_page(rows: np.ndarray) -> render.Page:
        """[[int(t) // 1000, _num(open), _num(high), _num(low), _num(close), _num(vwap), _num(volume), 50]]"""
        rows = render.as_rows(rows)
        t, o, h, low, c, v = rows.T
        num = render.num_cells(np.stack([o, h, low, c, (h + low + c) / 3, v]))
        return render.page(len(rows), "[", render.int_cells(render.to_int(t) // 1000), ',"', num[:, 0], '","',
                           num[:, 1], '","', num[:, 2], '","', num[:, 3], '","', num[:, 4], '","', num[:, 5], '",50]')


class Bybit(Venue):
    name = "bybit"
    candle_routes = {"/v5/market/kline": "symbol"}
    derivative_routes = {"/v5/market/funding/history": "symbol", "/v5/market/open-interest": "symbol"}
    newest_first = True

    def candle_list(self, body):
        result = body.get("result") if isinstance(body, dict) else None
        return result.get("list") if isinstance(result, dict) else None

    def market_id(self, symbol):
        return f"{self.ticker(symbol)}{self.spec.quote}"

    def _ok(self, result):
        return Reply(200, {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": self.now_ms()})

    def _error(self, msg, code=10001):
        return Reply(200, {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": self.now_ms()})

    def routes(self):
        return {"/v5/market/instruments-info": self.instruments, "/v5/market/kline": self.kline,
                "/v5/market/time": self.time, "/v5/market/funding/history": self.funding_history,
                "/v5/market/open-interest": self.open_interest}

    OI_INTERVALS = {"5min": 300_000, "15min": 900_000, "30min": 1_800_000, "1h": 3_600_000, "4h": 14_400_000,
                    "1d": 86_400_000}

    def linear_instruments(self, query):
        if query.get("status", "Trading") != "Trading":  # ccxt also asks for status=PreLaunch
            return self._ok({"category": "linear", "list": [], "nextPageCursor": ""})
        items = [{
            "symbol": self.perp_id(s), "contractType": "LinearPerpetual", "status": "Trading",
            "baseCoin": self.ticker(s), "quoteCoin": self.spec.quote, "settleCoin": self.spec.quote,
            "launchTime": str(self.derivatives.listed_since(self.name, s)), "deliveryTime": "0",
            "deliveryFeeRate": "", "priceScale": "4",
            "leverageFilter": {"minLeverage": "1", "maxLeverage": "50.00", "leverageStep": "0.01"},
            "priceFilter": {"minPrice": "0.0001", "maxPrice": "1999999.0000", "tickSize": "0.0001"},
            "lotSizeFilter": {"maxOrderQty": "1000000", "minOrderQty": "0.001", "qtyStep": "0.001",
                              "postOnlyMaxOrderQty": "1000000", "maxMktOrderQty": "100000", "minNotionalValue": "5"},
            "unifiedMarginTrade": True, "fundingInterval": self.derivatives.interval_hours(self.name, s) * 60,
            "copyTrading": "both", "upperFundingRate": "0.003", "lowerFundingRate": "-0.003",
            "isPreListing": False, "preListingInfo": None,
        } for s in self.derivatives.listed(self.name)]
        return self._ok({"category": "linear", "list": items, "nextPageCursor": ""})

    def _perp(self, query):
        if query.get("category") not in ("linear", "inverse"):
            raise BadRequest(self._error("Illegal category", 10001))
        symbol = self.perp_symbol_for(query.get("symbol", ""))
        if symbol is None:
            raise BadRequest(self._error("Symbol Is Invalid", 10001))
        return symbol

    def _limit(self, query, endpoint):
        default, cap = self.derivatives.page(self.name, endpoint)
        limit = _int(query, "limit", default, self._error)
        return max(1, min(limit, cap))

    def funding_history(self, query):
        symbol = self._perp(query)
        limit = self._limit(query, "funding")
        start = _int(query, "startTime", None, self._error)
        end = _int(query, "endTime", None, self._error)
        if start is not None and end is None:
            # the venue refuses a lone startTime (its docs: "Passing only startTime returns an error")
            return self._error("endTime is required when startTime is passed", 10001)
        rows = self.funding_rows(symbol, start, end)[-limit:][::-1]  # newest `limit`, newest first
        return self._ok({"category": query["category"], "list": [
            {"symbol": self.perp_id(symbol), "fundingRate": _rate(r[1]), "fundingRateTimestamp": str(int(r[0]))}
            for r in rows]})

    def open_interest(self, query):
        symbol = self._perp(query)
        period = self.OI_INTERVALS.get(query.get("intervalTime", ""))
        if period is None:
            return self._error("Illegal intervalTime", 10001)
        limit = self._limit(query, "open_interest")
        start = _int(query, "startTime", None, self._error)
        end = _int(query, "endTime", None, self._error)
        cursor = _int(query, "cursor", None, self._error)  # our cursor: the newest timestamp still due
        if cursor is not None:
            end = cursor if end is None else min(end, cursor)
        rows = self.oi_rows(symbol, period, start, end)
        page, more = rows[-limit:][::-1], len(rows) > limit
        return self._ok({"symbol": self.perp_id(symbol), "category": query["category"],
                         "list": [{"openInterest": f"{r[1]:.8f}", "timestamp": str(int(r[0]))} for r in page],
                         "nextPageCursor": str(int(page[-1][0]) - 1) if more else ""})

    def time(self, query):
        now = self.now_ms()
        return self._ok({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})

    def instruments(self, query):
        category = query.get("category", "spot")
        if category == "linear":
            return self.linear_instruments(query)
        if category != "spot":
            return self._ok({"category": category, "list": [], "nextPageCursor": ""})
        items = [{
            "symbol": self.market_id(s), "baseCoin": self.ticker(s), "quoteCoin": self.spec.quote, "innovation": "0",
            "status": "Trading", "marginTrading": "none", "stTag": "0",
            "lotSizeFilter": {"basePrecision": "0.000001", "quotePrecision": "0.00000001",
                              "minOrderQty": "0.000001", "maxOrderQty": "1000000", "minOrderAmt": "1",
                              "maxOrderAmt": "2000000"},
            "priceFilter": {"tickSize": "0.00001"},
            "riskParameters": {"limitParameter": "0.03", "marketParameter": "0.03"},
        } for s in self.listed()]
        return self._ok({"category": "spot", "list": items, "nextPageCursor": ""})

    def kline(self, query):
        symbol = self.symbol_for(query.get("symbol", ""))
        if symbol is None:
            return self._error("Not supported symbols", 10001)
        tf = BYBIT_INTERVALS.get(query.get("interval", ""))
        if tf is None:
            return self._error("Invalid period!", 10001)
        limit = _int(query, "limit", self.spec.default_limit or 200, self._error)
        limit = max(1, min(limit, self.spec.page_limit))
        start = _int(query, "start", None, self._error)
        end = _int(query, "end", None, self._error)
        hi = (end + 1) if end is not None else self.now_ms() + tf
        lo = start if start is not None else hi - tf * (limit + 1)
        # Bybit returns the newest `limit` candles of [start, end], newest first: paging forward
        # from `start` without `end` silently skips history.
        rows = self.rows(symbol, tf, lo, hi)[-limit:][::-1]
        return self._ok({"symbol": self.market_id(symbol), "category": "spot", "list": self.kline_page(rows)})

    @staticmethod
    def kline_page(rows: np.ndarray) -> render.Page:
        """[[str(int(t)), _num(open), _num(high), _num(low), _num(close), _num(volume), _num(volume * close)]]"""
        rows = render.as_rows(rows)
        t, o, h, low, c, v = rows.T
        num = render.num_cells(np.stack([o, h, low, c, v, v * c]))
        return render.page(len(rows), '["', render.int_cells(render.to_int(t)), '","', num[:, 0], '","', num[:, 1],
                           '","', num[:, 2], '","', num[:, 3], '","', num[:, 4], '","', num[:, 5], '"]')


class Okx(Venue):
    name = "okx"
    candle_routes = {"/api/v5/market/candles": "instId", "/api/v5/market/history-candles": "instId"}
    derivative_routes = {"/api/v5/public/funding-rate-history": "instId",
                         "/api/v5/rubik/stat/contracts/open-interest-history": "instId"}
    newest_first = True

    def candle_list(self, body):
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, list) else None

    def market_id(self, symbol):
        return f"{self.ticker(symbol)}-{self.spec.quote}"

    def _ok(self, data):
        return Reply(200, {"code": "0", "msg": "", "data": data})

    def _error(self, msg, code="51000"):
        return Reply(200, {"code": code, "msg": msg, "data": []})

    def routes(self):
        return {"/api/v5/public/instruments": self.instruments, "/api/v5/market/candles": self.candles,
                "/api/v5/market/history-candles": self.history_candles,
                "/api/v5/public/time": lambda q: self._ok([{"ts": str(self.now_ms())}]),
                "/api/v5/public/funding-rate": self.funding_rate,
                "/api/v5/public/funding-rate-history": self.funding_rate_history,
                "/api/v5/rubik/stat/contracts/open-interest-history": self.open_interest_history}

    OI_PERIODS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1H": 3_600_000, "2H": 7_200_000,
                  "4H": 14_400_000, "6H": 21_600_000, "12H": 43_200_000, "1D": 86_400_000}

    def perp_id(self, symbol):
        return f"{self.ticker(symbol)}-{self.spec.quote}-SWAP"

    def contract_value(self, symbol: str) -> float:
        """Base units per contract (ctVal): a power of ten worth roughly 10-100 USDT."""
        return float(10 ** np.floor(np.log10(100 / self.config.symbols[symbol].price)))

    def swap_instruments(self):
        return self._ok([{
            "instType": "SWAP", "instId": self.perp_id(s), "uly": self.market_id(s), "instFamily": self.market_id(s),
            "baseCcy": "", "quoteCcy": "", "settleCcy": self.spec.quote, "ctVal": _num(self.contract_value(s)),
            "ctMult": "1", "ctValCcy": self.ticker(s), "optType": "", "stk": "",
            "listTime": str(self.derivatives.listed_since(self.name, s)), "expTime": "", "lever": "50",
            "tickSz": "0.0001", "lotSz": "1", "minSz": "1", "ctType": "linear", "alias": "", "state": "live",
            "ruleType": "normal", "maxLmtSz": "100000", "maxMktSz": "10000", "maxLmtAmt": "20000000",
            "maxMktAmt": "1000000", "maxTwapSz": "", "maxIcebergSz": "", "maxTriggerSz": "", "maxStopSz": "",
        } for s in self.derivatives.listed(self.name)])

    def _perp(self, query):
        inst = query.get("instId")
        if not inst:
            raise BadRequest(self._error("Parameter instId can not be empty.", "50014"))
        symbol = self.perp_symbol_for(inst)
        if symbol is None:
            raise BadRequest(self._error("Instrument ID doesn't exist.", "51001"))
        return symbol

    def funding_rate(self, query):
        """The coming settlement: `fundingTime` is the next one, `nextFundingTime` the one after
        (their difference is the symbol's interval)."""
        symbol = self._perp(query)
        now = self.now_ms()
        step = self.derivatives.interval_hours(self.name, symbol) * 3_600_000
        nxt = now // step * step + step
        upcoming = self.derivatives.funding(self.name, symbol, nxt, nxt + 1)
        last = self.funding_rows(symbol, now - step, now)
        rate = _rate(upcoming[0][1]) if len(upcoming) else "0"
        return self._ok([{
            "instType": "SWAP", "instId": self.perp_id(symbol), "method": "current_period", "formulaType": "noRate",
            "fundingRate": rate, "fundingTime": str(nxt), "nextFundingRate": "", "nextFundingTime": str(nxt + step),
            "minFundingRate": "-0.003", "maxFundingRate": "0.003", "interestRate": "0", "impactValue": "",
            "premium": "0", "settState": "settled", "settFundingRate": _rate(last[-1][1]) if len(last) else "0",
            "sprdType": "", "ts": str(now)}])

    def funding_rate_history(self, query):
        symbol = self._perp(query)
        default, cap = self.derivatives.page(self.name, "funding")
        limit = max(1, min(_int(query, "limit", default, self._error), cap))
        after = _int(query, "after", None, self._error)     # older than (exclusive)
        before = _int(query, "before", None, self._error)   # newer than (exclusive)
        rows = self.funding_rows(symbol, None if before is None else before + 1, None if after is None else after - 1)
        rows = rows[-limit:][::-1]
        return self._ok([{"instType": "SWAP", "instId": self.perp_id(symbol), "formulaType": "noRate",
                          "fundingRate": _rate(r[1]), "realizedRate": _rate(r[1]), "fundingTime": str(int(r[0])),
                          "method": "current_period"} for r in rows])

    def open_interest_history(self, query):
        symbol = self._perp(query)
        period = self.OI_PERIODS.get(query.get("period", "5m"))
        if period is None:
            return self._error("Parameter period error", "51000")
        default, cap = self.derivatives.page(self.name, "open_interest")
        limit = max(1, min(_int(query, "limit", default, self._error), cap))
        begin = _int(query, "begin", None, self._error)     # both bounds exclusive
        end = _int(query, "end", None, self._error)
        rows = self.oi_rows(symbol, period, None if begin is None else begin + 1, None if end is None else end - 1)
        rows = rows[-limit:][::-1]
        ct = self.contract_value(symbol)
        return self._ok([[str(int(r[0])), _num(round(r[1] / ct, 2)), _num(r[1]), _num(round(r[2], 2))] for r in rows])

    def instruments(self, query):
        if query.get("instType", "SPOT") == "SWAP":
            return self.swap_instruments()
        if query.get("instType", "SPOT") != "SPOT":
            return self._ok([])
        return self._ok([{
            "instType": "SPOT", "instId": self.market_id(s), "uly": "", "instFamily": "", "baseCcy": self.ticker(s),
            "quoteCcy": self.spec.quote, "settleCcy": "", "ctVal": "", "ctMult": "", "ctValCcy": "",
            "optType": "", "stk": "", "listTime": str(self.config.listed_since(self.name, s)), "expTime": "",
            "lever": "", "tickSz": "0.00001", "lotSz": "0.000001", "minSz": "0.000001", "ctType": "",
            "alias": "", "state": "live", "ruleType": "normal", "maxLmtSz": "10000000", "maxMktSz": "1000000",
            "maxLmtAmt": "20000000", "maxMktAmt": "1000000", "maxTwapSz": "", "maxIcebergSz": "",
            "maxTriggerSz": "", "maxStopSz": "",
        } for s in self.listed()])

    def candles(self, query):
        return self._candles(query, history=False)

    def history_candles(self, query):
        return self._candles(query, history=True)

    def _candles(self, query, history: bool):
        symbol = self.symbol_for(query.get("instId", ""))
        if symbol is None:
            return self._error(f"Instrument ID {query.get('instId')} doesn't exist.", "51001")
        tf = OKX_BARS.get(query.get("bar", "1m"))
        if tf is None:
            return self._error("Parameter bar error", "51000")
        cap = (self.spec.history_page_limit or 100) if history else self.spec.page_limit
        limit = max(1, min(_int(query, "limit", 100, self._error), cap))
        now = self.now_ms()
        after = _int(query, "after", None, self._error)     # older than (exclusive)
        before = _int(query, "before", None, self._error)   # newer than (exclusive)
        hi = after if after is not None else now // tf * tf + tf
        lo = before + 1 if before is not None else hi - tf * (limit + 1)
        if not history and self.spec.recent_candles:
            lo = max(lo, (now // tf - self.spec.recent_candles + 1) * tf)  # /market/candles: recent only
        rows = self.rows(symbol, tf, lo, hi)[-limit:][::-1] if lo < hi else np.empty((0, 6))
        return self._ok(self.candle_page(rows, now // tf * tf))

    @staticmethod
    def candle_page(rows: np.ndarray, current: int) -> render.Page:
        """[[str(int(t)), _num(open), …, _num(volume), _num(volume * close) twice, "0" if t is the
        current (open) candle else "1"]]"""
        rows = render.as_rows(rows)
        t, o, h, low, c, v = rows.T
        ts = render.to_int(t)
        num = render.num_cells(np.stack([o, h, low, c, v, v * c]))
        return render.page(len(rows), '["', render.int_cells(ts), '","', num[:, 0], '","', num[:, 1], '","',
                           num[:, 2], '","', num[:, 3], '","', num[:, 4], '","', num[:, 5], '","', num[:, 5], '","',
                           render.flag_cells(ts == current, "0", "1"), '"]')


VENUES = {cls.name: cls for cls in (Binance, Coinbase, Kraken, Bybit, Okx)}
