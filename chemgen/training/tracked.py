"""Training any model as one MLflow run on a machine with the full stack: curated data in, a lineage out.

`train` is what ``chemgen train MODEL`` and the nightly flow's train task call, for any model of
`chemgen.models.specs.MODELS`: the packs of the config's curated datasets (`chemgen.training.packs`), every
stage through `chemgen.training.stages.train_stages`, and MLflow around it (the settings the run used as params,
the dataset versions as inputs, loss and diagnostics curves, the lineage's manifest and log as artifacts).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chemgen import tracking
from chemgen.models.specs import generator_class, load_config
from chemgen.training.packs import training_packs


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

    ``minutes`` and ``steps`` (per stage) and ``tokens_per_batch`` replace the config's own budgets and batch
    (`chemgen.training.stages.run_config`); the run's params are the config it trained with.

    ``init`` continues a lineage (e.g. the shipped one); a rerun into the same ``out_dir`` resumes an
    interrupted run (`chemgen.training.stages`). The trained model is ``<out_dir>/lineage``.

    Under a launcher (``torchrun``, ``srun``) every rank calls this; rank 0 alone opens the MLflow run and writes
    the lineage, and the other ranks return an outcome with no run id.
    """
    from chemgen.training.distributed import world as launched_world
    from chemgen.training.stages import finish_run, run_config, train_stages

    config = load_config(config, model) if isinstance(config, (str, Path)) else config
    out_dir = Path(out_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stages = tuple(generator_class(model).stage_names)
    # the caller's budgets and batch go into the config: what MLflow records is what the run used
    config = run_config(config, stages, minutes=minutes, steps=steps, tokens_per_batch=tokens_per_batch,
                        device_type=torch.device(device).type)
    train_pack, val_pack, manifests = training_packs(config.data, store, versions, model)
    data = [f"{m['name']}@{m['version']}" for m in manifests]
    start = time.perf_counter()
    world = launched_world()
    if not world.is_zero:   # a rank of a multi-process run trains its shard; rank 0 tracks and writes the lineage
        _, report = train_stages(model, config, train_pack, val_pack, out_dir, init=init, device=device,
                                 data_versions=data, log=lambda line: None, world=world)
        return TrainingOutcome(out_dir / "lineage", "", {}, time.perf_counter() - start, report)
    with tracking.run(f"{model}-{config.name}", tags={"model": model, **(tags or {})},
                      nested=tracking.active_run_id() is not None) as run:
        tracking.log_params({**config.flat_params(), "model": model, "device": device,
                             "train_systems": len(train_pack), "threads": torch.get_num_threads(),
                             "init": str(init or "")})
        for manifest in manifests:
            tracking.log_dataset_manifest(manifest)
        _, report = train_stages(model, config, train_pack, val_pack, out_dir, init=init, device=device,
                                 data_versions=data,
                                 log=lambda line: None if progress else print(line),
                                 progress_bar=progress, logger=tracking.lightning_logger(), world=world)
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


