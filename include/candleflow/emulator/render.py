"""Candle pages rendered as JSON text in bulk, byte-identical to formatting each row in Python.

The venues print every price and volume as `num_text(x)` (`%.10g` from 1 up, `%.8g` below) in a
JSON string. Formatting 8000 floats one by one, building 1000 small lists and `json.dumps`-ing
them cost the emulator ~4 ms of CPU per 1000-candle binance page, most of its time. Here the same
bytes come out of a few dozen numpy operations on the whole page:

- `num_cells` finds each number's P significant digits as a whole float (one correctly rounded
  multiplication by an exact power of ten), splits it into integer and decimal chunks and maps
  each chunk through a lookup table to a 4-byte cell of text, 0 bytes standing for nothing (the
  leading zeros, the trailing zeros and the point when there are no decimals). What it cannot
  prove right -- a rounding too close to a tie, exponent notation, 0.0's sign, negatives, nan,
  inf -- it hands to `num_text` itself. `int_cells` does the same for integers.
- `page` lays the rows out column after column (literal separators, then cells), transposes them
  to rows and drops the 0 bytes (`bytes.translate`): the rows' JSON, comma-separated.

A `Page` stands in the reply body where the list of candles was; `encode_json` splices its text
into the JSON of the rest of the body, so the HTTP body is exactly
`json.dumps(body_with_plain_rows, separators=(",", ":"))`. Faults that edit a page call
`expand_pages` first, which swaps each `Page` for its plain rows (`json.loads` of the text).
tests/unit/test_emulator_render.py holds the per-row reference and checks every venue against it.
"""

from __future__ import annotations

import json

import numpy as np


def _lut() -> np.ndarray:
    """Cells of text (4 bytes as one uint32, memory order; 0 bytes stand for nothing) by index:
    every value 0..9999 as 4 digits in five variants (nothing; all digits; leading zeros
    dropped; leading zeros dropped but the units digit kept; trailing zeros dropped), then every
    value 0..999 as a point and 3 digits (all; trailing zeros dropped, and the point if all are)."""
    full = [f"{i:04d}" for i in range(10_000)]
    lead = [t.lstrip("0").rjust(4, "\0") for t in full]
    units = [f"{i:>4d}".replace(" ", "\0") for i in range(10_000)]
    trail = [t.rstrip("0").ljust(4, "\0") for t in full]
    point = [f".{i:03d}" for i in range(1000)]
    point_trail = ["\0" * 4] + [t.rstrip("0").ljust(4, "\0") for t in point[1:]]
    text = "".join(["\0" * 40_000, *full, *lead, *units, *trail, *point, *point_trail])
    return np.frombuffer(text.encode("ascii"), dtype=np.uint32)


_LUT = _lut()
# offsets of the variants in _LUT
_FULL, _LEAD, _UNITS, _TRAIL, _POINT, _POINT_TRAIL = 10_000, 20_000, 30_000, 40_000, 50_000, 51_000
_P10F = 10.0 ** np.arange(23)                   # exact doubles up to 1e22
_SEP = (",", ":")
NUM_CELLS, INT_CELLS = 6, 5     # enough for num_text's longest (17 chars) and any int64's (20)


def num_text(x: float) -> str:
    """How the venues print a price or a volume (what `num_cells` reproduces in bulk)."""
    return f"{x:.10g}" if x >= 1 or x <= -1 else f"{x:.8g}"


def _cells(text: str) -> np.ndarray:
    data = text.encode("ascii")
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype=np.uint32)


def _patch(cells: np.ndarray, where: np.ndarray, texts: list[str]) -> None:
    """Write `texts` over the elements `where` of a (cells, m) array."""
    for i, text in zip(where.tolist(), texts, strict=True):
        cells[:, i] = 0
        chunk = _cells(text)
        cells[:len(chunk), i] = chunk


def _chunks(v: np.ndarray, out: np.ndarray) -> None:
    """Whole floats 0 <= v < 10**12 as chunks v // 10**8, 4 digits, 4 digits in out[0..2] (exact:
    float division is correctly rounded, so floor(v / 10**j) is right below 2**53)."""
    hi = np.floor(v / 1e8)
    mid = np.floor(v / 1e4)
    out[0] = hi
    np.subtract(mid, hi * 1e4, out=out[1])
    np.subtract(v, mid * 1e4, out=out[2])


