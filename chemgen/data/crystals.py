"""CDVAE-format crystal datasets: MP-20, MPTS-52, Perov-5 and Carbon-24.

Each set is a folder of ``{train,val,test}.csv`` (or ``.csv.gz``) files with a ``cif``
column (CDVAE, Xie et al. 2022; MPTS-52 via DiffCSP). Every CIF becomes the
Niggli-reduced primitive cell in the canonical orientation that CDVAE's
``build_crystal`` and MatterGen's preprocessing use: ``get_primitive_structure()``,
then ``get_reduced_structure()`` (Niggli), then the lattice rebuilt from its six
parameters (pymatgen's convention: c along z, a in the xz plane).

MP-20 on machines without the full train split follows the in-house protocol of
../shared/data/README.md: train on ``train_first1000`` + ``val`` minus a held-out
slice, validate on that slice, test on ``test``. With the canonical ``train.csv``
present, the canonical 27,136 / 9,047 / 9,046 split is used through the same code.
"""

from __future__ import annotations

import ast
import math
import os
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chemgen.atoms import AtomicSystem, InvalidSystemError
from chemgen.io import CIF_PARSE_ERRORS

DATA_DIR_ENV = "CHEMGEN_DATA_DIR"
SPLITS = ("train", "val", "test")
# In-house MP-20 protocol: this many val rows (fixed seed) are held out for validation.
MP20_HOLDOUT_FRACTION = 0.1
MP20_HOLDOUT_SEED = 0
# Bump when the curated output of the same input changes (it is part of the version hash).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class CrystalDatasetSpec:
    name: str                      # chemgen's name, used on the command line
    folder: str                    # folder name in the CDVAE layout
    url: str                       # canonical source folder (CSV files) for `download`
    property_columns: tuple[str, ...]
    max_atoms: int
    citation: str
    licence: str = "CC BY 4.0 (Materials Project data); splits MIT (CDVAE)"
    extra_files: dict[str, str] = field(default_factory=dict)


CDVAE_RAW = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
DIFFCSP_RAW = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"

DATASETS: dict[str, CrystalDatasetSpec] = {
    "mp20": CrystalDatasetSpec(
        "mp20", "mp_20", f"{CDVAE_RAW}/mp_20",
        ("formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number"), 20,
        "Xie et al., Crystal Diffusion Variational Autoencoder, ICLR 2022; Jain et al., APL Materials 2013"),
    "mpts52": CrystalDatasetSpec(
        "mpts52", "mpts_52", f"{DIFFCSP_RAW}/mpts_52",
        ("formation_energy_per_atom", "energy_above_hull", "year"), 52,
        "Baird & Sparks 2022; Jiao et al., DiffCSP, NeurIPS 2023"),
    "perov5": CrystalDatasetSpec(
        "perov5", "perov_5", f"{CDVAE_RAW}/perov_5", ("heat_all", "heat_ref", "dir_gap", "ind_gap"), 5,
        "Castelli et al., Energy Environ. Sci. 2012; Xie et al., ICLR 2022", licence="MIT (CDVAE)"),
    "carbon24": CrystalDatasetSpec(
        "carbon24", "carbon_24", f"{CDVAE_RAW}/carbon_24", ("energy_per_atom",), 24,
        "Pickard, AIRSS data for carbon at 10 GPa, 2020; Xie et al., ICLR 2022", licence="CC BY 4.0; splits MIT (CDVAE)"),
}


def default_data_dir() -> Path:
    """``$CHEMGEN_DATA_DIR`` if set, else ``../shared/data`` beside the project checkout."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding one dataset's CSVs; ``data_dir`` may be that folder or its parent."""
    spec = DATASETS[name]
    base = Path(data_dir) if data_dir else default_data_dir()
    if _split_file(base, "test") is not None or _split_file(base, "val") is not None:
        return base
    return base / spec.folder


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class SourceFile:
    """One CSV of a dataset and the split(s) its rows feed."""

    path: Path
    source_split: str     # the split named by the file: train / val / test
    partial: bool = False  # MP-20's train_first1000 stands in for a missing train.csv


