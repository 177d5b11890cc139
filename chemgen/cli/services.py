"""``chemgen services``: MLflow, Prefect, its workers and the web app as services on this host."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chemgen.cli.common import CommandLineError, console, err_console

services_app = typer.Typer(help="Run chemgen for a team on this host: the MLflow and Prefect servers on PostgreSQL, "
                                "Prefect workers and the web app.", no_args_is_help=True)

DatabaseUrl = Annotated[Optional[str], typer.Option(
    "--database-url", help="PostgreSQL server, postgresql://USER[:PASSWORD]@HOST:PORT/DB (default: "
                           "$CHEMGEN_DATABASE_URL); each service gets a database of its own there.")]


@services_app.command("up")
def services_up(
    database_url: DatabaseUrl = None,
    host: Annotated[str, typer.Option(help="Address every service listens on (default: this machine only).")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server's port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Prefect server's port.")] = 4200,
    web_port: Annotated[int, typer.Option(help="Web app's port.")] = 8765,
    workers: Annotated[int, typer.Option(help="Prefect process workers on the chemgen-process pool.")] = 2,
    concurrency: Annotated[int, typer.Option(
        help="Flow runs the pool runs at once, every user's and flow's together; the rest wait their turn "
             "(0: one per worker).")] = 0,
    artifacts: Annotated[Optional[str], typer.Option(
        help="Where the MLflow server keeps artifacts: a folder or an fsspec/S3 URL (default: "
             "$CHEMGEN_HOME/services/artifacts).")] = None,
    prefix: Annotated[str, typer.Option(help="Databases <prefix>_mlflow and <prefix>_prefect.")] = "chemgen",
    web_auth: Annotated[str, typer.Option(help="The web app's sign-in: token (users of `chemgen users add`), proxy "
                                               "(a trusted reverse proxy's header) or none (one user).")] = "token",
) -> None:
    """Start every service that is not running and wait until each answers (running ones are left as they are)."""
    from chemgen.flows import services
    from chemgen.web.auth import MODES

    if web_auth not in MODES:
        raise CommandLineError(f"--web-auth must be one of {', '.join(MODES)}, got {web_auth!r}")
    settings = services.from_options(database_url, host=host, workers=workers, concurrency=concurrency, artifacts=artifacts or "",
                                     prefix=prefix, web_auth=web_auth,
                                     ports={"mlflow": mlflow_port, "prefect": prefect_port, "web": web_port})
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]listening on {host}: put the services behind authentication and TLS[/]")
    services.up(settings, log=lambda line: console.print(line, highlight=False))
    console.print("all services answer; for this shell:", highlight=False)
    for line in services.env_lines(settings):
        console.print(line, highlight=False, soft_wrap=True)


@services_app.command("down")
def services_down() -> None:
    """Stop the services `up` started (the web app and workers first)."""
    from chemgen.flows import services

    stopped = services.down(log=lambda line: console.print(line, highlight=False))
    if not stopped:
        console.print("no service was running")


@services_app.command("status")
def services_status() -> None:
    """Each service's process and answer; exits 0 only when every one is healthy."""
    from chemgen.flows import services

    settings = services.settings_from_record()
    table = Table(title="chemgen services", title_justify="left")
    for column in ("service", "pid", "state", "checked at", "log"):
        table.add_column(column)
    states = services.status(settings)
    for s in states:
        state = "healthy" if s.healthy else ("not answering" if s.alive else "stopped")
        table.add_row(s.name, str(s.pid or "-"), f"[{'green' if s.healthy else 'red'}]{state}[/]",
                      s.url or "", str(s.log))
    console.print(table)
    if not all(s.healthy for s in states):
        raise typer.Exit(1)


@services_app.command("env")
def services_env() -> None:
    """The export lines that point this shell's chemgen, MLflow and Prefect at the services:
    eval "$(chemgen services env)"."""
    from chemgen.flows import services

    for line in services.env_lines(services.settings_from_record()):
        typer.echo(line)
