"""Daily compaction: merge the parts of finished days into one object per partition.

An hourly ingest leaves 24 objects per pair and day (a 1m one 1440), each named after its window
(`part-<from>_<to>.parquet`) in the pair's month partition. Readers deduplicate on (partition, ts)
with the later-named object winning. Compacting day D merges, per partition, the objects of the
days up to D into `compacted-<from>_<to>.parquet` (the span of what it merged), exactly what a
reader sees, without a moment where a candle is missing, doubled or stale:

1. take the partition's objects in key order up to the first part whose window ends after D
   (still being written, or a window that reaches into a later day): merging a prefix of the key
   order keeps every object left behind outranking the merge, as it outranked what it replaced;
2. merge them with the reader's rule (later name wins) and PUT the result (one PUT: visible whole
   or not at all). Until the merged objects are gone a reader sees both, and deduplication gives
   the same rows, because the merged object holds exactly the winners;
3. delete each merged object *only if it is still the object that was read* (`DeleteObject` with
   `IfMatch=<ETag>`): an object rewritten meanwhile (a late candle) is kept and still wins. An
   object holding a row that lost to a later one is deleted in key order, one at a time, before
   the rest (at once): if a later winner went first, that losing row would show for a moment.

Compacted names sort before every `part-…` name, so the merged object has the lowest precedence: a
late write after compaction wins over it, and the next compaction merges it in. A re-run of a
backfill writes its part, which also wins. Compacting twice is compacting once: a partition whose
mergeable prefix is one object is left alone (no read, no write).

A crash between 2 and 3 leaves the merged object and the parts: the reader's answer is unchanged
and the next run finishes the job. Only finished UTC days are compacted. Ledger (`coverage/`) and
quarantine keys are other prefixes and never touched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from candleflow import lake

log = logging.getLogger(__name__)

COMPACTED = "compacted-"   # + <from>_<to>.parquet; sorts before "part-"
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class PartitionCompaction:
    """What compacting one partition did: `compacted` (merged `merged` objects into `key`),
    `single` (nothing to merge: one object, the rest not finished), or `empty` (no object).
    `waiting`: parts left for a later day's compaction (their window reaches past it)."""

    prefix: str
    status: str
    key: str | None = None
    merged: int = 0
    rows: int = 0
    bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)   # rewritten while compacting: left to win, merged next time
    waiting: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _objects_of(s3, bucket: str, prefix: str) -> list[str]:
    """The data objects directly in one partition, in key order (the reader's precedence)."""
    return sorted(k for k in lake.list_objects(s3, bucket, prefix)
                  if "/" not in k[len(prefix):] and k.endswith(".parquet"))


def _get_with_etag(s3, bucket: str, key: str) -> tuple[pa.Table, str]:
    import io

    import pyarrow.parquet as pq

    response = s3.get_object(Bucket=bucket, Key=key)
    # the ETag of the bytes actually read, not of the listing: the delete is conditional on it
    return pq.read_table(io.BytesIO(response["Body"].read())), response["ETag"]


def _delete_if_unchanged(s3, bucket: str, key: str, etag: str) -> bool:
    """Delete key if it still holds the bytes with this ETag; False if it was rewritten (or gone)."""
    from botocore.exceptions import ClientError

    try:
        s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "412"):
            return False
        if code in ("NoSuchKey", "404"):
            return True  # already gone (another compaction of the same day): nothing to keep
        raise
    return True


def _mergeable(keys: list[str], through: datetime | None) -> list[str]:
    """The longest prefix of keys (in key order) whose objects are done by `through`: a windowed
    name ending after it stops the prefix. Compacted objects and names without a window (e.g.
    part-00000.parquet of a date partition) never stop it."""
    out = []
    for key in keys:
        window = lake.object_window(key)
        name = key.rsplit("/", 1)[-1]
        if through is not None and window and not name.startswith(COMPACTED) and window[1] > through:
            break
        out.append(key)
    return out


