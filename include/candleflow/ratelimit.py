"""An adaptive request limiter per exchange, shared by every collector of that exchange on a host.

One `Limiter` sits in front of every HTTP request of an async ccxt client (`install` wraps the
client's `fetch` and reads each answer through `on_rest_response`). Its state lives in a small
JSON file per exchange under the state directory (include/config/budgets.yaml `state_dir`),
read-modify-written under an exclusive `flock`, so concurrent Airflow tasks — separate processes
— spend one budget between them instead of one each. (ccxt's own throttle lives in one client;
Airflow pools bound how many tasks touch an exchange, this bounds how fast they go together.)

What it does with a request:

- **pace**: each metered bucket of the exchange's published limit
  (budgets.yaml: binance weight per minute, bybit requests per 5 s, okx per endpoint per 2 s,
  coinbase per second, kraken's decaying call counter per pair) is a GCRA (virtual scheduling):
  a sustained rate of `margin × limit / window` and a burst of `(1 - margin) / 2 × limit`
  (counters: `margin × max`), so any sliding window holds at most `(1 + margin) / 2` of the limit
  (plus one request) and a counter never exceeds its maximum. Small windows (coinbase, okx) also
  check the actual send times at that share, since coroutines waking late from their slots would
  otherwise go out together. Each request reserves its slot, then sleeps until it.
  With budget `ccxt` ccxt's throttle paces and the limiter is a guard at `ccxt_guard` (95 %) of
  the published limit: ccxt's spacing sits at the limit on binance and coinbase, and with several
  requests in flight network jitter alone would push a sliding window over it.
- **steer**: binance's `X-MBX-USED-WEIGHT-1M` above `steer_at × limit`, or bybit's
  `X-Bapi-Limit-Status` below `(1 - steer_at) × limit`, means someone else spends the IP's budget
  too: every collector holds until the excess has drained (bybit: its reset timestamp).
- **429** (or bybit retCode 10006, kraken `EAPI:Rate limit exceeded`): hold for `Retry-After`
  (or one window) and halve the pace; it recovers linearly over 15 s (AIMD).
- **ban** (binance 418, bybit 403): stop the exchange for every process until the ban's
  `Retry-After` (or `ban_seconds`) has passed, alert once, then resume. The request that met the
  ban fails as ccxt raises it (a `NetworkError`): the collector's retry waits here and re-sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from candleflow.alerts import ban_payload
from candleflow.config import Budget, BudgetBucket, CollectConfig, ConfigError, load_budgets

log = logging.getLogger(__name__)

# a halved pace is back to full after this long without a refusal: long enough to stop a burst
# of refusals, short enough that one stray 429 (measured: jitter on coinbase's 1 s window) does
# not slow a whole backfill
RECOVERY_SECONDS = 15.0
LOGGED_LIMIT = 100          # windows this small also check actual send times (see Limiter._commit)
MIN_FACTOR = 0.1


def default_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / "candleflow-limiter"


@dataclass
class Stats:
    """What this process's limiter saw (the bench and the tests read it)."""

    requests: int = 0
    spent: Counter = field(default_factory=Counter)     # bucket name → cost units
    rate_limited: int = 0
    bans: int = 0
    waited_s: float = 0.0
    first_at: float | None = None
    last_at: float | None = None


