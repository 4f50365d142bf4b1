"""The emulator's HTTP server: one port, every exchange under its own path prefix
(`/binance/api/v3/klines`, `/kraken/0/public/OHLC`, …), plus an admin API under `/__admin/`:

    GET    /__admin/health             {"status": "ok", "now": <ms>}
    GET    /__admin/clock              the emulated "now"
    GET    /__admin/stats              requests served per exchange and endpoint
    POST   /__admin/faults             [{"exchange", "symbol"?, "kind", ...}] replaces the fault list
    DELETE /__admin/faults             clears it

Fault kinds (what real venues do now and then):
- `ohlc_inconsistent`: high and low swapped on every candle (a bad print);
- `duplicate`: every 5th candle served twice;
- `gap`: every 7th candle missing;
- `http_error`: the next `count` requests answer `status` (default 500);
- `delay`: each request waits `seconds` first.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from candleflow.emulator.market_data import CandleSource, EmulatorConfig, load_config
from candleflow.emulator.venues import VENUES, BadRequest, Reply

# each venue's own body for "too many requests", so ccxt maps it to RateLimitExceeded
RATE_LIMITED = {
    "binance": {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."},
    "coinbase": {"error": "RATE_LIMIT_EXCEEDED", "error_details": "Too many requests", "message": "Too many requests"},
    "kraken": {"error": ["EAPI:Rate limit exceeded"]},
    "bybit": {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": 0},
    "okx": {"code": "50011", "msg": "Too Many Requests", "data": []},
}
FAULT_KINDS = ("ohlc_inconsistent", "duplicate", "gap", "http_error", "delay")


class Clock:
    """The emulated "now": real time, or an instant replayed forward from when the server started."""

    def __init__(self, spec: str = "real"):
        self.spec = spec
        if spec == "real":
            self._origin = None
        else:
            start = datetime.fromisoformat(spec.replace("Z", "+00:00"))
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            self._origin = (int(start.timestamp() * 1000), time.monotonic())

    def now_ms(self) -> int:
        if self._origin is None:
            return int(time.time() * 1000)
        origin_ms, origin_mono = self._origin
        return origin_ms + int((time.monotonic() - origin_mono) * 1000)


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[dict] = []

    def set(self, faults: list[dict]) -> None:
        for fault in faults:
            if fault.get("kind") not in FAULT_KINDS:
                raise ValueError(f"kind: {fault.get('kind')!r} is unknown; use one of {', '.join(FAULT_KINDS)}")
            if fault.get("exchange") not in VENUES:
                raise ValueError(f"exchange: {fault.get('exchange')!r} is unknown; use one of {', '.join(VENUES)}")
        with self._lock:
            self._faults = [dict(f) for f in faults]

    def list(self) -> list[dict]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def _matching(self, exchange: str, symbol: str | None, kinds: tuple[str, ...]) -> list[dict]:
        with self._lock:
            return [f for f in self._faults if f["kind"] in kinds and f["exchange"] == exchange
                    and (f.get("symbol") in (None, symbol))]

    def before_request(self, exchange: str) -> Reply | None:
        for fault in self._matching(exchange, None, ("delay",)):
            time.sleep(float(fault.get("seconds", 1)))
        with self._lock:
            for fault in self._faults:
                if fault["kind"] == "http_error" and fault["exchange"] == exchange and fault.get("count", 1) > 0:
                    fault["count"] = fault.get("count", 1) - 1
                    status = int(fault.get("status", 500))
                    if status == 429:
                        return Reply(429, RATE_LIMITED[exchange], {"Retry-After": str(fault.get("retry_after", 1))})
                    # gateways answer 5xx with a plain page, not the API's JSON
                    return Reply(status, f"<html><body><h1>{status} emulated fault</h1></body></html>")
        return None

    def apply_to_candles(self, exchange: str, symbol: str, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return rows
        for fault in self._matching(exchange, symbol, ("ohlc_inconsistent", "duplicate", "gap")):
            index = np.arange(len(rows))
            if fault["kind"] == "ohlc_inconsistent":
                rows = rows.copy()
                rows[:, [2, 3]] = rows[:, [3, 2]]
            elif fault["kind"] == "duplicate":
                rows = np.repeat(rows, np.where(index % 5 == 0, 2, 1), axis=0)
            elif fault["kind"] == "gap":
                rows = rows[(rows[:, 0] // 60_000).astype(np.int64) % 7 != 0]
        return rows


class EmulatorServer:
    """The emulator in-process (tests) or as `python -m candleflow.emulator` (the local stack)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clock: str = "real",
                 config: EmulatorConfig | None = None):
        self.config = config or load_config()
        self.clock = Clock(clock)
        self.faults = Faults()
        self.source = CandleSource(self.config)
        self.venues = {name: cls(self.config, self.source, self.clock.now_ms, self.faults)
                       for name, cls in VENUES.items() if name in self.config.exchanges}
        self.routes = {name: venue.routes() for name, venue in self.venues.items()}
        self.stats: Counter[str] = Counter()
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

    def count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def dispatch(self, method: str, path: str, query: dict, body: bytes) -> Reply:
        if path.startswith("/__admin/"):
            return self._admin(method, path[len("/__admin/"):], body)
        _, exchange, *rest = path.split("/", 2) + [""]
        sub = "/" + (rest[0] if rest else "")
        routes = self.routes.get(exchange)
        if routes is None:
            return Reply(404, {"error": f"unknown exchange {exchange!r}; use /<{'|'.join(self.routes)}>/..."})
        handler, args = _route(routes, sub.rstrip("/"))
        if handler is None or method != "GET":
            return Reply(404, {"error": f"{exchange}: no such endpoint {method} {sub}"})
        self.count(f"{exchange} {sub if not args else _pattern(routes, sub)}")
        fault = self.faults.before_request(exchange)
        if fault is not None:
            return fault
        try:
            return handler(query, *args)
        except BadRequest as exc:
            return exc.reply

    def _admin(self, method: str, what: str, body: bytes) -> Reply:
        if what == "health":
            return Reply(200, {"status": "ok", "now": self.clock.now_ms(), "exchanges": list(self.venues)})
        if what == "clock":
            return Reply(200, {"now": self.clock.now_ms(), "spec": self.clock.spec})
        if what == "stats":
            with self._stats_lock:
                return Reply(200, dict(self.stats))
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
        if isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/html"
        else:
            payload, content_type = json.dumps(reply.body, separators=(",", ":")).encode(), "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (reply.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def log_message(self, format, *args):  # noqa: A002 - quiet: stats are in /__admin/stats
        pass
