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

Every row is checked on its own and a row that fails becomes a bad row of the curation (file, row, id,
reason), never an abort: an empty or repeated ``material_id`` (the first curated row of an id keeps it), a property
cell that is not a finite number (the column stays numeric), an ``elements`` cell that is not a list of
element symbols, a CIF that does not parse or lies outside `AtomicSystem`'s physical limits. A file that
cannot be read, has no data rows or lacks a needed column is a `CurationError` naming the file.
"""

from __future__ import annotations

import ast
import math
import os
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chemgen.atoms import ATOMIC_NUMBERS, AtomicSystem, InvalidSystemError
from chemgen.datasets import DATASETS, CrystalSource, crystal_source
from chemgen.data.store import BadRowError, CurationError, duplicate_of, numeric_columns
from chemgen.io import CIF_PARSE_ERRORS

DATA_DIR_ENV = "CHEMGEN_DATA_DIR"
SPLITS = ("train", "val", "test")
# In-house MP-20 protocol: this many val rows (fixed seed) are held out for validation.
MP20_HOLDOUT_FRACTION = 0.1
MP20_HOLDOUT_SEED = 0
# Bump when the curated output of the same input changes (it is part of the version hash).
RECIPE_VERSION = 2  # 2: per-row checks (empty and repeated ids, non-numeric properties, bad list cells)
# Bounds on one row's work before the costly primitive reduction (it slows down steeply with the site count):
# every CIF of the CDVAE sets has at most max_atoms sites, and a conventional cell at most 4x its primitive one.
MAX_SITES_PER_MAX_ATOMS = 4
MAX_CIF_CHARS = 100_000
MAX_LIST_CHARS = 2_000


def default_data_dir() -> Path:
    """``$CHEMGEN_DATA_DIR`` if set, else ``../shared/data`` beside a source checkout, else a clear error
    (`chemgen.paths.default_data_dir`)."""
    from chemgen.paths import default_data_dir as resolve

    return resolve()


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding one dataset's CSVs; ``data_dir`` may be that folder or its parent."""
    spec = crystal_source(name)
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
    spec = crystal_source(name)
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


