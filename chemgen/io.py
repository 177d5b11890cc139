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
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from chemgen.atoms import MAX_ATOMS, MAX_CELL_LENGTH, AtomicSystem, InvalidSystemError
from chemgen.errors import ChemgenError

# A file above this size is refused unless a caller raises the limit: generated sets are small,
# and a mistaken multi-GB input should fail fast rather than exhaust memory.
MAX_FILE_BYTES = 2 * 1024**3


# The parsers signal malformed input through many exception types: ASE's extxyz reader (its XYZError is
# an OSError; a generator that runs dry raises RuntimeError), pymatgen's CIF parser (an exponent like 1e400
# overflows, a singular lattice fails to invert). A record that raises one of these is a bad record; any
# other exception is a bug in chemgen and keeps its traceback.
_NUMERIC_ERRORS = (OverflowError, FloatingPointError, np.linalg.LinAlgError)
EXTXYZ_PARSE_ERRORS = (ValueError, IndexError, KeyError, AttributeError, StopIteration, OSError, RuntimeError,
                       *_NUMERIC_ERRORS)
CIF_PARSE_ERRORS = (ValueError, KeyError, IndexError, AssertionError, ZeroDivisionError, TypeError, AttributeError,
                    RuntimeError, *_NUMERIC_ERRORS)


class StructureFileError(ChemgenError, ValueError):
    """A structure file that cannot be read or written; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------------------- atomic writes
def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would make shared and committed files private
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
Record = AtomicSystem | StructureFileError   # one record of a file: a structure or why it is not one


def read_sdf_records(path: Path) -> list[Record]:
    from rdkit import Chem, rdBase

    records: list[Record] = []
    # sanitize=False keeps generated (possibly invalid) molecules; removeHs=False keeps 3D hydrogens.
    with rdBase.BlockLogs():  # RDKit's own messages would repeat what the errors below say, with the file name
        supplier = Chem.ForwardSDMolSupplier(str(path), sanitize=False, removeHs=False)
        for index, mol in enumerate(supplier):
            source = f"{path} record {index + 1}"
            if mol is None:
                records.append(StructureFileError(source, "not a valid MOL block"))
                continue
            try:
                records.append(AtomicSystem.from_rdkit(mol))
            except InvalidSystemError as err:
                records.append(StructureFileError(source, str(err)))
    if not records:
        raise StructureFileError(path, "no MOL block found")
    return records


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
_CELL_LENGTHS = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
_CELL_ANGLES = ("_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def read_cif_records(path: Path) -> list[Record]:
    return cif_records(path.read_text(), source=path)


def cif_records(text: str, source: str | os.PathLike = "<string>") -> list[Record]:
    """Each data block of a CIF as a crystal, or the error that names the block."""
    if not text.strip():
        raise StructureFileError(source, "empty CIF")
    blocks = split_cif_blocks(text)
    if not blocks:
        raise StructureFileError(source, "no data_ block found in CIF")
    records: list[Record] = []
    for index, block in enumerate(blocks):
        name = block.split("\n", 1)[0].strip()[5:] or str(index + 1)
        label = source if len(blocks) == 1 else f"{source} data block {index + 1} ({name[:40]})"
        try:
            records.append(_crystal_from_cif_block(block, label))
        except StructureFileError as err:
            records.append(err)
    return records


def systems_from_cif_text(text: str, source: str | os.PathLike = "<string>") -> list[AtomicSystem]:
    """Every data block of a CIF as a crystal; the first bad block fails the text."""
    return _all_or_first_error(cif_records(text, source))


def split_cif_blocks(text: str) -> list[str]:
    """The data blocks of a CIF, each from its ``data_`` line (a ``data_`` inside a ;-delimited text field
    does not start a block). Comments before the first block are dropped."""
    blocks: list[list[str]] = []
    in_text_field = False
    for line in text.splitlines(keepends=True):
        if line.startswith(";"):
            in_text_field = not in_text_field
        if not in_text_field and line[:5].lower() == "data_":
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    return ["".join(block) for block in blocks]


def _crystal_from_cif_block(block: str, source: str | os.PathLike) -> AtomicSystem:
    """One data block through pymatgen's parser, after its cell is checked: pymatgen would build a
    structure from any lengths and angles, and a 1e9 A cell exhausts memory in its neighbour search."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(block)
            _check_cif_cell(parser, source)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except StructureFileError:
            raise
        except CIF_PARSE_ERRORS as err:
            messages = list(dict.fromkeys(str(w.message) for w in caught))[:3]   # pymatgen repeats itself
            problems = "; ".join(messages) or f"{type(err).__name__}: {err}"
            raise StructureFileError(source, f"malformed CIF ({problems})") from err
    if not structures:
        raise StructureFileError(source, "no structure found in CIF")
    name = next(iter(parser.as_dict()), None)
    try:
        return AtomicSystem.from_pymatgen(structures[0], material_id=name)
    except InvalidSystemError as err:
        raise StructureFileError(source, str(err)) from err


