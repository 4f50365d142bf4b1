"""Each exchange's published REST rate limits, enforced the way the exchange enforces them, so a
client-side limiter is tested against the real rules (figures and sources: `rate_limits:` in
include/config/emulator.yaml; docs/emulator.md).

- binance: request *weight* per rolling minute per IP; every response carries
  `X-MBX-USED-WEIGHT-1M`; over the limit a 429 with `Retry-After` (seconds until the weight fits);
  requests that keep coming before that instant are "ignored 429s" and, past a threshold, earn a
  418 IP ban with `Retry-After` = the ban (2 min, doubling per repeat, at most 3 days).
- bybit: requests per rolling 5 s per IP; `X-Bapi-Limit`, `X-Bapi-Limit-Status` (remaining) and
  `X-Bapi-Limit-Reset-Timestamp` on every response; over the limit `retCode` 10006 "Too many
  visits!"; continued abuse earns a 403 "access too frequent" ban (10 min).
- okx: requests per rolling 2 s per endpoint per IP; over it HTTP 429 with code 50011.
- coinbase: public (Advanced Trade) requests per rolling second per IP; over it HTTP 429
  RATE_LIMIT_EXCEEDED. The v2 "track" endpoints ccxt calls in load_markets have their own hourly cap.
- kraken: a call counter per IP (per IP and pair for OHLC/Trades) that each call raises by its
  cost and that decays every second; over the maximum `EAPI:Rate limit exceeded`.

Windows slide (exact timestamps, not fixed buckets), state is keyed by exchange (the emulator
sees one client IP) and guarded by one lock per exchange.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from candleflow.emulator.venues import Reply

_HTTP_403 = "<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1><p>access too frequent</p></body></html>"


class Window:
    """Sum of costs spent in the last `seconds` (a sliding window of exact timestamps)."""

    def __init__(self, limit: float, seconds: float):
        self.limit, self.seconds = float(limit), float(seconds)
        self._events: deque[tuple[float, float]] = deque()
        self._used = 0.0

    def used(self, now: float) -> float:
        horizon = now - self.seconds
        while self._events and self._events[0][0] <= horizon:
            self._used -= self._events.popleft()[1]
        if not self._events:
            self._used = 0.0
        return self._used

    def fits(self, now: float, cost: float) -> bool:
        return self.used(now) + cost <= self.limit

    def spend(self, now: float, cost: float) -> None:
        self._events.append((now, cost))
        self._used += cost

    def free_at(self, now: float, cost: float) -> float:
        """The instant at which `cost` more fits."""
        excess = self.used(now) + cost - self.limit
        if excess <= 0:
            return now
        for t, c in self._events:
            excess -= c
            if excess <= 0:
                return t + self.seconds
        return now + self.seconds


class Counter:
    """Kraken's call counter: +cost per call, -decay per second, refused above `maximum`."""

    def __init__(self, maximum: float, decay: float):
        self.maximum, self.decay = float(maximum), float(decay)
        self.value, self._at = 0.0, 0.0

    def level(self, now: float) -> float:
        self.value = max(0.0, self.value - (now - self._at) * self.decay)
        self._at = now
        return self.value

    def fits(self, now: float, cost: float) -> bool:
        return self.level(now) + cost <= self.maximum

    def spend(self, now: float, cost: float) -> None:
        self.level(now)
        self.value += cost

    def free_at(self, now: float, cost: float) -> float:
        return now + max(0.0, self.level(now) + cost - self.maximum) / self.decay


@dataclass
class Verdict:
    reply: Reply | None              # the refusal, or None to serve the request
    headers: dict[str, str] = field(default_factory=dict)  # to add to whatever is served
    outcome: str = "ok"              # ok | rate_limited | banned


