"""ADiT's jobs on a CPU machine with the full stack: train from the store, register, sample to files.

Each function is what one CLI command or flow task calls: curated data in, tracked results out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chemgen import tracking
from chemgen.config import ADiTConfig, TrainConfig, load_config
from chemgen.data.tensors import PACK_FORMAT, TensorPack, pack_from_store

REGISTERED_NAME = "chemgen-adit"
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")


# ---------------------------------------------------------------------------- data
def training_packs(train_config: TrainConfig, store: str | os.PathLike | None = None,
                   versions: dict[str, str] | None = None) -> tuple[TensorPack, TensorPack, list[dict[str, Any]]]:
    """Train and validation packs of the configured datasets (LATEST, or ``versions[name]``), cached per version."""
    from chemgen.data.store import read_manifest
    from chemgen.paths import chemgen_home

    manifests = [read_manifest(name, (versions or {}).get(name), root=store) for name in train_config.datasets]
    packs: dict[str, list[TensorPack]] = {"train": [], "valid": []}
    for manifest in manifests:
        for split in packs:
            limit = train_config.limit_per_dataset
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


def write_packs(train_config: TrainConfig, out_dir: str | os.PathLike, store: str | os.PathLike | None = None,
                versions: dict[str, str] | None = None, val_per_kind: int | None = 1000) -> list[str]:
    """``train.pt``, ``val.pt`` and ``data.txt`` (the ``name@version`` of each dataset) for a machine that has
    only torch (`chemgen.generation.remote`); returns the dataset versions. ``val.pt`` keeps only the
    ``val_per_kind`` molecules and crystals the diagnostics use (the packs travel in a 64 MiB tree)."""
    from chemgen.io import atomic_write

    out_dir = Path(out_dir)
    train_pack, val_pack, manifests = training_packs(train_config, store, versions)
    if val_per_kind is not None:
        val_pack = val_pack.subset(val_pack.held_out_index(val_per_kind))
    train_pack.save(out_dir / "train.pt", compress=True)   # they travel within a 64 MiB tree
    val_pack.save(out_dir / "val.pt", compress=True)
    refs = [f"{m['name']}@{m['version']}" for m in manifests]
    with atomic_write(out_dir / "data.txt") as handle:
        handle.write(",".join(refs) + "\n")
    return refs


# ---------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingOutcome:
    stage: str
    out_dir: Path
    run_id: str
    steps: int
    seconds: float
    systems_per_second: float
    metrics: dict[str, float]


def train(stage: str, config: ADiTConfig | str, out_dir: str | os.PathLike, vae_path: str | os.PathLike | None = None,
          store: str | os.PathLike | None = None, accelerator: str = "auto", devices: int = 1,
          max_steps: int | None = None, max_minutes: float | None = None, resume: bool = True,
          progress: bool = True, tags: dict[str, str] | None = None,
          init_from: str | os.PathLike | None = None, versions: dict[str, str] | None = None) -> TrainingOutcome:
    """Train one ADiT stage ("vae" or "dit") as an MLflow run with params, dataset inputs and exports."""
    from chemgen.models.adit.train import train_dit, train_vae

    if stage not in ("vae", "dit"):
        raise ValueError(f"stage must be 'vae' or 'dit', got {stage!r}")
    config = load_config(config) if isinstance(config, (str, Path)) else config
    train_config = config.vae_train if stage == "vae" else config.dit_train
    if stage == "dit" and vae_path is None:
        raise ValueError("the DiT stage needs a trained VAE: pass vae_path (a vae.pt from `chemgen train adit-vae`)")
    out_dir = Path(out_dir)
    train_pack, val_pack, manifests = training_packs(train_config, store, versions)
    kwargs = dict(accelerator=accelerator, devices=devices, resume=resume, progress=progress,
                  max_steps=max_steps, max_minutes=max_minutes, init_from=init_from)
    if os.environ.get("LOCAL_RANK", "0") != "0":
        # A DDP worker that Lightning launched by re-running this command: the rank-0 process tracks.
        result = (train_vae(config, train_pack, val_pack, out_dir, **kwargs) if stage == "vae"
                  else train_dit(config, vae_path, train_pack, val_pack, out_dir, **kwargs))
        return TrainingOutcome(stage, out_dir, "", result.steps, result.seconds, result.systems_per_second, result.metrics)
    with tracking.run(f"adit-{stage}-{config.name}", tags={"model": "adit", "stage": stage, **(tags or {})},
                      nested=tracking.active_run_id() is not None) as run:
        tracking.log_params({**config.flat_params(), "stage": stage, "train_systems": len(train_pack),
                             "threads": torch.get_num_threads()})
        for manifest in manifests:
            tracking.log_dataset_manifest(manifest)
        kwargs["logger"] = tracking.lightning_logger()
        if stage == "vae":
            result = train_vae(config, train_pack, val_pack, out_dir, **kwargs)
        else:
            result = train_dit(config, vae_path, train_pack, val_pack, out_dir, **kwargs)
        # The final values too: short runs may end before Lightning's first logging step.
        tracking.log_metrics({**result.metrics, "train_seconds": result.seconds,
                              "train_systems_per_second": result.systems_per_second}, step=result.steps)
        import mlflow

        mlflow.log_artifact(str(result.export_path), artifact_path="export")
        return TrainingOutcome(stage, out_dir, run.info.run_id, result.steps, result.seconds,
                               result.systems_per_second, result.metrics)


# ---------------------------------------------------------------------------- registry
def register(model_dir: str | os.PathLike, name: str = REGISTERED_NAME, metrics: dict[str, float] | None = None,
             alias: str = tracking.CHALLENGER, tags: dict[str, str] | None = None) -> Any:
    """Log a model directory as a pyfunc and register a version with ``alias``.

    If anything fails after the version exists, the version is deleted again: the registry
    never keeps a half-registered model.
    """
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from chemgen.models.adit.pyfunc import OUTPUT_COLUMNS
    from chemgen.models.adit.train import load_adit

    model_dir = Path(model_dir)
    load_adit(model_dir)  # fail before anything is registered if the directory is incomplete
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "dataset", required=False), ColSpec("string", "kind", required=False),
                       ColSpec("long", "n"), ColSpec("long", "seed", required=False),
                       ColSpec("long", "num_steps", required=False), ColSpec("double", "cfg_scale", required=False),
                       ColSpec("string", "solver", required=False)]),
        outputs=Schema([ColSpec("long" if c in ("request", "sample", "num_atoms") else "string", c) for c in OUTPUT_COLUMNS]))
    import chemgen

    with tracking.run(f"register-{name}", nested=tracking.active_run_id() is not None, tags=tags):
        if metrics:
            tracking.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"model_dir": str(model_dir)},
            signature=signature, pip_requirements=[f"chemgen=={chemgen.__version__}", "torch==2.13.0"],
            metadata={"architecture": "ADiT", "paper": "Joshi et al., All-atom Diffusion Transformers, ICML 2025"})
    version = mlflow.register_model(info.model_uri, name)
    try:
        tracking.set_alias(name, alias, version.version)
        if metrics:
            tracking.client().set_model_version_tag(name, version.version, "metrics",
                                                    ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    except BaseException:
        tracking.client().delete_model_version(name, version.version)
        raise
    return version


def load_model(model: str | os.PathLike, device: str = "cpu"):
    """An ADiT from a model directory or a registry URI such as ``models:/chemgen-adit@champion``."""
    from chemgen.models.adit.train import load_adit

    if str(model).startswith("models:/") or str(model).startswith("runs:/"):
        import mlflow

        tracking.configure()
        pyfunc = mlflow.pyfunc.load_model(str(model))
        return pyfunc.unwrap_python_model().model.to(device)
    return load_adit(model, device)


# ---------------------------------------------------------------------------- sampling
def generate_records(model: Any, dataset: str, n: int, seed: int = 0, batch_size: int = 500,
                     **sampling: Any) -> tuple[list[Any], float]:
    """n records (or `Failure`s) of a dataset in batches seeded seed, seed + 1, ..., and the seconds it took."""
    from chemgen.models.adit.decode import to_systems

    systems: list[Any] = []
    start = time.perf_counter()
    for i, first in enumerate(range(0, n, batch_size)):
        systems.extend(to_systems(model.generate(min(batch_size, n - first), dataset, seed=seed + i, **sampling),
                                  dataset))
    return systems, time.perf_counter() - start


def sample_to_files(model: Any, dataset: str, n: int, out_dir: str | os.PathLike, seed: int = 0,
                    num_steps: int | None = None, solver: str | None = None, cfg_scale: float | None = None,
                    batch_size: int = 500, score: bool = True, store: str | os.PathLike | None = None,
                    versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Generate n structures of a dataset (or kind: molecule = qm9, crystal = mp20), write them (SDF + XYZ or
    CIF + XYZ) with a CSV summary, and score them against that dataset's references."""
    import pandas as pd

    from chemgen import io as structure_io
    from chemgen.bonds import perceive_bonds
    from chemgen.dense import resolve_dataset
    from chemgen.models.adit.decode import Failure, split_failures
    from chemgen.models.adit.pyfunc import structure_rows
    from chemgen.scoring import report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, kind = resolve_dataset(dataset)
    systems, seconds = generate_records(model, dataset, n, seed, batch_size, num_steps=num_steps, solver=solver,
                                        cfg_scale=cfg_scale)
    records = [s for s in systems if not isinstance(s, Failure)]
    files: dict[str, Path] = {}
    if records:
        files["xyz"] = structure_io.write(out_dir / "samples.extxyz", records)
        if kind == "molecule":
            files["sdf"] = structure_io.write(out_dir / "samples.sdf", [perceive_bonds(s, "edm") for s in records])
        else:
            files["cif"] = structure_io.write(out_dir / "samples.cif",
                                              [s.replace(material_id=f"sample_{i}") for i, s in enumerate(records)])
    summary = pd.DataFrame(structure_rows(systems, kind)).drop(columns=["xyz", "cif"])
    result: dict[str, Any] = {"n": n, "dataset": dataset, "seconds": seconds,
                              "samples_per_second": n / max(seconds, 1e-9),
                              "failures": len(systems) - len(records), "files": files}
    if score:
        metrics, table, scores = report.score_generated(*split_failures(systems), dataset, store,
                                                        (versions or {}).get(dataset))
        summary = pd.concat([summary.reset_index(drop=True), table.drop(columns=[c for c in ("index",) if c in table])
                             .add_prefix("score_").reset_index(drop=True)], axis=1)
        result["metrics"] = metrics
        result["report"] = report.save_report(metrics, table, scores, kind, out_dir / "scores",
                                              context={"n": n, "seed": seed, "num_steps": num_steps, "solver": solver})
    from chemgen.io import atomic_write

    with atomic_write(out_dir / "summary.csv") as handle:
        summary.to_csv(handle, index=False)
    files["summary"] = out_dir / "summary.csv"
    return result