def _check_cif_cell(parser, source: str | os.PathLike) -> None:  # noqa: ANN001 - pymatgen's CifParser
    from pymatgen.io.cif import str2float

    for data in parser.as_dict().values():
        for key, low, high in [(k, 0.0, MAX_CELL_LENGTH) for k in _CELL_LENGTHS] + [(k, 0.0, 180.0) for k in _CELL_ANGLES]:
            if key not in data:
                continue
            try:
                value = str2float(data[key])
            except (ValueError, TypeError, OverflowError) as err:
                raise StructureFileError(source, f"{key} {str(data[key])[:40]!r} is not a number") from err
            if not np.isfinite(value):
                raise StructureFileError(source, f"{key} is {value}, not a finite number")
            if not (low < value <= high) or (key in _CELL_ANGLES and value == high):
                raise StructureFileError(source, f"{key} {value:.6g} lies outside the physical range "
                                                 f"({low:g}, {high:g}{')' if key in _CELL_ANGLES else ']'}")


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
def read_extxyz_records(path: Path) -> list[Record]:
    records: list[Record] = []
    for frame in split_xyz_frames(path.read_text(), path):
        if isinstance(frame, StructureFileError):
            records.append(frame)
        else:
            number, line, text = frame
            records.append(_system_from_xyz_text(text, f"{path} frame {number} (line {line})"))
    if not records:
        raise StructureFileError(path, "no frame found")
    return records


def split_xyz_frames(text: str, source: str | os.PathLike) -> list[tuple[int, int, str] | StructureFileError]:
    """The frames of an (extended) XYZ file as ``(frame number, first line, text)``, checked before ASE
    sees them: an atom count that is not a number, over `MAX_ATOMS`, or more than the lines that follow
    is an error for that frame (ASE would read past the end of the file for ever). After such an error
    the frames that follow cannot be found, so the split ends there."""
    lines = text.splitlines(keepends=True)
    frames: list[tuple[int, int, str] | StructureFileError] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between frames and at the end
            i += 1
            continue
        number, head = len(frames) + 1, lines[i].strip()
        where = f"{source} frame {number} (line {i + 1})"
        try:
            count = int(head)
        except ValueError:
            frames.append(StructureFileError(where, f"the atom count {head[:40]!r} is not a whole number"))
            break
        if not 1 <= count <= MAX_ATOMS:
            frames.append(StructureFileError(where, f"an atom count of {count} lies outside 1..{MAX_ATOMS}"))
            break
        if i + 2 + count > len(lines):
            frames.append(StructureFileError(where, f"announces {count} atoms but only "
                                                    f"{max(0, len(lines) - i - 2)} atom lines follow"))
            break
        frames.append((number, i + 1, "".join(lines[i:i + 2 + count])))
        i += 2 + count
    return frames


_PROPERTIES = re.compile(r"""Properties=["']?([^\s"']+)""", re.IGNORECASE)


