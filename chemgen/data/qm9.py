"""QM9 (134k small organic molecules, B3LYP/6-31G(2df,p) geometries) from the qm9pack wheel.

qm9pack (MIT, by QM9's own author) ships the 130,831 molecules that remain after the
3,054 "uncharacterized" ones are excluded, as CSV files inside the package. We read
the CSVs with pandas (``import qm9pack`` fails: it imports pkg_resources).

The split is EDM's exactly (e3_diffusion_for_molecules, qm9/data/prepare/qm9.py):
``np.random.seed(0); perm = np.random.permutation(130831)`` over the molecules in
GDB index order, cut into 100,000 train / 17,748 valid / 13,083 test.

A row that cannot be read (a cell that is not a number, an unparsable list, a repeated GDB index, a
molecule outside `AtomicSystem`'s limits) is a bad row of the curation, named by file and row; a file
that cannot be read, has no rows or lacks a column is a `CurationError` naming it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from chemgen.atoms import ATOMIC_NUMBERS, AtomicSystem, InvalidSystemError
from chemgen.data.store import BadRowError, CurationError, duplicate_of, numeric_columns

NUM_MOLECULES = 130_831
EDM_SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
EDM_SPLIT_SEED = 0
# Bump when the curated output of the same input changes (it is part of the version hash).
RECIPE_VERSION = 2  # 2: per-row checks (non-numeric cells, repeated indices), bad rows named by their file row

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
NUMERIC_COLUMNS = ("Index", "N_atoms", *PROPERTY_COLUMNS)
REQUIRED_COLUMNS = ("XYZ_file", "SMILES", "InChi", "Elements", "XYZ_Ang", *NUMERIC_COLUMNS)


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
    """All QM9 rows in GDB index order (the order EDM's split permutes).

    Besides the CSV's columns: ``source_file`` and ``source_row`` (the row's 0-based data row in that file)
    and ``row_problem`` (None, or why a cell of the row is not a number: `row_to_system` refuses the row)."""
    frames = []
    for path in qm9_source_files(data_dir):
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError,
                ValueError) as err:
            raise CurationError(f"{path}: not a readable QM9 CSV ({err})") from err
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise CurationError(f"{path}: missing column(s) {missing}")
        if frame.empty:
            raise CurationError(f"{path}: no data rows (only a header)")
        problems = numeric_columns(frame, NUMERIC_COLUMNS)
        frames.append(frame.assign(source_file=path.name, source_row=np.arange(len(frame)),
                                   row_problem=pd.Series([problems.get(i) for i in range(len(frame))],
                                                         index=frame.index, dtype=object)))
    frame = pd.concat(frames, ignore_index=True)
    # A row whose Index is not a number sorts last (it is a bad row; the others keep GDB order).
    order = pd.to_numeric(frame["Index"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    frame = frame.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    return frame.iloc[:limit] if limit is not None else frame


def edm_split(num_molecules: int = NUM_MOLECULES) -> dict[str, np.ndarray]:
    """Row positions (into the GDB-ordered table) of EDM's train / valid / test split."""
    if num_molecules != NUM_MOLECULES:
        raise ValueError(f"EDM's split is defined for {NUM_MOLECULES} molecules, got {num_molecules}")
    rng = np.random.RandomState(EDM_SPLIT_SEED)  # same stream as np.random.seed(0) in EDM
    perm = rng.permutation(num_molecules)
    n_train, n_valid = EDM_SPLIT_SIZES["train"], EDM_SPLIT_SIZES["valid"]
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}


def _parse_floats(text: str, column: str = "") -> np.ndarray:
    """Parse a bracketed list such as ``[[0.5,0.,1.],[...]]`` (not valid JSON: ``0.``)."""
    if not isinstance(text, str):
        raise BadRowError(f"column {column}: empty", kind="bad list")
    body = text.replace("[", " ").replace("]", " ").replace(",", " ").split()
    try:
        values = np.array(body, dtype=np.float64)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise BadRowError(f"column {column}: {shown!r} is not a list of numbers", kind="bad list") from None
    if not np.isfinite(values).all():
        raise BadRowError(f"column {column}: a value that is not a finite number", kind="bad list")
    return values


def _parse_symbols(text: str) -> list[str]:
    if not isinstance(text, str):
        raise BadRowError("column Elements: empty", kind="bad list")
    return [s.strip(" '\"") for s in text.strip("[]").split(",") if s.strip(" '\"")]


def _integer(value: object, column: str) -> int:
    if value is None or isinstance(value, str) or not float(value).is_integer():  # NaN is not an integer
        raise BadRowError(f"column {column}: {value!r} is not an integer", kind="not a number")
    return int(value)


def _property(value: object, column: str) -> float | None:
    """A property cell: a number, or None where the cell is empty."""
    return None if value is None or np.isnan(value) else float(value)


