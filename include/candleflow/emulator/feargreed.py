"""The Crypto Fear & Greed index (alternative.me) offline: `GET /alternative.me/fng/` answers in the
format of `https://api.alternative.me/fng/`, from a generated series (`generate()`).

    GET /alternative.me/fng/?limit=10&format=json
    {"name": "Fear and Greed Index",
     "data": [{"value": "40", "value_classification": "Fear", "timestamp": "1551157200",
               "time_until_update": "68499"}, ...],          # newest first; timestamp = day start, s
     "metadata": {"error": null}}

`limit` defaults to 1 (the latest day), 0 means every day; as on the real API, numbers are strings
and only the newest entry carries `time_until_update`. Days after the emulated clock's "now" are
not served (their index is not published yet). Only `format=json` with unix timestamps is
emulated; other formats get a 400 in the API's envelope, `metadata.error` saying why.

The series is synthetic but plausible and deterministic: a seeded AR(1) sentiment path around 50,
clipped to [5, 95], with a few days left out on purpose (`MISSING_DAYS`), because the real series
has gaps too and a consumer must treat them as gaps, not zeros. It is computed once per process
(milliseconds) rather than shipped as a file that would have to be kept equal to the generator.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache

from candleflow.emulator.venues import Reply

PATH = "/alternative.me/fng"
SEED = 20180201
FIRST_DAY = date(2023, 1, 1)
LAST_DAY = date(2025, 12, 31)
# Left out of the series: two single days and a two-day hole inside the demo window (2024-09-20 →
# 2024-10-30), so the pipeline's gap handling is exercised by `make up` as well as by the tests.
MISSING_DAYS = ("2023-06-14", "2024-03-17", "2024-10-08", "2024-10-09", "2025-02-11")
DAY_S = 86_400


def classify(value: int) -> str:
    """alternative.me's bands."""
    if value <= 25:
        return "Extreme Fear"
    if value <= 46:
        return "Fear"
    if value <= 54:
        return "Neutral"
    if value <= 75:
        return "Greed"
    return "Extreme Greed"


def generate(first: date = FIRST_DAY, last: date = LAST_DAY, seed: int = SEED,
             missing: tuple[str, ...] = MISSING_DAYS) -> list[dict]:
    """The index's entries, newest first, as the API lists them (without time_until_update)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    days = (last - first).days + 1
    shocks = rng.normal(0.0, 6.5, days)
    x, out = 0.0, []
    for i in range(days):
        x = 0.93 * x + shocks[i]          # slow-moving sentiment, as the real index
        day = first + timedelta(days=i)
        if day.isoformat() in missing:
            continue
        value = int(min(95, max(5, round(50 + x))))
        stamp = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        out.append({"value": str(value), "value_classification": classify(value), "timestamp": str(stamp)})
    return out[::-1]


@cache
def _entries() -> tuple[dict, ...]:
    # shared by every emulator of the process; serve() copies each entry it answers with
    return tuple(generate())


class FearGreedIndex:
    """Serves `generate()`'s series as of the emulated clock."""

    def __init__(self, now_ms):
        self.now_ms = now_ms
        self.entries = _entries()   # newest first

    def serve(self, method: str, query: dict) -> Reply:
        if method not in ("GET", "HEAD"):
            return Reply(404, {"error": f"fear & greed: no such endpoint {method} {PATH}/"})
        fmt = query.get("format", "json")
        if fmt != "json" or query.get("date_format"):
            return _error(f"the emulator serves format=json with unix timestamps only (got format={fmt!r}, "
                          f"date_format={query.get('date_format', '')!r})")
        try:
            limit = int(query.get("limit", 1))
        except ValueError:
            return _error(f"limit {query.get('limit')!r}: must be a whole number (0 = all days)")
        if limit < 0:
            return _error(f"limit {limit}: must be >= 0 (0 = all days)")
        now_s = self.now_ms() // 1000
        published = [dict(e) for e in self.entries if int(e["timestamp"]) <= now_s]
        data = published if limit == 0 else published[:limit]
        if data:
            next_day = (now_s // DAY_S + 1) * DAY_S
            data[0]["time_until_update"] = str(next_day - now_s)
        return Reply(200, {"name": "Fear and Greed Index", "data": data, "metadata": {"error": None}})


def _error(message: str) -> Reply:
    # the API's envelope, with the reason in metadata.error (a 400: the client asked for something unserved)
    return Reply(400, {"name": "Fear and Greed Index", "data": [], "metadata": {"error": message}})
