"""The committed spectra store: stick-spectra shards (zstd Parquet) and the manifest built from them.

Layout of one dataset folder (``datasets/spectra/<name>/`` in the repository)::

    shard-000000-000500.parquet   molecules at positions [0, 500) of the dataset's computation order
    manifest.json                 counts, hashes, versions, parameters and every failure, rebuilt from the shards

The shards are the truth: each carries its own metadata (input hash, settings, tblite version,
timings) and one row per molecule of its range, failures included (``failure`` holds the reason).
A shard is written to a hidden temporary file and renamed into place, so an interrupted shard
leaves nothing behind but a ``.tmp-*`` file that the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chemgen.errors import ChemgenError

SHARD_PATTERN = re.compile(r"^shard-(\d{6})-(\d{6})\.parquet$")
METADATA_KEY = b"chemgen"
MAX_SHARD_BYTES = 10 * 1024 * 1024

SCHEMA = pa.schema([
    ("order", pa.int32()),                      # position in the dataset's computation order
    ("qm9_index", pa.int32()),                  # GDB index (gdb9_%06d)
    ("split", pa.string()),                     # EDM split of the molecule
    ("inchikey", pa.string()),                  # of QM9's InChI (the B3LYP structure)
    ("smiles", pa.string()),
    ("atomic_numbers", pa.list_(pa.int8())),
    ("positions", pa.list_(pa.float32())),      # (N*3,) relaxed GFN2-xTB geometry, Angstrom
    ("energy_eh", pa.float64()),                # GFN2-xTB total energy, hartree
    ("frequencies_cm1", pa.list_(pa.float32())),  # harmonic, unscaled; imaginary as negative
    ("ir_km_mol", pa.list_(pa.float32())),      # IR intensities
    ("raman_a4_amu", pa.list_(pa.float32())),   # Raman activities
    ("num_imaginary", pa.int16()),
    ("optimisation_steps", pa.int16()),
    ("seconds", pa.float32()),                  # wall time of this molecule
    ("failure", pa.string()),                   # null when the spectra are good; else the reason
])


class SpectraStoreError(ChemgenError, RuntimeError):
    """A spectra folder that cannot be used: corrupt shard, mixed settings, or locked by another run."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    first: int
    end: int
    rows: int
    ok: int
    failed: int
    sha256: str
    bytes: int
    metadata: dict[str, Any]


