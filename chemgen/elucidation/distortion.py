"""Synthetic measured spectra: a molecule's computed sticks distorted the ways a measurement departs from them.

No measured spectra may be redistributed with chemgen, so the library search is tuned and tested on computed
spectra made to look measured, by physics-based distortions drawn at random (`Distortion` holds their ranges):

* frequencies: anharmonicity and method error, a molecule-wide factor (0.95-1.00 of the harmonic B3LYP-like
  frequencies) and a per-band jitter (1 % standard deviation);
* band shapes: Gaussian or Lorentzian bands of 8-40 cm^-1 (condensed phase to gas-phase envelopes);
* intensities: xTB's IR intensities are right within a factor of about two (per-band log-normal noise,
  sigma 0.4), and a measured absorbance is not linear in them (an exponent of 0.8-1.2);
* the measurement: a baseline (a tilt and a slow wave, up to 10 % of the strongest band), noise (0.5 % of it),
  reported as transmittance or absorbance, sometimes over 600-3,800 cm^-1 only.

`measured_like` returns the spectrum on `chemgen.spectra.broadening.GRID_CM1` with its covered mask, as
`chemgen.spectra.files.resample` gives a real file's; ``strength`` 0 is the undistorted spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chemgen.spectra.broadening import GRID_CM1, XTB_TO_B3LYP_SCALE


@dataclass(frozen=True)
class Distortion:
    molecule_scale: tuple[float, float] = (0.95, 1.00)
    band_jitter: float = 0.01
    fwhm: tuple[float, float] = (8.0, 40.0)
    intensity_noise: float = 0.4
    exponent: tuple[float, float] = (0.8, 1.2)
    baseline: float = 0.10
    noise: float = 0.005
    partial_range: float = 0.3          # how often the spectrum covers 600-3,800 cm^-1 only


def measured_like(frequencies_cm1: np.ndarray, intensities: np.ndarray, rng: np.random.Generator,
                  distortion: Distortion = Distortion(), strength: float = 1.0,
                  transmittance: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values, covered) on `GRID_CM1`: the sticks as a measurement might show them (module docstring)."""
    frequencies = np.asarray(frequencies_cm1, dtype=np.float64)
    weights = np.asarray(intensities, dtype=np.float64)
    keep = (frequencies > 0) & (weights > 0)
    frequencies, weights = frequencies[keep] * XTB_TO_B3LYP_SCALE, weights[keep]
    low, high = distortion.molecule_scale
    scale = 1.0 + strength * (rng.uniform(low, high) - 1.0)
    centres = frequencies * scale * (1.0 + strength * distortion.band_jitter * rng.standard_normal(frequencies.size))
    weights = weights * np.exp(strength * distortion.intensity_noise * rng.standard_normal(weights.size))
    fwhm = 15.0 + strength * (rng.uniform(*distortion.fwhm) - 15.0)
    offset = GRID_CM1[None, :] - centres[:, None]
    if rng.random() < 0.5:
        sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        shapes = np.exp(-0.5 * (offset / sigma) ** 2)
    else:
        shapes = (fwhm / 2.0) ** 2 / (offset ** 2 + (fwhm / 2.0) ** 2)
    bands = weights @ shapes
    bands = bands / max(float(bands.max()), 1e-300)
    exponent = 1.0 + strength * (rng.uniform(*distortion.exponent) - 1.0)
    absorbance = bands ** exponent
    phase = rng.uniform(0, 2 * np.pi)
    tilt = (GRID_CM1 - GRID_CM1[0]) / (GRID_CM1[-1] - GRID_CM1[0])
    absorbance = absorbance + strength * distortion.baseline * rng.uniform(0, 1) * (
        0.5 * tilt + 0.5 * (1 + np.sin(2 * np.pi * tilt * 1.5 + phase)) / 2)
    absorbance = absorbance + strength * distortion.noise * rng.standard_normal(GRID_CM1.size)
    covered = np.ones(GRID_CM1.size, dtype=bool)
    if strength > 0 and rng.random() < distortion.partial_range:
        covered = (GRID_CM1 >= 600.0) & (GRID_CM1 <= 3800.0)
    if transmittance is None:
        transmittance = strength > 0 and rng.random() < 0.5
    if transmittance:   # read back as a file reader would: T in (0, 1] -> absorbance
        t = np.clip(10.0 ** (-0.8 * absorbance), 1e-4, 1.0)
        absorbance = -np.log10(t)
    return np.where(covered, np.clip(absorbance, 0.0, None), 0.0), covered
