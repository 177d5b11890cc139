"""The xTB spectra against real data: QM9's B3LYP frequencies and characteristic IR bands.

Band ranges are the usual experimental ones (the issue's): C=O stretch 1,650-1,900 cm^-1 and the
strongest IR band of a carbonyl compound; O-H stretch 3,300-3,800; C#N stretch 2,150-2,350. They are
checked on raw GFN2-xTB frequencies and on frequencies scaled to B3LYP (`XTB_TO_B3LYP_SCALE`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tblite")

from chemgen.data.qm9 import _parse_floats, read_qm9_frame, row_to_system  # noqa: E402
from chemgen.spectra.curation import default_folder  # noqa: E402
from chemgen.spectra import broadening, validation  # noqa: E402
from chemgen.spectra.compute import compute_spectrum  # noqa: E402

SCALES = {"raw": 1.0, "scaled": broadening.XTB_TO_B3LYP_SCALE}
# GDB index -> SMILES (checked below): acetone, acetaldehyde, formyl cyanide, methanol, glycolonitrile, acetonitrile
MOLECULES = {18: "CC(C)=O", 11: "CC=O", 27: "O=CC#N", 8: "CO", 34: "OCC#N", 10: "CC#N"}


@pytest.fixture(scope="module")
def computed():
    frame = read_qm9_frame().set_index("Index", drop=False)
    out = {}
    for index, smiles in MOLECULES.items():
        row = frame.loc[index]
        assert row.SMILES == smiles
        system = row_to_system(row)
        out[index] = (system, compute_spectrum(system.atomic_numbers, system.pos), _parse_floats(row.Harmonic_Freq_cmi))
    return out


def _bonds(system, spectra, a: int, b: int, max_length: float) -> list[tuple[int, int]]:
    z, p = system.atomic_numbers, spectra.positions_a
    return [(i, j) for i in range(len(z)) for j in range(len(z))
            if z[i] == a and z[j] == b and np.linalg.norm(p[i] - p[j]) < max_length]


def test_same_modes_as_b3lyp_and_correlated(computed):
    """Rank-paired frequencies of one molecule correlate with r > 0.99: the two methods agree mode by
    mode to within ~2-5 %, and a single 150 cm^-1 outlier among 15 modes still leaves r > 0.99."""
    for index, (_, spectra, b3lyp) in computed.items():
        assert len(spectra.frequencies_cm1) == len(b3lyp), index
        r = np.corrcoef(np.sort(spectra.frequencies_cm1), np.sort(b3lyp))[0, 1]
        assert r > 0.99, (index, r)


@pytest.mark.parametrize("scale", SCALES)
def test_carbonyl_stretch_is_the_strongest_band_in_range(computed, scale):
    for index in (18, 11, 27):
        system, spectra, _ = computed[index]
        (i, j), = _bonds(system, spectra, 6, 8, 1.25)
        stretch = validation.stretch_frequency(spectra, spectra.modes, i, j) * SCALES[scale]
        strongest = spectra.frequencies_cm1[np.argmax(spectra.ir_intensities_km_mol)] * SCALES[scale]
        assert stretch == strongest and 1650 <= stretch <= 1900, (MOLECULES[index], stretch, strongest)


@pytest.mark.parametrize("scale", SCALES)
def test_hydroxyl_stretch_in_range(computed, scale):
    for index in (8, 34):
        system, spectra, _ = computed[index]
        (i, j), = _bonds(system, spectra, 8, 1, 1.05)
        stretch = validation.stretch_frequency(spectra, spectra.modes, i, j) * SCALES[scale]
        assert 3300 <= stretch <= 3800, (MOLECULES[index], stretch)


def _nitrile_stretches(computed, scale):
    out = {}
    for index in (27, 34, 10):
        system, spectra, b3lyp = computed[index]
        (i, j), = _bonds(system, spectra, 6, 7, 1.2)
        out[index] = (validation.stretch_frequency(spectra, spectra.modes, i, j) * scale, b3lyp)
    return out


@pytest.mark.xfail(strict=True, reason="GFN2-xTB puts C#N stretches at 2,370-2,420 cm^-1, 30-50 above B3LYP's "
                   "2,340-2,375 and above the experimental 2,150-2,350; the B3LYP scale (x1.026) moves them further up")
def test_nitrile_stretch_in_the_experimental_range(computed):
    for index, (stretch, _) in _nitrile_stretches(computed, broadening.XTB_TO_B3LYP_SCALE).items():
        assert 2150 <= stretch <= 2350, (MOLECULES[index], stretch)


def test_nitrile_stretch_matches_b3lyp_within_60_cm1(computed):
    """What the nitrile band does satisfy: it is the isolated mode B3LYP also puts at 2,200-2,500 cm^-1,
    and raw xTB lies 30-50 cm^-1 above it."""
    for index, (stretch, b3lyp) in _nitrile_stretches(computed, 1.0).items():
        reference = b3lyp[(b3lyp > 2200) & (b3lyp < 2500)]
        assert len(reference) == 1 and 0 < stretch - reference[0] < 60, (MOLECULES[index], stretch, reference)


def test_committed_scale_factor_matches_a_fit_on_the_committed_spectra():
    folder = default_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["ok"] >= 1000, "commit at least 1,000 computed molecules"
    fit = validation.fit_on_dataset(folder)
    assert fit.molecules >= 1000
    assert abs(fit.scale - broadening.XTB_TO_B3LYP_SCALE) < 0.003, fit
    assert fit.pearson_r > 0.995 and fit.mae_cm1 < fit.mae_raw_cm1, fit
