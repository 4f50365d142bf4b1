"""binance's public data archive (data.binance.vision) served offline, same layout, same candles
as the emulated REST klines endpoint (same source, same basis):

    /binance-archive/data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip
    /binance-archive/data/spot/daily/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM-DD>.zip
    ... and the same paths + `.CHECKSUM` ("<sha256 hex>  <file name>\\n", sha256sum's format)

Each zip holds one headerless CSV named like the zip with binance's 12 kline columns (open_time,
open, high, low, close, volume, close_time, quote_volume, count, taker_buy_base, taker_buy_quote,
ignore), formatted exactly as the REST endpoint formats them. As on the real archive, the times
of files covering periods from 2025-01-01 are in microseconds (`archive.microseconds_from`).
A period that is not over yet (by the emulated clock), one before the pair's listing, an unknown
symbol or interval is a 404 (S3's NoSuchKey XML).
"""

from __future__ import annotations

import calendar
import hashlib
import io
import re
import threading
import zipfile
from collections import OrderedDict
from datetime import UTC, datetime

from candleflow.emulator.venues import BINANCE_INTERVALS, Binance, Reply

PREFIX = "/binance-archive"
_PATH = re.compile(r"^/data/spot/(monthly|daily)/klines/([A-Z0-9]+)/([0-9a-zA-Z]+)/"
                   r"\2-\3-(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?$")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same candles always give the same bytes


def _not_found(key: str) -> Reply:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
            f"<Message>The specified key does not exist.</Message><Key>{key}</Key></Error>")
    return Reply(404, body.encode(), {"Content-Type": "application/xml"})


def period_bounds(kind: str, period: str) -> tuple[int, int] | None:
    """[start, end) in ms of a monthly "YYYY-MM" or daily "YYYY-MM-DD" period."""
    try:
        if kind == "monthly":
            if len(period) != 7:
                return None
            year, month = int(period[:4]), int(period[5:7])
            start = datetime(year, month, 1, tzinfo=UTC)
            days = calendar.monthrange(year, month)[1]
            end_s = start.timestamp() + days * 86_400
        else:
            if len(period) != 10:
                return None
            start = datetime.fromisoformat(period).replace(tzinfo=UTC)
            end_s = start.timestamp() + 86_400
    except ValueError:
        return None
    return int(start.timestamp() * 1000), int(end_s * 1000)


class BinanceArchive:
    def __init__(self, venue: Binance, faults, now_ms, spec: dict | None = None):
        self.venue, self.faults, self.now_ms = venue, faults, now_ms
        spec = spec or {}
        micro = spec.get("microseconds_from")
        self.micro_from = (int(datetime.fromisoformat(str(micro)).replace(tzinfo=UTC).timestamp() * 1000)
                           if micro else None)
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def serve(self, method: str, path: str) -> Reply:
        key = path[len(PREFIX):].lstrip("/")
        m = _PATH.match("/" + key)
        if method not in ("GET", "HEAD") or m is None:
            return _not_found(key)
        kind, market_id, interval, period, checksum = m.groups()
        symbol = self.venue.symbol_for(market_id)
        tf = BINANCE_INTERVALS.get(interval)
        bounds = period_bounds(kind, period)
        if symbol is None or tf is None or bounds is None:
            return _not_found(key)
        start, end = bounds
        listed = self.venue.config.listed_since("binance", symbol)
        if end > self.now_ms() or listed is None or end <= listed:
            return _not_found(key)  # not published yet (period not over), or before the listing
        faults = self.faults.archive(symbol, interval, period)
        if "archive_missing" in faults:
            return _not_found(key)
        name = f"{market_id}-{interval}-{period}"
        data = self._zip(symbol, name, tf, start, end)
        if checksum:
            text = f"{hashlib.sha256(data).hexdigest()}  {name}.zip\n"
            return Reply(200, text.encode(), {"Content-Type": "text/plain"})
        if "archive_corrupt" in faults:
            data = bytearray(data)
            for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
                data[i] ^= 0xFF
            data = bytes(data)
        return Reply(200, data, {"Content-Type": "application/zip"})

    def csv(self, symbol: str, tf: int, start: int, end: int) -> str:
        """The CSV text for [start, end): the REST endpoint's rows, with only real gaps (outages)."""
        rows = self.venue.source.candles("binance", symbol, tf, start, end)
        for lo, hi in self.faults.outages("binance", symbol):
            rows = rows[(rows[:, 0] < lo) | (rows[:, 0] >= hi)]
        lines = self.venue.kline_rows(rows, tf)
        scale = 1000 if self.micro_from is not None and start >= self.micro_from else 1
        out = io.StringIO()
        for r in lines:
            r[0], r[6] = r[0] * scale, (r[6] + 1) * scale - 1 if scale != 1 else r[6]
            out.write(",".join(map(str, r)))
            out.write("\n")
        return out.getvalue()

    def _zip(self, symbol: str, name: str, tf: int, start: int, end: int) -> bytes:
        key = (symbol, name, tuple(self.faults.outages("binance", symbol)))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo(f"{name}.csv", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, self.csv(symbol, tf, start, end))
        data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return data
