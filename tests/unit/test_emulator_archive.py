"""binance's public data archive (data.binance.vision layout) served by the emulator."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.error
import urllib.request
import zipfile

import pytest

from candleflow.emulator import EmulatorServer

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

CLOCK = "2024-10-30T00:30:00Z"
SEPT1, OCT1 = 1725148800000, 1727740800000
BASE = "/binance-archive/data/spot"


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock=CLOCK) as server:
        yield server


def get(emulator, path):
    try:
        with urllib.request.urlopen(emulator.url + path, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def rest_klines(emulator, symbol, interval, start, end):
    rows = []
    while start < end:
        status, body = get(emulator, f"/binance/api/v3/klines?symbol={symbol}&interval={interval}"
                                     f"&startTime={start}&endTime={end - 1}&limit=1000")
        page = json.loads(body)
        if not page:
            break
        rows += page
        start = page[-1][0] + 1
    return rows


def unzip_csv(data: bytes, name: str) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == [name]
        return list(csv.reader(io.StringIO(zf.read(name).decode())))


def test_monthly_archive_verifies_and_equals_rest_klines(emulator):
    path = f"{BASE}/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-09.zip"
    status, data = get(emulator, path)
    assert status == 200
    status, checksum = get(emulator, path + ".CHECKSUM")
    assert status == 200
    digest, name = checksum.decode().rstrip("\n").split("  ")
    assert name == "BTCUSDT-1h-2024-09.zip" and digest == hashlib.sha256(data).hexdigest()
    rows = unzip_csv(data, "BTCUSDT-1h-2024-09.csv")
    assert len(rows) == 30 * 24 and len(rows[0]) == 12  # no header, binance's 12 columns
    rest = rest_klines(emulator, "BTCUSDT", "1h", SEPT1, OCT1)
    assert rows == [[str(v) for v in r] for r in rest]  # same candles, same formatting
    assert int(rows[0][0]) == SEPT1 and int(rows[-1][6]) == OCT1 - 1


def test_daily_archive_and_1m(emulator):
    path = f"{BASE}/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2024-10-28.zip"
    status, data = get(emulator, path)
    assert status == 200
    rows = unzip_csv(data, "ETHUSDT-1m-2024-10-28.csv")
    start = 1730073600000  # 2024-10-28
    assert len(rows) == 1440 and rows == [[str(v) for v in r] for r in rest_klines(emulator, "ETHUSDT", "1m", start, start + 86_400_000)]
    again = get(emulator, path)[1]
    assert again == data  # byte-identical: the checksum is stable


@pytest.mark.parametrize("path", [
    f"{BASE}/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-10.zip",           # the current month: not finished
    f"{BASE}/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-10.zip.CHECKSUM",
    f"{BASE}/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-10-30.zip",          # today
    f"{BASE}/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-11-02.zip",          # the future
    f"{BASE}/monthly/klines/SOLUSDT/1h/SOLUSDT-1h-2020-07.zip",           # before SOL's listing (2020-08-11)
    f"{BASE}/monthly/klines/THETAUSDT/1h/THETAUSDT-1h-2024-01.zip.bad",   # no such file kind
    f"{BASE}/monthly/klines/DOGEUSDT/1h/DOGEUSDT-1h-2024-01.zip",         # not listed here
    f"{BASE}/monthly/klines/BTCUSDT/7m/BTCUSDT-7m-2024-01.zip",           # no such interval
])
def test_unpublished_files_are_404(emulator, path):
    status, body = get(emulator, path)
    assert status == 404 and b"NoSuchKey" in body


def test_listing_month_is_partial(emulator):
    status, data = get(emulator, f"{BASE}/monthly/klines/SOLUSDT/1d/SOLUSDT-1d-2020-08.zip")
    rows = unzip_csv(data, "SOLUSDT-1d-2020-08.csv")
    assert status == 200 and len(rows) == 21 and int(rows[0][0]) == 1597104000000  # from 2020-08-11


def test_archive_faults(emulator):
    path = f"{BASE}/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-09.zip"
    good = get(emulator, path)[1]
    emulator.faults.set([{"kind": "archive_corrupt", "symbol": "BTC", "period": "2024-09"}])
    status, bad = get(emulator, path)
    checksum = get(emulator, path + ".CHECKSUM")[1].decode().split()[0]
    assert status == 200 and len(bad) == len(good) and bad != good
    assert hashlib.sha256(bad).hexdigest() != checksum == hashlib.sha256(good).hexdigest()
    assert get(emulator, path.replace("2024-09", "2024-08"))[0] == 200  # scoped to the period
    emulator.faults.set([{"kind": "archive_missing", "exchange": "binance", "interval": "1d"}])
    assert get(emulator, path)[0] == 404 and get(emulator, path + ".CHECKSUM")[0] == 404
    assert get(emulator, path.replace("1d", "1h"))[0] == 200


def test_an_outage_is_missing_from_the_archive_too(emulator):
    emulator.faults.set([{"kind": "outage", "exchange": "binance", "symbol": "BTC",
                          "from": "2024-09-10T00:00:00Z", "to": "2024-09-10T05:00:00Z"}])
    rows = unzip_csv(get(emulator, f"{BASE}/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-09-10.zip")[1],
                     "BTCUSDT-1h-2024-09-10.csv")
    assert len(rows) == 19 and int(rows[0][0]) == 1725944400000  # 05:00


def test_spot_archives_from_2025_are_in_microseconds():
    with EmulatorServer(clock="2025-03-15T12:00:00Z") as server:
        rows = unzip_csv(get(server, f"{BASE}/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-01-01.zip")[1],
                         "BTCUSDT-1h-2025-01-01.csv")
        assert int(rows[0][0]) == 1735689600000000 and int(rows[0][6]) == 1735693199999999
        rows = unzip_csv(get(server, f"{BASE}/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12.zip")[1],
                         "BTCUSDT-1d-2024-12.csv")
        assert int(rows[0][0]) == 1733011200000  # 2024 files stay in ms
