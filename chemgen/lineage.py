"""Model lineages: weights that accumulate from run to run and machine to machine, committed to the project.

A lineage is a folder (``models/weights/<model>-<config>/``)::

    manifest.json                    model, config, steps per stage, data versions, scores, and the shards
    weights-<sha12>.safetensors      state tensors in shards of at most 16 MiB (float weights as bf16)
    lineage.jsonl                    one line per training run, appended, never rewritten

Tensors are grouped (``{"vae": state_dict, "dit": state_dict, ...}``) and stored as ``group/name``.
safetensors holds tensors and nothing else, so loading a lineage can never run code. A save writes
its shards under new content-addressed names, then replaces the manifest atomically (that rename is
the commit point), then removes the shards the new manifest no longer lists: an interrupted save
leaves the previous checkpoint intact. Every shard's sha256 is checked on load. Optimizer state is
not kept (it would triple the size); a resumed run warms its AdamW moments up again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from chemgen.errors import ChemgenError

FORMAT = "chemgen-lineage-1"
MAX_SHARD_BYTES = 16 * 1024 * 1024   # what a GPU machine may send back per file, and a friendly git object
SEPARATOR = "/"


class LineageError(ChemgenError, RuntimeError):
    """A lineage folder that is missing, corrupt, or asked for something it does not hold."""


@dataclass(frozen=True)
class Checkpoint:
    groups: dict[str, dict[str, torch.Tensor]]
    manifest: dict[str, Any]

    @property
    def steps(self) -> dict[str, int]:
        return dict(self.manifest.get("steps", {}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _flatten(groups: Mapping[str, Mapping[str, torch.Tensor]], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    flat = {}
    for group, state in groups.items():
        if SEPARATOR in group:
            raise ValueError(f"group name {group!r} must not contain {SEPARATOR!r}")
        for name, tensor in state.items():
            t = tensor.detach().to("cpu")
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            flat[f"{group}{SEPARATOR}{name}"] = t.contiguous().clone()  # safetensors refuses shared storage
    return flat


def _pack(flat: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy shards in key order, each at most ``max_bytes`` of tensor data."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in flat.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_bytes:
            raise LineageError(f"tensor {key} has {nbytes / 2**20:.1f} MiB, more than a {max_bytes / 2**20:.0f} MiB shard")
        if size + nbytes > max_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def save(folder: str | os.PathLike, groups: Mapping[str, Mapping[str, torch.Tensor]], meta: dict[str, Any],
         dtype: torch.dtype | None = torch.bfloat16, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, Any]:
    """Replace the lineage's checkpoint with these tensors; ``meta`` (model, config, steps, scores, data) goes in
    the manifest. Returns the manifest."""
    from safetensors.torch import save_file

    from chemgen.io import atomic_write, default_file_mode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = _flatten(groups, dtype)
    entries = []
    for i, shard in enumerate(_pack(flat, max_shard_bytes)):
        tmp = folder / f".tmp-shard-{i}-{os.getpid()}.safetensors"
        try:
            save_file(shard, str(tmp), metadata={"format": FORMAT})
            os.chmod(tmp, default_file_mode())   # safetensors creates 0600: shipped and shared files must be readable
            digest = _sha256(tmp)
            name = f"weights-{digest[:12]}.safetensors"
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        entries.append({"file": name, "sha256": digest, "bytes": (folder / name).stat().st_size,
                        "tensors": sorted(shard)})
    manifest = {
        "format": FORMAT,
        **meta,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else "as trained",
        "parameters": int(sum(t.numel() for t in flat.values() if t.is_floating_point())),
        "saved_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": entries,
        "content_hash": hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest(),
    }
    with atomic_write(folder / "manifest.json") as handle:   # the commit point
        handle.write(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    listed = {e["file"] for e in entries}
    for stale in folder.glob("weights-*.safetensors"):
        if stale.name not in listed:
            stale.unlink()
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise LineageError(f"{folder}: not a lineage (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LineageError(f"{path}: corrupt manifest ({err})") from err
    if manifest.get("format") != FORMAT:
        raise LineageError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def is_lineage(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def load(folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32, verify: bool = True) -> Checkpoint:
    """The checkpoint's tensors by group (float tensors cast to ``dtype``), every shard hash checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise LineageError(f"{path}: shard listed in the manifest is missing")
        if verify and _sha256(path) != entry["sha256"]:
            raise LineageError(f"{path}: content hash differs from the manifest")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise LineageError(f"{path}: unreadable shard ({err})") from err
        for key, tensor in tensors.items():
            group, name = key.split(SEPARATOR, 1)
            groups.setdefault(group, {})[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() \
                else tensor
    return Checkpoint(groups, manifest)


def append_run(folder: str | os.PathLike, record: dict[str, Any]) -> dict[str, Any]:
    """Add one training run to ``lineage.jsonl`` (time and machine are filled in)."""
    record = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), **record}
    path = Path(folder) / "lineage.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:   # one short line per run: an append is atomic enough to never tear
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def runs(folder: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(folder) / "lineage.jsonl"
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LineageError(f"{path}: line {number} is not JSON ({err})") from err
    return out


SHIPPED_ROOT: Path | None = None   # tests point it elsewhere; None: `chemgen.paths.shipped_weights_dir()`


def shipped_lineage(config_name: str) -> Path:
    """Where the promoted checkpoint of a config lives in the project, e.g. ``models/weights/adit-gpu-quick``."""
    from chemgen.paths import shipped_weights_dir

    return (SHIPPED_ROOT or shipped_weights_dir()) / config_name
