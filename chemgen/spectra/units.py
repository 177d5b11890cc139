"""Spectral units: the x axis to wavenumbers (cm^-1), the y axis to absorbance or intensity.

x units accepted (case-insensitive, as JCAMP-DX ##XUNITS or a CSV header names them):
wavenumbers (1/CM, CM-1, CM^-1), micrometres (MICROMETERS, UM, MICRONS) and nanometres (NANOMETERS, NM).
y units: TRANSMITTANCE (fraction, or percent when the values exceed 1.5), ABSORBANCE, absorption coefficients
(molar absorptivity, ``(micromol/mol)-1m-1 (base 10)`` as public gas-phase IR files give them, ``L/(mol*cm)``:
absorbance per path length and concentration, so the same shape as absorbance), and intensity-like units
(ARBITRARY UNITS, COUNTS, INTENSITY, RAMAN INTENSITY, KM/MOL) kept as they are.

A measured transmittance reaches 0 where a band saturates the detector: those points are held at
`MAX_ABSORBANCE` (the band is there, its height unknown) rather than refused; a spectrum that is all zero is.
"""

from __future__ import annotations

import re

import numpy as np

from chemgen.errors import ChemgenError

X_UNITS = {
    "cm-1": ("1/cm", "cm-1", "cm^-1", "cm**-1", "wavenumber", "wavenumbers", "wavenumbers (cm-1)", "1/cm (wavenumber)"),
    "um": ("micrometers", "micrometres", "micrometer", "um", "µm", "microns", "micron", "wavelength (um)"),
    "nm": ("nanometers", "nanometres", "nanometer", "nm", "wavelength (nm)"),
}
Y_TRANSMITTANCE = ("transmittance", "%t", "% transmittance", "transmission", "%transmittance")
Y_ABSORBANCE = ("absorbance", "absorbance (au)", "a", "abs")
# Absorption coefficients: absorbance per (path length x concentration), in any of these spellings
Y_ABSORPTION_COEFFICIENT = ("absorption coefficient", "molar absorptivity", "extinction coefficient",
                            "molar absorption coefficient", "epsilon")
ABSORPTION_COEFFICIENT_UNIT = re.compile(
    r"^\(?\s*(micro|u|µ|m|n)?mol(e)?\s*/\s*(mol|l|m3|dm3|cm3)\s*\)?\s*\^?-1.*m\^?-1|"      # (micromol/mol)-1 m-1
    r"^(l|dm\^?3|m\^?2|cm\^?2)\s*/?\s*\(?\s*(mol|mmol)\s*\*?\s*(cm|m)?\s*\)?|"             # L/(mol*cm), m2/mol
    r"^(l|m\^?-1)\s*(mol\^?-1)\s*(cm\^?-1)?")
MAX_ABSORBANCE = 4.0      # a transmittance of 1e-4: where a saturated band is held
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
    """"transmittance", "absorbance" (absorbance or an absorption coefficient) or "intensity"."""
    key = " ".join((text or "").strip().lower().split())
    if key in Y_TRANSMITTANCE:
        return "transmittance"
    if key in Y_ABSORBANCE or any(name in key for name in Y_ABSORPTION_COEFFICIENT) \
            or ABSORPTION_COEFFICIENT_UNIT.match(key.replace(" ", "")):
        return "absorbance"
    if key in Y_INTENSITY:
        return "intensity"
    raise UnitError(f"unknown y units {text!r} (expected TRANSMITTANCE, ABSORBANCE, an absorption coefficient such "
                    "as (micromol/mol)-1m-1, or an intensity unit)")


def transmittance_to_absorbance(y: np.ndarray) -> np.ndarray:
    """A = -log10(T); T as a fraction, or in percent when any value exceeds 1.5. Saturated points (T <= 0, the
    detector saw nothing) are held at `MAX_ABSORBANCE`; a spectrum with no light anywhere is refused."""
    t = np.asarray(y, dtype=np.float64)
    if np.nanmax(t) > 1.5:
        t = t / 100.0
    if not np.any(t > 0):
        raise UnitError("the transmittance is zero (or negative) everywhere: a saturated or empty measurement")
    return -np.log10(np.clip(t, 10.0 ** -MAX_ABSORBANCE, 1.0))


def to_signal(y: np.ndarray, y_units: str | None) -> np.ndarray:
    """Absorbance for transmittance/absorbance input; intensity units unchanged."""
    kind = y_kind(y_units)
    return transmittance_to_absorbance(y) if kind == "transmittance" else np.asarray(y, dtype=np.float64).copy()
