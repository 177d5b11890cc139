"""The curated store: versioned, hashed Parquet shards with a JSON manifest.

Layout under ``$CHEMGEN_HOME/datasets`` (default ``./.chemgen/datasets``)::

    <name>/<version>/manifest.json        source, parameters, counts, splits, hashes, bad rows
    <name>/<version>/<split>-00000.parquet shards of at most SHARD_ROWS systems
    <name>/<version>/bad_rows.csv         every row that could not be curated, with the reason
    <name>/LATEST                         the version `load` uses by default

The version is a hash of the inputs (source file contents, curation parameters and
the store's schema version), so curating unchanged input again is a no-op. A version
is written into a temporary folder and renamed into place only when complete: an
interrupted curation never leaves a half-written version.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import chemgen
from chemgen.atoms import SYMBOLS, AtomicSystem
from chemgen.io import atomic_write
from chemgen.paths import chemgen_home

SCHEMA_VERSION = 1
SHARD_ROWS = 50_000
SPLIT_NAMES = ("train", "valid", "test")

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


class StoreError(RuntimeError):
    """A missing or corrupt dataset version in the curated store."""


def store_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root else chemgen_home() / "datasets"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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


# ---------------------------------------------------------------------------- curation
@dataclass(frozen=True)
class BadRow:
    source: str   # file name
    row: int      # 0-based row position in that file
    id: str
    reason: str


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
    reused: bool  # True when unchanged input found an existing version (no-op)

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


def _write_shards(folder: Path, rows_by_split: dict[str, list[dict]]) -> list[dict[str, Any]]:
    shards = []
    for split in SPLIT_NAMES:
        rows = rows_by_split.get(split, [])
        for start in range(0, len(rows), SHARD_ROWS):
            chunk = rows[start:start + SHARD_ROWS]
            path = folder / f"{split}-{start // SHARD_ROWS:05d}.parquet"
            pq.write_table(pa.Table.from_pylist(chunk, schema=SCHEMA), path, compression="zstd")
            shards.append({"file": path.name, "split": split, "rows": len(chunk), "sha256": file_sha256(path)})
    return shards


def _histograms(rows_by_split: dict[str, list[dict]]) -> tuple[dict[str, int], dict[str, int]]:
    elements: Counter[int] = Counter()
    sizes: Counter[int] = Counter()
    for rows in rows_by_split.values():
        for row in rows:
            elements.update(row["atomic_numbers"])
            sizes[row["num_atoms"]] += 1
    return ({SYMBOLS[z]: int(c) for z, c in sorted(elements.items())},
            {str(n): int(c) for n, c in sorted(sizes.items())})


def _remove_stale_temporaries(folder: Path) -> None:
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


def curate(builder: DatasetBuilder, root: str | os.PathLike | None = None, force: bool = False,
           progress: bool = True) -> CurationResult:
    """Curate one dataset into the store; a no-op if this exact input was curated before."""
    start = time.perf_counter()
    folder = store_root(root) / builder.name
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    version, files = input_fingerprint(builder)
    target = folder / version
    if target.is_dir() and not force:
        manifest = read_manifest(builder.name, version, root)
        if not is_slice(manifest):
            _set_latest(folder, version)
        return CurationResult(builder.name, version, target, manifest, reused=True)

    rows_by_split: dict[str, list[dict]] = {s: [] for s in SPLIT_NAMES}
    bad: list[BadRow] = []
    rows_per_file: Counter[str] = Counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"curating {builder.name}", total=builder.total)
        for split, source, row, ident, result in builder.records():
            rows_per_file[source] += 1
            if isinstance(result, Exception):
                bad.append(BadRow(source, row, ident, f"{type(result).__name__}: {result}"))
            else:
                rows_by_split[split].append(system_to_row(result, split))
            bar.advance(task)

    tmp = folder / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        shards = _write_shards(tmp, rows_by_split)
        if bad:
            with open(tmp / "bad_rows.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["source", "row", "id", "reason"])
                writer.writerows([(b.source, b.row, b.id, b.reason) for b in bad])
        elements, sizes = _histograms(rows_by_split)
        for f in files:
            f["rows"] = rows_per_file.get(f["name"], 0)
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
            "bad_rows": {"count": len(bad), "examples": [b.__dict__ for b in bad[:5]]},
            "curation_seconds": round(time.perf_counter() - start, 2),
            **builder.extra_manifest,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if target.exists():  # force=True: replace the old copy of this version
            shutil.rmtree(target)
        os.rename(tmp, target)  # atomic on one filesystem: the version appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not is_slice(manifest):  # a slice must not shrink what `load(name)` means for everyone else
        _set_latest(folder, version)
    return CurationResult(builder.name, version, target, manifest, reused=False)


def _set_latest(folder: Path, version: str) -> None:
    with atomic_write(folder / "LATEST") as handle:
        handle.write(version + "\n")


# ---------------------------------------------------------------------------- reading
def list_datasets(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    base = store_root(root)
    if not base.is_dir():
        return {}
    return {d.name: sorted(v.name for v in d.iterdir() if v.is_dir() and not v.name.startswith("."))
            for d in sorted(base.iterdir()) if d.is_dir()}


def resolve_version(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> str:
    folder = store_root(root) / name
    if version and version != "latest":
        return version
    latest = folder / "LATEST"
    if not latest.is_file():
        slices = sorted(v.name for v in folder.iterdir() if v.is_dir() and not v.name.startswith(".")) \
            if folder.is_dir() else []
        hint = (f"; only slices are curated ({', '.join(slices)}): name one as {name}@VERSION" if slices else "")
        raise StoreError(f"{folder}: dataset {name!r} has not been curated in full "
                         f"(run `chemgen data prepare {name}`){hint}")
    return latest.read_text().strip()


def parse_dataset_ref(text: str) -> tuple[str, str | None]:
    """``qm9@6b0eb599c00e`` -> ("qm9", "6b0eb599c00e"); ``qm9`` -> ("qm9", None), i.e. LATEST."""
    name, _, version = text.partition("@")
    if not name or (_ and not version):
        raise ValueError(f"dataset reference {text!r}: expected NAME or NAME@VERSION")
    return name, version or None


def read_manifest(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> dict[str, Any]:
    version = resolve_version(name, version, root)
    path = store_root(root) / name / version / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{path}: no manifest (version {version} of {name} is missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: corrupt manifest ({err})") from err


def verify(name: str, version: str | None = None, root: str | os.PathLike | None = None) -> list[str]:
    """Recompute every shard's hash; returns the problems found (empty when intact)."""
    manifest = read_manifest(name, version, root)
    folder = store_root(root) / name / manifest["version"]
    problems = []
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != shard["sha256"]:
            problems.append(f"{path}: content hash differs from the manifest")
    return problems


def load_table(name: str, split: str | None = None, version: str | None = None,
               root: str | os.PathLike | None = None) -> pa.Table:
    manifest = read_manifest(name, version, root)
    folder = store_root(root) / name / manifest["version"]
    if split is not None and split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLIT_NAMES)})")
    shards = [s for s in manifest["shards"] if split is None or s["split"] == split]
    tables = [pq.read_table(folder / s["file"], schema=SCHEMA) for s in shards]
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
