"""Spectral units: the x axis to wavenumbers (cm^-1), the y axis to absorbance or intensity.

x units accepted (case-insensitive, as JCAMP-DX ##XUNITS or a CSV header names them):
wavenumbers (1/CM, CM-1, CM^-1), micrometres (MICROMETERS, UM, MICRONS) and nanometres (NANOMETERS, NM).
y units: TRANSMITTANCE (fraction, or percent when the values exceed 1.5), ABSORBANCE, and intensity-like
units (ARBITRARY UNITS, COUNTS, INTENSITY, RAMAN INTENSITY, KM/MOL) kept as they are.
"""

from __future__ import annotations

import numpy as np

from chemgen.errors import ChemgenError

X_UNITS = {
    "cm-1": ("1/cm", "cm-1", "cm^-1", "cm**-1", "wavenumber", "wavenumbers", "wavenumbers (cm-1)", "1/cm (wavenumber)"),
    "um": ("micrometers", "micrometres", "micrometer", "um", "µm", "microns", "micron", "wavelength (um)"),
    "nm": ("nanometers", "nanometres", "nanometer", "nm", "wavelength (nm)"),
}
Y_TRANSMITTANCE = ("transmittance", "%t", "% transmittance", "transmission", "%transmittance")
Y_ABSORBANCE = ("absorbance", "absorbance (au)", "a", "abs")
Y_INTENSITY = ("arbitrary units", "a.u.", "au", "counts", "intensity", "raman intensity", "km/mol", "relative intensity",
               "raman activity", "a^4/amu", "km/mol per cm-1", "a^4/amu per cm-1", "")


class UnitError(ChemgenError, ValueError):
    """A unit chemgen cannot interpret or convert."""


def canonical_x_unit(text: str | None) -> str:
    key = (text or "").strip().lower()
    for unit, names in X_UNITS.items():
        if key in names:
            return unit
    raise UnitError(f"unknown or missing x units {text!r} (expected wavenumbers 1/CM, MICROMETERS or NANOMETERS)")


def to_wavenumbers(x: np.ndarray, unit: str) -> np.ndarray:
    """x values in ``unit`` (canonical or any accepted name) as wavenumbers in cm^-1."""
    unit = canonical_x_unit(unit) if unit not in X_UNITS else unit
    x = np.asarray(x, dtype=np.float64)
    if unit == "cm-1":
        return x.copy()
    if np.any(x <= 0):
        raise UnitError("a wavelength must be positive to convert to wavenumbers")
    return (1e4 if unit == "um" else 1e7) / x


def y_kind(text: str | None) -> str:
    key = (text or "").strip().lower()
    if key in Y_TRANSMITTANCE:
        return "transmittance"
    if key in Y_ABSORBANCE:
        return "absorbance"
    if key in Y_INTENSITY:
        return "intensity"
    raise UnitError(f"unknown y units {text!r} (expected TRANSMITTANCE, ABSORBANCE or an intensity unit)")


def transmittance_to_absorbance(y: np.ndarray) -> np.ndarray:
    """A = -log10(T); T as a fraction, or in percent when any value exceeds 1.5."""
    t = np.asarray(y, dtype=np.float64)
    if np.nanmax(t) > 1.5:
        t = t / 100.0
    if np.any(t <= 0):
        raise UnitError("transmittance must be positive to convert to absorbance")
    return -np.log10(np.clip(t, None, 1.0))


def to_signal(y: np.ndarray, y_units: str | None) -> np.ndarray:
    """Absorbance for transmittance/absorbance input; intensity units unchanged."""
    kind = y_kind(y_units)
    return transmittance_to_absorbance(y) if kind == "transmittance" else np.asarray(y, dtype=np.float64).copy()
