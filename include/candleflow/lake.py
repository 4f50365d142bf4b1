"""The S3 data lake: Hive-partitioned, zstd parquet with one fixed schema per table.

Layout (see docs/lake.md):

    s3://<bucket>/ohlcv/exchange=<ex>/symbol=<SYM>/timeframe=<tf>/month=<YYYY-MM>/part-<from>_<to>.parquet
                                                                               .../compacted-<from>_<to>.parquet
    s3://<bucket>/quarantine/exchange=…/symbol=…/timeframe=…/window=<from>_<to>/candles.parquet + report.json

Candles are partitioned by UTC month, not day: a backfill chunk (a whole month, `collect.chunk_days`
stops at month starts) is one object per pair, ~43,000 rows for 1m, instead of 31 small ones. Few,
larger objects are what S3 readers (Athena, DuckDB, pyarrow) and writers pay least for: a PUT or
a GET costs the same for 50 kB as for 1.5 MB.

An object's key is a pure function of the data interval it holds (`<from>_<to>` is the part of the
run's window that falls in that month), and its bytes are a pure function of its candles, so a
re-run of any run or backfill overwrites the same keys with the same bytes: replace, never
duplicate. A month of the window that has no candles any more has its object deleted, so the lake
after a re-run is exactly what one run leaves. Each object is one S3 PUT, which S3 makes visible
atomically: no reader sees half an object. Readers deduplicate (exchange, symbol, timeframe, ts)
where objects overlap, keeping the later-named one, and a write takes its window's rows out of the
objects named after it (`yield_window`), so the newest fetch of a candle is the one read whatever
the windows' names; the daily compaction (`candleflow.compaction`)
merges the parts of the finished days into `compacted-<from>_<to>.parquet`, which sorts before
every part. An object's `<from>_<to>` bounds its rows, so a read of [start, end) skips the objects
of its partitions that lie outside (a scheduled run reads its last few parts, not the month).
Every table (`TableSpec`: ohlcv here, the others in the modules that own them) is read through
`read_table`, which casts old objects to the current schema (docs/lake.md, "Schema evolution rule").

All functions take a boto3 S3 client (from the Airflow S3Hook in tasks, or a plain client), so the
module runs the same with or without Airflow.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

OHLCV_SCHEMA = pa.schema([
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("open", pa.float64()),
    pa.field("high", pa.float64()),
    pa.field("low", pa.float64()),
    pa.field("close", pa.float64()),
    pa.field("volume", pa.float64()),
    pa.field("market", pa.string()),   # the exchange's market symbol, e.g. BTC/USDT or BTC/USD
])
PARTITION_KEYS = ("exchange", "symbol", "timeframe", "month")
PUT_CONCURRENCY = 8
QUARANTINE_PREFIX = "quarantine"
_STAMP = "%Y%m%dT%H%M%SZ"
# the names whose <from>_<to> bounds the object's rows: a writer's part, a compaction's merge
_WINDOW_NAME = re.compile(r"(?:part|compacted)-(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)\.parquet")


@dataclass(frozen=True)
class WrittenObject:
    key: str
    rows: int
    bytes: int


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime(_STAMP)


def part_name(lo: datetime, hi: datetime) -> str:
    """The object name of the candles of [lo, hi) within one time partition. Names sort by window
    start, then end: the reader's "later-named object wins" rule (and compaction's) rests on it."""
    return f"part-{_stamp(lo)}_{_stamp(hi)}.parquet"


def object_window(name: str) -> tuple[datetime, datetime] | None:
    """[from, to) of a `part-<from>_<to>.parquet` or `compacted-<from>_<to>.parquet` object name
    (every row of it lies within), or None for a name that carries no window."""
    match = _WINDOW_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if not match:
        return None
    lo, hi = (datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC) for stamp in match.groups())
    return lo, hi


def partition_prefix(prefix: str, exchange: str, symbol: str, timeframe: str, month: str | None = None) -> str:
    path = f"{prefix}/exchange={exchange}/symbol={symbol}/timeframe={timeframe}/"
    return path + (f"month={month}/" if month else "")


def to_table(candles: pd.DataFrame, market: str | None) -> pa.Table:
    """Candles as an Arrow table of exactly OHLCV_SCHEMA, sorted by ts (bytes depend only on data)."""
    return _raw_table(candles.sort_values("ts", kind="stable").reset_index(drop=True), market)


def to_parquet_bytes(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["market"], write_statistics=True)
    return sink.getvalue()


def _put(s3, bucket: str, key: str, body: bytes, content_type: str = "application/vnd.apache.parquet") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def _delete_if_exists(s3, bucket: str, key: str) -> None:
    s3.delete_object(Bucket=bucket, Key=key)  # S3 deletes are idempotent


def _period_start(dt: datetime, partition: str) -> datetime:
    dt = dt.astimezone(UTC)
    return datetime(dt.year, dt.month, 1 if partition == "month" else dt.day, tzinfo=UTC)


def _period_end(start: datetime, partition: str) -> datetime:
    if partition == "month":
        return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return start + timedelta(days=1)


def partition_window(partition: str, value: str) -> tuple[datetime, datetime]:
    """[start, end) of a time partition's value: ("month", "2024-10") → Oct 1 → Nov 1 (UTC)."""
    start = datetime.strptime(value, TIME_PARTITIONS[partition]).replace(tzinfo=UTC)
    return start, _period_end(start, partition)


