"""Harmonic analysis on real GFN2-xTB calculations: units, invariances and the finite-field Raman route."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from scipy.spatial.transform import Rotation

pytest.importorskip("tblite")

from chemgen.spectra.compute import compute_spectrum  # noqa: E402
from chemgen.spectra.vibrations import BOHR_A, polarizability_derivatives  # noqa: E402
from chemgen.spectra.xtb import XtbPoint, XtbSettings, optimize  # noqa: E402

SETTINGS = XtbSettings()


def _relaxed(name: str):
    atoms = molecule(name)
    positions, _, _ = optimize(atoms.numbers, atoms.positions, SETTINGS)
    return atoms.numbers, positions


def test_mode_counts_nonlinear_and_linear():
    water = compute_spectrum(*_relaxed("H2O"))
    assert len(water.frequencies_cm1) == 3
    co2 = compute_spectrum(*_relaxed("CO2"))
    assert len(co2.frequencies_cm1) == 4          # 3N - 5 for a linear molecule
    assert co2.num_imaginary == 0
    # CO2's symmetric stretch is Raman-active and IR-inactive; the antisymmetric stretch the reverse.
    sym = np.argmax(co2.raman_activities_a4_amu)
    asym = np.argmax(co2.ir_intensities_km_mol)
    assert co2.ir_intensities_km_mol[sym] < 1e-3 * co2.ir_intensities_km_mol[asym]
    assert co2.raman_activities_a4_amu[asym] < 1e-3 * co2.raman_activities_a4_amu[sym]
    assert co2.frequencies_cm1[asym] > co2.frequencies_cm1[sym]


def test_frequencies_and_ir_units_agree_with_ase():
    """Frequencies against ASE's VibrationsData on our Hessian; IR against ASE's own Infrared run."""
    from ase import Atoms
    from ase.vibrations import Infrared
    from tblite.ase import TBLite

    numbers, positions = _relaxed("H2O")
    ours = compute_spectrum(numbers, positions)
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=SETTINGS.accuracy, verbosity=0,
                        electronic_temperature=SETTINGS.electronic_temperature_k)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ir = Infrared(atoms, name=f"{folder}/ir", delta=0.005, nfree=2)
        ir.run()
        ase_freqs = ir.get_frequencies()[-3:].real          # cm^-1
        ase_intensities = ir.intensities[-3:] * 42.255        # (D/A)^2/amu -> km/mol (ASE's factor)
    np.testing.assert_allclose(ours.frequencies_cm1, ase_freqs, rtol=5e-3)
    np.testing.assert_allclose(ours.ir_intensities_km_mol, ase_intensities, rtol=2e-2)


def test_spectra_are_invariant_to_rotation_and_translation():
    numbers, positions = _relaxed("CH3CHO")
    rotation = Rotation.from_euler("xyz", [31, -57, 112], degrees=True).as_matrix()
    moved = positions @ rotation.T + np.array([3.0, -1.0, 7.5])
    a, b = compute_spectrum(numbers, positions), compute_spectrum(numbers, moved)
    np.testing.assert_allclose(a.frequencies_cm1[a.frequencies_cm1 > 100], b.frequencies_cm1[b.frequencies_cm1 > 100],
                               rtol=2e-3)
    strong = a.ir_intensities_km_mol > 1.0
    np.testing.assert_allclose(a.ir_intensities_km_mol[strong], b.ir_intensities_km_mol[strong], rtol=5e-2)
    strong = a.raman_activities_a4_amu > 1.0
    np.testing.assert_allclose(a.raman_activities_a4_amu[strong], b.raman_activities_a4_amu[strong], rtol=5e-2)


def test_finite_field_raman_equals_displaced_polarisabilities():
    """d(alpha)/dx two ways: field derivatives of the gradient vs displacements of dipole-derived alpha."""
    numbers, positions = _relaxed("H2CO")

    def gradient_in_field(pos, field):
        return XtbPoint(numbers, pos, SETTINGS, field_au=np.asarray(field))(pos)[1]

    def alpha(pos, h=1e-3):
        columns = []
        for j in range(3):
            field = np.eye(3)[j] * h
            plus = XtbPoint(numbers, pos, SETTINGS, field_au=field)(pos)[2]
            minus = XtbPoint(numbers, pos, SETTINGS, field_au=-field)(pos)[2]
            columns.append((plus - minus) / (2 * h))
        return np.array(columns).T

    field_route = polarizability_derivatives(gradient_in_field, positions, 0.002)
    step = 0.005
    for k in (0, 2, 4):  # C x, C z, O y
        atom, axis = divmod(k, 3)
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += step * BOHR_A
        minus[atom, axis] -= step * BOHR_A
        displaced_route = (alpha(plus) - alpha(minus)) / (2 * step)
        np.testing.assert_allclose(field_route[k], displaced_route, atol=2e-2 + 1e-2 * np.abs(displaced_route).max())
