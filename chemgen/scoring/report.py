"""Scoring files and sample sets end to end: read, score, print, save JSON/CSV/PNG, log to MLflow.

Inputs: any format of `chemgen.io`'s registry (SDF, XYZ/extended XYZ, CIF, a CSV with a
``cif`` or ``xyz`` column), a file or a folder of them. One structure that cannot be read is
scored invalid with its reason; it never stops the batch. References for novelty: QM9's
training SMILES rebuilt from coordinates (cached per curated version) and, for crystals, the
training split only, as the published models check (`training_references`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from chemgen import io as structure_io
from chemgen.atoms import AtomicSystem
from chemgen.errors import ChemgenError, UsageError
from chemgen.io import StructureFileError, atomic_write

KINDS = ("molecule", "crystal")


# ---------------------------------------------------------------------------- reading
def read_structures(path: str | os.PathLike, kind: str) -> tuple[list[AtomicSystem | None], list[str | None]]:
    """Structures and, per item, why it could not be read (None when it could).

    Files are read through `chemgen.io`'s format registry, record by record where the format allows
    (CSV rows), so an unreadable record is scored invalid with its reason and never hides the rest.
    """
    path = Path(path)
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {KINDS}, got {kind!r}")
    if path.suffix == ".pt" and path.is_file():   # a training run's samples_<dataset>.pt
        systems, reasons = _run_samples(path, kind)
        return _check_kind(systems, reasons, kind, path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_structure_file(p))
        if not files:
            raise StructureFileError(path, "folder holds no .cif, .xyz, .extxyz, .sdf or .csv files")
        records = [record for file in files for record in _folder_file_records(file)]
    else:  # one file that cannot be read at all is the user's error, not a sample's
        records = structure_io.read_records(path)
    systems = [None if isinstance(r, StructureFileError) else r for r in records]
    reasons = [str(r) if isinstance(r, StructureFileError) else None for r in records]
    return _check_kind(systems, reasons, kind, path)


def _run_samples(path: Path, kind: str) -> tuple[list[AtomicSystem | None], list[str | None]]:
    """The samples a training run saved (`chemgen.samples.save_samples`), read with
    ``weights_only`` (tensors only, never arbitrary pickles); a sample the decoder could not turn into a
    structure is scored invalid with its reason."""
    from chemgen.samples import split_failures, to_systems
    from chemgen.samples import load_samples

    try:
        decoded = load_samples(path)
    except ChemgenError:
        raise StructureFileError(path, "not a chemgen samples file (a dict of padded atomic_numbers, pos, mask, "
                                       "... tensors)") from None
    except Exception as err:   # not a torch file, truncated, or a pickle of objects weights_only refuses
        raise StructureFileError(path, f"not a chemgen samples file (torch cannot read it as tensors only: "
                                       f"{type(err).__name__})") from None
    return split_failures(to_systems(decoded, "qm9" if kind == "molecule" else "mp20"))


def _folder_file_records(path: Path) -> list[AtomicSystem | StructureFileError]:
    """A folder's file record by record; a file that cannot be read at all (empty, binary, too large) is
    one invalid item, since its records cannot be counted."""
    try:
        return structure_io.read_records(path)
    except StructureFileError as err:
        return [err]


def _is_structure_file(path: Path) -> bool:
    try:
        structure_io.detect_format(path)
    except StructureFileError:
        return False
    return path.is_file()


def _check_kind(systems: list, reasons: list, kind: str, path: Path) -> tuple[list, list]:
    wanted_pbc = kind == "crystal"
    for i, system in enumerate(systems):
        if system is not None and system.pbc != wanted_pbc:
            systems[i], reasons[i] = None, f"{path}: item {i} is a {'crystal' if system.pbc else 'molecule'}, not a {kind}"
    if not systems:
        raise StructureFileError(path, "no structures found")
    return systems, reasons


# ---------------------------------------------------------------------------- references
def qm9_reference_smiles(protocols: Sequence[str] = ("edm", "rdkit"), store: str | os.PathLike | None = None,
                         version: str | None = None) -> dict[str, frozenset[str]]:
    """Training SMILES of the curated QM9 train split (LATEST or ``version``), rebuilt from coordinates;
    cached per version."""
    from chemgen.data.store import load, read_manifest
    from chemgen.paths import chemgen_home
    from chemgen.scoring.molecules import REFERENCE_PROTOCOL, reference_smiles

    manifest = read_manifest("qm9", version, root=store)
    cache = chemgen_home() / "cache" / f"qm9-{manifest['version']}-train-smiles.json"
    cached: dict[str, list[str]] = json.loads(cache.read_text()) if cache.is_file() else {}
    # a protocol reads the training set as another does (edm_mmff as edm): one entry per reader
    missing = sorted({REFERENCE_PROTOCOL[p] for p in protocols} - set(cached))
    if missing:
        computed = reference_smiles(load("qm9", "train", version=manifest["version"], root=store), protocols=missing)
        cached.update({p: sorted(s) for p, s in computed.items()})
        with atomic_write(cache) as handle:
            json.dump(cached, handle)
    return {p: frozenset(cached[REFERENCE_PROTOCOL[p]]) for p in protocols}


@lru_cache(maxsize=4)
def training_references(dataset: str = "mp20", data_dir: str | None = None) -> Any:
    """The novelty reference the published models use: the dataset's training split only, read from
    its CSV (`chemgen.data.crystals.source_files`), as a `ReferenceSet` parsed lazily and cached.

    When MP-20's full ``train.csv`` is absent and ``train_first1000`` stands in for it, the formulas of
    the other training rows (``train_metadata_no_coords``) make their samples "undetermined".
    None when the dataset has no training split on hand.
    """
    from chemgen.data.crystals import dataset_dir, source_files
    from chemgen.scoring.crystal_novelty import ReferenceSet

    train = [f for f in source_files(dataset, data_dir) if f.source_split == "train"]
    if not train:
        return None
    frame = pd.read_csv(train[0].path)
    if "pretty_formula" in frame.columns:
        refs = ReferenceSet.from_cifs(frame["pretty_formula"], frame["cif"])
    else:  # formulas from the structures themselves (parsed now)
        refs = ReferenceSet.from_structures(structure_io.systems_from_cif_text(c)[0] for c in frame["cif"])
    refs.source = f"{dataset} training split: {train[0].path.name} ({len(frame):,} structures)"
    metadata = dataset_dir(dataset, data_dir) / "train_metadata_no_coords.csv.gz"
    if train[0].partial and metadata.is_file():
        rows = pd.read_csv(metadata)
        missing = rows[~rows["material_id"].isin(frame["material_id"])]
        sites = missing["num_atoms_primitive"] if "num_atoms_primitive" in missing.columns else None
        refs.add_undetermined(missing["pretty_formula"], sites)
        refs.source += (f" + {len(missing):,} training rows without coordinates "
                        f"({len(refs.undetermined_formulas):,} formulas: undetermined)")
    return refs


# ---------------------------------------------------------------------------- scoring
@dataclass
class References:
    """What generated systems of one dataset are compared with: the novelty reference (QM9's training SMILES per
    protocol, or a crystal set's training structures) and, for crystals, test structures for the distribution
    distances. ``missing`` says, per reference that could not be had, why (its metrics are then not reported)."""

    novelty: Any = None
    ground_truth: list[AtomicSystem] | None = None
    missing: list[str] = field(default_factory=list)


def generated_references(dataset: str, store: str | os.PathLike | None = None, version: str | None = None,
                         required: bool = True) -> References:
    """The references `score_generated` compares a dataset's samples with. ``required=False`` lets a dataset that
    was never curated cost its metrics (said in ``missing``) rather than the run: read them before drawing
    samples, so that a missing one is known before the expensive part."""
    from chemgen.data.store import StoreError, load
    from chemgen.datasets import resolve_dataset

    dataset, kind = resolve_dataset(dataset)
    refs = References()
    if kind == "molecule":
        try:
            refs.novelty = qm9_reference_smiles(store=store, version=version)
        except StoreError as err:
            if required:
                raise
            refs.missing.append(f"novelty is not reported: {err}")
        return refs
    refs.novelty = training_references(dataset)
    if refs.novelty is None:
        refs.missing.append(f"novelty is not reported: no {dataset} training split on hand")
    try:
        refs.ground_truth = load(dataset, "test", version=version, limit=1000, root=store)
    except StoreError as err:
        if required:
            raise
        refs.missing.append(f"distribution distances are not reported: {err}")
    return refs


def score_generated(items: Sequence[AtomicSystem | None], reasons: Sequence[str | None] | None, dataset: str,
                    store: str | os.PathLike | None = None, version: str | None = None,
                    references: References | None = None) -> tuple[dict[str, float], pd.DataFrame, Any]:
    """Score generated systems of one dataset (or kind) against that dataset's references (`generated_references`,
    read here unless given): QM9's training SMILES (curated, LATEST or ``version``) for novelty; for crystals the
    training split for novelty (`training_references`) and 1,000 curated test structures for the distribution
    distances."""
    from chemgen.datasets import resolve_dataset

    dataset, kind = resolve_dataset(dataset)
    references = references if references is not None else generated_references(dataset, store, version)
    if kind == "molecule":
        return score_systems(items, kind, reasons, references=references.novelty)
    return score_systems(items, kind, reasons, references=references.novelty, ground_truth=references.ground_truth)


def score_systems(systems: Sequence[AtomicSystem | None], kind: str, reasons: Sequence[str | None] | None = None,
                  protocols: Sequence[str] = ("edm", "rdkit"), preset: str = "adit",
                  references: Any = None, ground_truth: Sequence[AtomicSystem] | None = None,
                  stability: bool = False, validity: str = "cdvae") -> tuple[dict[str, float], pd.DataFrame, Any]:
    """Metrics, a per-sample table and the raw scores object."""
    if kind == "molecule":
        import numpy as np

        from chemgen.scoring.molecules import score_molecules

        # An unreadable molecule is scored invalid: a NaN placeholder fails every check.
        items = [s if s is not None else (np.array([6]), np.full((1, 3), np.nan)) for s in systems]
        scores = score_molecules(items, reference_smiles=references, protocols=protocols)
        table = scores.to_frame()
    else:
        from chemgen.scoring.crystals import score_crystals

        if validity not in ("cdvae", "adit"):
            raise UsageError(f"validity must be 'cdvae' or 'adit', got {validity!r}")
        scores = score_crystals(list(systems), references=references, preset=preset, ground_truth=ground_truth,
                                stability=stability, validity=validity)
        table = scores.to_frame()
    if reasons is not None:
        table["failure"] = list(reasons)  # one name for a failed sample: unreadable or not decodable
    return scores.as_dict(), table, scores


def plot_scores(scores: Any, kind: str, out_dir: Path) -> list[Path]:
    if kind == "molecule":
        from chemgen.scoring.molecules import plot_molecule_scores

        return plot_molecule_scores(scores, out_dir)
    from chemgen.scoring.crystals import plot_crystal_scores

    return plot_crystal_scores(scores, out_dir)


def save_report(metrics: dict[str, float], table: pd.DataFrame, scores: Any, kind: str, out_dir: str | os.PathLike,
                context: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write scores.json, per_sample.csv and PNG plots; log them to the active MLflow run, if any."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "scores.json", "csv": out_dir / "per_sample.csv"}
    with atomic_write(paths["json"]) as handle:
        json.dump({"kind": kind, **(context or {}), "metrics": metrics}, handle, indent=2)
    with atomic_write(paths["csv"]) as handle:
        table.to_csv(handle, index=False)
    for i, png in enumerate(plot_scores(scores, kind, out_dir)):
        paths[f"plot{i}"] = png
    _log_to_active_run(metrics, out_dir)
    return paths


def _log_to_active_run(metrics: dict[str, float], out_dir: Path) -> None:
    try:
        import mlflow
    except ImportError:  # the scoring library does not need MLflow
        return
    if mlflow.active_run() is None:
        return
    from chemgen.tracking import log_metrics

    log_metrics(metrics)
    mlflow.log_artifacts(str(out_dir), artifact_path="scores")


def print_metrics(metrics: dict[str, float], console: Any, title: str = "scores") -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric (protocol/name)")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        shown = f"{value:,.0f}" if key.endswith(("n_samples", "num_molecules", "n_valid")) or value > 10 else f"{value:.4f}"
        table.add_row(key, shown)
    console.print(table)
