"""The curated store: versioned, hashed Parquet shards with a JSON manifest.

Layout under ``$CHEMGEN_HOME/datasets`` (default ``./.chemgen/datasets``)::

    <name>/<version>/manifest.json        source, parameters, counts, splits, hashes, bad rows
    <name>/<version>/<split>-00000.parquet shards of at most SHARD_ROWS systems
    <name>/<version>/bad_rows.csv         every row that could not be curated, with the reason
    <name>/LATEST                         the version `load` uses by default
    <name>/.lock                          held (flock) by the one curation of <name> running now

The version is a hash of the inputs (source file contents, curation parameters and
the store's schema version), so curating unchanged input again is a no-op once the
stored copy verifies (every shard's hash); a damaged copy is curated again.

Curations of one dataset take turns: `curate` holds ``<name>/.lock`` from start to end, and a
second curation waits for it (it says so, naming the holder's pid) for up to ``lock_timeout``
seconds, then fails with a `StoreError`. The lock is an flock, so the kernel releases it when
its holder dies, however it dies.

A version is written into ``.tmp-<version>-<pid>`` and moved into place only when complete.
Replacing a version (``force``, or a damaged copy) never deletes before the replacement is in
place: the new folder and the old one swap places atomically (Linux ``renameat2`` with
RENAME_EXCHANGE; elsewhere two renames), the old copy becomes ``.trash-<version>-<pid>``,
LATEST moves, and only then is the old copy deleted. Dot-folders are never read as versions;
those left by a killed curation are removed by the next one, under the lock (so never those of
a curation still running). A kill at any step therefore leaves LATEST naming a complete version.

Names and versions are checked against strict patterns (`check_name`, `check_version`) before
any path is built from them, so no caller can make the store read or write outside its folder.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import chemgen
from chemgen.atoms import SYMBOLS, AtomicSystem
from chemgen.errors import ChemgenError
from chemgen.io import atomic_write
from chemgen.paths import chemgen_home

SCHEMA_VERSION = 1
SHARD_ROWS = 50_000
SPLIT_NAMES = ("train", "valid", "test")
# A dataset name is one plain path component; a version is the hex digest `input_fingerprint` makes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VERSION_PATTERN = re.compile(r"[0-9a-f]{8,64}")
SHARD_PATTERN = re.compile(r"(train|valid|test)-\d{5}\.parquet")
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 3600.0  # how long a curation waits for another curation of the same dataset
BAD_ROWS_FILE = "bad_rows.csv"
# Test hook: CHEMGEN_TEST_KILL_AT=<step> makes `curate` SIGKILL its own process at that step (see `_checkpoint`),
# so tests/data/test_store_kill.py can prove a kill anywhere leaves a loadable store. Never set it elsewhere.
KILL_AT_ENV = "CHEMGEN_TEST_KILL_AT"

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("dataset", pa.string()),
    ("num_atoms", pa.int32()),
    ("atomic_numbers", pa.list_(pa.int8())),
    ("pos", pa.list_(pa.float64())),          # (N*3,) Cartesian, Angstrom
    ("frac_coords", pa.list_(pa.float64())),  # (N*3,) zeros for molecules
    ("cell", pa.list_(pa.float64(), 9)),      # lattice vectors as rows, zeros for molecules
    ("pbc", pa.bool_()),
    ("smiles", pa.string()),
    ("properties", pa.string()),              # JSON object: dataset-specific properties
])


class StoreError(ChemgenError, RuntimeError):
    """A missing or corrupt dataset version in the curated store."""


class InvalidNameError(StoreError, ValueError):
    """A dataset name or version that is not one (e.g. a path): refused before any path is built from it."""


class CurationError(ChemgenError, ValueError):
    """Input that cannot make a usable version: an unreadable or empty source file, or a file none of whose rows
    can be curated. The message names the file."""


class BadRowError(ChemgenError, ValueError):
    """Why one source row cannot be curated. A builder yields it in place of the row's system; `curate` records
    it as a bad row (file, row, id, reason) and goes on. ``kind`` groups the reasons in the manifest."""

    def __init__(self, message: str, kind: str = "bad row"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keep `kind` across process pools
        return type(self), (str(self), self.kind)


def store_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root else chemgen_home() / "datasets"


def check_name(name: object) -> str:
    """A dataset name, or `InvalidNameError`: one path component of letters, digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(f"{name!r} is not a dataset name (letters, digits, '_' and '-', at most 64)")
    return name


