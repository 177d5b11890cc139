"""DiffSpectra's training and validation packs for the shared training path (`ModelSpec.pack_builder`).

`chemgen train diffspectra`, `chemgen train packs --model diffspectra` and every other caller of
`chemgen.training.packs.training_packs` get their packs here rather than from the curated QM9 store:
DiffSpectra trains on the spectra store (`chemgen.spectra.curation.default_folder`: ``$CHEMGEN_SPECTRA_DIR/qm9-xtb``
or the checkout's ``datasets/spectra/qm9-xtb``) through `chemgen.models.diffspectra.data.spectra_pack`.

Which molecules train and which validate (the store is computed in EDM's split order, test first, so for a long
while it holds test and train molecules only):

* training: the store's ``train`` molecules (the first ``limit_per_dataset`` of them when the config says so),
  less those held out below;
* validation: the train molecules whose GDB index is a multiple of `HOLD_OUT_EVERY` (about 5 %), plus the
  store's ``valid`` molecules once it has some (up to ``limit_per_dataset`` of them). Held out by index, not by
  position, so a molecule stays on its side as the store grows and a continued lineage never trains on what
  earlier runs validated on;
* the ``test`` split is never read.

The version of the data is the store's content hash (the same digest its manifest records: sha256 over the
shards' sha256), shortened to 12 hex digits: ``qm9-xtb@<hash>`` in the lineage and the MLflow run. The store
keeps no old versions, so a pinned version other than the one on disk is refused. Packs are cached under
``$CHEMGEN_HOME/packs`` per version and limit (perceiving the graphs takes about 30 ms a molecule).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from chemgen.config import DataConfig
from chemgen.data.tensors import PACK_FORMAT, TensorPack
from chemgen.errors import UsageError

HOLD_OUT_EVERY = 20    # GDB index % 20 == 0: a train-split molecule validates instead
VERSION_DIGITS = 12


def store_version(folder: Path) -> tuple[str, str]:
    """(12-digit version, full content hash) of the store as it is on disk now."""
    from chemgen.spectra.shards import SpectraStoreError, scan

    shards = scan(folder)
    if not shards:
        raise SpectraStoreError(f"{folder}: no spectra shards (run `chemgen data prepare qm9-spectra`)")
    digest = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()
    return digest[:VERSION_DIGITS], digest


def _split_packs(folder: Path, limit: int | None) -> tuple[TensorPack, TensorPack, dict[str, Any]]:
    from chemgen.models.diffspectra.data import spectra_pack
    from chemgen.spectra.shards import SpectraStoreError

    pack, report = spectra_pack(folder, split="train", limit=limit)
    held = (pack.extras["system/qm9_index"] % HOLD_OUT_EVERY) == 0
    train, val = pack.subset(torch.nonzero(~held).flatten()), pack.subset(torch.nonzero(held).flatten())
    counts = {"train": len(train), "held_out_of_train": len(val), "train_report": report.summary()}
    try:
        valid, valid_report = spectra_pack(folder, split="valid", limit=limit)
    except SpectraStoreError:   # no good molecule of the valid split computed yet
        valid, valid_report = None, None
    if valid is not None:
        val = TensorPack.concat([val, valid])
        counts.update(valid_split=len(valid), valid_report=valid_report.summary())
    if len(train) == 0:
        raise SpectraStoreError(f"{folder}: no training molecules left after holding out every "
                                f"{HOLD_OUT_EVERY}th GDB index ({counts})")
    return train, val, counts


def training_packs(data: DataConfig, store: str | os.PathLike | None = None,
                   versions: dict[str, str] | None = None) -> tuple[TensorPack, TensorPack, list[dict[str, Any]]]:
    """(train pack, validation pack, [the spectra store's manifest]) for the config's ``data`` (module docstring).

    ``store`` is the curated store of the other models and does not apply; ``versions`` may pin
    ``qm9-xtb`` to the version on disk (anything else is refused)."""
    from chemgen.spectra.curation import NAME, default_folder
    from chemgen.paths import chemgen_home

    if tuple(data.datasets) != ("qm9",):
        raise UsageError(f"DiffSpectra's data is the spectra store of QM9's molecules: data.datasets must be [qm9], "
                         f"got {list(data.datasets)}")
    if store is not None:
        raise UsageError(f"DiffSpectra trains on the spectra store ({default_folder()}; set CHEMGEN_SPECTRA_DIR to "
                         f"the folder holding {NAME}/), not on a curated store: --store {store} does not apply")
    folder = default_folder()
    version, digest = store_version(folder)
    for name, pinned in (versions or {}).items():
        if name != NAME:
            raise UsageError(f"DiffSpectra trains on the spectra store {NAME}, not on {name!r}")
        if pinned and not digest.startswith(pinned):
            raise UsageError(f"{folder} is {NAME}@{version}, not {NAME}@{pinned}: the spectra store keeps no other "
                             "versions")
    limit = data.limit_per_dataset
    cache = chemgen_home() / "packs" / f"{NAME}-{version}-diffspectra-{limit or 'all'}-v{PACK_FORMAT}"
    if (cache / "train.pt").is_file() and (cache / "val.pt").is_file():
        train, val = TensorPack.load(cache / "train.pt"), TensorPack.load(cache / "val.pt")
    else:
        train, val, _ = _split_packs(folder, limit)
        cache.mkdir(parents=True, exist_ok=True)
        train.save(cache / "train.pt")   # each save is atomic; val.pt last, so a half-written cache is not used
        val.save(cache / "val.pt")
    manifest = {"name": NAME, "version": version, "content_hash": digest, "source_folder": str(folder),
                "counts": {"train": len(train), "valid": len(val)}}
    return train, val, [manifest]
