"""Typed access to `include/config/*.yaml`, with environment overrides.

Configuration is data: the YAML files hold every setting, and a few environment variables
(named in the YAML comments) override them so the local stack and the tests can point the
same code at their own ports. A bad value raises `ConfigError` naming the file, the field and
the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR_ENV = "CANDLEFLOW_CONFIG_DIR"
EXCHANGES = ("binance", "coinbase", "kraken", "bybit", "okx")
TIMEFRAMES = ("1m", "5m", "15m", "1h")
TIMEFRAME_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field and the fix."""


def config_dir() -> Path:
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    # include/candleflow/config.py -> include/config
    return Path(__file__).resolve().parent.parent / "config"


def config_section(file: str, name: str, known: Any, section: dict | None = None,
                   where: str | None = None) -> tuple[dict, str]:
    """A YAML section (or the given mapping) checked against the fields of the dataclass `known`,
    with the place to name in errors: unknown fields are refused, naming the known ones."""
    if section is None:
        section = load_yaml(file).get(name) or {}
        where = f"{config_dir() / file}: {name}"
    where = where or name
    fields = known.__dataclass_fields__
    unknown = set(section) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
    return section, where


def number(section: dict, key: str, where: str, kind, low: float, high: float | None, default):
    """`section[key]` (else `default`) as `kind`, in [low, high) (no upper bound when high is None);
    a ConfigError names the key and the bound otherwise."""
    value = section.get(key, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} {value!r} is not a number; e.g. {key}: {default}") from None
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ConfigError(f"{where}: {key} {value!r} must be {bound}")
    return value