def row_to_system(row: pd.Series | object) -> AtomicSystem:
    """One QM9 CSV row as an `AtomicSystem`; raises `BadRowError` or `InvalidSystemError` with the reason."""
    problem = getattr(row, "row_problem", None)
    if isinstance(problem, str):  # found by `read_qm9_frame` (a cell that is not a number)
        raise BadRowError(problem, kind="not a number")
    index = _integer(row.Index, "Index")
    n_atoms = _integer(row.N_atoms, "N_atoms")
    symbols = _parse_symbols(row.Elements)
    unknown = sorted({s for s in symbols if s not in ATOMIC_NUMBERS})
    if unknown:
        raise InvalidSystemError(f"unknown element symbols {unknown}")
    coords = _parse_floats(row.XYZ_Ang, "XYZ_Ang")
    if coords.size != 3 * len(symbols) or len(symbols) != n_atoms:
        raise InvalidSystemError(
            f"N_atoms={n_atoms} but {len(symbols)} elements (column Elements) and {coords.size / 3:g} coordinate "
            f"rows (column XYZ_Ang)")
    frequencies = (_parse_floats(row.Harmonic_Freq_cmi, "Harmonic_Freq_cmi") if isinstance(row.Harmonic_Freq_cmi, str)
                   else np.zeros(0))
    charges = _parse_floats(row.Mulliken_pop, "Mulliken_pop") if isinstance(row.Mulliken_pop, str) else np.zeros(0)
    properties: dict[str, object] = {name: _property(getattr(row, col), col) for col, name in PROPERTY_COLUMNS.items()}
    properties.update(
        gdb_index=index, inchi=str(row.InChi),
        harmonic_frequencies_cm1=frequencies.tolist(), mulliken_charges=charges.tolist(),
    )
    return AtomicSystem.molecule(
        [ATOMIC_NUMBERS[s] for s in symbols], coords.reshape(-1, 3),
        dataset="qm9", smiles=str(row.SMILES), material_id=f"gdb9_{index:06d}", properties=properties,
    )


def iter_qm9(frame: pd.DataFrame) -> Iterator[tuple[int, AtomicSystem | Exception]]:
    """Yield ``(row position, system or the error that row raised)``; any failure of one row is that row's alone."""
    for position, row in enumerate(frame.itertuples(index=False)):
        try:
            yield position, row_to_system(row)
        except (BadRowError, InvalidSystemError) as err:
            yield position, err
        except Exception as err:  # noqa: BLE001 - odd input fails in many ways; the row is bad, not the run
            yield position, BadRowError(f"{type(err).__name__}: {err}", kind=type(err).__name__)


def builder(name: str = "qm9", data_dir: Path | None = None, workers: int = 1, limit: int | None = None):
    """The `DatasetBuilder` that curates QM9 with EDM's split into the store (the signature of every dataset's
    builder, `chemgen.datasets.curation_builder`; one process reads QM9's CSVs, so ``workers`` is not used)."""
    if name != "qm9":
        raise CurationError(f"the QM9 builder curates qm9, not {name!r}")
    from chemgen.data.store import DatasetBuilder

    if limit is not None and limit < 1:
        raise CurationError(f"limit must be at least 1 molecule, got {limit}")
    files = qm9_source_files(data_dir)

    def records():
        frame = read_qm9_frame(data_dir)
        if len(frame) != NUM_MOLECULES:
            raise CurationError(f"{', '.join(map(str, files))}: {len(frame):,} rows in all, but QM9 (and EDM's "
                                f"split) has {NUM_MOLECULES:,}: not qm9pack's files")
        split_of = np.empty(len(frame), dtype=object)
        for split, positions in edm_split(len(frame)).items():
            split_of[positions] = split
        if limit is not None:  # a slice keeps EDM's split labels of the full table
            frame = frame.iloc[:limit]
        seen: dict[str, tuple[str, int]] = {}  # GDB index -> its first (file, row)
        for (position, result), row in zip(iter_qm9(frame), frame.itertuples(index=False)):
            ident = str(row.XYZ_file) if isinstance(row.XYZ_file, str) else ""
            source, source_row = str(row.source_file), int(row.source_row)
            if not isinstance(result, Exception):
                result = duplicate_of(seen, result.material_id, source, source_row) or result
            yield split_of[position], source, source_row, ident, result

    return DatasetBuilder(
        name="qm9", source_files=files, total=limit or NUM_MOLECULES,
        parameters={"recipe": RECIPE_VERSION, "split": "edm", "split_seed": EDM_SPLIT_SEED, "limit": limit},
        records=records,
        description="QM9: 130,831 molecules (3,054 uncharacterized excluded), B3LYP/6-31G(2df,p) geometries, from qm9pack",
        protocol="EDM split: np.random.seed(0) permutation of GDB-ordered molecules, 100,000 / 17,748 / 13,083",
    )
