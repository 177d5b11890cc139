"""QM9 (134k small organic molecules, B3LYP/6-31G(2df,p) geometries) from the qm9pack wheel.

qm9pack (MIT, by QM9's own author) ships the 130,831 molecules that remain after the
3,054 "uncharacterized" ones are excluded, as CSV files inside the package. We read
the CSVs with pandas (``import qm9pack`` fails: it imports pkg_resources).

The split is EDM's exactly (e3_diffusion_for_molecules, qm9/data/prepare/qm9.py):
``np.random.seed(0); perm = np.random.permutation(130831)`` over the molecules in
GDB index order, cut into 100,000 train / 17,748 valid / 13,083 test.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from chemgen.atoms import ATOMIC_NUMBERS, AtomicSystem, InvalidSystemError

NUM_MOLECULES = 130_831
EDM_SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
EDM_SPLIT_SEED = 0
# Bump when the curated output of the same input changes (it is part of the version hash).
RECIPE_VERSION = 1

# CSV column -> standard QM9 property name (units as in the source: Debye, bohr^3, Hartree, cal/mol/K, GHz).
PROPERTY_COLUMNS = {
    "RotA_GHz": "A", "RotB_GHz": "B", "RotC_GHz": "C",
    "Dipole_debye": "mu", "Polarizability_bohr3": "alpha",
    "HOMO_au": "homo", "LUMO_au": "lumo", "HOMO_LUMO_gap_au": "gap",
    "R2_bohr2": "r2", "ZPVE_au": "zpve",
    "InternalEnergy_0K_au": "U0", "InternalEnergy_298K_au": "U",
    "Enthalphy_298K_au": "H", "GibbsFreeEnergy_298K_au": "G",
    "Heatcapacity_Cv_cal_mol_K": "Cv",
}


def qm9pack_data_dir() -> Path:
    """The ``data/`` folder inside the installed qm9pack package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qm9pack is not installed: `pip install qm9pack==1.0.3`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def qm9_source_files(data_dir: Path | None = None) -> list[Path]:
    data_dir = data_dir or qm9pack_data_dir()
    files = [data_dir / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"QM9 CSV files missing: {', '.join(missing)}")
    return files


def read_qm9_frame(data_dir: Path | None = None, limit: int | None = None) -> pd.DataFrame:
    """All QM9 rows in GDB index order (the order EDM's split permutes)."""
    frames = []
    for path in qm9_source_files(data_dir):
        try:
            frames.append(pd.read_csv(path).assign(source_file=path.name))
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable QM9 CSV ({err})") from err
    frame = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable").reset_index(drop=True)
    return frame.iloc[:limit] if limit is not None else frame


def edm_split(num_molecules: int = NUM_MOLECULES) -> dict[str, np.ndarray]:
    """Row positions (into the GDB-ordered table) of EDM's train / valid / test split."""
    if num_molecules != NUM_MOLECULES:
        raise ValueError(f"EDM's split is defined for {NUM_MOLECULES} molecules, got {num_molecules}")
    rng = np.random.RandomState(EDM_SPLIT_SEED)  # same stream as np.random.seed(0) in EDM
    perm = rng.permutation(num_molecules)
    n_train, n_valid = EDM_SPLIT_SIZES["train"], EDM_SPLIT_SIZES["valid"]
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}


def _parse_floats(text: str) -> np.ndarray:
    """Parse a bracketed list such as ``[[0.5,0.,1.],[...]]`` (not valid JSON: ``0.``)."""
    body = text.replace("[", " ").replace("]", " ").replace(",", " ").split()
    return np.array(body, dtype=np.float64)


def _parse_symbols(text: str) -> list[str]:
    return [s.strip(" '\"") for s in text.strip("[]").split(",") if s.strip(" '\"")]


def row_to_system(row: pd.Series | object) -> AtomicSystem:
    """One QM9 CSV row as an `AtomicSystem`; raises `InvalidSystemError` with the reason."""
    symbols = _parse_symbols(row.Elements)
    unknown = sorted({s for s in symbols if s not in ATOMIC_NUMBERS})
    if unknown:
        raise InvalidSystemError(f"unknown element symbols {unknown}")
    coords = _parse_floats(row.XYZ_Ang)
    if coords.size != 3 * len(symbols) or len(symbols) != int(row.N_atoms):
        raise InvalidSystemError(
            f"N_atoms={row.N_atoms} but {len(symbols)} elements and {coords.size / 3:g} coordinate rows")
    frequencies = _parse_floats(row.Harmonic_Freq_cmi) if isinstance(row.Harmonic_Freq_cmi, str) else np.zeros(0)
    charges = _parse_floats(row.Mulliken_pop) if isinstance(row.Mulliken_pop, str) else np.zeros(0)
    properties: dict[str, object] = {name: float(getattr(row, col)) for col, name in PROPERTY_COLUMNS.items()}
    properties.update(
        gdb_index=int(row.Index), inchi=str(row.InChi),
        harmonic_frequencies_cm1=frequencies.tolist(), mulliken_charges=charges.tolist(),
    )
    return AtomicSystem.molecule(
        [ATOMIC_NUMBERS[s] for s in symbols], coords.reshape(-1, 3),
        dataset="qm9", smiles=str(row.SMILES), material_id=f"gdb9_{int(row.Index):06d}", properties=properties,
    )


def iter_qm9(frame: pd.DataFrame) -> Iterator[tuple[int, AtomicSystem | Exception]]:
    """Yield ``(row position, system or the error that row raised)``."""
    for position, row in enumerate(frame.itertuples(index=False)):
        try:
            yield position, row_to_system(row)
        except (InvalidSystemError, ValueError) as err:
            yield position, err


def builder(data_dir: Path | None = None, limit: int | None = None):
    """The `DatasetBuilder` that curates QM9 with EDM's split into the store."""
    from chemgen.data.store import DatasetBuilder

    files = qm9_source_files(data_dir)

    def records():
        frame = read_qm9_frame(data_dir)
        split_of = np.empty(len(frame), dtype=object)
        for split, positions in edm_split(len(frame)).items():
            split_of[positions] = split
        if limit is not None:  # a slice keeps EDM's split labels of the full table
            frame = frame.iloc[:limit]
        for position, result in iter_qm9(frame):
            ident = str(frame.XYZ_file.iat[position])
            yield split_of[position], str(frame.source_file.iat[position]), position, ident, result

    return DatasetBuilder(
        name="qm9", source_files=files, total=limit or NUM_MOLECULES,
        parameters={"recipe": RECIPE_VERSION, "split": "edm", "split_seed": EDM_SPLIT_SEED, "limit": limit},
        records=records,
        description="QM9: 130,831 molecules (3,054 uncharacterized excluded), B3LYP/6-31G(2df,p) geometries, from qm9pack",
        protocol="EDM split: np.random.seed(0) permutation of GDB-ordered molecules, 100,000 / 17,748 / 13,083",
    )
