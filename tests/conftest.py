"""Shared fixtures: real data slices from ../shared/data and qm9pack, and a throwaway store."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

torch.set_num_threads(1)  # stable timings on 2 shared cores

# Hermetic state: each test session gets its own store, MLflow database and caches.
import tempfile  # noqa: E402

os.environ["CHEMGEN_HOME"] = tempfile.mkdtemp(prefix="chemgen-test-home-")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from chemgen.data.crystals import default_data_dir  # noqa: E402

DATA_DIR = default_data_dir()
MP20_DIR = DATA_DIR / "mp_20"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not MP20_DIR.is_dir():
        pytest.fail(f"{MP20_DIR} not found: set CHEMGEN_DATA_DIR to the shared data folder")
    return DATA_DIR


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="session")
def mp20_slice_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A small MP-20 folder in the shared layout: 40 train, 40 val, 40 test rows.

    Val and test slices include rows rebuilt from MatterGen's cache (empty e_above_hull
    and index) so that the tolerance for empty fields is exercised.
    """
    folder = tmp_path_factory.mktemp("mp_20")
    pd.read_csv(MP20_DIR / "train_first1000.csv.gz", nrows=40).to_csv(folder / "train_first1000.csv.gz", index=False)
    for split in ("val", "test"):
        frame = pd.read_csv(MP20_DIR / f"{split}.csv.gz")
        empty = frame[frame.e_above_hull.isna()].head(10)
        full = frame[frame.e_above_hull.notna()].head(30)
        pd.concat([full, empty]).to_csv(folder / f"{split}.csv.gz", index=False)
    return folder


@pytest.fixture(scope="session")
def qm9_systems():
    from chemgen.data.qm9 import iter_qm9, read_qm9_frame

    frame = read_qm9_frame().sample(n=60, random_state=1)
    return [s for _, s in iter_qm9(frame)]


@pytest.fixture(scope="session")
def mp20_systems(data_dir: Path):
    from chemgen.data.crystals import iter_crystals

    frame = pd.read_csv(MP20_DIR / "test.csv.gz", nrows=30)
    return [s for _, s in iter_crystals("mp20", frame, "test")]


# Real molecules of the committed spectra store (datasets/spectra/qm9-xtb), by GDB index: small ones, for
# DiffSpectra's end-to-end tests. 4220 is held out for validation (its index is a multiple of 20).
SPECTRA_STORE = Path(__file__).resolve().parents[1] / "datasets" / "spectra" / "qm9-xtb"
SMALL_SPECTRA_MOLECULES = {4: "C#C", 24: "C#CC#N", 27: "O=CC#N", 4220: "FC1=CN=NN=N1"}


@pytest.fixture(scope="session")
def small_spectra_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spectra store of the `SMALL_SPECTRA_MOLECULES` rows of the committed one, as one shard: the folder to
    set CHEMGEN_SPECTRA_DIR to (it holds qm9-xtb/)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from chemgen.spectra import shards

    table = shards.read_table(SPECTRA_STORE, only_ok=True)
    table = table.filter(pc.is_in(table.column("qm9_index"), pa.array(list(SMALL_SPECTRA_MOLECULES), pa.int32())))
    rows = sorted(table.to_pylist(), key=lambda r: list(SMALL_SPECTRA_MOLECULES).index(r["qm9_index"]))
    assert [r["smiles"] for r in rows] == list(SMALL_SPECTRA_MOLECULES.values())
    for order, row in enumerate(rows):
        row["order"] = order
    root = tmp_path_factory.mktemp("spectra")
    (root / "qm9-xtb").mkdir()
    shards.write_shard(root / "qm9-xtb", 0, len(rows), rows, shards.scan(SPECTRA_STORE)[0].metadata)
    return root


@pytest.fixture(scope="session")
def small_references(tmp_path_factory, data_dir):
    """CHGNet elemental references fitted on 40 MP-20 val rows (the full fit takes minutes)."""
    from pymatgen.core import Structure

    from chemgen.scoring.hull import chgnet_energies_per_atom, fit_elemental_references

    rows = pd.read_csv(data_dir / "mp_20" / "val.csv.gz", nrows=40)
    energies = chgnet_energies_per_atom([Structure.from_str(c, fmt="cif") for c in rows.cif])
    refs = fit_elemental_references(rows.pretty_formula, energies, rows.formation_energy_per_atom)
    path = tmp_path_factory.mktemp("refs") / "refs.json"
    refs.to_json(path)
    return path
