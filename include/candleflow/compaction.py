"""Daily compaction: merge the objects of a finished day into one object per partition.

An hourly ingest leaves 24 objects per pair and day (a 1m one 1440), each named after its window
(`part-<from>_<to>.parquet`). Readers deduplicate on (partition, ts) with the later-named object
winning. Compaction produces exactly what a reader sees, as one object, without a moment where a
candle is missing or counted twice:

1. read every object of the partition and merge them with the reader's rule (later name wins);
2. PUT the merged rows as `compacted.parquet` (one PUT: visible whole or not at all). Until the
   parts are gone a reader sees both, and deduplication gives the same rows either way, because
   the merged object holds exactly the winners;
3. delete each part *only if it is still the object that was read* (`DeleteObject` with
   `IfMatch=<ETag>`): a part rewritten meanwhile (a late candle) is kept and still wins.

`compacted.parquet` sorts before every `part-…` name, so the merged object has the lowest
precedence: a late hourly write after compaction wins over it, and the next compaction merges it
in. A re-run of a backfill writes its daily part, which also wins. Compacting twice is compacting
once: a partition that already holds one object is left alone (no read, no write).

A crash between 2 and 3 leaves the merged object and the parts: the reader's answer is unchanged
and the next run finishes the job. Only finished UTC days are compacted (a day still receiving
hourly parts would just be compacted again). Ledger (`coverage/`) and quarantine keys are other
prefixes and never touched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from candleflow import lake

log = logging.getLogger(__name__)

COMPACTED_NAME = "compacted.parquet"
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class PartitionCompaction:
    """What compacting one partition did: `compacted` (merged `merged` objects into `key`),
    `single` (already one object), or `empty` (no object)."""

    prefix: str
    status: str
    key: str | None = None
    merged: int = 0
    rows: int = 0
    bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)   # rewritten while compacting: left to win, merged next time

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


def compact_partition(s3, bucket: str, table: str | lake.TableSpec, partition: dict[str, str], *,
                      object_name: str = COMPACTED_NAME) -> PartitionCompaction:
    """Merge every object of one partition into `object_name` (see the module docstring)."""
    spec = lake.table_spec(table)
    prefix = lake.partition_path(spec, partition)
    keys = _objects_of(s3, bucket, prefix)
    target = prefix + object_name
    if len(keys) <= 1:
        return PartitionCompaction(prefix, "single" if keys else "empty", key=keys[0] if keys else None,
                                   merged=len(keys))
    early = [k for k in keys if k < target]
    if early:
        # they would outrank the merged object's source parts once merged: refuse, do not reorder history
        raise ValueError(f"{prefix}: object(s) {[k[len(prefix):] for k in early]} sort before {object_name!r}; "
                         "compaction needs every part of a partition to be named after the merged object")
    read = lake._in_flight(lambda key: _get_with_etag(s3, bucket, key), keys)
    merged = pa.concat_tables([lake.as_current_schema(spec, t, k) for k, (t, _) in zip(keys, read, strict=True)])
    # keys are in sorted order: the later-named object wins, exactly as lake.read decides
    merged = lake._dedup_sorted(merged, spec.unique_keys, spec.sort_keys)
    written = lake.write_object(s3, bucket, target, merged)
    result = PartitionCompaction(prefix, "compacted", key=target, merged=len(keys),
                                 rows=written.rows if written else 0, bytes=written.bytes if written else 0)
    parts = [(k, etag) for k, (_, etag) in zip(keys, read, strict=True) if k != target]
    gone = lake._in_flight(lambda item: _delete_if_unchanged(s3, bucket, *item), parts)
    for (key, _), deleted in zip(parts, gone, strict=True):
        (result.deleted if deleted else result.kept).append(key)
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


def partitions_on(s3, bucket: str, table: str | lake.TableSpec, date: str, **fixed: str) -> list[dict[str, str]]:
    """The partitions of a date-partitioned table that may hold objects on `date`, narrowed by fixed
    partition values (e.g. exchange="okx"). Discovered level by level with delimiter listings, so
    the cost is the number of partitions, not the number of objects in the table's history. The
    date level is given, not listed: a partition may have nothing on `date` (compact_partition
    lists it anyway and says "empty"; checking here too would list every partition twice)."""
    spec = lake.table_spec(table)
    if "date" not in spec.partition_keys:
        raise ValueError(f"table {spec.name}: partitioned by {', '.join(spec.partition_keys)}, not by date; "
                         "daily compaction needs a date partition")
    unknown = set(fixed) - set(spec.partition_keys)
    if unknown:
        raise ValueError(f"filter(s) {sorted(unknown)}: table {spec.name} is partitioned by "
                         f"{', '.join(spec.partition_keys)}")
    levels = [({}, f"{spec.name}/")]
    for name in spec.partition_keys:
        value = date if name == "date" else fixed.get(name)
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
    """Compact every partition of a finished UTC day (narrowed by fixed partition values); the
    result lists the partitions that hold objects on that day."""
    _check_date(date, now)
    results = [compact_partition(s3, bucket, table, partition)
               for partition in partitions_on(s3, bucket, table, date, **fixed)]
    results = [r for r in results if r.status != "empty"]   # a pair with nothing on that date
    merged = [r for r in results if r.status == "compacted"]
    log.info("%s %s %s: %d partition(s), %d compacted from %d objects, %d already single, %d part(s) kept",
             lake.table_spec(table).name, date, fixed or "", len(results), len(merged),
             sum(r.merged for r in merged), sum(r.status == "single" for r in results),
             sum(len(r.kept) for r in results))
    return results
