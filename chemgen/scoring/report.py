"""Scoring files and sample sets end to end: read, score, print, save JSON/CSV/PNG, log to MLflow.

Inputs: SDF, XYZ/extended XYZ, a CIF file or a folder of CIFs, or a CSV with a ``cif``
column (crystals, CDVAE format) or an ``xyz`` column (extended XYZ text per molecule).
One structure that cannot be read is scored invalid with its reason; it never stops the batch.
References for novelty default to the curated store: QM9 train SMILES rebuilt from
coordinates (cached per dataset version) and every curated MP-20 structure (the in-house
protocol: train_first1000 + val + test).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from chemgen import io as structure_io
from chemgen.atoms import AtomicSystem
from chemgen.io import StructureFileError, atomic_write

KINDS = ("molecule", "crystal")


# ---------------------------------------------------------------------------- reading
def read_structures(path: str | os.PathLike, kind: str) -> tuple[list[AtomicSystem | None], list[str | None]]:
    """Structures and, per item, why it could not be read (None when it could)."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".cif", ".xyz", ".extxyz", ".sdf", ".mol"))
        if not files:
            raise StructureFileError(path, "folder holds no .cif, .xyz, .extxyz or .sdf files")
        systems, reasons = [], []
        for file in files:
            try:
                read = structure_io.read(file)
                systems.extend(read)
                reasons.extend([None] * len(read))
            except StructureFileError as err:
                systems.append(None)
                reasons.append(str(err))
        return _check_kind(systems, reasons, kind, path)
    if path.suffix.lower() in (".csv", ".gz") and path.name.lower().endswith((".csv", ".csv.gz")):
        return _check_kind(*_read_csv(path, kind), kind, path)
    systems = structure_io.read(path)
    return _check_kind(list(systems), [None] * len(systems), kind, path)


def _read_csv(path: Path, kind: str) -> tuple[list[AtomicSystem | None], list[str | None]]:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as err:
        raise StructureFileError(path, f"not a readable CSV ({err})") from err
    column = "cif" if kind == "crystal" else "xyz"
    if column not in frame.columns:
        raise StructureFileError(path, f"a {kind} CSV needs a '{column}' column (found {list(frame.columns)})")
    systems: list[AtomicSystem | None] = []
    reasons: list[str | None] = []
    for index, text in enumerate(frame[column]):
        try:
            if not isinstance(text, str) or not text.strip():
                raise StructureFileError(f"{path} row {index}", f"empty {column} field")
            if kind == "crystal":
                [system] = structure_io.systems_from_cif_text(text, source=f"{path} row {index}")[:1]
            else:
                system = _system_from_xyz_text(text, f"{path} row {index}")
            systems.append(system)
            reasons.append(None)
        except (StructureFileError, ValueError) as err:
            systems.append(None)
            reasons.append(str(err))
    return systems, reasons


def _system_from_xyz_text(text: str, source: str) -> AtomicSystem:
    from ase.io import read as ase_read

    try:
        atoms = ase_read(io.StringIO(text), format="extxyz")
    except (ValueError, IndexError, KeyError, OSError) as err:
        raise StructureFileError(source, f"malformed extended XYZ ({err})") from err
    return AtomicSystem.from_ase(atoms)


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
    from chemgen.scoring.molecules import reference_smiles

    manifest = read_manifest("qm9", version, root=store)
    cache = chemgen_home() / "cache" / f"qm9-{manifest['version']}-train-smiles.json"
    cached: dict[str, list[str]] = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [p for p in protocols if p not in cached]
    if missing:
        computed = reference_smiles(load("qm9", "train", version=manifest["version"], root=store), protocols=missing)
        cached.update({p: sorted(s) for p, s in computed.items()})
        with atomic_write(cache) as handle:
            json.dump(cached, handle)
    return {p: frozenset(cached[p]) for p in protocols}


def mp20_references(store: str | os.PathLike | None = None, version: str | None = None) -> list[AtomicSystem]:
    """Every curated MP-20 structure (novelty reference under the in-house protocol)."""
    from chemgen.data.store import load

    return load("mp20", version=version, root=store)


# ---------------------------------------------------------------------------- scoring
def score_generated(items: Sequence[AtomicSystem | None], reasons: Sequence[str | None] | None, dataset: str,
                    store: str | os.PathLike | None = None,
                    version: str | None = None) -> tuple[dict[str, float], pd.DataFrame, Any]:
    """Score generated systems of one dataset (or kind) against that dataset's curated references
    (LATEST, or ``version``): QM9's training SMILES for novelty; for crystals the whole dataset for
    novelty and 1,000 of its test structures for the distribution distances."""
    from chemgen.dense import resolve_dataset

    dataset, kind = resolve_dataset(dataset)
    if kind == "molecule":
        return score_systems(items, kind, reasons, references=qm9_reference_smiles(store=store, version=version))
    from chemgen.data.store import load

    return score_systems(items, kind, reasons, references=load(dataset, version=version, root=store),
                         ground_truth=load(dataset, "test", version=version, limit=1000, root=store))


def score_systems(systems: Sequence[AtomicSystem | None], kind: str, reasons: Sequence[str | None] | None = None,
                  protocols: Sequence[str] = ("edm", "rdkit"), preset: str = "cdvae",
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
            raise ValueError(f"validity must be 'cdvae' or 'adit', got {validity!r}")
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
