"""The lake's generic table machinery (TableSpec, write_partition, read_table) on the moto server."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest

from candleflow import lake

SPEC = lake.TableSpec(
    name="funding_test",
    schema=pa.schema([
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("rate", pa.float64()),
        pa.field("note", pa.string()),
    ]),
    partition_keys=("exchange", "month"),
    unique_keys=("ts",),
)


def rows(hours: list[int], rate: float = 0.0001, month: str = "2024-01") -> pd.DataFrame:
    base = pd.Timestamp(f"{month}-01", tz="UTC")
    return pd.DataFrame({"ts": [base + pd.Timedelta(hours=h) for h in hours],
                         "rate": [rate] * len(hours), "note": ["x"] * len(hours)})


def test_write_partition_is_deterministic_deduplicated_and_sorted(s3_client, bucket):
    frame = rows([8, 0, 16, 8])
    frame.loc[3, "rate"] = 0.0002  # the later twin wins
    first = lake.write_partition(s3_client, bucket, SPEC, frame, partition={"exchange": "okx", "month": "2024-01"})
    assert first.key == "funding_test/exchange=okx/month=2024-01/part-00000.parquet"
    assert first.rows == 3
    listing = lake.list_objects(s3_client, bucket)
    again = lake.write_partition(s3_client, bucket, SPEC, frame.iloc[[2, 0, 1, 3]],  # twins keep their order
                                 partition={"month": "2024-01", "exchange": "okx"})
    assert again == first and lake.list_objects(s3_client, bucket) == listing
    got, keys = lake.read_table(s3_client, bucket, SPEC)
    assert keys == [first.key]
    assert list(got.columns) == ["exchange", "month", "ts", "rate", "note"]
    assert got["ts"].is_monotonic_increasing
    assert got.loc[got["ts"].dt.hour == 8, "rate"].tolist() == [0.0002]


def test_read_table_prunes_by_partition_and_time_and_later_objects_win(s3_client, bucket):
    lake.write_partition(s3_client, bucket, SPEC, rows([0, 8]), partition={"exchange": "okx", "month": "2024-01"})
    lake.write_partition(s3_client, bucket, SPEC, rows([8], rate=0.5), partition={"exchange": "okx", "month": "2024-01"},
                         object_name="part-00001.parquet")
    lake.write_partition(s3_client, bucket, SPEC, rows([0], month="2024-02"), partition={"exchange": "okx", "month": "2024-02"})
    lake.write_partition(s3_client, bucket, SPEC, rows([0]), partition={"exchange": "bybit", "month": "2024-01"})
    got, keys = lake.read_table(s3_client, bucket, SPEC, exchange="okx",
                                start=datetime(2024, 1, 1, 4, tzinfo=UTC), end=datetime(2024, 2, 1, tzinfo=UTC))
    assert all("month=2024-01" in k and "exchange=okx" in k for k in keys)
    assert got["ts"].tolist() == [pd.Timestamp("2024-01-01 08:00", tz="UTC")]
    assert got["rate"].tolist() == [0.5]
    arrow = lake.read(s3_client, bucket, SPEC, as_arrow=True, exchange="bybit")
    assert isinstance(arrow, pa.Table) and arrow.num_rows == 1


def test_an_empty_frame_deletes_the_object_a_rerun_no_longer_produces(s3_client, bucket):
    lake.write_partition(s3_client, bucket, SPEC, rows([0]), partition={"exchange": "okx", "month": "2024-01"})
    assert lake.write_partition(s3_client, bucket, SPEC, rows([]), partition={"exchange": "okx", "month": "2024-01"}) is None
    assert lake.list_objects(s3_client, bucket, "funding_test/") == {}


@pytest.mark.parametrize(("frame", "partition", "message"), [
    (rows([0]).drop(columns="rate"), {"exchange": "okx", "month": "2024-01"}, "missing column(s) ['rate']"),
    (rows([0]).assign(extra=1), {"exchange": "okx", "month": "2024-01"}, "unexpected column(s) ['extra']"),
    (rows([0]).assign(rate="high"), {"exchange": "okx", "month": "2024-01"}, "column 'rate'"),
    (rows([0]), {"exchange": "okx"}, "partitioned by exchange, month"),
    (rows([0]), {"exchange": "a/b", "month": "2024-01"}, "exchange='a/b'"),
])
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(s3_client, bucket, frame, partition, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lake.write_partition(s3_client, bucket, SPEC, frame, partition=partition)
    assert lake.list_objects(s3_client, bucket, "funding_test/") == {}


def test_table_spec_names_unknown_tables_and_finds_ohlcv():
    assert lake.table_spec("ohlcv") is lake.OHLCV
    with pytest.raises(KeyError, match="unknown lake table"):
        lake.table_spec("trades")


def test_schema_evolution_an_old_object_reads_with_a_new_nullable_column_as_null(s3_client, bucket):
    old = lake.write_partition(s3_client, bucket, SPEC, rows([0, 8]), partition={"exchange": "okx", "month": "2024-01"})
    # version 2 of the table adds a nullable column at the end (the only change docs/lake.md allows)
    v2 = lake.TableSpec(SPEC.name, SPEC.schema.append(pa.field("premium", pa.float64())), SPEC.partition_keys,
                        SPEC.unique_keys)
    new = lake.write_partition(s3_client, bucket, v2, rows([16]).assign(premium=0.5),
                               partition={"exchange": "okx", "month": "2024-01"}, object_name="part-00001.parquet")
    got, keys = lake.read_table(s3_client, bucket, v2)
    assert keys == [old.key, new.key]
    assert got.columns.tolist() == ["exchange", "month", "ts", "rate", "note", "premium"]
    assert got["premium"].isna().tolist() == [True, True, False] and got["premium"].iloc[2] == 0.5
    arrow = lake.read(s3_client, bucket, v2, as_arrow=True)
    assert arrow.schema.field("premium").type == pa.float64() and arrow.column("premium").null_count == 2
    # a reader still on version 1 ignores the column it does not know
    assert lake.read(s3_client, bucket, SPEC).columns.tolist() == ["exchange", "month", "ts", "rate", "note"]


@pytest.mark.parametrize(("field", "message"), [
    (pa.field("premium", pa.float64(), nullable=False), "no column 'premium', which table funding_test declares not-null"),
    (pa.field("note", pa.timestamp("ms")), "column 'note' is string, table funding_test says timestamp[ms]"),
])
def test_schema_evolution_refuses_what_the_rule_forbids_naming_object_and_column(s3_client, bucket, field, message):
    written = lake.write_partition(s3_client, bucket, SPEC, rows([0]), partition={"exchange": "okx", "month": "2024-01"})
    fields = [f for f in SPEC.schema if f.name != field.name] + [field]
    changed = lake.TableSpec(SPEC.name, pa.schema(fields), SPEC.partition_keys, SPEC.unique_keys)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        lake.read_table(s3_client, bucket, changed)
    assert written.key in str(err.value)