def shard_name(first: int, end: int) -> str:
    return f"shard-{first:06d}-{end:06d}.parquet"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_shard(folder: Path, first: int, end: int, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> ShardInfo:
    """Write one shard atomically (temporary file, then rename)."""
    if [r["order"] for r in rows] != list(range(first, end)):
        raise SpectraStoreError(f"shard [{first}, {end}) must hold one row per position, in order")
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    path = folder / shard_name(first, end)
    tmp = folder / f".tmp-{path.name}-{os.getpid()}"
    try:
        pq.write_table(table, tmp, compression="zstd", compression_level=19)
        if tmp.stat().st_size > MAX_SHARD_BYTES:
            raise SpectraStoreError(f"{path}: shard of {tmp.stat().st_size} bytes exceeds {MAX_SHARD_BYTES}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return shard_info(path)


def shard_info(path: Path) -> ShardInfo:
    match = SHARD_PATTERN.match(path.name)
    if not match:
        raise SpectraStoreError(f"{path}: not a shard file name")
    try:
        parquet = pq.ParquetFile(path)
        raw = (parquet.schema_arrow.metadata or {}).get(METADATA_KEY)
        metadata = json.loads(raw) if raw else None
        failures = parquet.read(columns=["failure"]).column("failure")
    except (pa.ArrowException, OSError, json.JSONDecodeError) as err:
        raise SpectraStoreError(f"{path}: unreadable shard ({err})") from err
    if metadata is None:
        raise SpectraStoreError(f"{path}: shard without chemgen metadata")
    first, end = int(match[1]), int(match[2])
    if parquet.metadata.num_rows != end - first:
        raise SpectraStoreError(f"{path}: {parquet.metadata.num_rows} rows for the range [{first}, {end})")
    failed = len(failures) - failures.null_count  # a failure row carries its reason; a good row null
    return ShardInfo(path.name, first, end, parquet.metadata.num_rows, parquet.metadata.num_rows - failed, failed,
                     file_sha256(path), path.stat().st_size, metadata)


def remove_temporaries(folder: Path) -> None:
    for stale in folder.glob(".tmp-*"):
        stale.unlink(missing_ok=True)


def scan(folder: Path) -> list[ShardInfo]:
    """Every shard in the folder, ordered by range; overlapping ranges are an error."""
    folder = Path(folder)
    shards = sorted((shard_info(p) for p in folder.glob("shard-*.parquet")), key=lambda s: s.first)
    for before, after in zip(shards, shards[1:]):
        if after.first < before.end:
            raise SpectraStoreError(f"{folder}: shards {before.file} and {after.file} overlap")
    return shards


def covered(shards: list[ShardInfo]) -> list[tuple[int, int]]:
    return [(s.first, s.end) for s in shards]


def read_table(folder: Path, columns: list[str] | None = None, only_ok: bool = False) -> pa.Table:
    """All shards' rows (optionally only the molecules with good spectra), in computation order."""
    folder = Path(folder)
    tables = [pq.read_table(folder / s.file, columns=columns if not only_ok or columns is None
                            else list(dict.fromkeys([*columns, "failure"])))
              for s in scan(folder)]
    if not tables:
        names = columns or SCHEMA.names
        return pa.schema([SCHEMA.field(n) for n in names]).empty_table()
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    if only_ok:
        table = table.filter(table.column("failure").is_null())
        if columns is not None and "failure" not in columns:
            table = table.drop_columns(["failure"])
    return table


def build_manifest(folder: Path, description: dict[str, Any]) -> dict[str, Any]:
    """The manifest of everything in the folder: written atomically, never edited by hand."""
    shards = scan(folder)
    failures = read_table(folder, ["order", "qm9_index", "split", "failure"]) if shards else None
    failure_rows = [] if failures is None else failures.filter(failures.column("failure").is_valid()).to_pylist()
    splits: Counter[str] = Counter()
    split_ok: Counter[str] = Counter()
    if shards:
        table = read_table(folder, ["split", "failure"])
        for split, failure in zip(table.column("split").to_pylist(), table.column("failure").to_pylist()):
            splits[split] += 1
            split_ok[split] += failure is None
    settings = {json.dumps(s.metadata.get("settings"), sort_keys=True) for s in shards}
    if len(settings) > 1:
        raise SpectraStoreError(f"{folder}: shards computed with different settings")
    seconds = sum(s.metadata.get("seconds", 0.0) for s in shards)
    total = sum(s.rows for s in shards)
    reasons = Counter(failure_kind(r["failure"]) for r in failure_rows)
    manifest = {
        **description,
        "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"molecules": total, "ok": total - len(failure_rows), "failed": len(failure_rows),
                   "by_split": {k: {"molecules": splits[k], "ok": split_ok[k]} for k in sorted(splits)},
                   "contiguous_prefix": _prefix(shards)},
        "tblite_versions": sorted({s.metadata.get("tblite_version", "?") for s in shards}),
        "settings": json.loads(settings.pop()) if settings else None,
        "compute_seconds": round(seconds, 1),
        "content_hash": hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest(),
        "shards": [{"file": s.file, "first": s.first, "end": s.end, "ok": s.ok, "failed": s.failed,
                    "bytes": s.bytes, "sha256": s.sha256, "input_sha256": s.metadata.get("input_sha256"),
                    "seconds": s.metadata.get("seconds"), "host": s.metadata.get("host"),
                    "created_utc": s.metadata.get("created_utc")} for s in shards],
        "failure_reasons": dict(reasons.most_common()),
        "failures": failure_rows,
    }
    from chemgen.io import atomic_write

    with atomic_write(folder / "manifest.json") as handle:
        handle.write(json.dumps(manifest, indent=1) + "\n")
    return manifest


def failure_kind(reason: str) -> str:
    """A failure reason without its numbers, to count alike failures together."""
    return re.sub(r"-?\d+(\.\d+)?", "N", reason.split("(")[0]).strip()


def _prefix(shards: list[ShardInfo]) -> int:
    """How many molecules from position 0 on are computed without a gap."""
    end = 0
    for s in shards:
        if s.first != end:
            break
        end = s.end
    return end


def verify(folder: Path) -> list[str]:
    """Problems between the manifest and the shards on disk (empty when every hash and range agrees)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"{path}: unreadable manifest ({err})"]
    listed = {s["file"]: s for s in manifest.get("shards", [])}
    problems = []
    try:
        on_disk = {s.file: s for s in scan(folder)}
    except SpectraStoreError as err:
        return [str(err)]
    for name in sorted(set(listed) | set(on_disk)):
        if name not in on_disk:
            problems.append(f"{folder / name}: in the manifest but missing")
        elif name not in listed:
            problems.append(f"{folder / name}: not in the manifest (rebuild it: `chemgen data prepare qm9-spectra --limit 0`)")
        elif listed[name]["sha256"] != on_disk[name].sha256:
            problems.append(f"{folder / name}: content hash differs from the manifest")
    return problems