def time_slices(window_start: datetime, window_end: datetime, partition: str = "month"):
    """(partition value, lo, hi) for each time partition (`month` or `date`) [start, end) touches."""
    period = _period_start(window_start, partition)
    while period < window_end:
        following = _period_end(period, partition)
        yield period.strftime(TIME_PARTITIONS[partition]), max(period, window_start), min(following, window_end)
        period = following


def write_batch(s3, bucket: str, candles: pd.DataFrame, *, exchange: str, symbol: str, timeframe: str,
                market: str | None, window_start: datetime, window_end: datetime,
                prefix: str = "ohlcv") -> list[WrittenObject]:
    """Write the batch of [window_start, window_end) as one object per UTC month of the window."""
    if candles["ts"].duplicated().any():
        raise ValueError("candles: duplicate timestamps; validate the batch before writing it to the lake")
    ts = pd.to_datetime(candles["ts"], utc=True)
    outside = (ts < window_start) | (ts >= window_end)
    if outside.any():
        raise ValueError(f"candles: {int(outside.sum())} candle(s) outside the window "
                         f"{window_start.isoformat()} → {window_end.isoformat()}")
    # Sort once, convert once, then slice each month by binary search (not a full mask per month).
    table = to_table(candles, market)
    times = table.column("ts").to_numpy().astype("datetime64[ms]").astype("int64")
    jobs = []
    for month, lo, hi in time_slices(window_start, window_end, "month"):
        key = partition_prefix(prefix, exchange, symbol, timeframe, month) + part_name(lo, hi)
        a, b = np.searchsorted(times, [_ms(lo), _ms(hi)])
        jobs.append((key, table.slice(int(a), int(b - a)), lo, hi))

    results = _in_flight(lambda job: write_object(s3, bucket, job[0], job[1]), jobs)
    # This fetch is the newest word on its window. Readers rank objects by name, so an object named
    # after this part (a later start, or the same start and a wider window: a month chunk against
    # a re-fetch of its first days) would still decide the window's candles: take them out of it.
    landed = [job for job in jobs if job[1].num_rows]
    if landed:
        # one listing for the whole batch (its months are consecutive), not one per month
        after = list(list_objects(s3, bucket, partition_prefix(prefix, exchange, symbol, timeframe),
                                  start_after=landed[0][0], stop=landed[-1][0].rsplit("/", 1)[0] + "/"))
        _in_flight(lambda job: yield_window(s3, bucket, job[0], job[2], job[3], listing=after), landed)
    return [r for r in results if r is not None]


def yield_window(s3, bucket: str, key: str, lo: datetime, hi: datetime, listing=None) -> list[str]:
    """Remove the rows of [lo, hi) from the objects of key's partition named after key (the ones
    that outrank it), rewriting each (one PUT; deleted when nothing is left). Returns the keys
    changed. Objects named before key are outranked by it already and left alone. `listing`: keys
    listed already (any superset of the partition's keys after key), instead of listing here."""
    from botocore.exceptions import ClientError

    prefix = key.rsplit("/", 1)[0] + "/"
    keys = list_objects(s3, bucket, prefix, start_after=key) if listing is None else listing
    changed = []
    for other in sorted(k for k in keys if k > key and k.startswith(prefix)):
        window = object_window(other)
        if "/" in other[len(prefix):] or not other.endswith(".parquet") or (
                window and (window[1] <= lo or window[0] >= hi)):
            continue
        try:
            table = as_current_schema(OHLCV, _get(s3, bucket, other), other)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                continue   # merged by a compaction meanwhile: its rows now rank below this part
            raise
        ts = table.column("ts")
        inside = pa.compute.and_(pa.compute.greater_equal(ts, pa.scalar(lo, type=ts.type)),
                                 pa.compute.less(ts, pa.scalar(hi, type=ts.type)))
        if not pa.compute.any(inside).as_py():
            continue
        write_object(s3, bucket, other, table.filter(pa.compute.invert(inside)))
        changed.append(other)
    return changed