def _span(spec: lake.TableSpec, partition: dict[str, str], keys: list[str]) -> tuple[datetime, datetime]:
    """The window a merge of these objects covers: the span of their name windows, the whole
    time partition where a name carries none (or a table without a time partition: refused)."""
    time_key = next((k for k in spec.partition_keys if k in lake.TIME_PARTITIONS), None)
    windows = [lake.object_window(key) for key in keys]
    if any(w is None for w in windows):
        if time_key is None:
            raise ValueError(f"table {spec.name}: no time partition ({', '.join(lake.TIME_PARTITIONS)}) and "
                             "object names without a window; compaction cannot name the merged object")
        windows.append(lake.partition_window(time_key, partition[time_key]))
    windows = [w for w in windows if w]
    return min(w[0] for w in windows), max(w[1] for w in windows)


def _losers(spec: lake.TableSpec, tables: list[pa.Table]) -> set[int]:
    """Indexes of the tables holding a row that differs from the winning row of its key (the same
    key in a later table); deleting a later winner before such a table would show that row."""
    import pandas as pd

    frames = [t.to_pandas().assign(_object=i) for i, t in enumerate(tables) if t.num_rows]
    if len(frames) < 2:
        return set()
    rows = pd.concat(frames, ignore_index=True)
    keys = list(spec.unique_keys)
    values = [c for c in rows.columns if c not in keys and c != "_object"]
    # the row that is literally last per key (groupby's "last" would skip a null and pick an older value)
    last = rows.groupby(keys, sort=False, dropna=False).cumcount(ascending=False).eq(0)
    winners = rows[keys].merge(rows.loc[last, keys + values], on=keys, how="left")[values]
    mine = rows[values]
    same = (mine == winners) | (mine.isna() & winners.isna())
    return set(rows.loc[~same.all(axis=1), "_object"].tolist())


def compact_partition(s3, bucket: str, table: str | lake.TableSpec, partition: dict[str, str], *,
                      through: datetime | None = None) -> PartitionCompaction:
    """Merge a partition's objects done by `through` (all of them when None) into one compacted
    object (see the module docstring)."""
    spec = lake.table_spec(table)
    prefix = lake.partition_path(spec, partition)
    keys = _objects_of(s3, bucket, prefix)
    merge = _mergeable(keys, through)
    waiting = len(keys) - len(merge)
    if len(merge) <= 1:
        return PartitionCompaction(prefix, "single" if keys else "empty", key=merge[0] if merge else None,
                                   merged=len(merge), waiting=waiting)
    early = [k for k in keys if k[len(prefix):] < COMPACTED]
    if early:
        # they would outrank the merged object's source parts once merged: refuse, do not reorder history
        raise ValueError(f"{prefix}: object(s) {[k[len(prefix):] for k in early]} sort before {COMPACTED}…; "
                         "compaction needs every object of a partition to be named after the merged object")
    lo, hi = _span(spec, partition, merge)
    target = prefix + f"{COMPACTED}{lake._stamp(lo)}_{lake._stamp(hi)}.parquet"
    read = lake._in_flight(lambda key: _get_with_etag(s3, bucket, key), merge)
    tables = [lake.as_current_schema(spec, t, k) for k, (t, _) in zip(merge, read, strict=True)]
    # keys are in sorted order: the later-named object wins, exactly as lake.read decides
    merged = lake._dedup_sorted(pa.concat_tables(tables), spec.unique_keys, spec.sort_keys)
    written = lake.write_object(s3, bucket, target, merged)
    result = PartitionCompaction(prefix, "compacted", key=target, merged=len(merge), waiting=waiting,
                                 rows=written.rows if written else 0, bytes=written.bytes if written else 0)
    losers = _losers(spec, tables)
    sources = [(i, k, etag) for i, (k, (_, etag)) in enumerate(zip(merge, read, strict=True)) if k != target]
    # objects with a losing row go first, one by one in key order (each only after every object
    # below it that also held the key), then the rest at once: no reader sees a losing row
    gone = {key: _delete_if_unchanged(s3, bucket, key, etag) for i, key, etag in sources if i in losers}
    rest = [(key, etag) for i, key, etag in sources if i not in losers]
    gone.update(zip([key for key, _ in rest],
                    lake._in_flight(lambda item: _delete_if_unchanged(s3, bucket, *item), rest), strict=True))
    for _, key, _ in sources:
        (result.deleted if gone[key] else result.kept).append(key)
    if result.kept:
        log.warning("%s: %d part(s) changed while compacting and were kept (they win; the next compaction "
                    "merges them): %s", prefix, len(result.kept), result.kept)
    return result


