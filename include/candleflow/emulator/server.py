"""The emulator's HTTP server: one port, every exchange under its own path prefix
(`/binance/api/v3/klines`, `/kraken/0/public/OHLC`, …), binance's public data archive under
`/binance-archive/data/spot/...` (see `archive`), alternative.me's Fear & Greed index under
`/alternative.me/fng/` (see `feargreed`), plus an admin API under `/__admin/`:

    GET    /__admin/health             {"status": "ok", "now": <ms>, "exchanges": [...]}
    GET    /__admin/clock              the emulated "now"
    GET    /__admin/stats              requests per exchange and endpoint, and per exchange
                                       {"requests", "rate_limited", "banned", "faults"} under "exchanges"
    GET    /__admin/faults             the active faults (with what is left of each `count`)
    POST   /__admin/faults             [{"kind", "exchange"?, "symbol"?, ...}] replaces the fault list
    DELETE /__admin/faults             clears it
    GET    /__admin/limits             {"enforce": bool, "exchanges": {name: {"usage", "banned_for_s", "bans"}}}
    POST   /__admin/limits             {"enforce": bool?, "reset": bool?} switches enforcement, forgets usage/bans

Fault kinds (what real venues do now and then; docs/emulator.md says what ccxt makes of each).
Every fault may be scoped by `exchange` and `symbol` (the base, e.g. "BTC") and limited to
`count` requests. `endpoint` is "candles" (only OHLCV requests) or "any"; a fault with a `symbol`
only ever matches candle requests of that symbol.

| kind              | effect                                              | endpoint | count     |
|-------------------|-----------------------------------------------------|----------|-----------|
| ohlc_inconsistent | high and low swapped on every candle                | candles  | unlimited |
| duplicate         | every 5th candle served twice                       | candles  | unlimited |
| gap               | every 7th candle missing                            | candles  | unlimited |
| empty_page        | the venue's valid JSON with zero candles            | candles  | unlimited |
| short_page        | valid JSON, only the (chronologically) first half   | candles  | unlimited |
| out_of_order      | the page's candles shuffled (deterministically)     | candles  | unlimited |
| outage            | no candle with open time in [`from`, `to`) exists   | candles  | unlimited |
|                   | (REST and archive alike: a real gap)                |          |           |
| malformed_json    | 200 with the body's JSON cut in half                | candles  | 1         |
| html_200          | 200 with an HTML page (a CDN/maintenance page)      | candles  | 1         |
| empty_body        | 200 with an empty body                              | candles  | 1         |
| timeout           | waits `seconds` (default 30) before answering       | candles  | 1         |
| http_error        | answers `status` (default 500); 418/429 with the    | any      | 1         |
|                   | venue's rate-limit body and `retry_after` seconds   |          |           |
| delay             | each request waits `seconds` (default 1) first      | any      | unlimited |
| archive_missing   | the archive file (and its CHECKSUM) is a 404        | archive  | unlimited |
| archive_corrupt   | the zip's bytes altered: its CHECKSUM no longer fits| archive  | unlimited |

Archive faults take `symbol`, `interval` and `period` ("2024-09" or "2024-09-03") as scopes.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from candleflow.emulator.archive import PREFIX as ARCHIVE_PREFIX
from candleflow.emulator.archive import BinanceArchive
from candleflow.emulator.feargreed import PATH as FEAR_GREED_PATH
from candleflow.emulator.feargreed import FearGreedIndex
from candleflow.emulator.limits import RateLimits
from candleflow.emulator.market_data import CandleSource, EmulatorConfig, load_config
from candleflow.emulator.render import encode_json, expand_pages
from candleflow.emulator.venues import VENUES, BadRequest, Reply

# each venue's own body for "too many requests", so ccxt maps it to RateLimitExceeded
RATE_LIMITED = {
    "binance": {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."},
    # Advanced Trade's gateway answers a 429 with an HTML page, not JSON
    # (github.com/coinbase-samples/advanced-trade-sdk-go/issues/18): ccxt then maps the status
    "coinbase": "<html><head><title>Coinbase</title><meta name=\"robots\" content=\"noindex\"></head>"
                "<body><h1>429 Too Many Requests</h1></body></html>",
    "kraken": {"error": ["EAPI:Rate limit exceeded"]},
    "bybit": {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": 0},
    "okx": {"code": "50011", "msg": "Too Many Requests", "data": []},
}
DATA_KINDS = ("ohlc_inconsistent", "duplicate", "gap", "outage")          # change the candles themselves
PAGE_KINDS = ("empty_page", "short_page", "out_of_order")                 # change the served page
BODY_KINDS = ("malformed_json", "html_200", "empty_body")                 # replace a 200's body
ARCHIVE_KINDS = ("archive_missing", "archive_corrupt")
FAULT_KINDS = (*DATA_KINDS[:3], "http_error", "delay", *PAGE_KINDS, "outage", *BODY_KINDS, "timeout",
               *ARCHIVE_KINDS)
COUNT_DEFAULT_ONE = ("http_error", "timeout", *BODY_KINDS)
_COMMON = {"kind", "exchange", "symbol", "count", "endpoint"}
_FIELDS = {"http_error": {"status", "retry_after"}, "delay": {"seconds"}, "timeout": {"seconds"},
           "outage": {"from", "to"}, "archive_missing": {"interval", "period"},
           "archive_corrupt": {"interval", "period"}}
CDN_PAGE = ("<!DOCTYPE html><html><head><title>Service Temporarily Unavailable</title></head><body>"
            "<h1>We'll be back soon</h1><p>The system is under maintenance. Please try again later.</p>"
            "</body></html>")


class Clock:
    """The emulated "now": real time, or an instant replayed forward from when the server started."""

    def __init__(self, spec: str = "real"):
        self.spec = spec
        if spec == "real":
            self._origin = None
        else:
            start = _instant(spec)
            self._origin = (start, time.monotonic())

    def now_ms(self) -> int:
        if self._origin is None:
            return int(time.time() * 1000)
        origin_ms, origin_mono = self._origin
        return origin_ms + int((time.monotonic() - origin_mono) * 1000)


def _instant(value: str) -> int:
    """An ISO instant (naive = UTC) in ms."""
    start = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return int(start.timestamp() * 1000)


class Faults:
    """The active fault list: validated on `set`, consulted per request, thread-safe."""

    def __init__(self, symbols=None):
        self._lock = threading.Lock()
        self._faults: list[dict] = []
        self.symbols = set(symbols) if symbols is not None else None
        self.served: Counter[str] = Counter()   # faulty answers per exchange

    # validation ----------------------------------------------------------------------------
    def _validate(self, i: int, fault) -> dict:
        where = f"fault[{i}]"
        if not isinstance(fault, dict):
            raise ValueError(f"{where}: must be an object like {{\"kind\": \"gap\", \"exchange\": \"binance\"}}")
        kind = fault.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"{where}.kind: {kind!r} is unknown; use one of {', '.join(FAULT_KINDS)}")
        unknown = set(fault) - _COMMON - _FIELDS.get(kind, set())
        if unknown:
            allowed = sorted(_COMMON | _FIELDS.get(kind, set()))
            raise ValueError(f"{where}.{sorted(unknown)[0]}: not a field of {kind!r} faults; use {', '.join(allowed)}")
        f = dict(fault)
        exchange = f.get("exchange")
        if exchange is not None and exchange not in VENUES:
            raise ValueError(f"{where}.exchange: {exchange!r} is unknown; use one of {', '.join(VENUES)} (or omit it: all)")
        if kind in ARCHIVE_KINDS and exchange not in (None, "binance"):
            raise ValueError(f"{where}.exchange: {kind} applies to the binance archive only; use 'binance' or omit it")
        symbol = f.get("symbol")
        if symbol is not None and (not isinstance(symbol, str) or (self.symbols is not None and symbol not in self.symbols)):
            raise ValueError(f"{where}.symbol: {symbol!r} is unknown; use a base symbol such as 'BTC' (or omit it: all)")
        count = f.get("count")
        if count is None and kind in COUNT_DEFAULT_ONE:
            f["count"] = 1
        elif count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"{where}.count: {count!r} must be a whole number >= 1 (or omit it)")
        endpoint = f.setdefault("endpoint", "any" if kind in ("http_error", "delay") else
                                "archive" if kind in ARCHIVE_KINDS else "candles")
        if kind not in ARCHIVE_KINDS and endpoint not in ("candles", "any"):
            raise ValueError(f"{where}.endpoint: {endpoint!r} must be 'candles' or 'any'")
        if kind == "http_error":
            status = f.setdefault("status", 500)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError(f"{where}.status: {status!r} must be an HTTP error status 400..599")
        if kind in ("http_error", "delay", "timeout"):
            name = "retry_after" if kind == "http_error" else "seconds"
            value = f.get(name, {"http_error": 1, "delay": 1, "timeout": 30}[kind])
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{where}.{name}: {value!r} must be a number of seconds >= 0")
            f[name] = value
        if kind == "outage":
            for name in ("from", "to"):
                if name not in f:
                    raise ValueError(f"{where}.{name}: required for outage (an ISO instant, e.g. 2024-10-20T03:00:00Z)")
                try:
                    f[f"_{name}_ms"] = _instant(f[name])
                except (TypeError, ValueError):
                    raise ValueError(f"{where}.{name}: {f[name]!r} is not an ISO instant") from None
            if f["_from_ms"] >= f["_to_ms"]:
                raise ValueError(f"{where}.to: must be after from ({f['from']} .. {f['to']})")
        return f

    def set(self, faults: list[dict]) -> None:
        checked = [self._validate(i, fault) for i, fault in enumerate(faults)]
        with self._lock:
            self._faults = checked

    def list(self) -> list[dict]:
        with self._lock:
            return [{k: v for k, v in f.items() if not k.startswith("_")} for f in self._faults]

    # matching ------------------------------------------------------------------------------
    def _take(self, exchange: str, symbol: str | None, kinds: tuple[str, ...], *, spend: bool = True,
              **scope) -> list[dict]:
        """Faults of `kinds` matching this request; spends one of each one's `count`.
        `symbol` None = not a candle request."""
        out = []
        with self._lock:
            for f in self._faults:
                if f["kind"] not in kinds or f.get("exchange") not in (None, exchange):
                    continue
                if f.get("count") is not None and f["count"] <= 0:
                    continue
                if f["endpoint"] == "candles" and symbol is None:
                    continue
                if f.get("symbol") is not None and f["symbol"] != symbol:
                    continue
                if any(f.get(k) is not None and f[k] != v for k, v in scope.items()):
                    continue
                if spend and f.get("count") is not None:
                    f["count"] -= 1
                out.append(dict(f))
        return out

    def before_request(self, exchange: str, symbol: str | None = None) -> Reply | None:
        """Faults that act before the venue answers: delay, timeout, http_error."""
        for fault in self._take(exchange, symbol, ("delay", "timeout")):
            time.sleep(float(fault["seconds"]))
        for fault in self._take(exchange, symbol, ("http_error",))[:1]:
            self.served[exchange] += 1
            status = int(fault["status"])
            retry = {"Retry-After": str(fault.get("retry_after", 1))}
            if status in (418, 429):
                body = RATE_LIMITED[exchange]
                if status == 418 and exchange == "binance":
                    body = {"code": -1003, "msg": "Way too many requests; IP(127.0.0.1) banned. "
                                                  "Please use the websocket for live updates to avoid bans."}
                return Reply(status, body, retry)
            # gateways answer 5xx with a plain page, not the API's JSON
            return Reply(status, f"<html><body><h1>{status} emulated fault</h1></body></html>", retry if status == 503 else None)
        return None

    def after_response(self, exchange: str, symbol: str, reply: Reply, venue) -> Reply:
        """Faults that alter a candle request's 200 answer: the page's candles, then its body."""
        if reply.status != 200:
            return reply
        page = self._take(exchange, symbol, PAGE_KINDS)
        if page:
            reply.body = expand_pages(reply.body)  # the rendered page as plain rows, to edit
        candles = venue.candle_list(reply.body) if page else None
        if candles is not None:
            self.served[exchange] += 1
            for fault in page:
                if fault["kind"] == "empty_page":
                    candles[:] = []
                elif fault["kind"] == "short_page":
                    half = len(candles) // 2
                    candles[:] = candles[len(candles) - half:] if venue.newest_first else candles[:half]
                elif fault["kind"] == "out_of_order" and len(candles) > 1:
                    first = candles[0][0] if isinstance(candles[0], list) else json.dumps(candles[0])
                    seed = zlib.crc32(f"{exchange}|{symbol}|{first}".encode())
                    order = np.random.default_rng(seed).permutation(len(candles))
                    if (order == np.arange(len(candles))).all():
                        order = order[::-1]
                    candles[:] = [candles[j] for j in order]
        body = self._take(exchange, symbol, BODY_KINDS)
        if body:
            self.served[exchange] += 1
            kind = body[0]["kind"]
            if kind == "malformed_json":
                text = encode_json(reply.body)
                return Reply(200, text[: max(1, len(text) // 2)], {"Content-Type": "application/json"})
            if kind == "html_200":
                return Reply(200, CDN_PAGE)
            return Reply(200, b"", {"Content-Type": "application/json"})
        return reply

    def apply_to_candles(self, exchange: str, symbol: str, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return rows
        for fault in self._take(exchange, symbol, DATA_KINDS):
            index = np.arange(len(rows))
            if fault["kind"] == "ohlc_inconsistent":
                rows = rows.copy()
                rows[:, [2, 3]] = rows[:, [3, 2]]
            elif fault["kind"] == "duplicate":
                rows = np.repeat(rows, np.where(index % 5 == 0, 2, 1), axis=0)
            elif fault["kind"] == "gap":
                rows = rows[(rows[:, 0] // 60_000).astype(np.int64) % 7 != 0]
            elif fault["kind"] == "outage":
                rows = rows[(rows[:, 0] < fault["_from_ms"]) | (rows[:, 0] >= fault["_to_ms"])]
        return rows

    def outages(self, exchange: str, symbol: str) -> list[tuple[int, int]]:
        """[from, to) windows of the outages that cover this symbol (for the archive)."""
        return [(f["_from_ms"], f["_to_ms"]) for f in self._take(exchange, symbol, ("outage",), spend=False)]

    def archive(self, symbol: str, interval: str, period: str) -> list[str]:
        return [f["kind"] for f in self._take("binance", symbol, ARCHIVE_KINDS, interval=interval, period=period)]


class EmulatorServer:
    """The emulator in-process (tests) or as `python -m candleflow.emulator` (the local stack)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clock: str = "real",
                 config: EmulatorConfig | None = None, enforce_limits: bool = True):
        self.config = config or load_config()
        self.clock = Clock(clock)
        self.faults = Faults(self.config.symbols)
        self.source = CandleSource(self.config)
        self.venues = {name: cls(self.config, self.source, self.clock.now_ms, self.faults)
                       for name, cls in VENUES.items() if name in self.config.exchanges}
        self.routes = {name: venue.routes() for name, venue in self.venues.items()}
        self.limits = RateLimits(self.config.rate_limits, self.clock.now_ms, enforce=enforce_limits)
        self.archive = (BinanceArchive(self.venues["binance"], self.faults, self.clock.now_ms, self.config.archive)
                        if "binance" in self.venues else None)
        self.fear_greed = FearGreedIndex(self.clock.now_ms)   # alternative.me's /fng/ (not an exchange)
        self.stats: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = {name: Counter() for name in self.venues}
        self._stats_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"emulator": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def count(self, key: str, exchange: str | None = None, outcome: str = "requests") -> None:
        with self._stats_lock:
            if key:
                self.stats[key] += 1
            if exchange in self.outcomes:
                self.outcomes[exchange][outcome] += 1

    def dispatch(self, method: str, path: str, query: dict, body: bytes) -> Reply:
        if path.startswith("/__admin/"):
            return self._admin(method, path[len("/__admin/"):], body)
        if path.rstrip("/") == FEAR_GREED_PATH:
            self.count("fear_greed")
            return self.fear_greed.serve(method, query)
        if self.archive is not None and path.startswith(ARCHIVE_PREFIX + "/"):
            self.count("binance-archive")
            return self.archive.serve(method, path)
        _, exchange, *rest = path.split("/", 2) + [""]
        sub = "/" + (rest[0] if rest else "")
        routes = self.routes.get(exchange)
        if routes is None:
            return Reply(404, {"error": f"unknown exchange {exchange!r}; use /<{'|'.join(self.routes)}>/..."})
        handler, args = _route(routes, sub.rstrip("/"))
        if handler is None or method != "GET":
            return Reply(404, {"error": f"{exchange}: no such endpoint {method} {sub}"})
        pattern = _pattern(routes, sub) if args else sub.rstrip("/")
        self.count(f"{exchange} {sub if not args else pattern}", exchange)
        # the exchange's gateway meters first: a refused request never reaches the API
        verdict = self.limits.check(exchange, pattern, query)
        if verdict.reply is not None:
            self.count("", exchange, verdict.outcome)
            return verdict.reply
        reply = self._answer(exchange, pattern, query, args, handler)
        if verdict.headers:
            reply.headers = {**(reply.headers or {}), **verdict.headers}
        return reply

    def _answer(self, exchange, pattern, query, args, handler) -> Reply:
        venue = self.venues[exchange]
        symbol = venue.candle_symbol(pattern, query, args)
        served = self.faults.served[exchange]
        try:
            reply = self.faults.before_request(exchange, symbol)
            if reply is None:
                try:
                    reply = handler(query, *args)
                except BadRequest as exc:
                    reply = exc.reply
                if symbol:
                    reply = self.faults.after_response(exchange, symbol, reply, venue)
            return reply
        finally:
            if self.faults.served[exchange] != served:
                self.count("", exchange, "faults")

    def _admin(self, method: str, what: str, body: bytes) -> Reply:
        if what == "health":
            return Reply(200, {"status": "ok", "now": self.clock.now_ms(), "exchanges": list(self.venues)})
        if what == "clock":
            return Reply(200, {"now": self.clock.now_ms(), "spec": self.clock.spec})
        if what == "stats":
            with self._stats_lock:
                out: dict = dict(self.stats)
                out["exchanges"] = {name: {k: c[k] for k in ("requests", "rate_limited", "banned", "faults")}
                                    for name, c in self.outcomes.items()}
                return Reply(200, out)
        if what == "faults":
            if method == "GET":
                return Reply(200, self.faults.list())
            if method == "DELETE":
                self.faults.set([])
                return Reply(200, [])
            try:
                faults = json.loads(body or b"[]")
                self.faults.set(faults if isinstance(faults, list) else [faults])
            except (ValueError, TypeError) as exc:
                return Reply(400, {"error": str(exc)})
            return Reply(200, self.faults.list())
        if what == "limits":
            if method == "POST":
                try:
                    req = json.loads(body or b"{}")
                    if not isinstance(req, dict) or set(req) - {"enforce", "reset"}:
                        raise ValueError("body: use {\"enforce\": true|false, \"reset\": true|false}")
                    for name in ("enforce", "reset"):
                        if name in req and not isinstance(req[name], bool):
                            raise ValueError(f"{name}: {req[name]!r} must be true or false")
                except ValueError as exc:
                    return Reply(400, {"error": str(exc)})
                if "enforce" in req:
                    self.limits.enforce = req["enforce"]
                if req.get("reset"):
                    self.limits.reset()
            return Reply(200, self.limits.state())
        return Reply(404, {"error": f"no admin endpoint {what!r}"})


