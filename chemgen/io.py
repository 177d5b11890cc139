"""Readers and writers for atomic-structure files, found through one registry.

Each format is declared once in `FORMATS` (name, extensions, reader, writer), after
ASE's IO registry. ``read(path)`` and ``write(path, systems)`` pick the format from the
extension unless ``fmt`` is given. Every error names the file and the problem, and
every write is atomic: a temporary file in the same folder is renamed into place, so
an interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chemgen.atoms import AtomicSystem, InvalidSystemError

# A file above this size is refused unless a caller raises the limit: generated sets are small,
# and a mistaken multi-GB input should fail fast rather than exhaust memory.
MAX_FILE_BYTES = 2 * 1024**3


# ASE's extxyz reader signals malformed input through these (its XYZError is an OSError).
EXTXYZ_PARSE_ERRORS = (ValueError, IndexError, KeyError, AttributeError, StopIteration, OSError)
# pymatgen's CIF parser signals malformed input through many exception types.
CIF_PARSE_ERRORS = (ValueError, KeyError, IndexError, AssertionError, ZeroDivisionError, TypeError, AttributeError)


class StructureFileError(ValueError):
    """A structure file that cannot be read or written; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared and committed files private
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- SDF (RDKit)
def read_sdf(path: Path) -> list[AtomicSystem]:
    from rdkit import Chem

    from rdkit import rdBase

    systems = []
    # sanitize=False keeps generated (possibly invalid) molecules; removeHs=False keeps 3D hydrogens.
    with rdBase.BlockLogs():  # RDKit's own messages would repeat what the errors below say, with the file name
        supplier = Chem.ForwardSDMolSupplier(str(path), sanitize=False, removeHs=False)
        for index, mol in enumerate(supplier):
            if mol is None:
                raise StructureFileError(path, f"record {index + 1} is not a valid MOL block")
            try:
                systems.append(AtomicSystem.from_rdkit(mol))
            except InvalidSystemError as err:
                raise StructureFileError(path, f"record {index + 1}: {err}") from err
    return systems


def write_sdf(handle: IO[str], systems: Iterable[AtomicSystem]) -> None:
    from rdkit import Chem

    writer = Chem.SDWriter(handle)
    writer.SetKekulize(False)  # keep aromatic flags of unsanitised molecules as they are
    writer.SetForceV3000(True)  # V3000 keeps 6 decimals (1e-6 A); V2000 only 4
    for system in systems:
        mol = system.to_rdkit()
        if system.material_id:
            mol.SetProp("_Name", system.material_id)
        for key, value in system.properties.items():
            if isinstance(value, (int, float, str)):
                mol.SetProp(key, str(value))
        writer.write(mol)
    writer.close()


# ---------------------------------------------------------------------------- CIF (pymatgen)
def read_cif(path: Path) -> list[AtomicSystem]:
    text = path.read_text()
    return systems_from_cif_text(text, source=path)


def systems_from_cif_text(text: str, source: str | os.PathLike = "<string>") -> list[AtomicSystem]:
    """Every data block of a CIF as a crystal; warnings from pymatgen's parser become errors."""
    from pymatgen.io.cif import CifParser

    if not text.strip():
        raise StructureFileError(source, "empty CIF")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except CIF_PARSE_ERRORS as err:
            problems = "; ".join(str(w.message) for w in caught) or str(err)
            raise StructureFileError(source, f"malformed CIF ({problems})") from err
    if not structures:
        raise StructureFileError(source, "no structure found in CIF")
    names = list(parser.as_dict().keys())
    systems = []
    for name, structure in zip(names, structures):
        try:
            systems.append(AtomicSystem.from_pymatgen(structure, material_id=name))
        except InvalidSystemError as err:
            raise StructureFileError(source, f"data block {name}: {err}") from err
    return systems


