"""One molecule's xTB spectra: relax, check it is still the same molecule, vibrate, report.

`compute_spectrum` is what every producer calls (the curation workers, `chemgen spectra compute`,
the GPU machine's CPU cores). It needs numpy, ASE and tblite only: no RDKit, no torch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from chemgen.errors import ChemgenError
from chemgen.spectra.vibrations import Vibrations, VibrationSettings, harmonic_analysis
from chemgen.spectra.xtb import XtbError, XtbPoint, XtbSettings, optimize

# A relaxed molecule with an imaginary mode larger than this (cm^-1) is a saddle point, not a minimum:
# it is displaced along that mode and relaxed again once, then recorded as a failure if still there.
# Smaller imaginary values are numerical noise of nearly free rotors (counted, not failed).
IMAGINARY_THRESHOLD_CM1 = 50.0
SADDLE_KICK_A = 0.1  # largest atomic displacement along the imaginary mode before relaxing again


@dataclass(frozen=True)
class SpectraSettings:
    xtb: XtbSettings = field(default_factory=XtbSettings)
    vibrations: VibrationSettings = field(default_factory=VibrationSettings)
    raman: bool = True
    imaginary_threshold_cm1: float = IMAGINARY_THRESHOLD_CM1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MoleculeSpectra:
    """Stick spectra of one relaxed molecule."""

    numbers: np.ndarray                  # (N,)
    positions_a: np.ndarray              # (N, 3) relaxed xTB geometry
    energy_eh: float
    frequencies_cm1: np.ndarray          # (3N-6 or 3N-5,) imaginary as negative
    ir_intensities_km_mol: np.ndarray
    raman_activities_a4_amu: np.ndarray | None
    num_imaginary: int                   # modes with a negative (imaginary) frequency, all below the threshold
    optimisation_steps: int
    seconds: float
    modes: np.ndarray | None = None      # (M, N, 3) normalised Cartesian displacements (not stored in shards)


class SpectraFailure(ChemgenError, RuntimeError):
    """A molecule that could not be given trustworthy spectra; the message is the reason."""


def count_imaginary(frequencies: np.ndarray, threshold: float = 0.0) -> int:
    return int((frequencies < -threshold).sum())


def covalent_bonds(numbers: np.ndarray, positions_a: np.ndarray, scale: float = 1.2) -> set[tuple[int, int]]:
    """Atom pairs closer than ``scale`` times the sum of their covalent radii."""
    from ase.data import covalent_radii

    radii = covalent_radii[np.asarray(numbers)]
    distances = np.linalg.norm(positions_a[:, None] - positions_a[None, :], axis=-1)
    i, j = np.nonzero(np.triu(distances < scale * (radii[:, None] + radii[None, :]), k=1))
    return set(zip(i.tolist(), j.tolist()))


def _relax(numbers, positions, settings: SpectraSettings, reference_bonds, charge: int
           ) -> tuple[np.ndarray, float, int]:
    relaxed, energy, steps = optimize(numbers, positions, settings.xtb, charge)
    if covalent_bonds(numbers, relaxed) != reference_bonds:
        raise SpectraFailure("connectivity changed during the xTB optimisation")
    return relaxed, energy, steps


def _vibrate(numbers, positions, settings: SpectraSettings, charge: int) -> Vibrations:
    zero_field = XtbPoint(numbers, positions, settings.xtb, charge=charge)
    field_points: dict[tuple, XtbPoint] = {}

    def gradient_in_field(pos, field_au):
        key = tuple(np.round(field_au, 12))
        if key not in field_points:
            field_points[key] = XtbPoint(numbers, pos, settings.xtb, field_au=np.asarray(field_au), charge=charge)
        return field_points[key](pos)[1]

    return harmonic_analysis(numbers, positions, zero_field, gradient_in_field if settings.raman else None,
                             settings.vibrations)


def compute_spectrum(numbers: np.ndarray, positions_a: np.ndarray,
                     settings: SpectraSettings = SpectraSettings(), charge: int = 0) -> MoleculeSpectra:
    """Relax with GFN2-xTB from ``positions_a`` and compute IR (and Raman) stick spectra.

    Raises `SpectraFailure` with the reason when xTB fails, the optimisation changes the
    bonding, or the relaxed structure keeps an imaginary mode above the threshold.
    """
    start = time.perf_counter()
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions_a, dtype=np.float64)
    if len(numbers) < 2:
        raise SpectraFailure("a single atom has no vibrations")
    reference_bonds = covalent_bonds(numbers, positions)
    try:
        relaxed, energy, steps = _relax(numbers, positions, settings, reference_bonds, charge)
        vib = _vibrate(numbers, relaxed, settings, charge)
        if count_imaginary(vib.frequencies_cm1, settings.imaginary_threshold_cm1):
            # A saddle point: push along the imaginary mode and relax once more.
            kick = vib.modes[0] / np.abs(vib.modes[0]).max() * SADDLE_KICK_A
            relaxed, energy, more = _relax(numbers, relaxed + kick, settings, reference_bonds, charge)
            steps += more
            vib = _vibrate(numbers, relaxed, settings, charge)
    except XtbError as err:
        raise SpectraFailure(str(err)) from err
    large = count_imaginary(vib.frequencies_cm1, settings.imaginary_threshold_cm1)
    if large:
        raise SpectraFailure(f"{large} imaginary mode(s) beyond -{settings.imaginary_threshold_cm1:g} cm^-1 "
                             f"after relaxing again (lowest {vib.frequencies_cm1[0]:.1f} cm^-1)")
    return MoleculeSpectra(
        numbers=numbers, positions_a=relaxed, energy_eh=energy,
        frequencies_cm1=vib.frequencies_cm1, ir_intensities_km_mol=vib.ir_intensities_km_mol,
        raman_activities_a4_amu=vib.raman_activities_a4_amu,
        num_imaginary=count_imaginary(vib.frequencies_cm1), optimisation_steps=steps,
        seconds=time.perf_counter() - start, modes=vib.modes,
    )
