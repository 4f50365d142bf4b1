"""Binance's public data archive (data.binance.vision): whole past months of klines in one file.

A backfill of whole past months on binance reads the monthly zip (one request instead of up to
44 REST pages for a month of 1m candles), verifies it against its `.CHECKSUM` (sha256), and falls
back to the REST API for the current month, a missing archive (404) or a file whose checksum does
not match. Offline the emulator serves the same layout under `/binance-archive/`.

    <base>/data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip(.CHECKSUM)

The CSV inside is headerless with binance's 12 kline columns; from 2025 the archive writes
open_time in microseconds, so the unit is detected per file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import urllib.error
import urllib.request
import zipfile
from datetime import UTC, datetime

log = logging.getLogger(__name__)

LIVE_BASE_URL = "https://data.binance.vision"


class ArchiveUnavailable(Exception):
    """No usable archive for that month (absent, or its checksum does not match): use REST."""


def month_url(base_url: str, market_id: str, interval: str, year: int, month: int) -> str:
    name = f"{market_id}-{interval}-{year:04d}-{month:02d}.zip"
    return f"{base_url.rstrip('/')}/data/spot/monthly/klines/{market_id}/{interval}/{name}"


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ArchiveUnavailable(f"{url}: not in the archive (404)") from None
        raise


def fetch_month(base_url: str, market_id: str, interval: str, year: int, month: int, *,
                timeout: float = 60.0) -> list[list]:
    """The month's candles as ccxt-style rows [ms, open, high, low, close, volume], checksum verified."""
    url = month_url(base_url, market_id, interval, year, month)
    body = _get(url, timeout)
    expected = _get(url + ".CHECKSUM", timeout).decode().split()[0].lower()
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise ArchiveUnavailable(f"{url}: sha256 {actual} does not match its CHECKSUM {expected}")
    rows = []
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        for name in zf.namelist():
            with zf.open(name) as fh:
                for record in csv.reader(io.TextIOWrapper(fh, "utf-8")):
                    if not record or not record[0].strip().isdigit():
                        continue  # a header line, should a file ever carry one
                    open_time = int(record[0])
                    if open_time > 10**14:  # microseconds (files from 2025 on)
                        open_time //= 1000
                    rows.append([open_time, *(float(x) for x in record[1:6])])
    rows.sort(key=lambda r: r[0])
    return rows


def whole_months(start_ms: int, end_ms: int, before_ms: int) -> list[tuple[int, int, int, int]]:
    """(year, month, month_start_ms, month_end_ms) of every calendar month inside [start, end) that
    ended before `before_ms` (the exchange's current month is never in the archive)."""
    out = []
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    year, month = start.year, start.month
    while True:
        lo = datetime(year, month, 1, tzinfo=UTC)
        hi = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        lo_ms, hi_ms = int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
        if lo_ms >= end_ms:
            break
        if lo_ms >= start_ms and hi_ms <= end_ms and hi_ms <= before_ms:
            out.append((year, month, lo_ms, hi_ms))
        year, month = (year + (month == 12), month % 12 + 1)
    return out