def num_cells(x: np.ndarray) -> np.ndarray:
    """`num_text` of every element of a float array, as uint32 cells of 4 bytes: an array of shape
    (cells, *x.shape) whose bytes along the first axis, zeros dropped, are the element's text
    (at most NUM_CELLS cells; those empty for every element are left out)."""
    shape = x.shape
    x = np.ascontiguousarray(x, dtype=np.float64).ravel()
    big = x >= 1                                       # (negatives go to num_text)
    low = np.where(big, 1e9, 1e7)                      # 10 ** (P - 1): %.10g from 1 up, else %.8g
    with np.errstate(all="ignore"):                    # nan, inf, 0 and negatives go to num_text
        k = np.where(big, 9.0, 7.0) - np.floor(np.log10(x))  # decimals before trimming: P - 1 - exponent
        fixed = k <= 11                                # %g's fixed notation: -4 <= exponent (< P: below)
        k = np.maximum(np.where(fixed, k, 0), 0).astype(np.int64)
        scale = _P10F.take(k)
        scaled = x * scale                             # one rounding: |error| < 2**-20 below 1e10
        n = np.floor(scaled)
        frac = scaled - n
        n += frac > 0.5                                # the P significant digits, correctly rounded
        # P digits (the exponent was right and no carry to P + 1), and not too close to a tie
        fast = fixed & (n >= low) & (n < low * 10) & (np.abs(frac - 0.5) > 1e-5)
    n = np.where(fast, n, 0)                           # (+0.0 prints as "0" from here too)
    chunks = np.empty((2, x.size))
    whole, fraction = chunks                           # the integer part; the decimals as 11 digits
    np.floor(np.divide(n, scale, out=whole), out=whole)  # exact below 2**53
    np.multiply(n - whole * scale, _P10F.take(11 - k), out=fraction)
    index = np.empty((2, 3, x.size))                   # 2 + 4 + 4 integer digits, 3 + 4 + 4 decimals
    _chunks(chunks, index.swapaxes(0, 1))
    index = index.reshape(NUM_CELLS, x.size).astype(np.intp)
    # the integer part without leading zeros (but its units digit), the decimals without trailing
    # zeros (and without the point if they are all 0): each chunk's variant by its neighbours
    index[0] += _LEAD
    index[1] += np.where(index[0] > _LEAD, _FULL, _LEAD)
    index[2] += np.where(whole >= 1e4, _FULL, _UNITS)
    index[3] += np.where(index[4] + index[5] > 0, _POINT, _POINT_TRAIL)
    index[4] += np.where(index[5] > 0, _FULL, _TRAIL)
    index[5] += _TRAIL
    cells = _LUT.take(index)
    zero = (x == 0) & ~np.signbit(x)
    slow = np.flatnonzero(~(fast | zero))
    _patch(cells, slow, [num_text(v) for v in x[slow].tolist()])
    cells = cells[cells.any(axis=1)]                   # fewer bytes to drop later (often 2-3 cells)
    return cells.reshape(len(cells), *shape)


def int_cells(v: np.ndarray) -> np.ndarray:
    """`str(v)` of every element of an int64 array, as at most INT_CELLS cells (see `num_cells`)."""
    shape = v.shape
    v = np.ascontiguousarray(v, dtype=np.int64).ravel()
    fast = (v >= 0) & (v < 2 ** 53)
    f = np.where(fast, v, 0).astype(np.float64)        # exact below 2**53
    index = np.zeros((INT_CELLS, v.size))              # room for num_text's longest, 4 + 4 + 4 + 4 digits
    index[1] = np.floor(f / 1e12)
    _chunks(f - index[1] * 1e12, index[2:])
    index = index.astype(np.intp)
    index[1] += _LEAD
    index[2] += np.where(index[1] > _LEAD, _FULL, _LEAD)
    index[3] += np.where(f >= 1e8, _FULL, _LEAD)
    index[4] += np.where(f >= 1e4, _FULL, _UNITS)
    cells = _LUT.take(index)
    slow = np.flatnonzero(~fast)
    _patch(cells, slow, [str(i) for i in v[slow].tolist()])
    cells = cells[cells.any(axis=1)]
    return cells.reshape(len(cells), *shape)


