"""Spectrum files: JCAMP-DX (through the `jcamp` package) and two-column CSV, in and out.

Everything read becomes a `Spectrum` in wavenumbers (cm^-1, ascending) with absorbance (IR given
as transmittance, absorbance or an absorption coefficient) or intensity (Raman, or IR given as intensity);
`resample` puts it on the model grid. Measured spectra come in many forms, and each reads: x in cm^-1,
micrometres or nanometres, ascending or descending; a JCAMP-DX file of several blocks of one spectrum (ranges
measured apart) is merged; gaps in the data (a range not measured, or cut out) stay uncovered on the grid instead
of being bridged by a straight line. Every problem raises `SpectrumFileError` naming the file and what is
wrong: too few points, a file whose blocks are of different kinds, a kind the caller names that the file
contradicts. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.errors import ChemgenError
from chemgen.spectra import units
from chemgen.spectra.broadening import GRID_CM1

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_POINTS = 2_000_000
MIN_OVERLAP_CM1 = 500.0   # a spectrum must cover at least this much of the model grid
MIN_POINTS = 10           # fewer is not a spectrum (a peak list of one band, a single reading)
# A step between neighbouring points wider than this (and than 10 x the median step) is a gap in the data
GAP_CM1 = 25.0
KINDS = ("ir", "raman", "uv-vis")
JCAMP_DATA_TYPES = {"ir": "INFRARED SPECTRUM", "raman": "RAMAN SPECTRUM", "uv-vis": "UV/VIS SPECTRUM"}
JCAMP_SUFFIXES = (".jdx", ".dx", ".jcamp", ".jcm")
CSV_SUFFIXES = (".csv", ".txt", ".tsv")


class SpectrumFileError(ChemgenError, ValueError):
    """A spectrum file chemgen cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class Spectrum:
    x_cm1: np.ndarray          # ascending wavenumbers
    y: np.ndarray              # absorbance (IR from transmittance/absorbance) or intensity
    kind: str                  # "ir" | "raman" | "uv-vis"
    signal: str                # "absorbance" | "intensity"
    source: str = ""
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path | str, problem: str) -> SpectrumFileError:
    return SpectrumFileError(f"{path}: {problem}")


