"""``chemgen run``: the main job, the nightly retraining flow with a summary; on a team's Prefect server, a run of
its deployment that a worker runs."""

from __future__ import annotations

from typing import Annotated

import typer

from chemgen.cli.common import CommandLineError, DataDir, console

NIGHTLY_DEPLOYMENT = "nightly-retrain/nightly"


def run_main_job(
    data_dir: DataDir = None,
    profile: Annotated[str, typer.Option(help="demo: small slices, minutes on 2 cores; nightly: every row, cpu config.")] = "demo",
    here: Annotated[bool, typer.Option(
        "--here", help="Run the flow in this process even where PREFECT_API_URL names a team's server.")] = False,
    wait: Annotated[bool, typer.Option(
        help="On a team's server: follow the submitted run until it ends (--no-wait returns its id at once).")] = True,
) -> None:
    """The main job: the nightly retraining flow (curate, train, sample, score, register, gate) and a summary.

    With PREFECT_API_URL set (`eval "$(chemgen services env)"`), it is submitted as a run of the nightly-retrain
    deployment, run by the pool's workers when the pool's concurrency limit allows, and followed here."""
    from chemgen.flows.retrain import PROFILES
    from chemgen.flows.submit import server_url

    if profile not in PROFILES:
        raise CommandLineError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if server_url() and not here:
        _submit(profile, data_dir, wait)
        return
    from chemgen.flows.main_job import run_main

    run_main(profile=profile, data_dir=data_dir, console=console)


def _submit(profile: str, data_dir, wait: bool) -> None:
    from chemgen.flows.submit import RunFailed, follow, server_url, submit

    parameters = {"profile": profile, **({"data_dir": str(data_dir.resolve())} if data_dir else {})}
    run = submit(NIGHTLY_DEPLOYMENT, parameters, tags=["chemgen-cli"])
    console.print(f"submitted {NIGHTLY_DEPLOYMENT} ({profile}) to {server_url()}: flow run {run.name} ({run.id})",
                  highlight=False)
    if not wait:
        console.print(f"follow it with `prefect flow-run inspect {run.id}`; cancel it with "
                      f"`prefect flow-run cancel {run.id}`", highlight=False)
        return
    try:
        follow(run.id, log=lambda line: console.print(line, highlight=False))
    except RunFailed as error:
        raise CommandLineError(f"{error}; its log: `prefect flow-run logs {run.id}`") from None
    except KeyboardInterrupt:
        console.print(f"stopped following; the run goes on (`prefect flow-run cancel {run.id}` stops it)")
        raise typer.Exit(130) from None
    console.print("[bold green]completed[/]: the scores, registered versions and gate decisions are in MLflow "
                  "(`chemgen registry list`)")
