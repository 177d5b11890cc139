"""The main job behind ``chemgen run`` / ``make run``: the nightly retraining flow, then a summary.

The ``demo`` profile (default) curates small slices of QM9 and MP-20 once, then runs one branch per model
(ADiT, GFMDiff): register the shipped checkpoint as the first champion, fine-tune a challenger from it,
sample and score both, register and gate under the model's own name, against the embedded defaults
(ephemeral Prefect, MLflow on SQLite under ``.chemgen``). A model with no shipped checkpoint and no champion
is skipped (said in the summary); a failed branch is reported and does not stop the others, and the job
then exits with an error after the summary. ``nightly`` uses every row and trains the champions on for two
CPU hours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chemgen import tracking
from chemgen.errors import UsageError

SUMMARY_METRICS = ("molecule/edm/validity", "molecule/edm/atom_stability", "molecule/edm/molecule_stability",
                   "molecule/edm/uniqueness", "molecule/edm/novelty", "crystal/cdvae/struct_valid",
                   "crystal/cdvae/comp_valid", "crystal/cdvae/valid", "crystal/adit/unique_rate",
                   "crystal/adit/novel_rate", "crystal/adit/undetermined_rate", "elucidation/valid_samples",
                   "elucidation/top1_accuracy", "elucidation/top10_accuracy", "elucidation/mean_tanimoto_top1")


def run_main(profile: str = "demo", data_dir: Path | None = None, console: Console | None = None,
             model_names: dict[str, str] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Run the flow and print its summary; raises `chemgen.flows.retrain.BranchFailed` (after the summary) when a
    model's branch failed.

    The models' branches run side by side in ``workers`` processes (default: one per branch, at most the machine's
    cores; 1 runs them one after the other in this process), each with the torch threads its share of the cores
    allows. The terminal shows each step of each branch as it happens; what the libraries print goes to the log.
    """
    import os
    import time

    from chemgen.flows.events import Event, follow
    from chemgen.flows.quiet import output_to_log
    from chemgen.flows.retrain import PROFILES, BranchFailed, nightly_retrain
    from chemgen.paths import chemgen_home

    console = console or Console()
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    plans = PROFILES[profile].plans
    cores = os.cpu_count() or 1
    workers = min(len(plans), workers or max(cores, len(plans)))
    stamp = time.strftime('%Y%m%d-%H%M%S')
    log = chemgen_home() / "logs" / f"run-{stamp}.log"
    events = chemgen_home() / "logs" / f"run-{stamp}.events.jsonl"
    console.print(f"nightly retrain ({profile}): curate once -> for each model ({', '.join(plans)}"
                  f"{', side by side' if workers > 1 else ''}): champion (the shipped model first) -> train a "
                  f"challenger from it -> sample and score both -> register -> gate; libraries' output goes to {log}",
                  highlight=False)
    flow = nightly_retrain
    if workers > 1:
        from prefect.task_runners import ProcessPoolTaskRunner

        threads = max(1, cores // workers)
        flow = nightly_retrain.with_options(task_runner=ProcessPoolTaskRunner(
            max_workers=workers, initializer=_worker_threads, initargs=(threads,)))
    failure: BranchFailed | None = None
    start = time.perf_counter()
    with output_to_log(log) as terminal:
        screen = Console(file=terminal, force_terminal=console.is_terminal, width=console.width, highlight=False)

        def show(event: Event) -> None:
            screen.print(f"[dim]{time.perf_counter() - start:6.0f} s[/]  [bold]{event.source}[/]: {event.message}")

        screen.print(f"[dim]{0:6.0f} s[/]  starting Prefect and MLflow (embedded)")
        with follow(events, show):
            try:
                result = flow(profile=profile, model_names=model_names, data_dir=str(data_dir) if data_dir else None,
                              parallel=workers > 1, events=str(events))
            except BranchFailed as error:   # the other branches finished: summarise them all, then fail
                failure, result = error, error.result
    print_summary(result, profile, console)
    if failure is not None:
        raise failure
    return result


def _worker_threads(threads: int) -> None:
    """A branch worker's torch threads: its share of the machine's cores (set once, when the process starts)."""
    import torch

    torch.set_num_threads(threads)


def print_summary(result: dict[str, Any], profile: str, console: Console) -> None:
    table = Table(title=f"nightly retrain ({profile}) in {result['seconds']:.0f} s", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for d in result["datasets"]:
        state = "reused" if d["reused"] else "curated"
        table.add_row(f"dataset {d['name']}", f"{d['version']} ({state}; sha256 {d['content_hash'][:12]}; "
                                              + " / ".join(f"{k} {v:,}" for k, v in d["splits"].items()) + ")")
    for model, branch in result["branches"].items():
        table.add_section()
        table.add_row(model, f"{branch['status']} as {branch['name']} (config {branch['config']}; "
                             f"{branch['seconds'] / 60:.1f} min)")
        if branch["status"] == "skipped":
            table.add_row("skipped", branch["reason"])
            continue
        if branch["status"] == "failed":
            table.add_row("FAILED", f"in task {branch['task']}: {branch['error']}", style="red")
        metrics, champion = branch.get("metrics") or {}, branch.get("champion_metrics") or {}
        for key in SUMMARY_METRICS:
            if key in metrics:
                ours = f"{metrics[key]:.4f}"
                table.add_row(key, f"{ours}   (champion {champion[key]:.4f})" if key in champion else ours)
        trained = branch.get("train") or {}
        if trained.get("steps"):
            table.add_row("challenger", f"{trained['model_dir']} ({', '.join(f'{k} {v:,} steps' for k, v in trained['steps'].items())}"
                                        f" over its lineage; {trained['seconds'] / 60:.1f} min here)")
        reg = branch.get("registration")
        if reg:
            table.add_row("registered", f"{reg['name']} version {reg['version']} (alias challenger)")
            table.add_row("champion", "this version (promoted)" if reg["promoted"] else "unchanged")
            table.add_row("gate", reg["reason"])
        shipped = shipped_summary(model)
        if shipped:
            table.add_row("shipped checkpoint", shipped)
    table.add_section()
    table.add_row("MLflow run", result["mlflow_run_id"])
    console.print(table)
    console.print(f"open the MLflow UI: mlflow ui --backend-store-uri {tracking.tracking_uri()} --port 5000")
    for branch in result["branches"].values():
        if branch.get("registration"):
            console.print(f'load the {branch["model"]} champion: '
                          f'mlflow.pyfunc.load_model("models:/{branch["name"]}@champion")')
    if result.get("failed"):
        console.print(f"[red]{len(result['failed'])} branch(es) failed[/red]: "
                      + "; ".join(f"{f['model']} in {f['task']}" for f in result["failed"]))


def shipped_summary(model: str = "adit") -> str | None:
    """One line on the checkpoint of ``model`` that ships with chemgen (`chemgen sample MODEL` without
    --model): where it is, how far it has trained, and what its samples scored when it was promoted; None if
    this checkout has none."""
    from chemgen import lineage
    from chemgen.models.specs import model_spec
    from chemgen.lineage import shipped_lineage

    folder = shipped_lineage(model_spec(model).shipped_config)
    if not lineage.is_lineage(folder):
        return None
    manifest = lineage.read_manifest(folder)
    scores, evaluation = manifest.get("scores", {}), manifest.get("evaluation", {})
    steps = ", ".join(f"{k} {v:,} steps" for k, v in manifest.get("steps", {}).items())
    quality = ", ".join(f"{label} {100 * scores[key]:.1f} %" for key, label in (
        ("molecule/edm/molecule_stability", "QM9 EDM molecule stability"), ("molecule/edm/validity", "EDM validity"),
        ("crystal/cdvae/valid", "MP-20 validity"), ("elucidation/valid_samples", "valid candidates"),
        ("elucidation/top1_accuracy", "elucidation top-1")) if key in scores)
    return (f"{folder.relative_to(folder.parents[2])} ({steps}): {quality or 'not scored'}"
            + (f" on {evaluation['samples']:,} {'test queries' if 'benchmark_queries' in evaluation.get('context', {}) else 'samples of each kind'}"
               if evaluation.get("samples") else ""))