def _check_file(path: Path) -> bytes:
    if not path.is_file():
        raise _fail(path, "no such file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "empty file")
    if size > MAX_FILE_BYTES:
        raise _fail(path, f"file of {size / 1e6:.1f} MB is larger than the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise _fail(path, "binary file (NUL bytes), not a text spectrum")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            raw.decode("latin-1")
        except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes every byte
            raise _fail(path, f"not text ({err})") from err
    return raw


def _finish(path: Path, x: np.ndarray, y: np.ndarray, x_unit: str | None, y_unit: str | None, kind: str | None,
            title: str = "", meta: dict | None = None) -> Spectrum:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        raise _fail(path, "no data points")
    if x.size != y.size:
        raise _fail(path, f"{x.size} x values but {y.size} y values")
    if x.size > MAX_POINTS:
        raise _fail(path, f"{x.size:,} points is more than the {MAX_POINTS:,} limit")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        bad = int((~np.isfinite(x)).sum() + (~np.isfinite(y)).sum())
        raise _fail(path, f"{bad} value(s) are NaN or infinite")
    if kind not in KINDS:
        raise _fail(path, f"cannot tell the spectrum kind ({kind!r}); say which: ir, raman or uv-vis")
    try:
        x_cm1 = units.to_wavenumbers(x, units.canonical_x_unit(x_unit))
        y_signal = units.to_signal(y, y_unit)
        signal = "absorbance" if units.y_kind(y_unit) in ("transmittance", "absorbance") else "intensity"
    except units.UnitError as err:
        raise _fail(path, str(err)) from err
    if x.size < MIN_POINTS:
        raise _fail(path, f"{x.size} data point(s): a spectrum needs at least {MIN_POINTS}")
    order = np.argsort(x_cm1, kind="stable")
    return Spectrum(x_cm1[order], y_signal[order], kind, signal, str(path), title, meta or {})


# ---------------------------------------------------------------------------- JCAMP-DX
def _kind_from_data_type(data_type: str) -> str | None:
    text = (data_type or "").upper()
    if "RAMAN" in text:
        return "raman"
    if "INFRARED" in text or text.startswith("IR"):
        return "ir"
    if "UV" in text:
        return "uv-vis"
    return None


def read_jcamp(path: str | os.PathLike, kind: str | None = None) -> Spectrum:
    import jcamp

    path = Path(path)
    raw = _check_file(path)
    text = raw.decode("utf-8", errors="replace")
    if "##" not in text[:4096] or "##XYDATA" not in text.upper() and "##PEAK TABLE" not in text.upper() \
            and "##XYPOINTS" not in text.upper():
        raise _fail(path, "not a JCAMP-DX spectrum (no ##XYDATA, ##XYPOINTS or ##PEAK TABLE block)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the reader prints its checksum complaints
            data = jcamp.read(io.StringIO(text).readlines())
    except Exception as err:  # noqa: BLE001  the package raises bare Exceptions on bad data lines
        raise _fail(path, f"malformed JCAMP-DX ({type(err).__name__}: {err})") from err
    blocks = [block for block in data.get("children") or [data] if "x" in block and "y" in block]
    if not blocks:
        raise _fail(path, "JCAMP-DX file without x/y data")
    read = []
    for number, block in enumerate(blocks, start=1):
        where = f"{path} (block {number})" if len(blocks) > 1 else path
        if "xunits" not in block:
            raise _fail(where, "no ##XUNITS: cannot tell wavenumbers from wavelengths")
        said = _kind_from_data_type(str(block.get("data type", data.get("data type", ""))))
        if kind is not None and said is not None and said != kind:
            raise _fail(where, f"the file says it is a {said} spectrum ({block.get('data type')}), not {kind}")
        meta = {k: v for k, v in block.items() if k.startswith("$") or k in ("molform", "cas registry no", "origin")}
        read.append(_finish(Path(str(where)), block["x"], block["y"], str(block["xunits"]),
                            str(block.get("yunits", "")), kind or said, str(block.get("title", data.get("title", ""))),
                            meta))
    kinds = sorted({s.kind for s in read})
    if len(kinds) > 1:
        raise _fail(path, f"blocks of different spectra ({', '.join(kinds)}): one molecule's spectrum of one kind "
                          "per file (split the file, or name the kind)")
    if len({s.signal for s in read}) > 1:
        raise _fail(path, "blocks on different scales (absorbance and intensity): one scale per file")
    if len(read) == 1:
        return Spectrum(read[0].x_cm1, read[0].y, read[0].kind, read[0].signal, str(path), read[0].title, read[0].meta)
    # ranges measured apart: one spectrum of all the blocks' points (overlaps keep the first block's values)
    x = np.concatenate([s.x_cm1 for s in read])
    y = np.concatenate([s.y for s in read])
    order = np.argsort(x, kind="stable")
    return Spectrum(x[order], y[order], read[0].kind, read[0].signal, str(path), read[0].title,
                    {**read[0].meta, "blocks": len(read)})


def write_jcamp(path: str | os.PathLike, spectrum: Spectrum, y_units: str | None = None) -> Path:
    """Write an evenly spaced spectrum as JCAMP-DX 5.01 (X++(Y..Y)), atomically."""
    import jcamp

    from chemgen.io import atomic_write

    path = Path(path)
    x, y = np.asarray(spectrum.x_cm1, dtype=np.float64), np.asarray(spectrum.y, dtype=np.float64)
    steps = np.diff(x)
    if len(x) < 2 or not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
        raise _fail(path, "JCAMP-DX X++(Y..Y) needs evenly spaced x: resample the spectrum first")
    peak = float(np.abs(y).max())
    # The writer prints 4 decimals of y / YFACTOR: scale so the largest value has 10 significant digits.
    yfactor = float(f"{peak / 1e6:.6e}") if peak > 0 else 1.0
    header = {
        "title": spectrum.title or path.stem,
        "data type": JCAMP_DATA_TYPES[spectrum.kind],
        "origin": "chemgen",
        "owner": "public domain",
        "xunits": "1/CM",
        "yunits": y_units or ("ABSORBANCE" if spectrum.signal == "absorbance" else "ARBITRARY UNITS"),
        "yfactor": yfactor,
        **{k if k.startswith("$") else f"${k}": v for k, v in spectrum.meta.items()},
        "x": x, "y": y,
    }
    with contextlib.redirect_stdout(io.StringIO()):  # jcamp.write prints every data point
        text = jcamp.write(header)
    text = text.replace(f"##YFACTOR={yfactor}\n", "", 1)  # the writer repeats the label it was given
    with atomic_write(path) as handle:
        handle.write(text)
    return path


# ---------------------------------------------------------------------------- CSV
def _csv_units(header: list[str]) -> tuple[str | None, str | None]:
    """Units from a header such as ``wavenumber (cm-1), absorbance`` or ``wavelength_nm,transmittance``."""
    def unit_of(name: str, kinds) -> str | None:
        name = name.strip().lower()
        inside = name[name.find("(") + 1:name.rfind(")")] if "(" in name and ")" in name else ""
        for candidate in (inside, name, name.replace("_", " ").split()[-1] if name else ""):
            try:
                return kinds(candidate)
            except units.UnitError:
                continue
        if any(w in name for w in ("wavenumber", "raman shift")):
            return "cm-1" if kinds is units.canonical_x_unit else None
        return None

    x_unit = unit_of(header[0], units.canonical_x_unit)
    y_name = header[1].strip().lower()
    y_name = y_name[:y_name.find("(")].strip() if "(" in y_name else y_name
    y_unit = None
    for candidate in (y_name, y_name.replace("_", " ")):
        try:
            units.y_kind(candidate)
            y_unit = candidate
            break
        except units.UnitError:
            continue
    return x_unit, y_unit


def read_csv(path: str | os.PathLike, kind: str | None = None, x_units: str | None = None,
             y_units: str | None = None) -> Spectrum:
    """A two-column CSV (x, y). Units come from the header or the arguments; neither -> an error."""
    path = Path(path)
    raw = _check_file(path)
    lines = [ln.strip() for ln in raw.decode("utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise _fail(path, "no data lines")
    delimiter = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else (";" if ";" in lines[0] else None))
    def split(line):
        return [c.strip().strip('"') for c in (line.split(delimiter) if delimiter else line.split())]
    header = split(lines[0])
    has_header = not _is_number(header[0])
    if has_header:
        if len(header) < 2:
            raise _fail(path, "the header must name two columns (x, y)")
        header_x, header_y = _csv_units(header)
        x_units = x_units or header_x
        y_units = y_units or header_y
        if y_units is None:
            raise _fail(path, f"unknown y units {header[1]!r} (expected transmittance, absorbance or an intensity)")
        body = lines[1:]
    else:
        body = lines
    if x_units is None:
        raise _fail(path, "no x units: name them in the header, e.g. 'wavenumber (cm-1),absorbance', or pass them")
    xs, ys = [], []
    for number, line in enumerate(body, start=2 if has_header else 1):
        cells = split(line)
        if len(cells) < 2:
            raise _fail(path, f"line {number}: expected two columns, got {len(cells)}")
        try:
            xs.append(float(cells[0]))
            ys.append(float(cells[1]))
        except ValueError:
            raise _fail(path, f"line {number}: not numbers ({line[:60]!r})") from None
        if len(xs) > MAX_POINTS:
            raise _fail(path, f"more than the {MAX_POINTS:,}-point limit")
    if kind is None and has_header:
        joined = " ".join(header).lower()
        if "raman" in joined:
            kind = "raman"
        elif any(word in joined for word in ("absorbance", "transmittance", "infrared", " ir")):
            kind = "ir"
    return _finish(path, np.array(xs), np.array(ys), x_units, y_units or "intensity", kind, path.stem)


def write_csv(path: str | os.PathLike, spectrum: Spectrum) -> Path:
    from chemgen.io import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(f"wavenumber (cm-1),{spectrum.signal}\n")
        for x, y in zip(spectrum.x_cm1, spectrum.y):
            handle.write(f"{x:.6f},{y:.8g}\n")
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- any file, on the grid
def read_spectrum(path: str | os.PathLike, kind: str | None = None, x_units: str | None = None,
                  y_units: str | None = None) -> Spectrum:
    """JCAMP-DX by extension (.jdx, .dx, .jcamp) or content (starts with ##), else two-column CSV."""
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise _fail(path, f"unknown spectrum kind {kind!r} (known: {', '.join(KINDS)})")
    head = _check_file(path)[:4096].lstrip()
    if path.suffix.lower() in JCAMP_SUFFIXES or head.startswith(b"##"):
        return read_jcamp(path, kind)
    if path.suffix.lower() in CSV_SUFFIXES or path.suffix == "":
        return read_csv(path, kind, x_units, y_units)
    raise _fail(path, f"unknown spectrum file type {path.suffix!r} (JCAMP-DX {', '.join(JCAMP_SUFFIXES)} or CSV)")


def gaps(x_cm1: np.ndarray) -> list[tuple[float, float]]:
    """The (low, high) ranges between neighbouring points that are further apart than `GAP_CM1` and than ten
    times the median step: ranges that were not measured."""
    steps = np.diff(x_cm1)
    if steps.size == 0:
        return []
    wide = steps > max(GAP_CM1, 10.0 * float(np.median(steps)))
    return [(float(x_cm1[i]), float(x_cm1[i + 1])) for i in np.flatnonzero(wide)]


def resample(spectrum: Spectrum, grid: np.ndarray = GRID_CM1, min_overlap_cm1: float = MIN_OVERLAP_CM1
             ) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation onto ``grid`` -> (values, covered mask); zero where the spectrum has no data, gaps
    included (`gaps`: never bridged by a straight line)."""
    x, y = spectrum.x_cm1, spectrum.y
    unique, first = np.unique(x, return_index=True)   # repeated x: keep the first value
    x, y = unique, y[first]
    covered = (grid >= x.min()) & (grid <= x.max())
    for low, high in gaps(x):
        covered &= ~((grid > low) & (grid < high))
    if covered.sum() * float(np.median(np.diff(grid))) < min_overlap_cm1:
        raise _fail(spectrum.source or "spectrum",
                    f"covers {x.min():.0f}-{x.max():.0f} cm^-1"
                    + (f" with {len(gaps(x))} gap(s)" if gaps(x) else "")
                    + f", less than {min_overlap_cm1:.0f} cm^-1 of the model's {grid[0]:.0f}-{grid[-1]:.0f} cm^-1 "
                    "range")
    values = np.where(covered, np.interp(grid, x, y), 0.0)
    return values, covered