def _properties_problem(text: str) -> str | None:
    """What is wrong with a frame's ``Properties=name:type:count:...`` against its first atom line (ASE
    trusts the counts and loops over a count of 999999999 for ever)."""
    lines = text.split("\n", 3)
    match = _PROPERTIES.search(lines[1]) if len(lines) > 2 else None
    if match is None:
        return None
    fields = match.group(1).split(":")
    if len(fields) % 3:
        return f"Properties={match.group(1)[:60]!r} is not a list of name:type:count triples"
    counts = fields[2::3]
    if not all(c.isdigit() and len(c) < 4 for c in counts):
        return f"Properties={match.group(1)[:60]!r} has a column count that is not a small whole number"
    columns = len(lines[2].split())
    if sum(map(int, counts)) != columns:
        return f"Properties announces {sum(map(int, counts))} columns but the first atom line has {columns}"
    return None


def _system_from_xyz_text(text: str, source: str) -> Record:
    import io

    from ase.io import read as ase_read

    problem = _properties_problem(text)
    if problem is not None:
        return StructureFileError(source, problem)
    try:
        atoms = ase_read(io.StringIO(text), format="extxyz")
    except EXTXYZ_PARSE_ERRORS as err:
        return StructureFileError(source, f"malformed extended XYZ ({type(err).__name__}: {err})")
    try:
        return AtomicSystem.from_ase(atoms)
    except InvalidSystemError as err:
        return StructureFileError(source, str(err))


def write_extxyz(handle: IO[str], systems: Iterable[AtomicSystem]) -> None:
    from ase.io import write as ase_write

    ase_write(handle, [s.to_ase() for s in systems], format="extxyz")


# ---------------------------------------------------------------------------- CSV of structures
# One structure per row: a ``cif`` column (crystals, the CDVAE/MP-20 format) or an ``xyz`` column
# (extended XYZ text of one molecule). Other columns are kept as properties when read back.
CSV_STRUCTURE_COLUMNS = ("cif", "xyz")


def read_csv_records(path: Path) -> list[Record]:
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
    records: list[Record] = []
    for index, text in enumerate(frame[column]):
        source = f"{path} row {index + 1}"
        try:
            if not isinstance(text, str) or not text.strip():
                raise StructureFileError(source, f"empty {column} field")
            if column == "cif":
                records.append(cif_records(text, source=source)[0])
            else:
                frames = split_xyz_frames(text, source)
                frame = frames[0] if frames else StructureFileError(source, "no frame found")
                records.append(frame if isinstance(frame, StructureFileError) else _system_from_xyz_text(frame[2], source))
        except StructureFileError as err:
            records.append(err)
    return records


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


def _all_or_first_error(records: list[Record]) -> list[AtomicSystem]:
    for record in records:
        if isinstance(record, StructureFileError):
            raise record
    return records  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class FileFormat:
    """A format: how to read each record of a file on its own (an SDF's MOL blocks, a CIF's data
    blocks, an XYZ's frames, a CSV's rows), so that a bad one spoils nothing else, and how to write it."""

    name: str
    extensions: tuple[str, ...]
    record_reader: Callable[[Path], list[Record]]
    writer: Callable[[IO[str], Iterable[AtomicSystem]], None]

    def reader(self, path: Path) -> list[AtomicSystem]:
        """Every record, or the first bad record's error."""
        return _all_or_first_error(self.record_reader(path))


FORMATS: dict[str, FileFormat] = {
    f.name: f
    for f in (
        FileFormat("sdf", (".sdf", ".mol"), read_sdf_records, write_sdf),
        FileFormat("cif", (".cif",), read_cif_records, write_cif),
        # Plain XYZ is read as extended XYZ: ASE's extxyz reader accepts both.
        FileFormat("extxyz", (".extxyz", ".xyz"), read_extxyz_records, write_extxyz),
        FileFormat("csv", (".csv", ".csv.gz"), read_csv_records, write_csv),
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
                 max_bytes: int = MAX_FILE_BYTES) -> list[Record]:
    """Every record of a file, each a structure or the error that names it (for scoring, where one
    bad sample must not hide the others). A file that cannot be read at all still raises."""
    path, fmt = _checked_input(path, fmt, max_bytes)
    return _reading(path, FORMATS[fmt].record_reader)


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
