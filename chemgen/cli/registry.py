"""``chemgen registry``: the MLflow model registry's versions and aliases, promotion and rollback."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chemgen.cli.common import console

registry_app = typer.Typer(help="The MLflow model registry: versions, aliases, promotion.", no_args_is_help=True)


@registry_app.command("list")
def registry_list() -> None:
    """Registered models with their versions and aliases."""
    from datetime import datetime

    from chemgen import gates, tracking

    client = tracking.client()
    table = Table(title=f"registry at {tracking.tracking_uri()}", title_justify="left")
    for column in ("model", "version", "aliases", "created", "gate decision"):
        table.add_column(column)
    for model in client.search_registered_models():
        for found in sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)):
            v = client.get_model_version(model.name, found.version)  # search results omit aliases
            created = datetime.fromtimestamp(v.creation_timestamp / 1000).isoformat(timespec="seconds")
            table.add_row(model.name, str(v.version), ", ".join(v.aliases), created, v.tags.get(gates.DECISION_TAG, ""))
    console.print(table)


@registry_app.command("show")
def registry_show(name: str, version: Annotated[Optional[str], typer.Option(help="Version (default: champion).")] = None) -> None:
    """One version's aliases, gate metrics, run and source."""
    from chemgen import gates, tracking

    if version:
        v = tracking.model_version(name, version)
    else:
        tracking.require_model(name)
        v = tracking.version_by_alias(name, tracking.CHAMPION)
        if v is None:
            raise tracking.RegistryError(f"{name} has no champion yet; name a version with --version")
    console.print(f"{name} version {v.version}  aliases: {', '.join(v.aliases) or '-'}  run: {v.run_id}")
    for key, value in sorted(gates.recorded(name, v.version).items()):
        console.print(f"  gate {key} = {value:.4f}")
    console.print(f"  {v.tags.get(gates.DECISION_TAG, '')}")


@registry_app.command("promote")
def registry_promote(name: str, version: str) -> None:
    """Make a version the champion by hand (bypasses the gate)."""
    from chemgen import gates, tracking

    tracking.promote(name, version)
    console.print(f"{name} version {version} is now champion")
    if not gates.recorded(name, version):
        console.print("[yellow]it has no gate metrics: the gate holds every later challenger not scored beside it in "
                      "the same run (the nightly flow scores both)[/]")


@registry_app.command("rollback")
def registry_rollback(name: str) -> None:
    """Move champion back to the previous champion recorded in the version tags."""
    from chemgen import tracking

    previous = tracking.rollback(name)
    console.print(f"{name}: champion is version {previous} again")