def _route(routes: dict, path: str):
    if path in routes:
        return routes[path], ()
    parts = path.split("/")
    for pattern, handler in routes.items():
        pp = pattern.split("/")
        if len(pp) == len(parts) and all(a == "*" or a == b for a, b in zip(pp, parts, strict=True)):
            return handler, tuple(b for a, b in zip(pp, parts, strict=True) if a == "*")
    return None, ()


def _pattern(routes: dict, path: str) -> str:
    parts = path.rstrip("/").split("/")
    for pattern in routes:
        pp = pattern.split("/")
        if len(pp) == len(parts) and all(a == "*" or a == b for a, b in zip(pp, parts, strict=True)):
            return pattern
    return path


def encode_reply(reply: Reply) -> tuple[bytes, str, dict[str, str]]:
    """The HTTP body, its Content-Type and the other headers of a reply: bytes as they are, a str
    as an HTML page, anything else as compact JSON (with rendered candle pages spliced in)."""
    headers = dict(reply.headers or {})
    if isinstance(reply.body, bytes):
        return reply.body, headers.pop("Content-Type", "application/octet-stream"), headers
    if isinstance(reply.body, str):
        return reply.body.encode(), "text/html", headers
    return encode_json(reply.body), "application/json", headers


class _Handler(BaseHTTPRequestHandler):
    emulator: EmulatorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise ~44 ms per keep-alive request

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.emulator.dispatch(method, parts.path, query, body)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator is a 500, not a dead server
            reply = Reply(500, {"error": f"emulator error: {exc!r}"})
        payload, content_type, headers = encode_reply(reply)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout fault)
            self.close_connection = True

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def log_message(self, format, *args):  # noqa: A002 - quiet: stats are in /__admin/stats
        pass
