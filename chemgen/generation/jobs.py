"""Every model's jobs on a machine with the full stack: train from the store, register, load, sample to files.

Each function is what one CLI command or flow task calls, for any model in `chemgen.generation.protocol.MODELS`:
curated data in, tracked results out. A trained model is a lineage folder (`chemgen.generation.lineage`);
its manifest names the model, so loading needs nothing else.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chemgen import tracking
from chemgen.config import ConfigError, TrainConfig, load_config
from chemgen.data.tensors import PACK_FORMAT, TensorPack, pack_from_store
from chemgen.generation import lineage
from chemgen.generation.protocol import import_object, config_type, generator_class, model_spec

# ---------------------------------------------------------------------------- data
def training_packs(train_config: TrainConfig, store: str | os.PathLike | None = None,
                   versions: dict[str, str] | None = None, model: str | None = None
                   ) -> tuple[TensorPack, TensorPack, list[dict[str, Any]]]:
    """Train and validation packs of the configured datasets (LATEST, or ``versions[name]``), cached per version,
    and the manifests of the dataset versions they hold. A model with a `ModelSpec.pack_builder` (``model``
    named) gets its packs from that instead: its own data, in the same shape."""
    from chemgen.data.store import read_manifest
    from chemgen.paths import chemgen_home

    builder = model_spec(model).pack_builder if model is not None else None
    if builder is not None:
        return import_object(builder)(train_config, store, versions)
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
                versions: dict[str, str] | None = None, val_per_kind: int | None = 1000,
                model: str | None = None) -> list[str]:
    """``train.pt``, ``val.pt`` and ``data.txt`` (the ``name@version`` of each dataset) for a machine that has
    only torch (`chemgen.generation.remote`); returns the dataset versions. ``val.pt`` keeps only the
    ``val_per_kind`` molecules and crystals the diagnostics use (the packs travel in a 64 MiB tree)."""
    from chemgen.io import atomic_write

    out_dir = Path(out_dir)
    train_pack, val_pack, manifests = training_packs(train_config, store, versions, model)
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
    model_dir: Path            # the run's lineage folder: the trained model
    run_id: str
    steps: dict[str, int]      # the lineage's steps per stage after this run
    seconds: float
    report: dict[str, Any]


def train(model: str, config: Any, out_dir: str | os.PathLike, *, init: str | os.PathLike | None = None,
          minutes: dict[str, float] | None = None, steps: dict[str, int] | None = None,
          store: str | os.PathLike | None = None, versions: dict[str, str] | None = None,
          tokens_per_batch: int | None = None, progress: bool = True, tags: dict[str, str] | None = None,
          device: str | None = None) -> TrainingOutcome:
    """Train every stage of ``model`` on the config's curated datasets (LATEST, or ``versions[name]``) as one
    MLflow run: params, dataset inputs, loss and diagnostics curves, the lineage manifest and log as artifacts.

    ``init`` continues a lineage (e.g. the shipped one); a rerun into the same ``out_dir`` resumes an
    interrupted run (`chemgen.generation.training`). The trained model is ``<out_dir>/lineage``.
    """
    from chemgen.generation.training import finish_run, train_stages

    config = load_config(config, model) if isinstance(config, (str, Path)) else config
    train_config = _first_train_config(config)
    out_dir = Path(out_dir)
    train_pack, val_pack, manifests = training_packs(train_config, store, versions, model)
    data = [f"{m['name']}@{m['version']}" for m in manifests]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokens = tokens_per_batch or (model_spec(model).gpu_tokens_per_batch if device.startswith("cuda")
                                  else 16 * train_config.batch_size)
    start = time.perf_counter()
    with tracking.run(f"{model}-{config.name}", tags={"model": model, **(tags or {})},
                      nested=tracking.active_run_id() is not None) as run:
        tracking.log_params({**config.flat_params(), "model": model, "train_systems": len(train_pack),
                             "threads": torch.get_num_threads(), "init": str(init or ""),
                             "tokens_per_batch": tokens, **{f"minutes.{k}": v for k, v in (minutes or {}).items()},
                             **{f"steps.{k}": v for k, v in (steps or {}).items()}})
        for manifest in manifests:
            tracking.log_dataset_manifest(manifest)
        _, report = train_stages(model, config, train_pack, val_pack, out_dir, init=init, minutes=minutes, steps=steps,
                                 tokens_per_batch=tokens, device=device, data_versions=data,
                                 log=lambda line: None if progress else print(line),
                                 progress_bar=progress, logger=tracking.lightning_logger())
        seconds = time.perf_counter() - start
        manifest = finish_run(out_dir / "lineage", report, seconds / 60)
        final = {}
        for key, value in report.items():
            if isinstance(value, dict):  # stage results and diagnostics: vae/systems_per_second, vae_diagnostics/...
                final.update({f"{key}/{k}": float(v) for k, v in value.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracking.log_metrics({**final, "train_seconds": seconds})
        import mlflow

        for name in ("manifest.json", "lineage.jsonl"):
            mlflow.log_artifact(str(out_dir / "lineage" / name), artifact_path="lineage")
        return TrainingOutcome(out_dir / "lineage", run.info.run_id, dict(manifest["steps"]), seconds, report)


def _first_train_config(config: Any) -> TrainConfig:
    """The training data settings of a model's config (ADiT: the VAE stage's, which the DiT stage shares)."""
    for value in vars(config).values():
        if isinstance(value, TrainConfig):
            return value
    raise ConfigError(f"config {config.name!r} has no training section")


# ---------------------------------------------------------------------------- registry
def register(model_dir: str | os.PathLike, name: str | None = None, metrics: dict[str, float] | None = None,
             alias: str = tracking.CHALLENGER, tags: dict[str, str] | None = None) -> Any:
    """Log a trained model (a lineage folder) as a pyfunc and register a version with ``alias``
    (default name: the model's, e.g. ``chemgen-adit``).

    If anything fails after the version exists, the version is deleted again: the registry
    never keeps a half-registered model.
    """
    import importlib

    import mlflow

    model_dir = Path(model_dir)
    model = load_model(model_dir)  # fail before anything is registered if the folder is incomplete
    spec = model_spec(lineage.read_manifest(model_dir)["model"])
    name = name or spec.registered_name
    # the model's pyfunc module: logged as code, with the signature of the requests it answers
    pyfunc_module = importlib.import_module(spec.pyfunc)
    signature = pyfunc_module.signature()
    import chemgen

    del model
    with tracking.run(f"register-{name}", nested=tracking.active_run_id() is not None, tags=tags):
        if metrics:
            tracking.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(pyfunc_module.__file__), artifacts={"model_dir": str(model_dir)},
            signature=signature, pip_requirements=[f"chemgen=={chemgen.__version__}", "torch==2.13.0"],
            metadata={"model": spec.name, **spec.metadata})
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


def load_model(model: str | os.PathLike, device: str = "cpu") -> Any:
    """A trained generator (EMA weights, eval mode) from a lineage folder or a registry URI such as
    ``models:/chemgen-adit@champion``."""
    if str(model).startswith("models:/") or str(model).startswith("runs:/"):
        import mlflow

        tracking.configure()
        pyfunc = mlflow.pyfunc.load_model(str(model))
        return pyfunc.unwrap_python_model().model.to(device)
    return load_lineage_model(model, device)


def registered_lineage(uri: str) -> Path | None:
    """A local copy of a registered version's checkpoint (its lineage folder, the pyfunc's ``model_dir``
    artifact), downloaded without building the model; None for versions registered before lineages."""
    import mlflow

    tracking.configure()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return next((m.parent for m in sorted(local.glob("artifacts/*/manifest.json")) if lineage.is_lineage(m.parent)),
                None)


def load_lineage_model(folder: str | os.PathLike, device: str = "cpu") -> Any:
    """The generator a lineage folder holds: its manifest names the model and its config."""
    from chemgen.config import from_dict

    folder = Path(folder)
    if not lineage.is_lineage(folder):
        raise FileNotFoundError(f"{folder}: not a trained model (a lineage folder with manifest.json and weight "
                                "shards, as `chemgen train MODEL` writes)")
    checkpoint = lineage.load(folder)
    name = checkpoint.manifest.get("model", "adit")
    config = from_dict(config_type(name), checkpoint.manifest["config"], where=str(folder / "manifest.json"))
    model = generator_class(name)(config)
    model.load_checkpoint_groups(checkpoint.groups)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- sampling
def generate_records(model: Any, dataset: str, n: int, seed: int = 0, batch_size: int = 500,
                     **sampling: Any) -> tuple[list[Any], float]:
    """n records (or `Failure`s) of a dataset in batches seeded seed, seed + 1, ..., and the seconds it took."""
    from chemgen.generation.records import to_systems

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
    from chemgen.generation.pyfunc import structure_rows
    from chemgen.generation.records import Failure, split_failures
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