def write_cif(handle: IO[str], systems: Iterable[AtomicSystem]) -> None:
    from pymatgen.io.cif import CifWriter

    for index, system in enumerate(systems):
        if not system.pbc:
            raise InvalidSystemError(f"system {index} is a molecule; CIF holds crystals only")
        block = str(CifWriter(system.to_pymatgen()))
        name = system.material_id or f"{system.formula}_{index}"
        # Name each data block after its material so a multi-block CIF reads back in order.
        lines = block.splitlines()
        lines = [f"data_{name}" if line.startswith("data_") else line for line in lines]
        handle.write("\n".join(lines) + "\n\n")


# ---------------------------------------------------------------------------- (ext)xyz (ASE)
def read_extxyz(path: Path) -> list[AtomicSystem]:
    from ase.io import read as ase_read

    try:
        frames = ase_read(str(path), index=":", format="extxyz")
    except EXTXYZ_PARSE_ERRORS as err:
        raise StructureFileError(path, f"malformed extended XYZ ({err})") from err
    if not frames:
        raise StructureFileError(path, "no frame found")
    systems = []
    for index, atoms in enumerate(frames):
        try:
            systems.append(AtomicSystem.from_ase(atoms))
        except InvalidSystemError as err:
            raise StructureFileError(path, f"frame {index + 1}: {err}") from err
    return systems


def write_extxyz(handle: IO[str], systems: Iterable[AtomicSystem]) -> None:
    from ase.io import write as ase_write

    ase_write(handle, [s.to_ase() for s in systems], format="extxyz")


# ---------------------------------------------------------------------------- CSV of structures
# One structure per row: a ``cif`` column (crystals, the CDVAE/MP-20 format) or an ``xyz`` column
# (extended XYZ text of one molecule). Other columns are kept as properties when read back.
CSV_STRUCTURE_COLUMNS = ("cif", "xyz")


def read_csv_records(path: Path) -> list[AtomicSystem | StructureFileError]:
    """Every row of a structure CSV, or the error that names the row; one bad row spoils nothing else."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as err:
        raise StructureFileError(path, f"not a readable CSV ({err})") from err
    column = next((c for c in CSV_STRUCTURE_COLUMNS if c in frame.columns), None)
    if column is None:
        raise StructureFileError(path, f"a structure CSV needs a 'cif' or an 'xyz' column (found {list(frame.columns)})")
    if frame.empty:
        raise StructureFileError(path, "no rows")
    records: list[AtomicSystem | StructureFileError] = []
    for index, text in enumerate(frame[column]):
        source = f"{path} row {index + 1}"
        try:
            if not isinstance(text, str) or not text.strip():
                raise StructureFileError(source, f"empty {column} field")
            if column == "cif":
                system = systems_from_cif_text(text, source=source)[0]
            else:
                system = _system_from_xyz_text(text, source)
            records.append(system)
        except StructureFileError as err:
            records.append(err)
        except InvalidSystemError as err:
            records.append(StructureFileError(source, str(err)))
    return records


def _system_from_xyz_text(text: str, source: str) -> AtomicSystem:
    import io

    from ase.io import read as ase_read

    try:
        atoms = ase_read(io.StringIO(text), format="extxyz")
    except EXTXYZ_PARSE_ERRORS as err:
        raise StructureFileError(source, f"malformed extended XYZ ({err})") from err
    return AtomicSystem.from_ase(atoms)


def read_csv(path: Path) -> list[AtomicSystem]:
    return _all_or_first_error(read_csv_records(path))


def write_csv(handle: IO[str], systems: Iterable[AtomicSystem]) -> None:
    """Crystals as CIF text, molecules as extended XYZ text, one per row, with id and formula."""
    import csv
    import io

    systems = list(systems)
    kinds = {s.pbc for s in systems}
    if len(kinds) > 1:
        raise InvalidSystemError("a structure CSV holds crystals or molecules, not both")
    column = "cif" if kinds == {True} else "xyz"
    writer = csv.writer(handle)
    writer.writerow(["material_id", "formula", column])
    for system in systems:
        text = io.StringIO()
        (write_cif if column == "cif" else write_extxyz)(text, [system])
        writer.writerow([system.material_id or "", system.formula, text.getvalue()])


def _all_or_first_error(records: list[AtomicSystem | StructureFileError]) -> list[AtomicSystem]:
    for record in records:
        if isinstance(record, StructureFileError):
            raise record
    return records  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class FileFormat:
    """A format: how to read all of a file, how to write it and, where the format has independent
    records (CSV rows), how to read each record on its own so that a bad one spoils nothing else."""

    name: str
    extensions: tuple[str, ...]
    reader: Callable[[Path], list[AtomicSystem]]
    writer: Callable[[IO[str], Iterable[AtomicSystem]], None]
    record_reader: Callable[[Path], list[AtomicSystem | StructureFileError]] | None = None


FORMATS: dict[str, FileFormat] = {
    f.name: f
    for f in (
        FileFormat("sdf", (".sdf", ".mol"), read_sdf, write_sdf),
        FileFormat("cif", (".cif",), read_cif, write_cif),
        # Plain XYZ is read as extended XYZ: ASE's extxyz reader accepts both.
        FileFormat("extxyz", (".extxyz", ".xyz"), read_extxyz, write_extxyz),
        FileFormat("csv", (".csv", ".csv.gz"), read_csv, write_csv, read_csv_records),
    )
}


def detect_format(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if any(name.endswith(ext) for ext in fmt.extensions):
            return fmt.name
    known = ", ".join(ext for f in FORMATS.values() for ext in f.extensions)
    raise StructureFileError(path, f"unknown file extension {suffix!r} (known: {known})")


def _checked_input(path: str | os.PathLike, fmt: str | None, max_bytes: int) -> tuple[Path, str]:
    """The path and format of a readable input, or an error that names the file and the problem."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise StructureFileError(path, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not path.is_file():
        raise StructureFileError(path, "no such file")
    size = path.stat().st_size
    if size == 0:
        raise StructureFileError(path, "file is empty")
    if size > max_bytes:
        raise StructureFileError(path, f"file is {size / 1e9:.1f} GB, over the {max_bytes / 1e9:.1f} GB limit")
    return path, fmt


