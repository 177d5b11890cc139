"""Spectrum files: JCAMP-DX and CSV round trips, unit conversions, and clear errors for bad uploads."""

from __future__ import annotations

import numpy as np
import pytest

from chemgen.spectra import broadening, files, units
from chemgen.spectra.files import Spectrum, SpectrumFileError


@pytest.fixture()
def computed() -> Spectrum:
    y = broadening.broaden([950.0, 1715.0, 2960.0, 3400.0], [12.0, 310.0, 45.0, 80.0], scale=1.0)
    return Spectrum(broadening.GRID_CM1, y, "ir", "intensity", title="acetone-like", meta={"smiles": "CC(C)=O"})


def test_jcamp_round_trip(tmp_path, computed):
    path = files.write_jcamp(tmp_path / "a.jdx", computed)
    back = files.read_spectrum(path)
    assert back.kind == "ir" and back.title == "acetone-like" and back.meta["$smiles"] == "CC(C)=O"
    np.testing.assert_allclose(back.x_cm1, computed.x_cm1)
    np.testing.assert_allclose(back.y, computed.y, atol=1e-6 * computed.y.max())
    text = path.read_text()
    assert text.count("##YFACTOR=") == 1 and text.rstrip().endswith("##END=")
    values, covered = files.resample(back)
    assert covered.all() and np.allclose(values, computed.y, atol=1e-6 * computed.y.max())


def test_csv_round_trip_and_raman_kind(tmp_path, computed):
    raman = Spectrum(computed.x_cm1, computed.y, "raman", "intensity")
    path = files.write_csv(tmp_path / "r.csv", raman)
    back = files.read_spectrum(path, kind="raman")
    np.testing.assert_allclose(back.y, raman.y, rtol=1e-7)
    header = tmp_path / "h.csv"
    header.write_text("raman shift (cm-1),raman intensity\n500,1\n1500,3\n2500,2\n")
    assert files.read_spectrum(header).kind == "raman"


def test_unit_conversions():
    np.testing.assert_allclose(units.to_wavenumbers(np.array([2.5, 10.0]), "MICROMETERS"), [4000.0, 1000.0])
    np.testing.assert_allclose(units.to_wavenumbers(np.array([2500.0]), "nm"), [4000.0])
    np.testing.assert_allclose(units.to_signal(np.array([100.0, 10.0, 1.0]), "%T"), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(units.to_signal(np.array([1.0, 0.1]), "TRANSMITTANCE"), [0.0, 1.0])
    np.testing.assert_allclose(units.to_signal(np.array([0.3]), "ABSORBANCE"), [0.3])


def test_wavelength_transmittance_file_lands_on_the_grid(tmp_path):
    wavelength_um = np.linspace(2.5, 16.0, 4000)              # 4000 .. 625 cm^-1, descending x after conversion
    wavenumber = 1e4 / wavelength_um
    transmittance = 1 - 0.8 * np.exp(-0.5 * ((wavenumber - 1715.0) / 8.0) ** 2)
    path = tmp_path / "ir_um.csv"
    path.write_text("wavelength (um),transmittance\n" + "".join(f"{w},{t}\n" for w, t in zip(wavelength_um, transmittance)))
    spectrum = files.read_spectrum(path)
    assert spectrum.kind == "ir" and spectrum.signal == "absorbance"
    values, covered = files.resample(spectrum)
    assert not covered[:100].any() and covered[200:].all()     # no data below 625 cm^-1
    assert abs(broadening.GRID_CM1[np.argmax(values)] - 1715.0) <= 2.0
    assert values.max() == pytest.approx(-np.log10(0.2), rel=0.02)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"\x00\x01\x02binary", "binary file"),
    (b"wavenumber (cm-1),absorbance\n1000,0.1\n1001,nan\n", "NaN or infinite"),
    (b"1000,0.1\n1001,0.2\n", "no x units"),
    (b"frequency (GHz),absorbance\n1000,0.1\n", "no x units"),
    (b"wavenumber (cm-1),absorbance\n1000,abc\n", "not numbers"),
    (b"wavenumber (cm-1),absorbance\n1000\n", "expected two columns"),
    (b"wavenumber (cm-1),weird units\n1000,0.1\n", "unknown y units"),
])
def test_bad_csv_uploads_name_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(SpectrumFileError, match=problem) as info:
        files.read_spectrum(path, kind="ir")
    assert str(path) in str(info.value)


def test_bad_jcamp_and_range_and_size(tmp_path, monkeypatch, computed):
    no_units = tmp_path / "nounits.jdx"
    no_units.write_text("##TITLE=x\n##JCAMP-DX=4.24\n##DATA TYPE=INFRARED SPECTRUM\n##FIRSTX=500\n##LASTX=502\n"
                        "##NPOINTS=3\n##XYDATA=(X++(Y..Y))\n500 1 2 3\n##END=\n")
    with pytest.raises(SpectrumFileError, match="no ##XUNITS"):
        files.read_spectrum(no_units)
    not_jcamp = tmp_path / "text.jdx"
    not_jcamp.write_text("hello\nworld\n")
    with pytest.raises(SpectrumFileError, match="not a JCAMP-DX spectrum"):
        files.read_spectrum(not_jcamp)
    uv = tmp_path / "uv.csv"
    uv.write_text("wavelength (nm),absorbance\n200,0.1\n300,0.5\n400,0.2\n")  # 25,000-50,000 cm^-1
    with pytest.raises(SpectrumFileError, match="less than 500 cm\\^-1 of the model"):
        files.resample(files.read_spectrum(uv, kind="uv-vis"))
    big = files.write_csv(tmp_path / "big.csv", computed)
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 1000)
    with pytest.raises(SpectrumFileError, match="larger than"):
        files.read_spectrum(big, kind="ir")
    with pytest.raises(SpectrumFileError, match="unknown spectrum kind"):
        files.read_spectrum(big, kind="nmr")


def test_uneven_spectrum_is_not_written_as_jcamp(tmp_path):
    uneven = Spectrum(np.array([500.0, 501.0, 503.0]), np.ones(3), "ir", "intensity")
    with pytest.raises(SpectrumFileError, match="evenly spaced"):
        files.write_jcamp(tmp_path / "u.jdx", uneven)
    assert not (tmp_path / "u.jdx").exists()


def test_broadening_preserves_band_area():
    y = broadening.broaden([2000.0], [100.0], scale=1.0, fwhm=15.0)
    assert y.sum() == pytest.approx(100.0 * (1 - 2 * 7.5 / np.pi / 1500), rel=2e-3)  # Lorentzian tails beyond the grid
    g = broadening.broaden([2000.0], [100.0], scale=1.0, shape="gaussian")
    assert g.sum() == pytest.approx(100.0, rel=1e-6)
    assert broadening.GRID_CM1[np.argmax(y)] == 2000.0 and len(broadening.GRID_CM1) == 3501
    assert broadening.broaden([-80.0, 1000.0], [1e6, 1.0], scale=1.0).max() < 1.0   # imaginary modes dropped