def _in_flight(fn, items: list, workers: int | None = None) -> list:
    """fn over items, results in order; S3 calls are latency-bound, so a few run at once (boto3
    clients are thread-safe)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers or PUT_CONCURRENCY, len(items))) as pool:
        return list(pool.map(fn, items))


def write_object(s3, bucket: str, key: str, table: pa.Table, metadata: dict[str, str] | None = None,
                 ) -> WrittenObject | None:
    """One object, one PUT (visible whole or not at all); an empty table deletes the key instead,
    so a re-run that found nothing leaves nothing behind. The table must already be conformed and
    sorted: its bytes are then a pure function of its rows."""
    if table.num_rows == 0:
        _delete_if_exists(s3, bucket, key)
        return None
    body = to_parquet_bytes(table, metadata)
    _put(s3, bucket, key, body)
    return WrittenObject(key=key, rows=table.num_rows, bytes=len(body))


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _raw_table(frame: pd.DataFrame, market: str | None) -> pa.Table:
    """Candles as OHLCV_SCHEMA in the given row order (staging and quarantine keep the exchange's
    order: it is one of the things quality judges; to_table sorts first)."""
    arrays = [
        pa.array(pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ms, UTC]"), type=OHLCV_SCHEMA.field("ts").type),
        *(pa.array(frame[c].astype("float64"), type=pa.float64()) for c in ("open", "high", "low", "close", "volume")),
        pa.array([market] * len(frame), type=pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=OHLCV_SCHEMA)


def quarantine_batch(s3, bucket: str, candles: pd.DataFrame, report: dict, *, exchange: str, symbol: str,
                     timeframe: str, market: str | None, window_start: datetime, window_end: datetime,
                     prefix: str = QUARANTINE_PREFIX) -> str:
    """Keep a rejected batch and its quality report side by side; returns the candles' key."""
    base = (partition_prefix(prefix, exchange, symbol, timeframe)
            + f"window={_stamp(window_start)}_{_stamp(window_end)}/")
    _put(s3, bucket, base + "candles.parquet", to_parquet_bytes(_raw_table(candles.reset_index(drop=True), market)))
    _put(s3, bucket, base + "report.json", json.dumps(report, indent=2, sort_keys=True, default=str).encode(),
         content_type="application/json")
    return base + "candles.parquet"


# -- tables: one fixed schema per table, generic partition writer and reader ----------------------
@dataclass(frozen=True)
class TableSpec:
    """A lake table: its fixed data schema (partition columns live in the key, not the file), its
    Hive partition keys in key order, the key that makes a row unique within a partition (readers
    also deduplicate on partition keys + unique keys across objects) and its sort order."""

    name: str
    schema: pa.Schema
    partition_keys: tuple[str, ...]
    unique_keys: tuple[str, ...]
    sort_keys: tuple[str, ...] = ("ts",)


OHLCV = TableSpec("ohlcv", OHLCV_SCHEMA, PARTITION_KEYS, ("ts",), ("ts",))
# Each table's schema is defined by the module that owns the table (one concept, one module); the
# lake finds it here by name, imported only when that table is used.
TABLE_OWNERS = {
    "ohlcv": __name__,
    "funding": "candleflow.derivatives",
    "open_interest": "candleflow.derivatives",
    "quality": "candleflow.quality",
    "features": "candleflow.features",
}
TIME_PARTITIONS = {"date": "%Y-%m-%d", "month": "%Y-%m"}
TABLE_SPECS = {"ohlcv": OHLCV}