def source_files(name: str, data_dir: str | os.PathLike | None = None) -> list[SourceFile]:
    """The CSV files of a dataset, failing with a clear message if the folder is wrong."""
    folder = dataset_dir(name, data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (set --data-dir or ${DATA_DIR_ENV})")
    files = []
    for split in SPLITS:
        path = _split_file(folder, split)
        if path is None and split == "train" and name == "mp20":
            partial = folder / "train_first1000.csv.gz"
            if partial.is_file():
                files.append(SourceFile(partial, "train", partial=True))
            continue
        if path is not None:
            files.append(SourceFile(path, split))
    if not any(f.source_split == "test" for f in files):
        raise FileNotFoundError(f"{folder}: no test.csv or test.csv.gz for {name}")
    return files


def download(name: str, data_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """Fetch the canonical CSVs of a dataset (needs internet; not possible on CI machines)."""
    spec = DATASETS[name]
    folder = Path(data_dir) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits:
        target = folder / f"{split}.csv"
        if target.is_file():
            continue
        tmp = target.with_suffix(".csv.part")
        urllib.request.urlretrieve(f"{spec.url}/{split}.csv", tmp)
        pd.read_csv(tmp, nrows=2)  # fail here, not later, if the server sent an error page
        tmp.replace(target)
        written.append(target)
    return written


def wrap_fractional(frac: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Fractional coordinates in [0, 1): one image per atom, so files and models agree."""
    wrapped = np.mod(frac, 1.0)
    wrapped[wrapped > 1.0 - eps] = 0.0
    return wrapped


def canonical_crystal(cif: str) -> AtomicSystem:
    """A CIF string as the Niggli-reduced primitive cell in canonical orientation."""
    from pymatgen.core import Lattice, Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns on rounding of CIF coordinates
        structure = Structure.from_str(cif, fmt="cif")
    if not structure.is_ordered:
        raise InvalidSystemError("disordered structure (partial occupancies)")
    reduced = structure.get_primitive_structure().get_reduced_structure()
    canonical = Structure(Lattice.from_parameters(*reduced.lattice.parameters),
                          reduced.species, wrap_fractional(reduced.frac_coords), coords_are_cartesian=False)
    return AtomicSystem.from_pymatgen(canonical)


def _clean(value: object) -> object:
    """NaN (empty CSV field) becomes None; numpy scalars become Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def row_to_crystal(row: dict, spec: CrystalDatasetSpec, source_split: str) -> AtomicSystem:
    cif = row.get("cif")
    if not isinstance(cif, str) or not cif.strip():
        raise InvalidSystemError("empty cif field")
    try:
        system = canonical_crystal(cif)
    except CIF_PARSE_ERRORS as err:
        raise InvalidSystemError(f"unparseable CIF: {type(err).__name__}: {err}") from err
    if system.num_atoms > spec.max_atoms:
        raise InvalidSystemError(f"{system.num_atoms} atoms in the primitive cell, over {spec.name}'s "
                                 f"limit of {spec.max_atoms}")
    properties = {col: _clean(row.get(col)) for col in spec.property_columns if col in row}
    if "elements" in row and isinstance(row["elements"], str):
        properties["elements"] = ast.literal_eval(row["elements"])  # a Python list literal, never eval
    formula = row.get("pretty_formula") or row.get("formula")
    if isinstance(formula, str):
        properties["pretty_formula"] = formula
    properties["source_split"] = source_split
    material_id = str(row["material_id"])
    return system.replace(dataset=spec.name, material_id=material_id, properties=properties)


def read_rows(source: SourceFile) -> pd.DataFrame:
    try:
        frame = pd.read_csv(source.path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as err:
        raise ValueError(f"{source.path}: not a readable CSV ({err})") from err
    missing = {"material_id", "cif"} - set(frame.columns)
    if missing:
        raise ValueError(f"{source.path}: missing column(s) {sorted(missing)}")
    return frame


def iter_crystals(name: str, frame: pd.DataFrame, source_split: str) -> Iterator[tuple[int, AtomicSystem | Exception]]:
    """Yield ``(row position, crystal or the error that row raised)``."""
    spec = DATASETS[name]
    for position, row in enumerate(frame.to_dict("records")):
        try:
            yield position, row_to_crystal(row, spec, source_split)
        except InvalidSystemError as err:
            yield position, err


def assign_splits(name: str, sources: list[SourceFile], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Protocol split of each source file's rows: an array of 'train'/'valid'/'test' per row.

    Canonical files map train->train, val->valid, test->test. MP-20 with only
    ``train_first1000`` follows the in-house protocol: val rows join train except a
    fixed-seed held-out slice that becomes the validation split.
    """
    partial = any(s.partial for s in sources)
    labels: dict[str, np.ndarray] = {}
    for source in sources:
        n = counts[source.source_split]
        if source.source_split == "val" and partial:
            n_holdout = int(round(MP20_HOLDOUT_FRACTION * n))
            holdout = np.random.RandomState(MP20_HOLDOUT_SEED).permutation(n)[:n_holdout]
            split = np.full(n, "train", dtype=object)
            split[holdout] = "valid"
        else:
            split = np.full(n, {"train": "train", "val": "valid", "test": "test"}[source.source_split], dtype=object)
        labels[source.source_split] = split
    return labels


def protocol_name(sources: list[SourceFile]) -> str:
    if any(s.partial for s in sources):
        return ("in-house MP-20: train = train_first1000 + val minus a 10 % held-out slice (seed 0); "
                "valid = that slice; test = canonical test")
    return "canonical CDVAE split"


def _curate_row(args: tuple[dict, str, str]) -> AtomicSystem | Exception:
    row, name, source_split = args
    try:
        return row_to_crystal(row, DATASETS[name], source_split)
    except InvalidSystemError as err:
        return err


def builder(name: str, data_dir: str | os.PathLike | None = None, workers: int = 1, limit: int | None = None):
    """The `DatasetBuilder` that curates one CDVAE-format crystal set into the store."""
    from chemgen.data.store import DatasetBuilder

    if name not in DATASETS:
        raise KeyError(f"unknown crystal dataset {name!r} (known: {', '.join(DATASETS)})")
    sources = source_files(name, data_dir)
    frames = {s.source_split: read_rows(s) for s in sources}
    if limit is not None:
        frames = {k: f.iloc[:limit] for k, f in frames.items()}
    labels = assign_splits(name, sources, {k: len(f) for k, f in frames.items()})

    def records():
        pool = None
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers)
        try:
            for source in sources:
                frame = frames[source.source_split]
                rows = frame.to_dict("records")
                tasks = [(row, name, source.source_split) for row in rows]
                results = pool.map(_curate_row, tasks, chunksize=64) if pool else map(_curate_row, tasks)
                for position, (row, result) in enumerate(zip(rows, results)):
                    yield (labels[source.source_split][position], source.path.name, position,
                           str(row["material_id"]), result)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    spec = DATASETS[name]
    return DatasetBuilder(
        name=name, source_files=[s.path for s in sources], total=sum(len(f) for f in frames.values()),
        parameters={"recipe": RECIPE_VERSION, "cell": "primitive+niggli, canonical orientation, frac in [0,1)",
                    "limit": limit,
                    "holdout_fraction": MP20_HOLDOUT_FRACTION if any(s.partial for s in sources) else None,
                    "holdout_seed": MP20_HOLDOUT_SEED},
        records=records,
        description=f"{name} ({spec.folder}), CDVAE CSV format, <= {spec.max_atoms} atoms per primitive cell",
        protocol=protocol_name(sources),
        extra_manifest={"citation": spec.citation, "licence": spec.licence,
                        "source_rows": {k: len(f) for k, f in frames.items()}},
    )
