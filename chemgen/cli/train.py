"""``chemgen train``: train any model through its lineage (one command per model), packs for a machine with only
torch, and the import, scoring and promotion of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chemgen.cli.common import CommandLineError, Config, DataVersions, StoreDir, at_least, checked, console, dataset_versions, folder_callback

train_app = typer.Typer(help="Train generative models (tracked in MLflow, resumable).", no_args_is_help=True)


def _train_model(model: str):
    def train_model(
        config: Config = None,
        minutes: Annotated[Optional[str], typer.Option(
            help="Training minutes per stage, e.g. vae=10,dit=30 (a stage not named is not trained; default: the "
                 "config's max_minutes and max_steps).")] = None,
        steps: Annotated[Optional[str], typer.Option(
            help="Optimiser steps per stage, e.g. vae=300,dit=300 (with --minutes: whichever ends first).")] = None,
        init: Annotated[Optional[Path], typer.Option(
            callback=folder_callback, help="Lineage to continue (default: the config's shipped lineage, models/weights/<model>-<config>, "
                 "if there is one).")] = None,
        fresh: Annotated[bool, typer.Option(help="Start from random weights instead of a lineage.")] = False,
        out: Annotated[Optional[Path], typer.Option(
            callback=folder_callback, help="Run folder (default: .chemgen/runs/<config>-<time>); rerun into it to resume.")] = None,
        samples: Annotated[Optional[int], typer.Option(
            help="Samples of each dataset saved in the run folder for scoring (default: 1,000 with --promote, the "
                 "shipped lineage's context; else none).")] = None,
        promote: Annotated[bool, typer.Option(
            help="Score the run and promote it into the lineage (--into) if the gate prefers it.")] = False,
        into: Annotated[Optional[Path], typer.Option(callback=folder_callback,
                                                     help="Lineage to promote into (default: --init's).")] = None,
        register: Annotated[Optional[str], typer.Option(
            help="Register the trained model in MLflow under this name (alias challenger).")] = None,
        tokens_per_batch: Annotated[Optional[int], typer.Option(
            help="Padded atoms per step (default: the config's cuda_tokens_per_batch on a GPU, tokens_per_batch on "
                 "a CPU).")] = None,
        sampling_steps: Annotated[Optional[int], typer.Option(
            help="Sampling steps of the scored samples (default: the config's; recorded in the evaluation "
                 "context, so use the shipped lineage's to be compared with it).")] = None,
        store: StoreDir = None,
        data: DataVersions = None,
    ) -> None:
        import time as _time

        from chemgen.lineage import shipped_lineage
        from chemgen.models.loading import load_lineage_model
        from chemgen.models.specs import generator_class, load_config, model_spec
        from chemgen.paths import chemgen_home
        from chemgen.registry.register import register as register_model
        from chemgen.samples import save_samples
        from chemgen.training import tracked
        from chemgen.training.continuation import lineage_to_continue
        from chemgen.training.distributed import world as launched_world
        from chemgen.training.stages import stage_values

        spec = model_spec(model)
        cfg = load_config(config or spec.shipped_config, model)
        stages = tuple(generator_class(model).stage_names)
        minute_budget = checked(stage_values, minutes, stages, "minutes", float)
        step_budget = checked(stage_values, steps, stages, "steps", int)
        if not minute_budget and not step_budget and not any(
                cfg.stage_config(s).max_minutes or cfg.stage_config(s).max_steps for s in stages):
            raise CommandLineError(f"give --minutes or --steps for at least one of the stages {', '.join(stages)} "
                                   f"(config {cfg.name} sets no max_minutes or max_steps)")
        at_least("--samples", samples, 1 if promote else 0)  # the gate compares sample scores
        if not spec.sample_datasets and (promote or samples):
            raise CommandLineError(f"{model} samples no dataset unconditionally, so its runs have nothing to score: "
                                   "--samples and --promote do not apply")
        at_least("--tokens-per-batch", tokens_per_batch, 1)
        at_least("--sampling-steps", sampling_steps, 1)
        versions = dataset_versions(data)
        start = lineage_to_continue(model, cfg.name, init=init, fresh=fresh)
        samples = samples if samples is not None else (1000 if promote else 0)
        world = launched_world()
        if world.distributed and out is None:   # each rank would name its own folder from its own clock
            raise CommandLineError(f"a run on {world.size} processes ({world.launcher}) needs --out: a folder every "
                                   "rank sees")
        out = out or chemgen_home() / "runs" / f"{cfg.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
        outcome = tracked.train(model, cfg, out, init=start, minutes=minute_budget, steps=step_budget, store=store,
                                versions=versions, tokens_per_batch=tokens_per_batch)
        if not world.is_zero:   # rank 0 reports, samples, promotes and registers
            return
        console.print(f"[bold green]{model} trained[/] in {outcome.seconds / 60:.1f} min: steps {outcome.steps} "
                      f"(from {start or 'random weights'}); model {outcome.model_dir}; MLflow run {outcome.run_id}")
        if samples > 0:
            trained = load_lineage_model(outcome.model_dir)
            for dataset in spec.sample_datasets:
                save_samples(trained, dataset, samples, out / f"samples_{dataset}.pt", 500, seed=1000,
                             num_steps=sampling_steps)
        if promote:
            train_import(out, into=into or start or shipped_lineage(cfg.name), store=store)
        if register:
            version = register_model(outcome.model_dir, register)
            console.print(f"registered {register} version {version.version} (alias challenger)")

    train_model.__doc__ = (f"Train {model} through its lineage: every stage on the config's curated datasets "
                           "(MLflow-tracked, resumable), then sample, and optionally score, gate and promote.")
    return train_model


def _register_model_commands() -> None:
    """``chemgen train MODEL`` for every model of `chemgen.models.specs.MODELS`."""
    from chemgen.models.specs import MODELS

    for name in MODELS:
        train_app.command(name)(_train_model(name))


@train_app.command("packs")
def train_packs(out: Annotated[Path, typer.Option(callback=folder_callback, help="Folder for train.pt, val.pt and data.txt.")],
                model: Annotated[str, typer.Option(help="Model whose config names the datasets.")] = "adit",
                config: Config = None, store: StoreDir = None, data: DataVersions = None) -> None:
    """Tensor packs of a config's datasets, for `python -m chemgen.training.standalone` on a GPU machine."""
    from chemgen.models.specs import load_config
    from chemgen.training.packs import write_packs
    from chemgen.models.specs import model_spec

    cfg = load_config(config or checked(model_spec, model).shipped_config, model)
    refs = write_packs(cfg.data, out, store, dataset_versions(data), model=model)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(out.glob("*.pt")))
    console.print(f"packs of {', '.join(refs)} in {out}: {sizes}")