def table_spec(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    owner = TABLE_OWNERS.get(table)
    if owner is None:
        raise KeyError(f"table {table!r}: unknown lake table; known tables: {', '.join(sorted(TABLE_OWNERS))}")
    import importlib

    specs = getattr(importlib.import_module(owner), "TABLE_SPECS", {})
    if table not in specs:
        raise KeyError(f"table {table!r}: {owner}.TABLE_SPECS does not define it")
    return specs[table]


def _check_partition(spec: TableSpec, partition: dict[str, str]) -> None:
    if set(partition) != set(spec.partition_keys):
        raise ValueError(f"partition {partition!r}: table {spec.name} is partitioned by "
                         f"{', '.join(spec.partition_keys)} (give exactly those keys)")
    for name, value in partition.items():
        text = str(value)
        if not text or "/" in text or "=" in text:
            raise ValueError(f"partition value {name}={text!r}: must be non-empty, without '/' or '='")


def partition_path(spec: TableSpec, partition: dict[str, str]) -> str:
    _check_partition(spec, partition)
    return spec.name + "/" + "".join(f"{k}={partition[k]}/" for k in spec.partition_keys)


def conform(spec: TableSpec, frame: pd.DataFrame | pa.Table) -> pa.Table:
    """The frame as exactly spec.schema (column order, types); partition columns are dropped.

    Raises ValueError naming the column that is missing, unexpected or cannot be cast."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    table = table.drop([c for c in spec.partition_keys if c in table.column_names])
    missing = [f.name for f in spec.schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in spec.schema.names]
    if missing or extra:
        raise ValueError(f"table {spec.name}: "
                         + (f"missing column(s) {missing} " if missing else "")
                         + (f"unexpected column(s) {extra} " if extra else "")
                         + f"(schema: {', '.join(spec.schema.names)}; a new column needs a schema change, docs/lake.md)")
    if table.num_rows == 0:
        return spec.schema.empty_table()  # an empty column's inferred type says nothing
    arrays = []
    for field in spec.schema:
        column = table.column(field.name)
        try:
            if pa.types.is_timestamp(field.type) and pa.types.is_integer(column.type):
                column = column.cast(pa.int64()).cast(pa.timestamp("ms")).cast(field.type)
            arrays.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ValueError(f"table {spec.name}: column {field.name!r} ({column.type}) cannot be "
                             f"stored as {field.type}: {err}") from err
        if not field.nullable and arrays[-1].null_count:
            raise ValueError(f"table {spec.name}: column {field.name!r} has {arrays[-1].null_count} null(s); "
                             "it is declared not-null")
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _dedup_sorted(table: pa.Table, unique_keys: tuple[str, ...], sort_keys: tuple[str, ...]) -> pa.Table:
    if table.num_rows == 0:
        return table
    frame_keys = table.select(list(unique_keys)).to_pandas() if unique_keys else None
    if frame_keys is not None:
        keep = ~frame_keys.duplicated(keep="last").to_numpy()
        if not keep.all():
            table = table.filter(pa.array(keep))
    if sort_keys:
        table = table.take(pa.compute.sort_indices(table, sort_keys=[(k, "ascending") for k in sort_keys]))
    return table


def write_partition(s3, bucket: str, spec: TableSpec | str, frame: pd.DataFrame | pa.Table, *,
                    partition: dict[str, str], object_name: str = "part-00000.parquet",
                    metadata: dict[str, str] | None = None) -> WrittenObject | None:
    """Write one object of a table: conformed to its schema, deduplicated (last row wins), sorted,
    deterministic bytes, one PUT at a key that is a pure function of the partition and the name.
    An empty frame deletes that object, so a re-run that found nothing leaves nothing behind."""
    spec = table_spec(spec)
    if "/" in object_name or not object_name.endswith(".parquet"):
        raise ValueError(f"object_name {object_name!r}: a plain file name ending in .parquet")
    key = partition_path(spec, partition) + object_name
    return write_object(s3, bucket, key, _dedup_sorted(conform(spec, frame), spec.unique_keys, spec.sort_keys),
                        metadata)


def _time_bounds(start: datetime | None, end: datetime | None, fmt: str) -> tuple[str | None, str | None]:
    first = start.astimezone(UTC).strftime(fmt) if start else None
    last = (end - timedelta(milliseconds=1)).astimezone(UTC).strftime(fmt) if end else None
    return first, last


def as_current_schema(spec: TableSpec, table: pa.Table, key: str = "") -> pa.Table:
    """An object's rows as the table's current schema (the schema-evolution rule, docs/lake.md):
    a nullable column the object predates reads as null; a column the current schema does not know
    (written by a newer version) is dropped; a type that cannot be cast safely is an error naming
    the object and column, because a retyped column must be a new table version."""
    arrays = []
    for field in spec.schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise ValueError(f"{key or spec.name}: no column {field.name!r}, which table {spec.name} declares "
                                 "not-null; only nullable columns may be added to a table (docs/lake.md)")
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)  # safe casts only: widening, dictionary → plain
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(f"{key or spec.name}: column {field.name!r} is {column.type}, table {spec.name} "
                                 f"says {field.type}; a type change needs a new table version (docs/lake.md)") from err
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _get(s3, bucket: str, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def _partition_keys_matching(spec: TableSpec, keys, filters: dict[str, str], start: datetime | None,
                             end: datetime | None) -> list[tuple[str, dict[str, str]]]:
    """(key, partition values) of the table's data objects that the filters and [start, end) can
    touch, in key order, judged from the key alone: its partition values, then the window its name
    carries (`object_window`; a name without one is always read)."""
    pattern = re.compile("".join(f"{k}=(?P<{k}>[^/]+)/" for k in spec.partition_keys) + r"[^/]+\.parquet$")
    bounds = {name: _time_bounds(start, end, fmt) for name, fmt in TIME_PARTITIONS.items()
              if name in spec.partition_keys}
    out = []
    for key in sorted(keys):
        if not key.startswith(spec.name + "/"):
            continue
        match = pattern.fullmatch(key[len(spec.name) + 1:])
        if not match:
            continue
        values = match.groupdict()
        if any(filters.get(k) and values[k] != str(filters[k]) for k in spec.partition_keys):
            continue
        if any((first and values[name] < first) or (last and values[name] > last)
               for name, (first, last) in bounds.items()):
            continue
        window = object_window(key) if start is not None or end is not None else None
        if window and ((start is not None and window[1] <= start) or (end is not None and window[0] >= end)):
            continue
        out.append((key, values))
    return out


def _list_and_get(s3, bucket: str, listing: dict, select, attempts: int = 3):
    """List, select, GET. An object deleted between the listing and its GET (a compaction that
    merged it, a re-run that emptied it) means the partition changed under the reader: list again
    rather than skip it (its rows may be in an object this listing did not see yet). `listing`:
    list_objects' keyword arguments."""
    from botocore.exceptions import ClientError

    for attempt in range(attempts):
        selected = select(list_objects(s3, bucket, **listing))
        try:
            return selected, _in_flight(lambda item: _get(s3, bucket, item[0]), selected)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404") or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _listing(spec: TableSpec, filters: dict[str, str], start: datetime | None, end: datetime | None) -> dict:
    """list_objects' arguments for a read: the narrowest prefix the filters allow and, when the next
    partition level is a time partition, only its keys within [start, end). A pair's ohlcv folder
    also holds every batch's `_quality/` result (one per chunk, never compacted) and its whole
    history: listing from the first wanted date, stopping after the last, keeps a scheduled read
    at a few keys however old the pair is (`_quality/` sorts before `month=`)."""
    prefix = listing_prefix(spec, **filters)
    level = next((i for i, k in enumerate(spec.partition_keys) if not filters.get(k)), len(spec.partition_keys))
    if level == len(spec.partition_keys) or spec.partition_keys[level] not in TIME_PARTITIONS:
        return {"prefix": prefix}
    name = spec.partition_keys[level]
    first, last = _time_bounds(start, end, TIME_PARTITIONS[name])
    return {"prefix": prefix, "start_after": f"{prefix}{name}={first}" if first else None,
            "stop": f"{prefix}{name}={last}/" if last else None}


def read_table(s3, bucket: str, table: str | TableSpec, *, start: datetime | None = None,
               end: datetime | None = None, as_arrow: bool = False, with_metadata: bool = False,
               **filters: str) -> tuple:
    """Rows of a table matching partition filters and [start, end) on `ts`, with the keys they came
    from: partition columns first, deduplicated on partition keys + unique keys (the later-named
    object wins), sorted. Partitions are pruned by key before any object is read (filters in key
    order narrow the listing; time partitions by start/end, in the listing too when the filters
    reach them); old objects are read as the current schema (`as_current_schema`).

    with_metadata: also return {key: that object's parquet schema metadata (str → str)} for the
    keys returned (e.g. features' `candleflow.sources`), from the bytes already read."""
    spec = table_spec(table)
    unknown = set(filters) - set(spec.partition_keys)
    if unknown:
        raise ValueError(f"filter(s) {sorted(unknown)}: table {spec.name} is partitioned by "
                         f"{', '.join(spec.partition_keys)}")
    filters = {k: v for k, v in filters.items() if v}
    selected, parts = _list_and_get(s3, bucket, _listing(spec, filters, start, end),
                                    lambda keys: _partition_keys_matching(spec, keys, filters, start, end))
    pieces, used, metadata = [], [], {}
    for (key, values), part in zip(selected, parts, strict=True):
        if with_metadata:
            metadata[key] = {k.decode(): v.decode() for k, v in (part.schema.metadata or {}).items()}
        part = as_current_schema(spec, part, key)
        if "ts" in part.column_names and (start is not None or end is not None):
            ts = part.column("ts")
            mask = None
            if start is not None:
                mask = pa.compute.greater_equal(ts, pa.scalar(start, type=ts.type))
            if end is not None:
                upper = pa.compute.less(ts, pa.scalar(end, type=ts.type))
                mask = upper if mask is None else pa.compute.and_(mask, upper)
            part = part.filter(mask)
        if part.num_rows == 0:
            metadata.pop(key, None)
            continue
        for name in reversed(spec.partition_keys):
            part = part.add_column(0, name, pa.array([values[name]] * part.num_rows, type=pa.string()))
        pieces.append(part)
        used.append(key)
    schema = pa.schema([pa.field(k, pa.string()) for k in spec.partition_keys] + list(spec.schema))
    out = pa.concat_tables(pieces) if pieces else schema.empty_table()
    # keys were read in sorted order: the later-named object wins a duplicate (a later window start
    # beats an earlier one; a compacted object sorts before every part of its partition)
    out = _dedup_sorted(out, (*spec.partition_keys, *spec.unique_keys), (*spec.partition_keys, *spec.sort_keys))
    out = out if as_arrow else out.to_pandas()
    return (out, used, metadata) if with_metadata else (out, used)


# -- reading ------------------------------------------------------------------------------------
def list_objects(s3, bucket: str, prefix: str = "", *, start_after: str | None = None,
                 stop: str | None = None) -> dict[str, tuple[int, str]]:
    """{key: (size, etag)} under a prefix: what a re-run must leave unchanged. start_after: only
    keys sorting after it; stop: no keys sorting after every key that starts with it (paging ends
    there: S3 lists in key order)."""
    out: dict[str, tuple[int, str]] = {}
    args = {"Bucket": bucket, "Prefix": prefix, **({"StartAfter": start_after} if start_after else {})}
    for page in s3.get_paginator("list_objects_v2").paginate(**args):
        for obj in page.get("Contents", []):
            if stop is not None and obj["Key"] > stop and not obj["Key"].startswith(stop):
                return out
            out[obj["Key"]] = (obj["Size"], obj["ETag"])
    return out


def listing_prefix(table: str | TableSpec, **filters: str | None) -> str:
    """The narrowest key prefix the Hive partitions allow for these filters: the partition keys in
    key order (a TableSpec's, or exchange, symbol, timeframe under a plain prefix such as the gap
    ledger's), a later level only narrowing when the earlier ones are given."""
    name, levels = ((table.name, table.partition_keys) if isinstance(table, TableSpec)
                    else (table, ("exchange", "symbol", "timeframe")))
    unknown = set(filters) - set(levels)
    if unknown:
        raise ValueError(f"filter(s) {sorted(unknown)}: {name} is partitioned by {', '.join(levels)}")
    prefix = f"{name}/"
    for level in levels:
        if not filters.get(level):
            break
        prefix += f"{level}={filters[level]}/"
    return prefix


def ohlcv_spec(prefix: str = "ohlcv") -> TableSpec:
    """The ohlcv table, under another prefix if the configuration says so (`lake.ohlcv_prefix`)."""
    return OHLCV if prefix == OHLCV.name else replace(OHLCV, name=prefix)


def read_with_sources(s3, bucket: str, table: str = "ohlcv", *, exchange: str | None = None,
                      symbol: str | None = None, timeframe: str | None = None, start: datetime | None = None,
                      end: datetime | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Candles of [start, end) matching the filters, with the object keys they came from (a
    training snapshot records them). Columns: exchange, symbol, timeframe, then OHLCV_SCHEMA."""
    frame, used = read_table(s3, bucket, ohlcv_spec(table), start=start, end=end, exchange=exchange,
                             symbol=symbol, timeframe=timeframe)
    return frame.drop(columns="month").reset_index(drop=True), used


def read(s3, bucket: str, table: str | TableSpec = "ohlcv", *, as_arrow: bool = False, **filters):
    """A table's rows matching partition filters and start/end: partition columns first,
    deduplicated, sorted; pandas, or Arrow with as_arrow. Any table: `lake.read(s3, bucket,
    "funding", exchange="okx", start=…)`."""
    return read_table(s3, bucket, table, as_arrow=as_arrow, **filters)[0]