def _check_date(date: str, now: datetime | None) -> None:
    if not isinstance(date, str) or not _DATE_RE.fullmatch(date):
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD")
    day_end = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    now = now or datetime.now(UTC)
    if day_end > now:
        raise ValueError(f"date {date}: the UTC day is not finished at {now.isoformat()}; only finished days "
                         "are compacted")


def _common_prefixes(s3, bucket: str, prefix: str) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        out.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
    return sorted(out)


def _time_partition(spec: lake.TableSpec) -> str:
    name = next((k for k in spec.partition_keys if k in lake.TIME_PARTITIONS), None)
    if name is None:
        raise ValueError(f"table {spec.name}: partitioned by {', '.join(spec.partition_keys)}, not by "
                         f"{' or '.join(lake.TIME_PARTITIONS)}; daily compaction needs a time partition")
    return name


def partitions_on(s3, bucket: str, table: str | lake.TableSpec, date: str, **fixed: str) -> list[dict[str, str]]:
    """The partitions of a time-partitioned table (by date or month) that may hold objects on
    `date`, narrowed by fixed partition values (e.g. exchange="okx"). Discovered level by level
    with delimiter listings, so the cost is the number of partitions, not the number of objects in
    the table's history. The time level is given (the date's day or month), not listed: a
    partition may have nothing on `date` (compact_partition lists it anyway and says "empty";
    checking here too would list every partition twice)."""
    spec = lake.table_spec(table)
    time_key = _time_partition(spec)
    period = datetime.strptime(date, "%Y-%m-%d").strftime(lake.TIME_PARTITIONS[time_key])
    unknown = set(fixed) - set(spec.partition_keys)
    if unknown:
        raise ValueError(f"filter(s) {sorted(unknown)}: table {spec.name} is partitioned by "
                         f"{', '.join(spec.partition_keys)}")
    levels = [({}, f"{spec.name}/")]
    for name in spec.partition_keys:
        value = period if name == time_key else fixed.get(name)
        if value:
            levels = [({**values, name: value}, f"{path}{name}={value}/") for values, path in levels]
            continue
        found = []
        for values, path in levels:
            for child in _common_prefixes(s3, bucket, path):
                label = child[len(path):-1]
                if label.startswith(f"{name}="):
                    found.append(({**values, name: label[len(name) + 1:]}, child))
        levels = found
    return [values for values, _path in levels]


def compact_day(s3, bucket: str, table: str | lake.TableSpec, date: str, *, now: datetime | None = None,
                **fixed: str) -> list[PartitionCompaction]:
    """Compact, in every partition holding a finished UTC day (narrowed by fixed partition values),
    the objects done by that day's end; the result lists the partitions that hold objects."""
    _check_date(date, now)
    through = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    results = [compact_partition(s3, bucket, table, partition, through=through)
               for partition in partitions_on(s3, bucket, table, date, **fixed)]
    results = [r for r in results if r.status != "empty"]   # a pair with nothing in that period
    merged = [r for r in results if r.status == "compacted"]
    log.info("%s %s %s: %d partition(s), %d compacted from %d objects, %d with nothing to merge, %d part(s) kept, "
             "%d waiting for a later day", lake.table_spec(table).name, date, fixed or "", len(results), len(merged),
             sum(r.merged for r in merged), sum(r.status == "single" for r in results),
             sum(len(r.kept) for r in results), sum(r.waiting for r in results))
    return results
