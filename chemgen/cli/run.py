"""``chemgen run``: the main job, the nightly retraining flow with a summary."""

from __future__ import annotations

from typing import Annotated

import typer

from chemgen.cli.common import CommandLineError, DataDir, console


def run_main_job(
    data_dir: DataDir = None,
    profile: Annotated[str, typer.Option(help="demo: small slices, minutes on 2 cores; nightly: every row, cpu config.")] = "demo",
) -> None:
    """The main job: the nightly retraining flow (curate, train, sample, score, register, gate) and a summary."""
    from chemgen.flows.main_job import run_main
    from chemgen.flows.retrain import PROFILES

    if profile not in PROFILES:
        raise CommandLineError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    run_main(profile=profile, data_dir=data_dir, console=console)
