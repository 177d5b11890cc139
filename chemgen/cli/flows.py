"""``chemgen flows``: serve the Prefect deployments, or run crystal screening now."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chemgen.cli.common import at_least, console, folder_callback

flows_app = typer.Typer(help="Prefect flows: serve deployments, run screening.", no_args_is_help=True)


@flows_app.command("serve")
def flows_serve(profile: Annotated[str, typer.Option(help="Profile of the nightly retraining.")] = "nightly",
                cron: Annotated[str, typer.Option(help="Cron schedule of the nightly retraining.")] = "0 2 * * *") -> None:
    """Serve every flow from this process: nightly retraining on a schedule, screening and curation on demand."""
    from chemgen.flows.deploy import serve_all

    serve_all(profile, cron)


@flows_app.command("screen")
def flows_screen(n: int = 100, model: str = "models:/chemgen-adit@champion", seed: int = 0,
                 relax_steps: int = 200,
                 out: Annotated[Optional[Path], typer.Option(callback=folder_callback, help="Output folder.")] = None,
                 dask: Annotated[bool, typer.Option(help="Fan relaxations out on a local Dask cluster.")] = False,
                 dask_address: Annotated[Optional[str], typer.Option(help="Scheduler of an existing Dask cluster.")] = None) -> None:
    """Screen generated crystals: validity, S.U.N. with CHGNet relaxation and the MP-20 hull; writes CIFs, CSV, report."""
    from chemgen.flows.screen import crystal_screening, with_dask

    from chemgen.scoring.report import print_metrics

    at_least("--n", n, 1)
    at_least("--relax-steps", relax_steps, 0)
    flow_fn = with_dask(address=dask_address) if dask or dask_address else crystal_screening
    result = flow_fn(n=n, model=model, seed=seed, relax_steps=relax_steps, out_dir=str(out) if out else None)

    print_metrics(result["metrics"], console, title=f"screening of {n} crystals")
    console.print(f"report: {result['out_dir']}/report.md")


@flows_app.command("rerun")
def flows_rerun(flow_run: Annotated[str, typer.Argument(help="Id of a flow run of a deployment (crashed, failed).")],
                wait: Annotated[bool, typer.Option(help="Follow the new run until it ends.")] = True) -> None:
    """Run a deployment's flow run again with the same parameters on the team's Prefect server (PREFECT_API_URL):
    how a run whose worker died is completed."""
    from chemgen.cli.common import CommandLineError
    from chemgen.flows.submit import RunFailed, follow, rerun, server_url

    if not server_url():
        raise CommandLineError('no Prefect server: set PREFECT_API_URL (eval "$(chemgen services env)")')
    run = rerun(flow_run, tags=["chemgen-cli"])
    console.print(f"submitted {run.deployment} again: flow run {run.name} ({run.id})", highlight=False)
    if wait:
        try:
            follow(run.id, log=lambda line: console.print(line, highlight=False))
        except RunFailed as error:
            raise CommandLineError(str(error)) from None