def canonical_crystal(cif: str, max_sites: int | None = None) -> AtomicSystem:
    """A CIF string as the Niggli-reduced primitive cell in canonical orientation.

    The parsed cell must pass `AtomicSystem`'s physical limits (cell lengths, coordinates, atom count) and
    have at most ``max_sites`` sites before it is reduced: absurd input fails here, in milliseconds."""
    from pymatgen.core import Lattice, Structure

    if len(cif) > MAX_CIF_CHARS:
        raise InvalidSystemError(f"CIF of {len(cif):,} characters, over the limit of {MAX_CIF_CHARS:,}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns on rounding of CIF coordinates
        structure = Structure.from_str(cif, fmt="cif")
    if not structure.is_ordered:
        raise InvalidSystemError("disordered structure (partial occupancies)")
    if max_sites is not None and structure.num_sites > max_sites:
        raise InvalidSystemError(f"{structure.num_sites} sites before primitive reduction, over the limit of "
                                 f"{max_sites}")
    AtomicSystem.from_pymatgen(structure)  # the limits, checked on the cell as given
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


def material_id_text(value: object) -> str | None:
    """A row's ``material_id`` as text; None when the cell is empty (NaN to pandas)."""
    value = _clean(value)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric id column (Perov-5) read as floats
    text = str(value).strip()
    return text or None


def _number(value: object, column: str) -> object:
    """A property cell as a number or None. `read_rows` has made numeric columns numbers already; a string
    here comes from a frame read some other way, and must still parse."""
    value = _clean(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise BadRowError(f"column {column}: {value[:40]!r} is not a number", kind="not a number") from None
        if not math.isfinite(number):
            raise BadRowError(f"column {column}: {value[:40]!r} is not a finite number", kind="not a number")
        return number
    return value


def parse_elements(text: str) -> list[str]:
    """An ``elements`` cell such as ``['Fe', 'O']`` (a Python list literal, never eval'd) as symbols."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    if len(text) > MAX_LIST_CHARS:
        raise BadRowError(f"column elements: {len(text):,} characters, over the limit of {MAX_LIST_CHARS:,}",
                          kind="bad list")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise BadRowError(f"column elements: {shown!r} is not a list literal", kind="bad list") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise BadRowError(f"column elements: {shown!r} is not a list of element symbols", kind="bad list")
    unknown = sorted({s for s in value if s not in ATOMIC_NUMBERS})
    if unknown:
        raise BadRowError(f"column elements: unknown element symbol(s) {unknown}", kind="bad list")
    return list(value)


def row_to_crystal(row: dict, name: str, source_split: str) -> AtomicSystem:
    """One CSV row as a crystal; raises `BadRowError` or `InvalidSystemError` with the reason."""
    if isinstance(row.get("row_problem"), str):  # found by `read_rows` (a cell that is not a number)
        raise BadRowError(row["row_problem"], kind="not a number")
    material_id = material_id_text(row.get("material_id"))
    if material_id is None:
        raise BadRowError("empty material_id", kind="missing id")
    spec = crystal_source(name)
    properties = {col: _number(row.get(col), col) for col in spec.property_columns if col in row}
    if isinstance(row.get("elements"), str):
        properties["elements"] = parse_elements(row["elements"])
    cif = row.get("cif")
    if not isinstance(cif, str) or not cif.strip():
        raise InvalidSystemError("empty cif field")
    try:
        system = canonical_crystal(cif, max_sites=MAX_SITES_PER_MAX_ATOMS * spec.max_atoms)
    except CIF_PARSE_ERRORS as err:
        if isinstance(err, InvalidSystemError):  # also a ValueError: the limits, said as they are
            raise
        raise InvalidSystemError(f"unparseable CIF: {type(err).__name__}: {err}") from err
    if system.num_atoms > spec.max_atoms:
        raise InvalidSystemError(f"{system.num_atoms} atoms in the primitive cell, over {name}'s "
                                 f"limit of {spec.max_atoms}")
    formula = row.get("pretty_formula") or row.get("formula")
    if isinstance(formula, str):
        properties["pretty_formula"] = formula
    properties["source_split"] = source_split
    return system.replace(dataset=name, material_id=material_id, properties=properties)


def read_rows(source: SourceFile, spec: CrystalSource | None = None) -> pd.DataFrame:
    """A source CSV with ids as text and ``spec``'s property columns as numbers. A cell that is not a number
    becomes None and its row's ``row_problem`` (a bad row at curation); a file that cannot be read, has no
    data rows or lacks ``material_id`` or ``cif`` is a `CurationError` naming it."""
    try:
        frame = pd.read_csv(source.path, dtype={"material_id": str, "cif": str, "elements": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError,
            ValueError) as err:
        raise CurationError(f"{source.path}: not a readable CSV ({err})") from err
    missing = {"material_id", "cif"} - set(frame.columns)
    if missing:
        raise CurationError(f"{source.path}: missing column(s) {sorted(missing)}")
    if frame.empty:
        raise CurationError(f"{source.path}: no data rows (only a header)")
    problems = numeric_columns(frame, spec.property_columns if spec else ())
    frame["row_problem"] = pd.Series([problems.get(i) for i in range(len(frame))], index=frame.index, dtype=object)
    return frame


def _curate_row(args: tuple[dict, str, str]) -> AtomicSystem | Exception:
    """One row's crystal or the error that names its problem; any failure of one row is that row's alone."""
    row, name, source_split = args
    try:
        return row_to_crystal(row, name, source_split)
    except (BadRowError, InvalidSystemError) as err:
        return err
    except Exception as err:  # noqa: BLE001 - pymatgen fails on odd input in many ways; the row is bad, not the run
        return BadRowError(f"{type(err).__name__}: {err}", kind=type(err).__name__)


def iter_crystals(name: str, frame: pd.DataFrame, source_split: str) -> Iterator[tuple[int, AtomicSystem | Exception]]:
    """Yield ``(row position, crystal or the error that row raised)``."""
    for position, row in enumerate(frame.to_dict("records")):
        yield position, _curate_row((row, name, source_split))


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


def builder(name: str, data_dir: str | os.PathLike | None = None, workers: int = 1, limit: int | None = None):
    """The `DatasetBuilder` that curates one CDVAE-format crystal set into the store."""
    from chemgen.data.store import DatasetBuilder

    if name not in DATASETS or DATASETS[name].crystal is None:
        raise CurationError(f"unknown crystal dataset {name!r} (known: "
                            f"{', '.join(n for n, d in DATASETS.items() if d.crystal)})")
    if limit is not None and limit < 1:
        raise CurationError(f"limit must be at least 1 row per file, got {limit}")
    spec = crystal_source(name)
    sources = source_files(name, data_dir)
    frames = {s.source_split: read_rows(s, spec) for s in sources}
    if limit is not None:
        frames = {k: f.iloc[:limit] for k, f in frames.items()}
    labels = assign_splits(name, sources, {k: len(f) for k, f in frames.items()})

    def records():
        pool = None
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers)
        try:
            seen: dict[str, tuple[str, int]] = {}  # material_id -> its first curated (file, row), across files
            for source in sources:
                frame = frames[source.source_split]
                rows = frame.to_dict("records")
                tasks = [(row, name, source.source_split) for row in rows]
                results = pool.map(_curate_row, tasks, chunksize=64) if pool else map(_curate_row, tasks)
                for position, (row, result) in enumerate(zip(rows, results)):
                    ident = material_id_text(row["material_id"]) or ""
                    if not isinstance(result, Exception):
                        result = duplicate_of(seen, ident, source.path.name, position) or result
                    yield labels[source.source_split][position], source.path.name, position, ident, result
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    return DatasetBuilder(
        name=name, source_files=[s.path for s in sources], total=sum(len(f) for f in frames.values()),
        parameters={"recipe": RECIPE_VERSION, "cell": "primitive+niggli, canonical orientation, frac in [0,1)",
                    "limit": limit,
                    "holdout_fraction": MP20_HOLDOUT_FRACTION if any(s.partial for s in sources) else None,
                    "holdout_seed": MP20_HOLDOUT_SEED},
        records=records,
        description=f"{name} ({spec.folder}), CDVAE CSV format, <= {spec.max_atoms} atoms per primitive cell",
        protocol=protocol_name(sources),
        extra_manifest={"citation": DATASETS[name].citation, "licence": DATASETS[name].licence,
                        "source_rows": {k: len(f) for k, f in frames.items()}},
    )