def load_yaml(name: str) -> dict[str, Any]:
    path = config_dir() / name
    if not path.exists():
        raise ConfigError(f"{path}: file not found; set {CONFIG_DIR_ENV} to the folder holding {name}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _require(data: dict, key: str, where: str) -> Any:
    if key not in data or data[key] is None:
        raise ConfigError(f"{where}: field '{key}' is missing; add it (see the comments in that file)")
    return data[key]


def parse_timeframe(value: str, where: str = "timeframe") -> str:
    if value not in TIMEFRAME_MS:
        raise ConfigError(f"{where}: unknown timeframe {value!r}; use one of {', '.join(TIMEFRAMES)}")
    return value


def parse_utc(value: Any, where: str) -> datetime:
    """Parse an ISO-8601 instant; naive values are refused rather than guessed."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"{where}: {value!r} is not an ISO-8601 time; write e.g. 2024-09-20T00:00:00Z") from exc
    if dt.tzinfo is None:
        raise ConfigError(f"{where}: {value!r} has no time zone; append Z for UTC")
    return dt


@dataclass(frozen=True)
class ExchangeConfig:
    id: str
    quotes: tuple[str, ...]
    page_size: int = 500        # candles per OHLCV request (the exchange's documented maximum)


@dataclass(frozen=True)
class Universe:
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    exchanges: dict[str, ExchangeConfig]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def names(self, symbol: str) -> tuple[str, ...]:
        """The tickers a symbol may be listed under: itself first, then its renames."""
        return (symbol, *self.aliases.get(symbol, ()))

    def pairs(self) -> list[tuple[str, str]]:
        """Every (exchange, symbol) combination, in a stable order."""
        return [(ex, sym) for ex in self.exchanges for sym in self.symbols]


@dataclass(frozen=True)
class LakeConfig:
    bucket: str
    aws_conn_id: str
    ohlcv_prefix: str = "ohlcv"
    quarantine_prefix: str = "quarantine"
    staging_prefix: str = "_staging"
    datasets_prefix: str = "datasets"


@dataclass(frozen=True)
class CollectConfig:
    max_attempts: int = 4          # tries per request on network errors / 429 / 5xx
    backoff_seconds: float = 1.0   # first wait; doubles per attempt
    timeout_ms: int = 15_000       # per HTTP request
    enable_rate_limit: bool = True  # ccxt's own throttle (CANDLEFLOW_RATE_LIMIT=false turns it off)
    empty_page_retries: int = 1     # an empty page where rows are due (candles, funding, open interest) is asked again this often
    chunk_days: int = 31            # a backfill validates, writes and resumes per chunk of this many days
    overlap_intervals: int = 1      # scheduled runs also re-fetch this many previous intervals (late candles)
    binance_archive: bool = True    # whole past months on binance from data.binance.vision, not REST pages
    requests_in_flight: int = 8     # concurrent HTTP requests per exchange client (they share its throttle)
    pairs_in_flight: int = 8        # symbols of one exchange collected at once
    budget: str = "ccxt"            # ccxt: ccxt's throttle paces; published: the budgets.yaml limiter paces
    fast_candle_parse: bool = True  # candle pages parsed by candleflow.candle_pages (same rows as ccxt, ~5x less CPU)


@dataclass(frozen=True)
class PipelineConfig:
    exchange_mode: str
    emulator_url: str
    lake: LakeConfig
    mlflow_conn_id: str
    alerts_conn_id: str
    demo_start: datetime
    demo_end: datetime
    demo_symbols: tuple[str, ...] = ("BTC", "ETH", "SOL")
    demo_timeframe: str = "1h"
    collect: CollectConfig = field(default_factory=CollectConfig)


@dataclass(frozen=True)
class SageMakerConfig:
    role_arn: str
    image_uri: str
    instance_type: str
    instance_count: int
    volume_size_gb: int
    use_spot: bool
    max_run_seconds: int
    max_wait_seconds: int
    output_prefix: str
    checkpoint_prefix: str
    run_locally_after_submit: bool


@dataclass(frozen=True)
class TrainingConfig:
    backend: str
    lookback_days: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    sagemaker: SageMakerConfig | None = None
    dataset: str = "features"   # features: the lake's features table | candles: the raw candles


TRAINING_DATASETS = ("features", "candles")


def load_universe() -> Universe:
    where = str(config_dir() / "universe.yaml")
    data = load_yaml("universe.yaml")
    symbols = tuple(str(s).upper() for s in _require(data, "symbols", where))
    if not symbols:
        raise ConfigError(f"{where}: field 'symbols' is empty; list at least one base asset such as BTC")
    timeframes = tuple(parse_timeframe(tf, f"{where}: timeframes") for tf in _require(data, "timeframes", where))
    exchanges: dict[str, ExchangeConfig] = {}
    for ex_id, ex in (_require(data, "exchanges", where) or {}).items():
        if ex_id not in EXCHANGES:
            raise ConfigError(f"{where}: exchanges.{ex_id} is not supported; use one of {', '.join(EXCHANGES)}")
        quotes = tuple(str(q).upper() for q in (ex or {}).get("quotes", ["USDT", "USD"]))
        page_size = (ex or {}).get("page_size", 500)
        if not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(f"{where}: exchanges.{ex_id}.page_size {page_size!r} is invalid; use a positive integer")
        exchanges[ex_id] = ExchangeConfig(id=ex_id, quotes=quotes, page_size=page_size)
    aliases = {}
    for sym, names in (data.get("aliases") or {}).items():
        if str(sym).upper() not in symbols:
            raise ConfigError(f"{where}: aliases.{sym} is not a symbol of the universe; add it to 'symbols' or drop it")
        aliases[str(sym).upper()] = tuple(str(n).upper() for n in names)
    return Universe(symbols=symbols, timeframes=timeframes, exchanges=exchanges, aliases=aliases)


def load_pipeline() -> PipelineConfig:
    where = str(config_dir() / "pipeline.yaml")
    data = load_yaml("pipeline.yaml")
    mode = os.environ.get("CANDLEFLOW_EXCHANGE_MODE", data.get("exchange_mode", "emulator"))
    if mode not in ("emulator", "live"):
        raise ConfigError(f"{where}: exchange_mode {mode!r} is invalid; use 'emulator' or 'live'")
    lake = dict(_require(data, "lake", where))
    lake["bucket"] = os.environ.get("CANDLEFLOW_LAKE_BUCKET", lake.get("bucket"))
    _require(lake, "bucket", f"{where}: lake")
    _require(lake, "aws_conn_id", f"{where}: lake")
    demo = data.get("demo", {})
    start = parse_utc(_require(demo, "start", f"{where}: demo"), f"{where}: demo.start")
    end = parse_utc(_require(demo, "end", f"{where}: demo"), f"{where}: demo.end")
    if end <= start:
        raise ConfigError(f"{where}: demo.end ({end}) must be after demo.start ({start})")
    return PipelineConfig(
        exchange_mode=mode,
        emulator_url=os.environ.get("CANDLEFLOW_EMULATOR_URL", data.get("emulator_url", "http://127.0.0.1:8765")),
        lake=LakeConfig(**lake),
        mlflow_conn_id=data.get("mlflow", {}).get("conn_id", "mlflow_default"),
        alerts_conn_id=data.get("alerts", {}).get("conn_id", "candleflow_alerts"),
        demo_start=start,
        demo_end=end,
        demo_symbols=tuple(str(x).upper() for x in demo.get("symbols", ["BTC", "ETH", "SOL"])),
        demo_timeframe=parse_timeframe(demo.get("timeframe", "1h"), f"{where}: demo.timeframe"),
        collect=_collect_config(data.get("collect") or {}, where),
    )


def _collect_config(data: dict, where: str) -> CollectConfig:
    data = dict(data)
    data["enable_rate_limit"] = _env_bool("CANDLEFLOW_RATE_LIMIT", bool(data.get("enable_rate_limit", True)))
    data["budget"] = os.environ.get("CANDLEFLOW_BUDGET", data.get("budget", "ccxt"))
    try:
        cfg = CollectConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: collect has an unknown field ({exc}); see "
                          "include/config/pipeline.yaml for the fields") from exc
    if cfg.max_attempts < 1:
        raise ConfigError(f"{where}: collect.max_attempts must be at least 1")
    for name in ("requests_in_flight", "pairs_in_flight"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: collect.{name} {value!r} is invalid; use a whole number >= 1")
    parse_budget(cfg.budget, f"{where}: collect.budget")
    if not isinstance(cfg.fast_candle_parse, bool):
        raise ConfigError(f"{where}: collect.fast_candle_parse {cfg.fast_candle_parse!r} is invalid; use true or false")
    return cfg


BUDGETS = ("ccxt", "published")


def parse_budget(value: Any, where: str = "budget") -> str:
    if value not in BUDGETS:
        raise ConfigError(f"{where}: {value!r} is invalid; use 'ccxt' (ccxt's own spacing, conservative) or "
                          "'published' (the exchange's published limit × the margin in include/config/budgets.yaml)")
    return value


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class BudgetBucket:
    """One metered quantity of an exchange's published limit (include/config/budgets.yaml)."""

    name: str
    type: str                                   # window | counter
    limit: float                                # window: cost per `seconds`; counter: its maximum
    seconds: float                              # window length; counter: limit / decay (the drain time)
    endpoints: tuple[str, ...] | str = "*"
    except_: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    per_endpoint: bool = False
    per_query: str | None = None

    @property
    def rate(self) -> float:
        """The sustained rate it allows, cost units per second."""
        return self.limit / self.seconds

    def cost(self, path: str) -> float | None:
        """What a request to `path` spends here, or None if this bucket does not meter it."""
        def match(pattern: str) -> bool:
            return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern

        if self.endpoints != "*" and not any(match(e) for e in self.endpoints):
            return None
        if any(match(e) for e in self.except_):
            return None
        return float(self.weights.get(path, self.weights.get("default", 1)))


@dataclass(frozen=True)
class Budget:
    exchange: str
    unit: str
    source: str
    buckets: tuple[BudgetBucket, ...]
    margin: float = 0.8
    steer_at: float = 0.9
    ban_seconds: float = 600.0
    pool_slots: int = 2                         # Airflow pool candleflow_<exchange>: ingest tasks at once
    ban_statuses: tuple[int, ...] = (418,)      # HTTP statuses that mean "this IP is banned"
    refusal_markers: tuple[str, ...] = ()       # body texts of a rate-limit refusal sent with HTTP 200


def load_budgets() -> tuple[dict[str, Budget], str | None, float]:
    """({exchange: Budget}, state_dir, ccxt_guard) from include/config/budgets.yaml."""
    where = str(config_dir() / "budgets.yaml")
    data = load_yaml("budgets.yaml")
    margin = _fraction(data.get("margin", 0.8), f"{where}: margin")
    ccxt_guard = _fraction(data.get("ccxt_guard", 0.95), f"{where}: ccxt_guard")
    steer_at = _fraction(data.get("steer_at", 0.9), f"{where}: steer_at")
    budgets = {}
    for ex_id, ex in (_require(data, "exchanges", where) or {}).items():
        at = f"{where}: exchanges.{ex_id}"
        if ex_id not in EXCHANGES:
            raise ConfigError(f"{at}: not a supported exchange; use one of {', '.join(EXCHANGES)}")
        ex = ex or {}
        for name in ("unit", "source"):
            if not str(ex.get(name) or "").strip():
                raise ConfigError(f"{at}.{name}: missing; every published limit needs its {name} documented")
        buckets = []
        for i, b in enumerate(_require(ex, "buckets", at)):
            bat = f"{at}.buckets[{i}]"
            kind = b.get("type", "window")
            if kind == "window":
                limit, seconds = _positive(b.get("limit"), f"{bat}.limit"), _positive(b.get("seconds"), f"{bat}.seconds")
            elif kind == "counter":
                limit = _positive(b.get("max"), f"{bat}.max")
                seconds = limit / _positive(b.get("decay_per_second"), f"{bat}.decay_per_second")
            else:
                raise ConfigError(f"{bat}.type: {kind!r} is invalid; use 'window' or 'counter'")
            endpoints = b.get("endpoints", "*")
            buckets.append(BudgetBucket(
                name=str(_require(b, "name", bat)), type=kind, limit=limit, seconds=seconds,
                endpoints=endpoints if endpoints == "*" else tuple(endpoints), except_=tuple(b.get("except", ())),
                weights={str(k): float(v) for k, v in (b.get("weights") or {}).items()},
                per_endpoint=bool(b.get("per_endpoint", False)), per_query=b.get("per_query")))
        budgets[ex_id] = Budget(
            exchange=ex_id, unit=str(ex["unit"]), source=str(ex["source"]), buckets=tuple(buckets),
            margin=_fraction(ex.get("margin", margin), f"{at}.margin"), steer_at=steer_at,
            ban_seconds=_positive(ex.get("ban_seconds", 600), f"{at}.ban_seconds"),
            pool_slots=_slots(ex.get("pool_slots", data.get("pool_slots", 2)), f"{at}.pool_slots"),
            ban_statuses=tuple(_status(v, f"{at}.ban_statuses") for v in ex.get("ban_statuses", [418])),
            refusal_markers=tuple(str(m) for m in ex.get("refusal_markers", [])))
    state_dir = os.environ.get("CANDLEFLOW_LIMITER_STATE_DIR", data.get("state_dir"))
    return budgets, state_dir, ccxt_guard


def pool_name(exchange: str) -> str:
    """The Airflow pool every ingest task of `exchange` runs in."""
    return f"candleflow_{exchange}"


# Rebuilds of the coverage report (ohlcv_backfill's coverage_report, lake_compaction's
# coverage_reports) read a month's daily table and write it whole: one at a time, never tuned.
COVERAGE_POOL = "candleflow_coverage"


def pipeline_pools() -> dict[str, dict]:
    """Every Airflow pool the DAGs name: one per exchange, and the coverage report's."""
    return {**exchange_pools(), COVERAGE_POOL: {
        "slots": 1, "description": "coverage report rebuilds, one at a time (a month table is read, then written)"}}


def exchange_pools() -> dict[str, dict]:
    """The Airflow pools the ingest tasks run in, one per exchange: {name: {"slots", "description"}}
    (created at startup: `airflow pools set <name> <slots> "<description>"`)."""
    budgets, _, _ = load_budgets()
    return {pool_name(ex): {"slots": b.pool_slots,
                                 "description": f"ingest tasks against {ex} at once (include/config/budgets.yaml)"}
            for ex, b in budgets.items()}


def _status(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ConfigError(f"{where}: {value!r} is invalid; use HTTP error statuses such as 418 or 403")
    return value


def _slots(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {value!r} is invalid; use a whole number of Airflow pool slots >= 1")
    return value


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{where}: {value!r} is invalid; use a share of the published limit in (0, 1], e.g. 0.8")
    return float(value)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: {value!r} is invalid; use a positive number")
    return float(value)


def load_training() -> TrainingConfig:
    where = str(config_dir() / "training.yaml")
    data = load_yaml("training.yaml")
    backend = os.environ.get("CANDLEFLOW_TRAINING_BACKEND", data.get("backend", "local"))
    if backend not in ("local", "sagemaker"):
        raise ConfigError(f"{where}: backend {backend!r} is invalid; use 'local' or 'sagemaker'")
    dataset = data.get("dataset", "features")
    if dataset not in TRAINING_DATASETS:
        raise ConfigError(f"{where}: dataset {dataset!r} is invalid; use {' or '.join(TRAINING_DATASETS)}")
    sm = data.get("sagemaker")
    sagemaker = None
    if sm:
        sm = dict(sm)
        sm["run_locally_after_submit"] = _env_bool(
            "CANDLEFLOW_SAGEMAKER_RUN_LOCALLY", bool(sm.get("run_locally_after_submit", False))
        )
        if sm.get("use_spot") and int(sm["max_wait_seconds"]) < int(sm["max_run_seconds"]):
            raise ConfigError(f"{where}: sagemaker.max_wait_seconds must be >= max_run_seconds when use_spot is true")
        sagemaker = SageMakerConfig(**sm)
    return TrainingConfig(
        backend=backend,
        lookback_days=int(data.get("lookback_days", 60)),
        hyperparameters=dict(data.get("hyperparameters", {})),
        sagemaker=sagemaker,
        dataset=dataset,
    )