def _reading(path: Path, read_with: Callable[[Path], list]) -> list:
    try:
        return read_with(path)
    except StructureFileError:
        raise
    except UnicodeDecodeError as err:
        raise StructureFileError(path, f"not a text file ({err})") from err
    except InvalidSystemError as err:
        raise StructureFileError(path, str(err)) from err


def read(path: str | os.PathLike, fmt: str | None = None,
         max_bytes: int = MAX_FILE_BYTES) -> list[AtomicSystem]:
    """Read every structure in a file; the first bad record fails the file."""
    path, fmt = _checked_input(path, fmt, max_bytes)
    return _reading(path, FORMATS[fmt].reader)


def read_records(path: str | os.PathLike, fmt: str | None = None,
                 max_bytes: int = MAX_FILE_BYTES) -> list[AtomicSystem | StructureFileError]:
    """Every record of a file, each a structure or the error that names it (for scoring, where one
    bad sample must not hide the others). A file that cannot be read at all still raises; formats
    without independent records give one error for the whole file."""
    path, fmt = _checked_input(path, fmt, max_bytes)
    record_reader = FORMATS[fmt].record_reader
    if record_reader is not None:
        return _reading(path, record_reader)
    try:
        return list(_reading(path, FORMATS[fmt].reader))
    except StructureFileError as err:
        return [err]


def write(path: str | os.PathLike, systems: Iterable[AtomicSystem], fmt: str | None = None) -> Path:
    """Write structures atomically; returns the path written."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise StructureFileError(path, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    systems = list(systems)
    if not systems:
        raise StructureFileError(path, "nothing to write (no structures)")
    try:
        if path.name.lower().endswith(".gz"):
            with atomic_write(path, "wb") as raw, gzip.open(raw, "wt") as handle:
                FORMATS[fmt].writer(handle, systems)
        else:
            with atomic_write(path) as handle:
                FORMATS[fmt].writer(handle, systems)
    except InvalidSystemError as err:
        raise StructureFileError(path, str(err)) from err
    return path
