"""Which lineage a training run continues: the one decision ``chemgen train MODEL`` and the nightly flow share.

A run continues, in this order of precedence:

1. nothing, when asked to start fresh (random weights);
2. the lineage it names (``--init``), which must be a lineage of the same model;
3. the first candidate the caller offers (the flow: the registry champion's lineage) that is a lineage of the
   same model *and config*, then the config's shipped lineage (``models/weights/<config>``) if it is one;
4. nothing, when none of these exists.

Lineages of another config are never continued implicitly: a config may change loss weights between runs, not
the architecture, and its name is how a lineage says which architecture it holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from chemgen import lineage
from chemgen.lineage import LineageError


def continues(folder: str | os.PathLike | None, model: str, config_name: str) -> bool:
    """Whether ``folder`` is a lineage a run of ``model`` with config ``config_name`` may continue implicitly."""
    if folder is None or not lineage.is_lineage(folder):
        return False
    manifest = lineage.read_manifest(folder)
    return manifest.get("model") == model and manifest["config"]["name"] == config_name


def lineage_to_continue(model: str, config_name: str, *, init: str | os.PathLike | None = None, fresh: bool = False,
                        candidates: Iterable[str | os.PathLike | None] = ()) -> Path | None:
    """The lineage folder a run of ``model`` (config ``config_name``) continues, or None for random weights."""
    if fresh:
        if init is not None:
            raise LineageError("a fresh run continues no lineage: give either --fresh or --init, not both")
        return None
    if init is not None:
        folder = Path(init)
        if not lineage.is_lineage(folder):
            raise FileNotFoundError(f"{folder}: not a lineage folder (manifest.json + weight shards)")
        owner = lineage.read_manifest(folder).get("model", model)
        if owner != model:
            raise LineageError(f"{folder}: a lineage of {owner!r}, not of {model!r}")
        return folder
    for candidate in (*candidates, lineage.shipped_lineage(config_name)):
        if continues(candidate, model, config_name):
            return Path(candidate)  # type: ignore[arg-type]
    return None
