"""Stick spectra -> continuous spectra on DiffSpectra's grid (done on load, never stored).

Grid: 500-4,000 cm^-1 in 1 cm^-1 steps (3,501 points), as QM9S and DiffSpectra use for IR and Raman.
Line shape: area-normalised Lorentzians of FWHM 15 cm^-1, so a band's integral equals its stick's
intensity (km/mol for IR, A^4/amu for Raman activity). Frequencies are first multiplied by the xTB
-> B3LYP scale factor fitted on QM9's B3LYP harmonic frequencies (`XTB_TO_B3LYP_SCALE`; the dataset
card gives the fit), so computed spectra line up with QM9S-like DFT spectra; imaginary modes are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID_CM1 = np.arange(500.0, 4000.0 + 0.5, 1.0)   # (3501,)
FWHM_CM1 = 15.0
LINE_SHAPES = ("lorentzian", "gaussian")
# Least-squares scale (no intercept) of GFN2-xTB onto B3LYP/6-31G(2df,p) harmonic frequencies of QM9,
# fitted by `chemgen.spectra.validation.fit_scale_factor` (dataset card: molecules, MAE, correlation).
XTB_TO_B3LYP_SCALE = 1.026


def line_shape(grid: np.ndarray, centres: np.ndarray, fwhm: float, shape: str) -> np.ndarray:
    """(len(centres), len(grid)) unit-area line shapes."""
    offset = grid[None, :] - centres[:, None]
    if shape == "lorentzian":
        gamma = fwhm / 2
        return gamma / np.pi / (offset**2 + gamma**2)
    if shape == "gaussian":
        sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
        return np.exp(-0.5 * (offset / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    raise ValueError(f"unknown line shape {shape!r} (known: {', '.join(LINE_SHAPES)})")


def broaden(frequencies_cm1: Sequence[float], intensities: Sequence[float], kind: str = "ir",
            fwhm: float = FWHM_CM1, shape: str = "lorentzian", scale: float | None = None,
            grid: np.ndarray = GRID_CM1) -> np.ndarray:
    """One spectrum on ``grid``: sum of unit-area lines times stick intensities.

    ``scale`` multiplies the frequencies (default: `XTB_TO_B3LYP_SCALE`; pass 1.0 for raw xTB).
    ``kind`` is only checked ("ir" or "raman"): both are broadened the same way.
    """
    if kind not in ("ir", "raman"):
        raise ValueError(f"unknown spectrum kind {kind!r} (known: ir, raman)")
    frequencies = np.asarray(frequencies_cm1, dtype=np.float64)
    weights = np.asarray(intensities, dtype=np.float64)
    if frequencies.shape != weights.shape:
        raise ValueError(f"{len(frequencies)} frequencies but {len(weights)} intensities")
    keep = frequencies > 0
    centres = frequencies[keep] * (XTB_TO_B3LYP_SCALE if scale is None else scale)
    return weights[keep] @ line_shape(grid, centres, fwhm, shape)


def broaden_many(frequencies: Sequence[Sequence[float]], intensities: Sequence[Sequence[float]], kind: str = "ir",
                 **kwargs) -> np.ndarray:
    """(M, len(grid)) spectra of M molecules (float32, to keep a loaded dataset small)."""
    grid = kwargs.get("grid", GRID_CM1)
    out = np.zeros((len(frequencies), len(grid)), dtype=np.float32)
    for i, (f, w) in enumerate(zip(frequencies, intensities)):
        out[i] = broaden(f, w, kind, **kwargs)
    return out
