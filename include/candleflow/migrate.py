"""Lake layout migrations: move a lake written by an older candleflow to the current layout.

`ohlcv_days_to_months`: candles used to be partitioned by UTC date
(`ohlcv/…/timeframe=<tf>/date=<YYYY-MM-DD>/part-<from>_<to>.parquet` and `compacted.parquet`);
they are now partitioned by month (docs/lake.md, "Layout"). Readers only look at `month=`
partitions, so a lake that is not migrated keeps its old candles invisible — and the gap ledger,
which still says those days are complete, stops a backfill from fetching them again. Run once
after upgrading:

    python -m candleflow.migrate ohlcv-months --bucket candleflow-lake [--dry-run]

(endpoint and credentials from the environment, as boto3 reads them: `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, …). Per pair and month, it merges the old date partitions exactly as the
old reader did (within a date the later-named object wins; dates do not overlap) together with
any compacted object the month already has (written since the upgrade: newer, so it wins), and
PUTs the result as the month's `compacted-<from>_<to>.parquet`. Parts written since the upgrade
outrank a compacted object and are left alone. Only then are the old objects deleted, each only
if unchanged (`IfMatch`). Readers never saw the old objects, so there is no moment where a
candle is counted twice; a crash before the deletes leaves the old objects, and a re-run merges
them again into the same bytes. A lake with no `date=` partition is left untouched.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from candleflow import compaction, lake

log = logging.getLogger(__name__)

@dataclass
class MonthMigration:
    """One pair's month: the old objects merged (`sources`) into `key`, and what was deleted."""

    partition: str
    key: str
    rows: int
    sources: list[str]
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _old_objects(s3, bucket: str, prefix: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """{(pair prefix, month): [(date, key)] in the old reader's order} of the old layout's objects
    (within a date `compacted.parquet` sorts before the parts, as it ranked below them)."""
    pattern = re.compile(re.escape(prefix) + r"/exchange=[^/]+/symbol=[^/]+/timeframe=[^/]+/"
                         r"date=(?P<date>\d{4}-\d{2}-\d{2})/[^/]+\.parquet")
    months: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for key in lake.list_objects(s3, bucket, f"{prefix}/"):
        match = pattern.fullmatch(key)
        if match:
            months[(key[:match.start("date") - len("date=")], match["date"][:7])].append((match["date"], key))
    return {k: sorted(v) for k, v in sorted(months.items())}


def ohlcv_days_to_months(s3, bucket: str, prefix: str = "ohlcv", *, dry_run: bool = False) -> list[MonthMigration]:
    """Migrate every date partition under `prefix` into its month partition (module docstring)."""
    spec = lake.ohlcv_spec(prefix)
    done = []
    for (pair, month), old in _old_objects(s3, bucket, prefix).items():
        target_prefix = f"{pair}month={month}/"
        current = compaction._objects_of(s3, bucket, target_prefix)
        compacted = [k for k in current if k[len(target_prefix):].startswith(compaction.COMPACTED)]
        sources = [key for _, key in old] + compacted   # lowest precedence first
        first_day = min(date for date, _ in old)
        last_day = max(date for date, _ in old)
        lo, _ = lake.partition_window("date", first_day)
        _, hi = lake.partition_window("date", last_day)
        for key in compacted:
            window = lake.object_window(key)
            lo, hi = min(lo, window[0]), max(hi, window[1])
        target = target_prefix + f"{compaction.COMPACTED}{lake._stamp(lo)}_{lake._stamp(hi)}.parquet"
        if dry_run:
            done.append(MonthMigration(target_prefix, target, 0, sources))
            continue
        read = lake._in_flight(lambda key: compaction._get_with_etag(s3, bucket, key), sources)
        tables = [lake.as_current_schema(spec, table, key) for key, (table, _) in zip(sources, read, strict=True)]
        merged = lake._dedup_sorted(pa.concat_tables(tables), spec.unique_keys, spec.sort_keys)
        written = lake.write_object(s3, bucket, target, merged)
        result = MonthMigration(target_prefix, target, written.rows if written else 0, sources)
        for key, (_, etag) in zip(sources, read, strict=True):
            if key == target:
                continue
            gone = compaction._delete_if_unchanged(s3, bucket, key, etag)
            (result.deleted if gone else result.kept).append(key)
        if result.kept:
            log.warning("%s: %d object(s) changed while migrating and were kept: %s", target_prefix,
                        len(result.kept), result.kept)
        log.info("%s: %d old object(s) → %s (%d rows)", target_prefix, len(sources), target, result.rows)
        done.append(result)
    return done


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    import boto3

    parser = argparse.ArgumentParser(prog="python -m candleflow.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("migration", choices=["ohlcv-months"], help="ohlcv-months: date partitions → month partitions")
    parser.add_argument("--bucket", required=True, help="the lake bucket (pipeline.yaml lake.bucket)")
    parser.add_argument("--prefix", default="ohlcv", help="the ohlcv table's prefix (pipeline.yaml lake.ohlcv_prefix)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be merged; change nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = ohlcv_days_to_months(boto3.client("s3"), args.bucket, args.prefix, dry_run=args.dry_run)
    print(json.dumps({"months": len(results), "objects": sum(len(r.sources) for r in results),
                      "rows": sum(r.rows for r in results), "kept": sum(len(r.kept) for r in results),
                      "dry_run": args.dry_run}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