class Limiter:
    """One exchange's limiter, pacing at `margin` (default: the budget's) × the published limit."""

    def __init__(self, budget: Budget, state_dir: str | os.PathLike | None = None, *, margin: float | None = None,
                 alert: Callable[[dict], None] | None = None, path_prefix: str | None = None):
        self.budget, self.alert = budget, alert
        self.margin = budget.margin if margin is None else margin
        self.exchange = budget.exchange
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / f"{self.exchange}.json"
        self.lock_path = self.state_dir / f"{self.exchange}.lock"
        # in emulator mode every route is served under /<exchange>/...
        self.path_prefix = path_prefix if path_prefix is not None else f"/{self.exchange}/"
        self.stats = Stats()

    # --- the shared state ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    state = json.loads(self.path.read_text() or "{}")
                except (FileNotFoundError, ValueError):
                    state = {}
                state.setdefault("tat", {})
                yield state
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reset(self) -> None:
        with self._locked() as state:
            state.clear()
            state["tat"] = {}

    def snapshot(self) -> dict:
        with self._locked() as state:
            return json.loads(json.dumps(state))

    @staticmethod
    def _factor(state: dict, now: float) -> float:
        factor, at = state.get("factor", 1.0), state.get("factor_at", now)
        return min(1.0, factor + (1 - MIN_FACTOR) * max(0.0, now - at) / RECOVERY_SECONDS)

    # --- requests -------------------------------------------------------------------------------
    def _route(self, url: str) -> tuple[str, dict]:
        parts = urlsplit(url)
        path = parts.path
        if self.path_prefix and path.startswith(self.path_prefix):
            path = path[len(self.path_prefix) - 1:]
        return path, dict(parse_qsl(parts.query))

    def _charges(self, url: str) -> list[tuple[str, BudgetBucket, float]]:
        path, query = self._route(url)
        out = []
        for bucket in self.budget.buckets:
            cost = bucket.cost(path)
            if cost is None:
                continue
            key = bucket.name
            if bucket.per_endpoint:
                key += "|" + path
            if bucket.per_query:
                key += "|" + query.get(bucket.per_query, "")
            out.append((key, bucket, cost))
        return out

    def _reserve(self, url: str, now: float) -> tuple[float, bool]:
        """(seconds to wait, whether a slot was reserved). Blocked by a hold or ban: nothing is
        reserved and the caller asks again when it ends; otherwise the slot is taken and the
        caller sends once the wait is over."""
        charges = self._charges(url)
        with self._locked() as state:
            blocked = self._blocked(state, [key for key, _, _ in charges])
            if blocked > now:
                return blocked - now, False
            factor = self._factor(state, now)
            scoped = state.get("factors", {})
            send_at = now
            plans = []
            for key, bucket, cost in charges:
                own = self._factor({"factor": scoped[key][0], "factor_at": scoped[key][1]}, now) if key in scoped else 1.0
                rate = bucket.rate * self.margin * min(factor, own)
                burst = (self.margin if bucket.type == "counter" else (1 - self.margin) / 2) * bucket.limit
                tat = max(state["tat"].get(key, 0.0), now)
                # GCRA: the request may go once the bucket's theoretical arrival time, minus the
                # burst tolerance, is reached
                send_at = max(send_at, tat - burst / rate)
                plans.append((key, rate, cost))
            for key, rate, cost in plans:
                state["tat"][key] = max(state["tat"].get(key, 0.0), send_at) + cost / rate
            return send_at - now, True

    async def acquire(self, url: str) -> None:
        """Wait until this request may be sent (its budget slot, and no hold or ban in force)."""
        while True:
            wait, reserved = self._reserve(url, time.time())
            if wait > 0:
                self.stats.waited_s += wait
                await asyncio.sleep(wait)
            if reserved:
                break
        # the slot is ours; send once no hold or ban is in force and the actual send times allow it
        while (delay := self._commit(url)) is not None:
            self.stats.waited_s += delay
            await asyncio.sleep(delay)
        self.stats.requests += 1
        for _key, bucket, cost in self._charges(url):
            self.stats.spent[bucket.name] += cost
        stamp = time.time()
        self.stats.first_at = self.stats.first_at or stamp
        self.stats.last_at = stamp

    def acquire_sync(self, url: str) -> None:
        """`acquire` for a synchronous ccxt client (a thread may block)."""
        while True:
            wait, reserved = self._reserve(url, time.time())
            if wait > 0:
                self.stats.waited_s += wait
                time.sleep(wait)
            if reserved:
                break
        while (delay := self._commit(url)) is not None:
            self.stats.waited_s += delay
            time.sleep(delay)
        self.stats.requests += 1
        for _key, bucket, cost in self._charges(url):
            self.stats.spent[bucket.name] += cost

    def _commit(self, url: str) -> float | None:
        """Record the send now, or say how long to wait first. Besides holds and bans, a small window
        (at most LOGGED_LIMIT units: coinbase's 10/s, okx's per endpoint) also checks the *actual*
        send times: coroutines that wake late from their reserved slots would otherwise go out
        together and crowd a window the exchange counts exactly (measured: coinbase and okx 429s
        on a loaded machine)."""
        now = time.time()
        logged = [(key, bucket, cost) for key, bucket, cost in self._charges(url)
                  if bucket.type == "window" and bucket.limit <= LOGGED_LIMIT]
        with self._locked() as state:
            blocked = self._blocked(state, [key for key, _, _ in self._charges(url)])
            if blocked > now:
                return blocked - now
            logs = state.setdefault("log", {})
            wait = 0.0
            for key, bucket, cost in logged:
                log_ = [e for e in logs.get(key, []) if e[0] > now - bucket.seconds]
                logs[key] = log_
                cap = max(cost, (1 + self.margin) / 2 * bucket.limit)
                excess = sum(c for _, c in log_) + cost - cap
                for t, c in log_:       # oldest first: when enough of the window has expired
                    if excess <= 0:
                        break
                    excess -= c
                    wait = max(wait, t + bucket.seconds - now)
            if wait > 0:
                return wait
            for key, _bucket, cost in logged:
                logs[key].append([now, cost])
            return None

    # --- answers --------------------------------------------------------------------------------
    def observe(self, url: str, status: int, headers: dict | None, body: str | None) -> None:
        """Steer by what the exchange said about its limit (called for every answer)."""
        headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        now = time.time()
        retry_after = _seconds(headers.get("retry-after"))
        if status in self.budget.ban_statuses:
            self._banned(now, retry_after or self.budget.ban_seconds, status, url)
            return
        # only exchanges that refuse with HTTP 200 have markers: other bodies are not scanned
        refused = isinstance(body, str) and any(marker in body for marker in self.budget.refusal_markers)
        if status == 429 or refused:
            self._refused(now, retry_after, url, _seconds(headers.get("x-bapi-limit-reset-timestamp")))
            return
        hold = self._steer(url, headers, now)
        if hold:
            with self._locked() as state:
                self._hold(state, url, hold)

    # --- holds ------------------------------------------------------------------------------------
    def _scope(self, url: str) -> list[str] | None:
        """Whom a refusal or a steer of this request holds: None = every request of the exchange
        (the request spends its first bucket, the IP-wide one: spot weight, bybit's IP budget);
        otherwise only the buckets it spends (binance's futures routes, okx's per-instrument
        derivatives), which the exchange meters apart: a futures hold must not stop spot candles."""
        charges = self._charges(url)
        if not charges or any(bucket is self.budget.buckets[0] for _, bucket, _ in charges):
            return None
        return [key for key, _, _ in charges]

    def _hold(self, state: dict, url: str, until: float) -> None:
        scope = self._scope(url)
        if scope is None:
            state["hold_until"] = max(state.get("hold_until", 0.0), until)
            return
        holds = state.setdefault("holds", {})
        for key in scope:
            holds[key] = max(holds.get(key, 0.0), until)

    @staticmethod
    def _blocked(state: dict, keys: list[str]) -> float:
        """Until when a request spending `keys` must wait: a ban, an exchange-wide hold, or a hold of one of its buckets."""
        holds = state.get("holds", {})
        return max(state.get("banned_until", 0.0), state.get("hold_until", 0.0), *(holds.get(k, 0.0) for k in keys))

    def _steer(self, url: str, headers: dict, now: float) -> float | None:
        budget = self.budget
        # our own pacing puts at most (1 + margin) / 2 of the limit in a window: more is someone else
        share = max(budget.steer_at, (1 + self.margin) / 2)
        if "x-mbx-used-weight-1m" in headers:
            # the weight of the limit that metered this request: spot's 6000 or futures' 2400 a minute
            path, _ = self._route(url)
            minute = [b for b in budget.buckets if b.type == "window" and b.seconds == 60 and b.cost(path) is not None]
            used = _seconds(headers["x-mbx-used-weight-1m"]) or 0.0
            excess = used - share * minute[0].limit if minute else 0.0
            if excess > 0:
                return now + excess / minute[0].rate   # until the window has shed the excess
        if "x-bapi-limit-status" in headers:
            limit = _seconds(headers.get("x-bapi-limit")) or budget.buckets[0].limit
            remaining = _seconds(headers["x-bapi-limit-status"])
            if remaining is not None and remaining < (1 - share) * limit:
                reset = (_seconds(headers.get("x-bapi-limit-reset-timestamp")) or 0.0) / 1000.0
                return max(reset, now + 1.0 / budget.buckets[0].rate)
        return None

    def _refused(self, now: float, retry_after: float | None, url: str, reset_ms: float | None = None) -> None:
        self.stats.rate_limited += 1
        windows = [b.seconds for b in self.budget.buckets if b.type == "window"]
        if retry_after is not None:
            wait = retry_after
        elif reset_ms:                      # bybit: when a slot frees
            wait = max(0.0, reset_ms / 1000.0 - now)
        else:                               # okx, coinbase: one window; kraken's counter: one decay step
            wait = min(windows) if windows else 1.0
        scope = self._scope(url)
        with self._locked() as state:
            self._hold(state, url, now + wait)
            if scope is None:
                state["factor"] = max(MIN_FACTOR, self._factor(state, now) / 2)
                state["factor_at"] = now
            else:   # only the refused route's buckets slow down
                factors = state.setdefault("factors", {})
                for key in scope:
                    old = factors.get(key)
                    current = self._factor({"factor": old[0], "factor_at": old[1]}, now) if old else 1.0
                    factors[key] = [max(MIN_FACTOR, current / 2), now]
            state["refusals"] = state.get("refusals", 0) + 1
        log.warning("%s refused a request (rate limited): every collector %s holds %.1f s and halves its pace (%s)",
                    self.exchange, "of this exchange" if scope is None else f"of {', '.join(scope)}", wait, url)

    def _banned(self, now: float, seconds: float, status: int, url: str) -> None:
        until = now + seconds
        with self._locked() as state:
            new = state.get("banned_until", 0.0) < until - 1.0   # not a ban another collector already saw
            state["banned_until"] = max(state.get("banned_until", 0.0), until)
            state["factor"] = max(MIN_FACTOR, self._factor(state, now) / 2)
            state["factor_at"] = now
            if new:
                state["bans"] = state.get("bans", 0) + 1
        if not new:
            return
        self.stats.bans += 1
        payload = ban_payload(self.exchange, seconds, status, url)
        log.error(payload["text"])
        if self.alert is not None:
            try:
                self.alert(payload)
            except Exception as exc:  # noqa: BLE001 - a broken alert channel must not stop the wait
                log.error("ban alert could not be delivered: %s", exc)

    # --- ccxt -------------------------------------------------------------------------------------
    def install(self, client) -> None:
        """Route every HTTP request of the ccxt `client` (async or sync) through this limiter."""
        import inspect

        orig_fetch, orig_on_response = client.fetch, client.on_rest_response

        if inspect.iscoroutinefunction(orig_fetch):
            async def fetch(url, method="GET", headers=None, body=None):
                await self.acquire(url)
                return await orig_fetch(url, method, headers, body)
        else:
            def fetch(url, method="GET", headers=None, body=None):
                self.acquire_sync(url)
                return orig_fetch(url, method, headers, body)

        def on_rest_response(code, reason, url, method, headers, body, request_headers, request_body):
            self.observe(url, code, headers, body)
            return orig_on_response(code, reason, url, method, headers, body, request_headers, request_body)

        client.fetch, client.on_rest_response = fetch, on_rest_response
        client._candleflow_limiter = self


def _seconds(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def limiter_for(exchange: str, cfg: CollectConfig, *, alert: Callable[[dict], None] | None = None,
                state_dir: str | os.PathLike | None = None, mode: str = "emulator") -> Limiter:
    """The limiter of `exchange` for `cfg.budget`: pacing at the published budget, or (ccxt)
    steering and refusal handling behind ccxt's own throttle."""
    budgets, configured_dir, ccxt_guard = load_budgets()
    if exchange not in budgets:
        raise ConfigError(f"include/config/budgets.yaml: exchanges.{exchange} is missing; add its published limit")
    # ccxt budget: ccxt's spacing paces, the limiter only guards at `ccxt_guard` of the published
    # limit (ccxt's spacing sits at it on binance and coinbase; with requests in flight, jitter
    # alone would push a window over)
    return Limiter(budgets[exchange], state_dir or configured_dir,
                   margin=None if cfg.budget == "published" else ccxt_guard, alert=alert,
                   path_prefix=None if mode == "emulator" else "")