def check_version(version: object, name: str = "") -> str:
    """A version string (a hex digest), or `InvalidNameError`."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        of = f" of {name}" if name else ""
        raise InvalidNameError(f"{version!r} is not a version{of} (versions are hex digests such as 6b0eb599c00e)")
    return version


def dataset_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    return store_root(root) / check_name(name)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _say(message: str) -> None:
    """A message a user must see while it matters (waiting, rebuilding): stderr, never the progress bar."""
    print(f"chemgen: {message}", file=sys.stderr, flush=True)


def _checkpoint(step: str) -> None:
    """The kill-test hook: SIGKILL this process at ``step`` when $CHEMGEN_TEST_KILL_AT names it.

    Steps of `curate`, in order: ``locked``, ``temp-written``, ``moved-aside`` (only without an atomic swap),
    ``installed``, ``latest-moved``, ``trash-half-deleted``."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- rows <-> records
def system_to_row(system: AtomicSystem, split: str) -> dict[str, Any]:
    return {
        "id": system.material_id or "",
        "split": split,
        "dataset": system.dataset,
        "num_atoms": system.num_atoms,
        "atomic_numbers": system.atomic_numbers.astype(np.int8).tolist(),
        "pos": system.pos.ravel().tolist(),
        "frac_coords": system.frac_coords.ravel().tolist(),
        "cell": system.cell.ravel().tolist(),
        "pbc": system.pbc,
        "smiles": system.smiles,
        "properties": json.dumps(system.properties, sort_keys=True),
    }


def row_to_system(row: dict[str, Any]) -> AtomicSystem:
    n = row["num_atoms"]
    return AtomicSystem(
        atomic_numbers=np.asarray(row["atomic_numbers"], dtype=np.int64),
        pos=np.asarray(row["pos"], dtype=np.float64).reshape(n, 3),
        cell=np.asarray(row["cell"], dtype=np.float64).reshape(3, 3),
        frac_coords=np.asarray(row["frac_coords"], dtype=np.float64).reshape(n, 3),
        pbc=row["pbc"],
        dataset=row["dataset"],
        smiles=row["smiles"],
        material_id=row["id"] or None,
        properties={**json.loads(row["properties"]), "split": row["split"]},
    )


