"""Training data as tensor packs: the config's curated datasets (or a model's own pack builder), cached per version.

`training_packs` gives the train and validation packs a run trains on; `write_packs` saves them for a machine
that has only torch (`chemgen.training.standalone`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chemgen.config import DataConfig
from chemgen.data.tensors import PACK_FORMAT, TensorPack, pack_from_store
from chemgen.models.specs import import_object, model_spec


def training_packs(data: DataConfig, store: str | os.PathLike | None = None,
                   versions: dict[str, str] | None = None, model: str | None = None
                   ) -> tuple[TensorPack, TensorPack, list[dict[str, Any]]]:
    """Train and validation packs of the configured datasets (LATEST, or ``versions[name]``), cached per version,
    and the manifests of the dataset versions they hold. A model with a `ModelSpec.pack_builder` (``model``
    named) gets its packs from that instead: its own data, in the same shape."""
    from chemgen.data.store import read_manifest
    from chemgen.paths import chemgen_home

    builder = model_spec(model).pack_builder if model is not None else None
    if builder is not None:
        return import_object(builder)(data, store, versions)
    manifests = [read_manifest(name, (versions or {}).get(name), root=store) for name in data.datasets]
    packs: dict[str, list[TensorPack]] = {"train": [], "valid": []}
    for manifest in manifests:
        for split in packs:
            limit = data.limit_per_dataset
            # the pack format is part of the name: a pack cached by an older chemgen lacks newer fields
            cache = (chemgen_home() / "packs"
                     / f"{manifest['name']}-{manifest['version']}-{split}-{limit or 'all'}-v{PACK_FORMAT}.pt")
            if cache.is_file():
                pack = TensorPack.load(cache)
            else:
                pack = pack_from_store(manifest["name"], split, limit=limit, root=store, version=manifest["version"])
                pack.save(cache)
            packs[split].append(pack)
    return TensorPack.concat(packs["train"]), TensorPack.concat(packs["valid"]), manifests


def write_packs(data: DataConfig, out_dir: str | os.PathLike, store: str | os.PathLike | None = None,
                versions: dict[str, str] | None = None, val_per_kind: int | None = 1000,
                model: str | None = None) -> list[str]:
    """``train.pt``, ``val.pt`` and ``data.txt`` (the ``name@version`` of each dataset) for a machine that has
    only torch (`chemgen.training.standalone`); returns the dataset versions. ``val.pt`` keeps only the
    ``val_per_kind`` molecules and crystals the diagnostics use (the packs travel in a 64 MiB tree)."""
    from chemgen.io import atomic_write

    out_dir = Path(out_dir)
    train_pack, val_pack, manifests = training_packs(data, store, versions, model)
    if val_per_kind is not None:
        val_pack = val_pack.subset(val_pack.held_out_index(val_per_kind))
    train_pack.save(out_dir / "train.pt", compress=True)   # they travel within a 64 MiB tree
    val_pack.save(out_dir / "val.pt", compress=True)
    refs = [f"{m['name']}@{m['version']}" for m in manifests]
    with atomic_write(out_dir / "data.txt") as handle:
        handle.write(",".join(refs) + "\n")
    return refs