class Ban:
    """Escalation shared by binance (418) and bybit (403): requests that keep coming while a
    refusal's wait is not over count as ignored; `after_ignored` of them earn a ban."""

    def __init__(self, spec: dict | None):
        spec = spec or {}
        self.after_ignored = spec.get("after_ignored")
        self.seconds = float(spec.get("seconds", 120))
        self.max_seconds = float(spec.get("max_seconds", self.seconds))
        self.factor = float(spec.get("factor", 1))
        self.bans = 0
        self.until = 0.0         # banned until (monotonic)
        self.wait_until = 0.0    # the last refusal said: wait until
        self.ignored = 0

    def banned(self, now: float) -> float:
        return max(0.0, self.until - now)

    def refused(self, now: float, wait_until: float) -> float | None:
        """Record a refusal; returns the ban length if this refusal turns into a ban."""
        if self.after_ignored is not None and now < self.wait_until:
            self.ignored += 1
            if self.ignored >= int(self.after_ignored):
                length = min(self.seconds * self.factor ** self.bans, self.max_seconds)
                self.bans += 1
                self.until, self.ignored = now + length, 0
                return length
        else:
            self.ignored = 0
        self.wait_until = max(self.wait_until, wait_until)
        return None


class ExchangeLimits:
    """One exchange's limits; `check` spends the request's cost or refuses it."""

    def __init__(self, name: str, spec: dict, wall_ms):
        self.name, self.spec, self.wall_ms = name, spec, wall_ms
        self.lock = threading.Lock()
        self.ban = Ban(spec.get("ban"))
        self.windows: dict[tuple, Window | Counter] = {}

    # cost and bucket per request -----------------------------------------------------------
    def _buckets(self, pattern: str, query: dict) -> list[tuple[tuple, float, dict]]:
        """[(key, cost, bucket spec)] this request spends."""
        out = []
        for i, bucket in enumerate(self.spec.get("buckets", [])):
            endpoints = bucket.get("endpoints", "*")
            if endpoints != "*" and not any(pattern == e or pattern.startswith(e.rstrip("*"))
                                            if e.endswith("*") else pattern == e for e in endpoints):
                continue
            if any(pattern.startswith(x.rstrip("*")) for x in bucket.get("except", [])):
                continue
            weights = bucket.get("weights", {})
            cost = float(weights.get(pattern, weights.get("default", 1)))
            key: tuple = (i,)
            if bucket.get("per_endpoint"):
                key += (pattern,)
            per = bucket.get("per_query")
            if per and pattern in bucket.get("per_query_endpoints", [pattern]):
                key += (query.get(per, ""),)
            out.append((key, cost, bucket))
        return out

    def _state(self, key: tuple, bucket: dict) -> Window | Counter:
        state = self.windows.get(key)
        if state is None:
            if bucket.get("type") == "counter":
                state = Counter(bucket["max"], bucket["decay_per_second"])
            else:
                state = Window(bucket["limit"], bucket["seconds"])
            self.windows[key] = state
        return state

    def check(self, pattern: str, query: dict) -> Verdict:
        with self.lock:
            now = time.monotonic()
            banned = self.ban.banned(now)
            buckets = [(self._state(k, b), c, b) for k, c, b in self._buckets(pattern, query)]
            if banned:
                return self._ban_reply(now, banned, buckets)
            blocked = [(s, c, b) for s, c, b in buckets if not s.fits(now, c)]
            if blocked:
                wait_until = max(s.free_at(now, c) for s, c, _ in blocked)
                length = self.ban.refused(now, wait_until)
                if length is not None:
                    return self._ban_reply(now, length, buckets)
                return self._refusal(now, wait_until, buckets, blocked)
            for s, c, _ in buckets:
                s.spend(now, c)
            return Verdict(None, self._headers(now, buckets))

    def force_ban(self, seconds: float | None = None) -> float:
        """Ban this exchange's client IP now, as continued abuse would (tests of a client's ban
        handling); `seconds` defaults to the exchange's next ban length. Returns the length."""
        with self.lock:
            now = time.monotonic()
            length = float(seconds) if seconds is not None else \
                min(self.ban.seconds * self.ban.factor ** self.ban.bans, self.ban.max_seconds)
            self.ban.bans += 1
            self.ban.until, self.ban.ignored = now + length, 0
            return length

    def usage(self) -> dict:
        with self.lock:
            now = time.monotonic()
            out = {}
            for key, state in self.windows.items():
                name = self.spec["buckets"][key[0]].get("name", str(key[0]))
                label = "/".join([name, *map(str, key[1:])])
                out[label] = round(state.used(now) if isinstance(state, Window) else state.level(now), 3)
            return {"usage": out, "banned_for_s": round(self.ban.banned(now), 3), "bans": self.ban.bans}

    # the exchange's own answers --------------------------------------------------------------
    def _headers(self, now: float, buckets) -> dict[str, str]:
        if self.name == "binance":
            used = sum(s.used(now) for s, _, b in buckets if isinstance(s, Window) and b.get("seconds") == 60)
            return {"X-MBX-USED-WEIGHT-1M": str(int(used))}
        if self.name == "bybit" and buckets:
            s, c, _ = buckets[0]
            remaining = max(0, int(s.limit - s.used(now)))
            reset = self.wall_ms() if remaining > 0 else self.wall_ms() + int((s.free_at(now, c) - now) * 1000)
            return {"X-Bapi-Limit": str(int(s.limit)), "X-Bapi-Limit-Status": str(remaining),
                    "X-Bapi-Limit-Reset-Timestamp": str(reset)}
        return {}

    def _refusal(self, now, wait_until, buckets, blocked) -> Verdict:
        headers = self._headers(now, buckets)
        retry = max(1, math.ceil(wait_until - now))
        if self.name == "binance":
            limit = int(blocked[0][0].limit)
            body = {"code": -1003, "msg": f"Too many requests; current limit of IP(127.0.0.1) is {limit} requests per "
                                          "minute. Please use WebSocket Streams for live updates to avoid polling the API."}
            return Verdict(Reply(429, body, {**headers, "Retry-After": str(retry)}), outcome="rate_limited")
        if self.name == "bybit":
            headers["X-Bapi-Limit-Status"] = "0"
            headers["X-Bapi-Limit-Reset-Timestamp"] = str(self.wall_ms() + int((wait_until - now) * 1000))
            body = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {},
                    "time": self.wall_ms()}
            return Verdict(Reply(200, body, headers), outcome="rate_limited")
        if self.name == "okx":
            return Verdict(Reply(429, {"code": "50011", "msg": "Too Many Requests", "data": []}, headers),
                           outcome="rate_limited")
        if self.name == "coinbase":
            # Advanced Trade's gateway answers 429 with an HTML page (coinbase-samples/advanced-trade-sdk-go#18);
            # the v2 API with its documented JSON error
            if blocked[0][2].get("name", "").startswith("v2"):
                body = {"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]}
            else:
                body = ("<html><head><title>Coinbase</title><meta name=\"robots\" content=\"noindex\"></head>"
                        "<body><h1>429 Too Many Requests</h1></body></html>")
            return Verdict(Reply(429, body, headers), outcome="rate_limited")
        if self.name == "kraken":
            return Verdict(Reply(200, {"error": ["EAPI:Rate limit exceeded"]}, headers), outcome="rate_limited")
        return Verdict(Reply(429, {"error": "rate limited"}, {"Retry-After": str(retry)}), outcome="rate_limited")

    def _ban_reply(self, now, length, buckets) -> Verdict:
        headers = self._headers(now, buckets)
        seconds = max(1, math.ceil(length))
        if self.name == "binance":
            until = self.wall_ms() + int(length * 1000)
            body = {"code": -1003, "msg": f"Way too many requests; IP(127.0.0.1) banned until {until}. Please use "
                                          "the websocket for live updates to avoid bans."}
            return Verdict(Reply(418, body, {**headers, "Retry-After": str(seconds)}), outcome="banned")
        return Verdict(Reply(403, _HTTP_403, headers), outcome="banned")


class RateLimits:
    """All exchanges' limits; `enforce` switches refusals off without losing the figures."""

    def __init__(self, spec: dict, wall_ms, enforce: bool = True):
        self.spec = spec or {}
        self.wall_ms = wall_ms
        self.enforce = enforce
        self.reset()

    def reset(self) -> None:
        self.exchanges = {name: ExchangeLimits(name, s, self.wall_ms) for name, s in self.spec.items()}

    def check(self, exchange: str, pattern: str, query: dict) -> Verdict:
        limits = self.exchanges.get(exchange)
        if not self.enforce or limits is None:
            return Verdict(None)
        return limits.check(pattern, query)

    def state(self) -> dict:
        return {"enforce": self.enforce,
                "exchanges": {name: limits.usage() for name, limits in self.exchanges.items()}}