# ---------------------------------------------------------------------------- source rows (for builders)
def numeric_columns(frame: Any, columns: Iterable[str]) -> dict[int, str]:
    """Make each of ``columns`` (those the frame has) numeric in place; returns ``{row position: problem}``.

    pandas reads a whole column as strings when one cell is not a number. Here that cell (or an infinite
    one) becomes None and its row a problem (a bad row for the builder), while the other cells get exactly
    the numbers pandas reads from them alone. A column pandas read as numbers costs only the finiteness
    check. An empty cell is a missing value (None), not a problem.
    """
    import pandas as pd

    problems: dict[int, str] = {}
    for column in columns:
        if column not in frame.columns:
            continue
        raw = frame[column]
        numbers = raw if raw.dtype.kind in "iuf" else pd.to_numeric(raw, errors="coerce")
        finite = np.isfinite(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
        bad = raw.notna().to_numpy() & ~finite
        if not bad.any():
            continue
        for position in np.flatnonzero(bad):
            problems.setdefault(int(position), f"column {column}: {str(raw.iat[position])[:40]!r} is not a finite number")
        values = pd.Series([None] * len(raw), index=frame.index, dtype=object)
        values[~bad] = pd.to_numeric(raw[~bad]).to_numpy(dtype=object)
        frame[column] = values
    return problems


def duplicate_of(seen: dict[str, tuple[str, int]], ident: str, source: str, row: int) -> BadRowError | None:
    """Duplicate ids: the first row with an id keeps it (``seen`` remembers where); a later one is a bad row."""
    first = seen.setdefault(ident, (source, row))
    if first == (source, row):
        return None
    return BadRowError(f"duplicate id {ident!r} (the first, kept, is {first[0]} row {first[1]})", kind="duplicate id")


def row_problem(err: BaseException) -> tuple[str, str]:
    """(kind, reason) of the error one row raised, for the bad-row record."""
    if isinstance(err, BadRowError):  # its message says what is wrong with which cell
        return err.kind, str(err)
    return type(err).__name__, f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------- curation
@dataclass(frozen=True)
class BadRow:
    source: str   # file name
    row: int      # 0-based data row in that file (the header is not a row): line row + 2 of the file
    id: str
    reason: str
    kind: str = ""  # what went wrong, for counting (duplicate id, not a number, InvalidSystemError, ...)


@dataclass
class DatasetBuilder:
    """What `curate` needs to know about one dataset.

    ``records()`` yields ``(split, source file name, row, id, system or error)``; an error
    is recorded as a bad row with its reason, never silently dropped.
    """

    name: str
    source_files: list[Path]
    parameters: dict[str, Any]
    records: Callable[[], Iterator[tuple[str, str, int, str, AtomicSystem | Exception]]]
    total: int | None = None
    description: str = ""
    protocol: str = ""
    extra_manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CurationResult:
    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    reused: bool  # True when unchanged input found an existing, verified version (no-op)

    @property
    def sliced(self) -> bool:
        """A ``limit`` slice: stored as a version of its own, never made the dataset's LATEST."""
        return is_slice(self.manifest)


def is_slice(manifest: dict[str, Any]) -> bool:
    return manifest.get("parameters", {}).get("limit") is not None


def input_fingerprint(builder: DatasetBuilder) -> tuple[str, list[dict[str, Any]]]:
    files = [{"name": p.name, "path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in builder.source_files]
    key = {"schema": SCHEMA_VERSION, "name": builder.name, "parameters": builder.parameters,
           "files": [(f["name"], f["sha256"]) for f in files]}
    return _json_hash(key)[:12], files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_shards(folder: Path, rows_by_split: dict[str, list[dict]]) -> list[dict[str, Any]]:
    shards = []
    for split in SPLIT_NAMES:
        rows = rows_by_split.get(split, [])
        for start in range(0, len(rows), SHARD_ROWS):
            chunk = rows[start:start + SHARD_ROWS]
            path = folder / f"{split}-{start // SHARD_ROWS:05d}.parquet"
            pq.write_table(pa.Table.from_pylist(chunk, schema=SCHEMA), path, compression="zstd")
            _fsync(path)
            shards.append({"file": path.name, "split": split, "rows": len(chunk), "sha256": file_sha256(path)})
    return shards


def _write_bad_rows(folder: Path, bad: list[BadRow]) -> dict[str, Any]:
    path = folder / BAD_ROWS_FILE
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "row", "id", "reason", "kind"])
        writer.writerows([(b.source, b.row, b.id, b.reason, b.kind) for b in bad])
        handle.flush()
        os.fsync(handle.fileno())
    return {"file": path.name, "sha256": file_sha256(path)}


def _histograms(rows_by_split: dict[str, list[dict]]) -> tuple[dict[str, int], dict[str, int]]:
    elements: Counter[int] = Counter()
    sizes: Counter[int] = Counter()
    for rows in rows_by_split.values():
        for row in rows:
            elements.update(row["atomic_numbers"])
            sizes[row["num_atoms"]] += 1
    return ({SYMBOLS[z]: int(c) for z, c in sorted(elements.items())},
            {str(n): int(c) for n, c in sorted(sizes.items())})


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


# ---------------------------------------------------------------------------- the lock and the folder moves
def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def dataset_lock(folder: Path, timeout: float = LOCK_TIMEOUT_S, poll: float = 0.2) -> Iterator[None]:
    """Hold ``folder/.lock`` (flock; the kernel drops it when the holder dies). If another curation holds it,
    say so once and wait up to ``timeout`` seconds, then fail with a `StoreError` naming the lock and its pid."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with open(path, "a+") as handle:  # "a+": opening must not erase the holder's pid
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(path)
                if time.monotonic() >= deadline:
                    raise StoreError(f"{path}: held by pid {holder} (another curation of {folder.name}) for over "
                                     f"{timeout:g} s; run again when it has finished") from None
                if not said:
                    _say(f"{path}: another curation of {folder.name} (pid {holder}) is running; waiting for it")
                    said = True
                time.sleep(poll)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # the pid of a finished curation must not show up as a holder


def _renameat2_exchange() -> Callable[[bytes, bytes], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # Linux, glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return lambda a, b: function(at_fdcwd, a, at_fdcwd, b, rename_exchange)


_RENAMEAT2 = _renameat2_exchange() if sys.platform.startswith("linux") else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing folders in one atomic step; False where the OS or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this filesystem cannot swap: use two renames
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _install(tmp: Path, target: Path, trash: Path) -> bool:
    """Put the complete folder ``tmp`` at ``target``; an old ``target`` ends up at ``trash``, never deleted here.
    Returns whether there was an old copy."""
    if not target.exists():
        os.rename(tmp, target)
        return False
    if _exchange(tmp, target):  # readers see the old version or the new one, never neither
        os.rename(tmp, trash)
        return True
    # No atomic swap here: for a moment the version is missing. A kill in that moment leaves the complete old
    # copy at ``trash``, which the next curation puts back (`_clean_leftovers`) before anything else.
    os.rename(target, trash)
    _checkpoint("moved-aside")
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(trash, target)
        raise
    return True


def _delete_tree(path: Path) -> None:
    for index, child in enumerate(sorted(path.iterdir())):
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if index == 0:
            _checkpoint("trash-half-deleted")
    path.rmdir()


def _clean_leftovers(folder: Path) -> None:
    """Remove what killed curations left (call only under the lock: no live curation owns any of it).

    A ``.trash-<version>-<pid>`` whose version is missing is the old copy of a replacement killed between
    its two renames: it is put back (and verified before any reuse, like every stored version)."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".trash-"):
            version = path.name[len(".trash-"):].rpartition("-")[0]
            if VERSION_PATTERN.fullmatch(version) and not (folder / version).exists():
                os.rename(path, folder / version)
                _say(f"{folder / version}: put back the copy an interrupted curation had moved aside")
            else:
                shutil.rmtree(path, ignore_errors=True)


def _set_latest(folder: Path, version: str) -> None:
    with atomic_write(folder / "LATEST") as handle:
        handle.write(version + "\n")


# ---------------------------------------------------------------------------- curate
def curate(builder: DatasetBuilder, root: str | os.PathLike | None = None, force: bool = False,
           progress: bool = True, lock_timeout: float = LOCK_TIMEOUT_S) -> CurationResult:
    """Curate one dataset into the store; a no-op if this exact input was curated before and its copy verifies.

    ``force`` curates again and replaces the stored copy. Curations of one dataset take turns (see the module
    docstring); ``lock_timeout`` is how long this one waits for another before a `StoreError`."""
    start = time.perf_counter()
    folder = dataset_folder(builder.name, root)
    with dataset_lock(folder, lock_timeout):
        _checkpoint("locked")
        _clean_leftovers(folder)
        version, files = input_fingerprint(builder)
        target = folder / version
        if target.exists() and not force:
            problems = _version_problems(builder.name, version, root)
            if not problems:
                manifest = read_manifest(builder.name, version, root)
                if not is_slice(manifest):
                    _set_latest(folder, version)
                return CurationResult(builder.name, version, target, manifest, reused=True)
            more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
            _say(f"{target}: the stored copy is damaged ({problems[0]}{more}); curating it again")
        return _build(builder, folder, version, files, start, progress)


def _build(builder: DatasetBuilder, folder: Path, version: str, files: list[dict[str, Any]], start: float,
           progress: bool) -> CurationResult:
    rows_by_split: dict[str, list[dict]] = {s: [] for s in SPLIT_NAMES}
    bad: list[BadRow] = []
    rows_per_file: Counter[str] = Counter()
    curated_per_file: Counter[str] = Counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"curating {builder.name}", total=builder.total)
        for split, source, row, ident, result in builder.records():
            rows_per_file[source] += 1
            if isinstance(result, Exception):
                kind, reason = row_problem(result)
                bad.append(BadRow(source, row, ident, reason, kind))
            else:
                rows_by_split[split].append(system_to_row(result, split))
                curated_per_file[source] += 1
            bar.advance(task)
    _check_every_file_gave_rows(builder, rows_per_file, curated_per_file, bad)

    target = folder / version
    tmp = folder / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        shards = _write_shards(tmp, rows_by_split)
        elements, sizes = _histograms(rows_by_split)
        for f in files:
            f["rows"] = rows_per_file.get(f["name"], 0)
        bad_rows: dict[str, Any] = {"count": len(bad), "by_kind": dict(Counter(b.kind for b in bad).most_common()),
                                    "examples": [asdict(b) for b in bad[:5]]}
        if bad:
            bad_rows.update(_write_bad_rows(tmp, bad))
        manifest = {
            "name": builder.name,
            "version": version,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "chemgen_version": chemgen.__version__,
            "schema_version": SCHEMA_VERSION,
            "description": builder.description,
            "protocol": builder.protocol,
            "source": {"files": files},
            "parameters": builder.parameters,
            "counts": {"rows_read": sum(rows_per_file.values()),
                       "curated": sum(len(r) for r in rows_by_split.values()), "bad": len(bad)},
            "splits": {s: len(rows_by_split[s]) for s in SPLIT_NAMES},
            "shards": shards,
            "content_hash": _json_hash([(s["file"], s["sha256"]) for s in shards]),
            "element_histogram": elements,
            "num_atoms_histogram": sizes,
            "bad_rows": bad_rows,
            "curation_seconds": round(time.perf_counter() - start, 2),
            **builder.extra_manifest,
        }
        with atomic_write(tmp / "manifest.json") as handle:
            handle.write(json.dumps(manifest, indent=2))
        _fsync(tmp)
        _checkpoint("temp-written")
        replaced = _install(tmp, target, folder / f".trash-{version}-{os.getpid()}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(folder)
    _checkpoint("installed")
    if not is_slice(manifest):  # a slice must not shrink what `load(name)` means for everyone else
        _set_latest(folder, version)
    _checkpoint("latest-moved")
    if replaced:  # only now, with the new copy in place and LATEST moved, is the old copy deleted
        _delete_tree(folder / f".trash-{version}-{os.getpid()}")
    return CurationResult(builder.name, version, target, manifest, reused=False)


def _check_every_file_gave_rows(builder: DatasetBuilder, rows_per_file: Counter[str], curated_per_file: Counter[str],
                                bad: list[BadRow]) -> None:
    """A source file whose rows were read but none curated is wrong input, not a file of bad rows."""
    for path in builder.source_files:
        read = rows_per_file.get(path.name, 0)
        if read and not curated_per_file.get(path.name, 0):
            kinds = Counter(b.kind for b in bad if b.source == path.name)
            first = next(b for b in bad if b.source == path.name)
            raise CurationError(
                f"{path}: none of its {read:,} row(s) could be curated "
                f"({', '.join(f'{k}: {n:,}' for k, n in kinds.most_common())}); "
                f"the first, row {first.row} ({first.id or 'no id'}): {first.reason}")


# ---------------------------------------------------------------------------- reading
def list_datasets(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    base = store_root(root)
    if not base.is_dir():
        return {}
    return {d.name: _versions_in(d) for d in sorted(base.iterdir()) if d.is_dir() and NAME_PATTERN.fullmatch(d.name)}


def _versions_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(v.name for v in folder.iterdir() if v.is_dir() and VERSION_PATTERN.fullmatch(v.name))


def resolve_version(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> str:
    folder = dataset_folder(name, root)
    if version and version != "latest":
        return check_version(version, name)
    latest = folder / "LATEST"
    if not latest.is_file():
        slices = _versions_in(folder)
        hint = (f"; only slices are curated ({', '.join(slices)}): name one as {name}@VERSION" if slices else "")
        raise StoreError(f"{folder}: dataset {name!r} has not been curated in full "
                         f"(run `chemgen data prepare {name}`){hint}")
    text = latest.read_text().strip()
    if not VERSION_PATTERN.fullmatch(text):
        raise StoreError(f"{latest}: corrupt ({text[:40]!r} is not a version); `chemgen data prepare {name}` rewrites it")
    return text


def parse_dataset_ref(text: str) -> tuple[str, str | None]:
    """``qm9@6b0eb599c00e`` -> ("qm9", "6b0eb599c00e"); ``qm9`` -> ("qm9", None), i.e. LATEST."""
    name, _, version = text.partition("@")
    if not name or (_ and not version):
        raise InvalidNameError(f"dataset reference {text!r}: expected NAME or NAME@VERSION")
    check_name(name)
    return name, (check_version(version, name) if version else None)


REQUIRED_MANIFEST_KEYS = ("name", "version", "shards", "counts", "splits", "content_hash")


def read_manifest(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> dict[str, Any]:
    version = resolve_version(name, version, root)
    path = dataset_folder(name, root) / version / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{path}: no manifest (version {version} of {name} is missing; "
                         f"`chemgen data prepare {name}` curates it again)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path}: corrupt manifest ({err})") from err
    if not isinstance(manifest, dict) or any(k not in manifest for k in REQUIRED_MANIFEST_KEYS):
        raise StoreError(f"{path}: corrupt manifest (it needs the keys {', '.join(REQUIRED_MANIFEST_KEYS)})")
    if (manifest["name"], manifest["version"]) != (name, version):
        raise StoreError(f"{path}: the manifest is that of {manifest['name']}@{manifest['version']}, "
                         f"not {name}@{version}")
    return manifest


def _shard_path(folder: Path, shard: Any) -> Path:
    """A shard's file in the version folder; a manifest cannot name a file anywhere else."""
    file = shard.get("file") if isinstance(shard, dict) else None
    if not isinstance(file, str) or not SHARD_PATTERN.fullmatch(file):
        raise StoreError(f"{folder / 'manifest.json'}: corrupt manifest (shard entry {str(shard)[:80]})")
    return folder / file


def verify(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> list[str]:
    """Recompute every shard's hash; returns the problems found (empty when intact)."""
    version = resolve_version(name, version, root)
    manifest = read_manifest(name, version, root)
    folder = dataset_folder(name, root) / version
    problems = []
    for shard in manifest["shards"]:
        path = _shard_path(folder, shard)
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != shard.get("sha256"):
            problems.append(f"{path}: content hash differs from the manifest")
    bad_rows = manifest.get("bad_rows", {})
    if isinstance(bad_rows, dict) and bad_rows.get("sha256"):
        path = folder / BAD_ROWS_FILE
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != bad_rows["sha256"]:
            problems.append(f"{path}: content hash differs from the manifest")
    return problems


def _version_problems(name: str, version: str, root: str | os.PathLike | None) -> list[str]:
    """What `verify` finds, with an unreadable manifest as one more problem (for the reuse check)."""
    try:
        return verify(name, version, root)
    except StoreError as err:
        return [str(err)]


def load_table(name: str, split: str | None = None, version: str | None = None,
               root: str | os.PathLike | None = None) -> pa.Table:
    if split is not None and split not in SPLIT_NAMES:
        raise InvalidNameError(f"unknown split {split!r} (known: {', '.join(SPLIT_NAMES)})")
    version = resolve_version(name, version, root)
    manifest = read_manifest(name, version, root)
    folder = dataset_folder(name, root) / version
    tables = []
    for shard in manifest["shards"]:
        if split is not None and shard.get("split") != split:
            continue
        path = _shard_path(folder, shard)
        try:
            tables.append(pq.read_table(path, schema=SCHEMA))
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{path}: unreadable shard of {name}@{version} ({err}); "
                             f"`chemgen data prepare {name}` curates it again") from err
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def iter_systems(table: pa.Table) -> Iterable[AtomicSystem]:
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield row_to_system(row)


def load(name: str, split: str | None = None, version: str | None = None, limit: int | None = None,
         root: str | os.PathLike | None = None) -> list[AtomicSystem]:
    """Curated systems of a dataset (one split or all), as records."""
    table = load_table(name, split, version, root)
    if limit is not None:
        table = table.slice(0, limit)
    return list(iter_systems(table))
