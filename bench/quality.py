"""Benchmark: the GX quality suite (`candleflow.quality.validate_ohlcv`) vs a vectorised pandas check.

    .venv/bin/python bench/quality.py [--rows 1000000] [--repeat 2]

Two workloads:
- one batch of 1 M 1m candles;
- the full universe's daily batch: 30 symbols x 5 exchanges x 1 day of 1m candles = 150 batches of
  1440 rows, validated one batch at a time as the ingest task does.

`pandas_check` below implements the same rules as the GX suite (see candleflow/quality/suite.py and
include/config/quality.yaml), independently: exact columns, ts a timestamp and prices/volume
float64, no nulls, high >= max(open, close) and low <= min(open, close) (rows with a missing side
ignored, as GX's `either_value_is_missing`), volume >= 0 (nulls ignored), timestamps unique,
strictly increasing and on the timeframe grid, no candle repeating the previous one (OHLC and a
non-zero volume) under a later time, at most `max_missing_ratio` of the span's candles missing, no
zero-volume run of identical OHLC longer than `max_run`, no |log return − rolling median| beyond
k × rolling MAD. It returns {(expectation, column): unexpected_count} for the failed rules, the
same shape the GX report gives, and the bench asserts that both agree on a clean and a corrupted
input (1 M rows and one 1440-row batch) before timing anything. The last line is
`quality_gx_over_pandas=<ratio for 1M rows>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lake_write import make_candles  # noqa: E402  (same generator as the lake bench)

from candleflow.config import TIMEFRAME_MS  # noqa: E402
from candleflow.quality import COLUMNS, PRICE_COLUMNS, validate_ohlcv  # noqa: E402
from candleflow.quality.settings import load_quality  # noqa: E402

TIMEFRAME = "1m"
DAY = datetime(2024, 3, 1, tzinfo=UTC)
N_SYMBOLS, N_EXCHANGES = 30, 5


# -- the same rules, vectorised ----------------------------------------------------------------
def pandas_check(candles: pd.DataFrame, timeframe: str) -> dict[tuple[str, str], int | None]:
    """Failed rules of the OHLCV suite as {(GX expectation type, column): unexpected rows}; {} = pass."""
    failed: dict[tuple[str, str], int | None] = {}
    if set(candles.columns) != set(COLUMNS) or len(candles.columns) != len(COLUMNS):
        failed[("expect_table_columns_to_match_set", "")] = None
        if not set(COLUMNS) <= set(candles.columns):
            return failed  # GX errors on the missing columns' expectations too; nothing more to compare
    ts = candles["ts"]
    if not pd.api.types.is_datetime64_any_dtype(ts):
        failed[("expect_column_values_to_be_of_type", "ts")] = None
    for column in [*PRICE_COLUMNS, "volume"]:
        if candles[column].dtype != np.float64:
            failed[("expect_column_values_to_be_of_type", column)] = None
    for column in COLUMNS:
        nulls = int(candles[column].isna().sum())
        if nulls:
            failed[("expect_column_values_to_not_be_null", column)] = nulls
    o, h, lo, c, v = (candles[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close", "volume"))
    oc_max, oc_min = np.maximum(o, c), np.minimum(o, c)  # NaN if either side is NaN, like skipna=False
    with np.errstate(invalid="ignore"):
        bad_high = int((~np.isnan(h) & ~np.isnan(oc_max) & ~(h >= oc_max)).sum())
        bad_low = int((~np.isnan(lo) & ~np.isnan(oc_min) & ~(oc_min >= lo)).sum())
        bad_volume = int((~np.isnan(v) & (v < 0)).sum())
    if bad_high:
        failed[("expect_column_pair_values_a_to_be_greater_than_b", "high")] = bad_high
    if bad_low:
        failed[("expect_column_pair_values_a_to_be_greater_than_b", "oc_min")] = bad_low
    if bad_volume:
        failed[("expect_column_values_to_be_between", "volume")] = bad_volume
    ts_ms = pd.to_datetime(ts, utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    dup = int(pd.Series(ts_ms).duplicated(keep=False).sum())
    if dup:
        failed[("expect_column_values_to_be_unique", "ts_ms")] = dup
    not_increasing = int((np.diff(ts_ms) <= 0).sum())
    if not_increasing:
        failed[("expect_column_values_to_be_increasing", "ts_ms")] = not_increasing
    off_grid = int((ts_ms % TIMEFRAME_MS[timeframe] != 0).sum())
    if off_grid:
        failed[("expect_column_values_to_be_in_set", "ts_offset_ms")] = off_grid
    failed.update(_sequence_rules(ts_ms, np.c_[o, h, lo, c], v, timeframe))
    return failed


def _sequence_rules(ts_ms, ohlc, volume, timeframe) -> dict[tuple[str, str], int]:
    """repeated candle, continuity, stale price and return outliers, in time order."""
    cfg = load_quality().batch
    failed = {}
    order = np.argsort(ts_ms, kind="stable")
    t, ohlc, volume = ts_ms[order], ohlc[order], volume[order]
    tf = TIMEFRAME_MS[timeframe]
    if len(t) > 1:
        frame = pd.DataFrame(ohlc, columns=PRICE_COLUMNS).assign(volume=volume)
        prev = frame.shift(1)
        same = (frame[PRICE_COLUMNS] == prev[PRICE_COLUMNS]).all(axis=1).to_numpy()
        repeated = int((same & (frame["volume"] == prev["volume"]).to_numpy() & (volume > 0)
                        & np.r_[False, np.diff(t) != 0]).sum())
        if repeated:
            failed[("expect_column_values_to_be_in_set", "repeats_previous")] = repeated
        # stale: label runs of identical OHLC among zero-volume candles, count rows in long ones
        zero = volume == 0
        run = np.cumsum(~(same & zero & np.r_[False, zero[:-1]]))
        sizes = pd.Series(zero).groupby(run).transform("sum").to_numpy()
        stale = int((zero & (sizes > cfg["stale_price"]["max_run"])).sum())
        if stale:
            failed[("expect_column_values_to_be_between", "stale_run")] = stale
        rule = cfg["return_outliers"]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = pd.Series(np.r_[np.nan, np.diff(np.log(np.where(ohlc[:, 3] > 0, ohlc[:, 3], np.nan)))])
        past = r.shift(1)
        med = past.rolling(rule["window"], min_periods=rule["min_periods"]).median()
        mad = (past - med).abs().rolling(rule["window"], min_periods=rule["min_periods"]).median()
        limit = np.maximum(rule["k"] * mad, rule["min_abs_return"])
        outliers = int(((r - med).abs() > limit).sum())
        if outliers:
            failed[("expect_column_values_to_be_between", "return_score")] = outliers
    on_grid = np.unique(t[t % tf == 0])
    if len(on_grid):
        expected = (on_grid[-1] - on_grid[0]) // tf + 1
        missing = int(expected - len(on_grid))
        if missing > expected * cfg["continuity"]["max_missing_ratio"]:
            failed[("expect_table_row_count_to_be_between", "")] = missing
    return failed


def gx_failed(candles: pd.DataFrame, timeframe: str) -> dict[tuple[str, str], int | None]:
    report = validate_ohlcv(candles, timeframe)
    out = {}
    for f in report.failed:
        column = f.get("column") or f.get("column_A") or ""
        count = f.get("unexpected_count")
        out[(f["expectation"], column)] = None if count is None else int(count)
    assert report.success == (not report.errors)
    return out


def corrupt(candles: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """A copy with every kind of defect: nulls, broken wicks, negative volume, repeated, reordered
    and off-grid timestamps, each on its own rows."""
    frame = candles.copy()
    n = len(frame)
    rng = np.random.default_rng(seed)
    # rows at least 4 apart so no defect touches another's neighbours
    rows = np.sort(rng.choice(np.arange(4, n - 4, 4), size=18, replace=False))
    rng.shuffle(rows)
    it = iter(rows.tolist())
    take = lambda k: [next(it) for _ in range(k)]  # noqa: E731
    ts = frame["ts"].to_numpy().copy()
    ci = frame.columns.get_loc
    for r in take(3):
        frame.iloc[r, ci("close")] = np.nan
    for r in take(4):
        frame.iloc[r, ci("high")] = max(frame.iloc[r, ci("open")], frame.iloc[r, ci("close")]) - 1.0
    for r in take(3):
        frame.iloc[r, ci("low")] = min(frame.iloc[r, ci("open")], frame.iloc[r, ci("close")]) + 1.0
    for r in take(2):
        frame.iloc[r, ci("volume")] = -1.0
    for r in take(2):
        ts[r] = ts[r - 1]                      # a repeated timestamp
    for r in take(2):
        ts[r], ts[r + 1] = ts[r + 1], ts[r]    # two candles out of order
    for r in take(2):
        ts[r] = ts[r] + np.timedelta64(30, "s")  # off the 1m grid
    frame["ts"] = pd.Series(ts, index=frame.index).astype("datetime64[ms, UTC]")
    # the sequence rules, on rows far from the others: a candle re-sent under the next minute, a
    # frozen feed (15 identical zero-volume candles), a +30 % print and back, 2 % of the rows missing
    at = int(rng.integers(n // 5, n // 4))
    frame.iloc[at + 1, [ci(k) for k in ("open", "high", "low", "close", "volume")]] = \
        frame.iloc[at, [ci(k) for k in ("open", "high", "low", "close", "volume")]].to_numpy()
    at = int(rng.integers(n // 4, n // 3))
    frozen = frame.iloc[at - 1, ci("close")]
    for r in range(at, at + 15):
        frame.iloc[r, [ci("open"), ci("high"), ci("low"), ci("close"), ci("volume")]] = [frozen] * 4 + [0.0]
    at = int(rng.integers(n // 3, n // 2))
    frame.iloc[at, ci("close")] *= 1.3
    frame.iloc[at, ci("high")] = frame.iloc[at, ci("close")]
    cut = int(rng.integers(n // 2, 2 * n // 3))
    return frame.drop(index=frame.index[cut:cut + max(1, n // 50)]).reset_index(drop=True)


def daily_universe() -> list[pd.DataFrame]:
    batches = []
    for e in range(N_EXCHANGES):
        for s in range(N_SYMBOLS):
            price = 10 ** (1 + (s % 5)) * (1 + 0.1 * s)  # 10 … 100 000, various magnitudes
            batches.append(make_candles(1440, seed=1000 * e + s, start=DAY, price=price))
    return batches


def best_of(repeat: int, fn) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="GX runs per workload (pandas runs 5x that)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # GX logs its ephemeral docs site at INFO

    big = make_candles(args.rows)
    universe = daily_universe()
    print(f"data: {args.rows:,} 1m candles (1 market); daily universe {len(universe)} batches x "
          f"{len(universe[0])} rows ({N_SYMBOLS} symbols x {N_EXCHANGES} exchanges, {DAY:%Y-%m-%d})")
    t0 = time.perf_counter()
    first = validate_ohlcv(universe[0], TIMEFRAME)
    import great_expectations as gx  # already imported by validate_ohlcv; for the version
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, great_expectations {gx.__version__}, "
          f"pandas {pd.__version__}")
    print(f"GX first call (import, ephemeral context, suite): {time.perf_counter() - t0:.2f} s "
          f"({first.evaluated_expectations} expectations)")

    # -- agreement before timing ---------------------------------------------------------------
    print("\nagreement GX vs pandas:")
    n = f"{args.rows / 1e6:g}M" if args.rows >= 100_000 else f"{args.rows:,}"
    for label, frame in ((f"{n} clean", big), (f"{n} corrupted", corrupt(big)),
                         ("1440 clean", universe[1]), ("1440 corrupted", corrupt(universe[1], seed=11))):
        t0 = time.perf_counter()
        g = gx_failed(frame, TIMEFRAME)
        gx_s = time.perf_counter() - t0
        p = pandas_check(frame, TIMEFRAME)
        status = "agree" if g == p else "DISAGREE"
        shown = ", ".join(f"{k[0].removeprefix('expect_')}[{k[1]}]={v}" for k, v in sorted(g.items())) or "pass"
        print(f"  {label:<15} {status}: {shown}  (GX {gx_s:.2f} s)")
        if g != p:
            print(f"    GX     {sorted(g.items())}\n    pandas {sorted(p.items())}")
            return 1

    # -- timings -------------------------------------------------------------------------------
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    gx_big, gx_big_all = best_of(args.repeat, lambda: validate_ohlcv(big, TIMEFRAME))
    pd_big, pd_big_all = best_of(5 * args.repeat, lambda: pandas_check(big, TIMEFRAME))
    gx_day, gx_day_all = best_of(args.repeat, lambda: [validate_ohlcv(b, TIMEFRAME) for b in universe])
    pd_day, pd_day_all = best_of(5 * args.repeat, lambda: [pandas_check(b, TIMEFRAME) for b in universe])

    print("\ntimings (best of runs):")
    print(f"  {n + ' rows':<14} GX     {gx_big:9.3f} s  [{fmt(gx_big_all)}]  {args.rows / gx_big:12,.0f} rows/s")
    print(f"  {n + ' rows':<14} pandas {pd_big:9.3f} s  [{fmt(pd_big_all)}]  {args.rows / pd_big:12,.0f} rows/s")
    print(f"  daily universe GX     {gx_day:9.3f} s  [{fmt(gx_day_all)}]  "
          f"{1000 * gx_day / len(universe):.1f} ms/batch")
    print(f"  daily universe pandas {pd_day:9.3f} s  [{fmt(pd_day_all)}]  "
          f"{1000 * pd_day / len(universe):.2f} ms/batch")
    print(f"\nquality_daily_gx_over_pandas={gx_day / pd_day:.1f}")
    print(f"quality_gx_over_pandas={gx_big / pd_big:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
