"""Checks of the xTB spectra against real data: QM9's B3LYP harmonic frequencies, and characteristic bands.

QM9 lists every molecule's B3LYP/6-31G(2df,p) harmonic frequencies in ascending order, without mode
assignments, so xTB and B3LYP modes are paired by rank (the i-th lowest with the i-th lowest), as
frequency scale factors are usually fitted when modes are not assigned one by one. Imaginary
xTB modes and molecules whose mode counts differ are left out and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ScaleFit:
    scale: float              # least squares through the origin: B3LYP ~ scale * xTB
    molecules: int
    modes: int
    mae_raw_cm1: float        # before scaling
    mae_cm1: float            # after scaling
    rmse_cm1: float
    pearson_r: float
    skipped_molecules: int    # mode counts differ or imaginary modes

    def as_dict(self) -> dict:
        return asdict(self)


def paired_frequencies(xtb: list[np.ndarray], b3lyp: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Rank-paired modes of molecules whose counts agree and whose xTB modes are all real."""
    xs, ys, skipped = [], [], 0
    for x, y in zip(xtb, b3lyp):
        x, y = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
        if len(x) != len(y) or len(x) == 0 or x[0] <= 0:
            skipped += 1
            continue
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros(0), np.zeros(0), skipped
    return np.concatenate(xs), np.concatenate(ys), skipped


def fit_scale_factor(xtb: list[np.ndarray], b3lyp: list[np.ndarray]) -> ScaleFit:
    x, y, skipped = paired_frequencies(xtb, b3lyp)
    if len(x) == 0:
        raise ValueError("no molecule with matching xTB and B3LYP mode counts")
    scale = float((x @ y) / (x @ x))
    residual = scale * x - y
    return ScaleFit(scale=scale, molecules=len(xtb) - skipped, modes=len(x),
                    mae_raw_cm1=float(np.abs(x - y).mean()), mae_cm1=float(np.abs(residual).mean()),
                    rmse_cm1=float(np.sqrt((residual**2).mean())), pearson_r=float(np.corrcoef(x, y)[0, 1]),
                    skipped_molecules=skipped)


def b3lyp_frequencies(qm9_indices: list[int]) -> list[np.ndarray]:
    """QM9's B3LYP harmonic frequencies (cm^-1) of these GDB indices, from qm9pack."""
    from chemgen.data.qm9 import _parse_floats, read_qm9_frame

    frame = read_qm9_frame().set_index("Index")
    return [_parse_floats(frame.at[i, "Harmonic_Freq_cmi"]) for i in qm9_indices]


def fit_on_dataset(folder, split: str | None = None, limit: int | None = None) -> ScaleFit:
    """The scale factor fitted on the computed molecules of a spectra folder (optionally one split)."""
    from chemgen.spectra import shards

    table = shards.read_table(folder, ["qm9_index", "split", "frequencies_cm1"], only_ok=True)
    if split is not None:
        table = table.filter(table.column("split").to_numpy(zero_copy_only=False) == split)
    if limit is not None:
        table = table.slice(0, limit)
    indices = table.column("qm9_index").to_pylist()
    return fit_scale_factor([np.asarray(f) for f in table.column("frequencies_cm1").to_pylist()],
                            b3lyp_frequencies(indices))


def bond_stretch_amplitude(modes: np.ndarray, i: int, j: int, positions: np.ndarray) -> np.ndarray:
    """How much each normal mode (M, N, 3) stretches the bond i-j (relative displacement along it)."""
    axis = positions[j] - positions[i]
    axis = axis / np.linalg.norm(axis)
    return np.abs((modes[:, j] - modes[:, i]) @ axis)


def stretch_frequency(spectra, modes: np.ndarray, i: int, j: int) -> float:
    """The frequency of the mode that stretches bond i-j the most."""
    amplitude = bond_stretch_amplitude(modes, i, j, spectra.positions_a)
    return float(spectra.frequencies_cm1[int(np.argmax(amplitude))])