@train_app.command("import")
def train_import(run: Annotated[Path, typer.Argument(help="Run folder (`python -m chemgen.training.standalone`'s or `chemgen train MODEL`'s).")],
                 into: Annotated[Optional[Path], typer.Option(
                     callback=folder_callback, help="Shipped lineage to promote into (default: models/weights/<config>).")] = None,
                 store: StoreDir = None,
                 samples: Annotated[Optional[int], typer.Option(
                     help="Score the first N samples of each dataset only (the shipped checkpoint's count: "
                          "the gate compares equal contexts only).")] = None) -> None:
    """Score a training run's samples and diagnostics here, and promote its checkpoint if the gate prefers it."""
    from chemgen.training.promotion import log_run, promote_run, score_run
    from chemgen.scoring.report import print_metrics

    at_least("--samples", samples, 1)
    scored = score_run(run, store, samples)
    decision, target = promote_run(run, scored, into)
    run_id = log_run(run, scored, decision, target)
    print_metrics(scored["scores"], console, title=f"scores of {run}")
    verdict = "[bold green]promoted[/]" if decision.promote else "[yellow]kept the shipped checkpoint[/]"
    console.print(f"{verdict} ({target}): {decision.reason}; MLflow run {run_id}")


@train_app.command("rescore")
def train_rescore(run: Annotated[Path, typer.Argument(help="The run folder that produced the shipped checkpoint.")],
                  into: Annotated[Optional[Path], typer.Option(
                      callback=folder_callback, help="Shipped lineage (default: models/weights/<config>).")] = None,
                  store: StoreDir = None,
                  resample: Annotated[Optional[int], typer.Option(
                      help="Draw this many new samples of the shipped checkpoint (seed 1000) into RUN and score "
                           "those: moves the lineage to a new evaluation context.")] = None,
                  sampling_steps: Annotated[Optional[int], typer.Option(
                      help="With --resample: sampling steps (default: the config's).")] = None) -> None:
    """Re-score the shipped checkpoint's samples under today's scoring (after a scoring change), so the
    gate can compare new runs with it; only the manifest's scores change. With --resample, the checkpoint
    is evaluated on new samples instead (e.g. more of them, or fewer sampling steps)."""
    from chemgen.training.promotion import rescore_shipped
    from chemgen.scoring.report import print_metrics

    at_least("--resample", resample, 1)
    at_least("--sampling-steps", sampling_steps, 1)
    if sampling_steps is not None and resample is None:
        raise CommandLineError("--sampling-steps draws new samples: give --resample N too")
    scored = rescore_shipped(run, store, into, resample=resample, num_steps=sampling_steps)
    print_metrics(scored["scores"], console, title=f"shipped checkpoint re-scored from {run}")


_register_model_commands()
