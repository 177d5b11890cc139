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
    header.write_text("raman shift (cm-1),raman intensity\n" + "".join(f"{500 + 200 * i},{1 + i % 3}\n" for i in range(12)))
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
    uv.write_text("wavelength (nm),absorbance\n" + "".join(f"{200 + 10 * i},{0.1 + 0.02 * i}\n" for i in range(21)))
    # 200-400 nm: 25,000-50,000 cm^-1
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


# ---------------------------------------------------------------------------- measured spectra, every common form
def _jcamp_block(x: np.ndarray, y: np.ndarray, data_type: str = "INFRARED SPECTRUM", xunits: str = "1/CM",
                 yunits: str = "ABSORBANCE", title: str = "block", version: str = "4.24") -> str:
    """One JCAMP-DX block of evenly spaced points (X++(Y..Y), ten values a line), as instruments write them."""
    step = float(x[1] - x[0])
    lines = [f"##TITLE={title}", f"##JCAMP-DX={version}", f"##DATA TYPE={data_type}", f"##XUNITS={xunits}",
             f"##YUNITS={yunits}", "##XFACTOR=1.0", "##YFACTOR=1.0", f"##FIRSTX={x[0]:.4f}", f"##LASTX={x[-1]:.4f}",
             f"##DELTAX={step:.6f}", f"##NPOINTS={len(x)}", f"##FIRSTY={y[0]:.6g}", "##XYDATA=(X++(Y..Y))"]
    for start in range(0, len(x), 10):
        lines.append(f"{x[start]:.4f} " + " ".join(f"{v:.6g}" for v in y[start:start + 10]))
    return "\n".join(lines) + "\n##END=\n"


def _band(x: np.ndarray, centre: float, width: float = 10.0, height: float = 1.0) -> np.ndarray:
    return height * np.exp(-0.5 * ((x - centre) / width) ** 2)


def test_gas_phase_absorption_coefficients_read_as_absorbance(tmp_path):
    """Public gas-phase IR files give absorption coefficients, (micromol/mol)-1 m-1 (base 10), from 450 cm^-1."""
    x = np.arange(450.0, 3966.0, 2.0)
    y = 1e-4 * (_band(x, 1050.0, 12.0, 3.0) + _band(x, 2950.0, 15.0, 5.0))
    path = tmp_path / "nist-like.jdx"
    path.write_text(_jcamp_block(x, y, yunits="(micromol/mol)-1m-1 (base 10)", title="ETHANOL"))
    spectrum = files.read_spectrum(path)
    assert (spectrum.kind, spectrum.signal) == ("ir", "absorbance")
    values, covered = files.resample(spectrum)
    assert covered[broadening.GRID_CM1 <= 3964].all() and not covered[broadening.GRID_CM1 > 3964].any()
    assert abs(broadening.GRID_CM1[np.argmax(values)] - 2950.0) <= 2.0


def test_several_blocks_of_one_spectrum_merge_and_mixed_blocks_are_refused(tmp_path):
    low, high = np.arange(500.0, 1800.0, 1.0), np.arange(1800.0, 4000.0, 2.0)
    blocks = [_jcamp_block(low, _band(low, 1100.0), title="fingerprint"),
              _jcamp_block(high, _band(high, 3000.0), title="stretches")]
    compound = tmp_path / "two-ranges.jdx"
    compound.write_text(f"##TITLE=two ranges\n##JCAMP-DX=5.01\n##DATA TYPE=LINK\n##BLOCKS=2\n{''.join(blocks)}##END=\n")
    spectrum = files.read_spectrum(compound)
    assert spectrum.meta["blocks"] == 2 and spectrum.x_cm1.min() == 500.0 and spectrum.x_cm1.max() == 3998.0
    values, covered = files.resample(spectrum)
    assert covered[:3490].all()
    assert abs(broadening.GRID_CM1[np.argmax(values[:1300])] - 1100.0) <= 1 and values[2500] == pytest.approx(1.0, abs=0.01)
    mixed = tmp_path / "ir-and-raman.jdx"
    mixed.write_text("##TITLE=mixed\n##JCAMP-DX=5.01\n##DATA TYPE=LINK\n##BLOCKS=2\n" + blocks[0]
                     + _jcamp_block(high, _band(high, 3000.0), data_type="RAMAN SPECTRUM", yunits="ARBITRARY UNITS")
                     + "##END=\n")
    with pytest.raises(SpectrumFileError, match=r"ir-and-raman.jdx: blocks of different spectra \(ir, raman\)"):
        files.read_spectrum(mixed)


def test_a_gap_in_the_data_stays_uncovered(tmp_path):
    x = np.concatenate([np.arange(600.0, 1300.0, 1.0), np.arange(1700.0, 3800.0, 1.0)])   # 1300-1700 cut out
    path = tmp_path / "gap.csv"
    path.write_text("wavenumber (cm-1),absorbance\n" + "".join(f"{a},{b}\n" for a, b in zip(x, _band(x, 1000.0))))
    spectrum = files.read_spectrum(path, kind="ir")
    assert files.gaps(spectrum.x_cm1) == [(1299.0, 1700.0)]
    values, covered = files.resample(spectrum)
    grid = broadening.GRID_CM1
    assert not covered[(grid > 1300) & (grid < 1700)].any() and covered[(grid >= 600) & (grid <= 1299)].all()
    assert not covered[grid < 600].any() and (values[~covered] == 0).all()


def test_descending_percent_transmittance_with_a_saturated_band(tmp_path):
    x = np.arange(4000.0, 499.0, -1.0)                                   # descending, as many instruments write
    transmittance = 100.0 * (1.0 - _band(x, 1715.0, 8.0, 1.0) - 0.5 * _band(x, 2900.0, 20.0))
    path = tmp_path / "percent-t.csv"
    path.write_text("wavenumber (cm-1),%T\n" + "".join(f"{a},{max(b, 0.0)}\n" for a, b in zip(x, transmittance)))
    spectrum = files.read_spectrum(path, kind="ir")
    assert spectrum.signal == "absorbance" and np.all(np.diff(spectrum.x_cm1) > 0)
    assert spectrum.y.max() == pytest.approx(units.MAX_ABSORBANCE)     # the saturated band, held, not refused
    dark = tmp_path / "dark.csv"
    dark.write_text("wavenumber (cm-1),transmittance\n" + "".join(f"{500 + i},0\n" for i in range(100)))
    with pytest.raises(SpectrumFileError, match="dark.csv: the transmittance is zero .* everywhere"):
        files.read_spectrum(dark, kind="ir")


def test_too_few_points_and_a_file_that_contradicts_its_kind(tmp_path):
    single = tmp_path / "single.csv"
    single.write_text("wavenumber (cm-1),absorbance\n1700,0.5\n")
    with pytest.raises(SpectrumFileError, match="single.csv: 1 data point\\(s\\): a spectrum needs at least 10"):
        files.read_spectrum(single, kind="ir")
    x = np.arange(500.0, 3500.0, 5.0)
    raman = tmp_path / "raman.jdx"
    raman.write_text(_jcamp_block(x, _band(x, 1000.0), data_type="RAMAN SPECTRUM", yunits="ARBITRARY UNITS"))
    with pytest.raises(SpectrumFileError, match="raman.jdx: the file says it is a raman spectrum .*, not ir"):
        files.read_spectrum(raman, kind="ir")
    assert files.read_spectrum(raman).kind == "raman"