def flag_cells(flag: np.ndarray, yes: str, no: str) -> np.ndarray:
    """One cell per element: `yes` where `flag`, else `no` (texts of up to 4 characters)."""
    return np.where(flag, _cells(yes)[0], _cells(no)[0]).astype(np.uint32)[None]


def text_of(cells: np.ndarray) -> list[str]:
    """The texts in a (cells, n) array (for tests)."""
    rows = np.ascontiguousarray(cells.reshape(cells.shape[0], -1).T)
    return [row.tobytes().replace(b"\0", b"").decode("ascii") for row in rows]


def to_int(x: np.ndarray) -> np.ndarray:
    """`int(x)` of float elements (truncation), as int64; raises as `int()` does on nan or inf."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or (np.abs(x) >= 2.0 ** 63).any():
        for value in x.tolist():
            int(value)  # the ValueError / OverflowError the per-row rendering raised
        raise OverflowError("int too large for int64")
    return x.astype(np.int64)


def as_rows(rows) -> np.ndarray:
    """Candle rows [ts, open, high, low, close, volume] as a float (n, 6) array ([] allowed)."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows.reshape(0, 6) if rows.size == 0 else rows


class Page:
    """A list of candles already rendered: `json` is its exact JSON text (`[...]`)."""

    __slots__ = ("json",)

    def __init__(self, text: bytes):
        self.json = text

    def rows(self) -> list:
        """The plain rows (lists or dicts of str and int), as `json.loads` reads the text."""
        return json.loads(self.json)

    def __repr__(self) -> str:
        return f"Page({self.json[:60]!r}...)"


def page(n: int, *parts) -> Page:
    """The JSON list of `n` rows, each laid out by `parts`: literal text (`str`), or cells of
    shape (k, n) from `num_cells` / `int_cells` / `flag_cells` (one column of the rows each)."""
    blocks = [_cells(p) if isinstance(p, str) else p for p in parts]
    blocks.append(_cells(","))
    cells = np.empty((sum(len(b) for b in blocks), n), dtype=np.uint32)
    at = 0
    for block in blocks:
        cells[at:at + len(block)] = block[:, None] if block.ndim == 1 else block
        at += len(block)
    text = np.ascontiguousarray(cells.T).tobytes().translate(None, b"\0")  # row by row, blanks dropped
    return Page(b"[" + text[:-1] + b"]")


def expand_pages(body):
    """`body` with each `Page` (the body itself, or a value of its dicts) replaced by its plain
    rows, so that faults can edit the candle list in place."""
    if type(body) is Page:
        return body.rows()
    if type(body) is dict:
        for key, value in list(body.items()):
            if type(value) in (Page, dict):
                body[key] = expand_pages(value)
    return body


_MARK = "\x00candleflow-page\x00"
_MARK_JSON = json.dumps(_MARK)


def _mark(body, pages: list, depth: int = 3):
    """`body` with each `Page` replaced by a placeholder string (copying the dicts on its way)."""
    if type(body) is Page:
        pages.append(body)
        return _MARK
    if depth and type(body) is dict:
        out = None
        for key, value in body.items():
            marked = _mark(value, pages, depth - 1)
            if marked is not value:
                out = dict(body) if out is None else out
                out[key] = marked
        return body if out is None else out
    return body


def encode_json(body) -> bytes:
    """`json.dumps(body, separators=(",", ":")).encode()` for a body that may hold `Page`s."""
    if type(body) is Page:
        return body.json
    pages: list[Page] = []
    text = json.dumps(_mark(body, pages), separators=_SEP)
    if not pages:
        return text.encode()
    pieces = text.split(_MARK_JSON)
    out = [pieces[0].encode()]
    for p, rest in zip(pages, pieces[1:], strict=True):
        out += (p.json, rest.encode())
    return b"".join(out)
