"""``chemgen flows``: serve the Prefect deployments, or run crystal screening now."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.table import Table

from chemgen.cli.common import CommandLineError, at_least, console, folder_callback

flows_app = typer.Typer(help="Prefect flows: serve deployments, run screening.", no_args_is_help=True)


@flows_app.command("serve")
def flows_serve(profile: Annotated[str, typer.Option(help="Profile of the nightly retraining.")] = "nightly",
                cron: Annotated[str, typer.Option(help="Cron schedule of the nightly retraining.")] = "0 2 * * *") -> None:
    """Serve every flow from this process: nightly retraining on a schedule, screening and curation on demand."""
    from chemgen.flows.deploy import serve_all

    serve_all(profile, cron)


@flows_app.command("screen")
def flows_screen(
    system: Annotated[Optional[str], typer.Option(
        "--system", help="Chemical system, e.g. Li-Mn-O: every candidate holds exactly these elements (without it, "
                         "ADiT samples freely).")] = None,
    sources: Annotated[Optional[str], typer.Option(
        help="Comma-separated: adit, substitution, random (default: all three with --system, adit without).")] = None,
    n: Annotated[int, typer.Option(help="Candidates, shared among the sources (uploads come on top).")] = 100,
    formula: Annotated[Optional[str], typer.Option(help="A reduced formula of the system, e.g. LiMn2O4.")] = None,
    upload: Annotated[Optional[list[Path]], typer.Option(
        help="Your own structures of the system, CIF or extxyz (repeat for several files).")] = None,
    reference_entries: Annotated[Optional[Path], typer.Option(
        help="CSV of your own formation energies (formula, e_form_per_atom in eV/atom, MP's scale) added to the "
             "hull.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="ADiT's lineage folder or registry URI (default: models:/chemgen-adit@champion, else the shipped "
             "lineage).")] = None,
    max_samples: Annotated[int, typer.Option(help="Most samples ADiT draws to find its share in the system.")] = 256,
    substitution_threshold: Annotated[float, typer.Option(
        help="Least substitution probability of a substitution candidate (pymatgen's default; lower gives more, "
             "less likely ones).")] = 1e-3,
    seed: int = 0,
    relax_steps: Annotated[int, typer.Option(help="FIRE steps per relaxation at most.")] = 200,
    max_relaxed: Annotated[Optional[int], typer.Option(help="Relax at most this many candidates (sources take "
                                                            "turns).")] = None,
    relax_minutes: Annotated[Optional[float], typer.Option(help="Stop relaxing after this many minutes.")] = None,
    workers: Annotated[int, typer.Option(help="Relaxation batches in flight at once.")] = 2,
    out: Annotated[Optional[Path], typer.Option(callback=folder_callback, help="Output folder.")] = None,
    dask: Annotated[bool, typer.Option(help="Fan relaxations out on a local Dask cluster.")] = False,
    dask_address: Annotated[Optional[str], typer.Option(help="Scheduler of an existing Dask cluster.")] = None,
) -> None:
    """Screen crystals of a chemical system from every source: generate, check, relax with CHGNet, de-duplicate,
    rank on the MP-20 hull; the report compares the sources. Writes CIFs, candidates.csv and report.md."""
    from chemgen.flows.screen import crystal_screening, with_dask
    from chemgen.scoring.report import print_metrics

    at_least("--n", n, 1)
    at_least("--relax-steps", relax_steps, 0)
    at_least("--workers", workers, 1)
    at_least("--max-samples", max_samples, 0)
    for path in upload or []:
        if not path.is_file():
            raise CommandLineError(f"--upload {path}: no such file")
    if reference_entries is not None and not reference_entries.is_file():
        raise CommandLineError(f"--reference-entries {reference_entries}: no such file")
    flow_fn = with_dask(address=dask_address) if dask or dask_address else crystal_screening
    result = flow_fn(n=n, model=model, seed=seed, relax_steps=relax_steps, out_dir=str(out) if out else None,
                     chemical_system=system, sources=sources, formula=formula,
                     uploads=[str(p) for p in upload or []] or None,
                     reference_entries=str(reference_entries) if reference_entries else None,
                     max_samples=max_samples, relax_budget_minutes=relax_minutes, max_relaxed=max_relaxed,
                     workers=workers, substitution_threshold=substitution_threshold)
    table = Table(title=f"sources compared ({system or 'unconditional'})", title_justify="left")
    for column in ("source", "candidates", "valid", "novel", "metastable", "S.U.N.", "M.S.U.N.", "s/candidate"):
        table.add_column(column)
    percent = lambda v: "-" if v != v else f"{100 * v:.1f} %"  # noqa: E731 - NaN is the only value != itself
    for name, m in result["sources"].items():
        if name != "pooled":
            table.add_row(name, str(int(m["candidates"])), percent(m["valid"]), percent(m["novel"]),
                          percent(m["metastable"]), percent(m["sun"]), percent(m["msun"]),
                          f"{m['seconds_per_candidate']:.2f}")
    console.print(table)
    pooled = result["sources"]["pooled"]
    console.print(f"pooled: {int(pooled['unique'])} unique, {int(pooled['n_metastable'])} metastable, "
                  f"{int(pooled['n_sun'])} S.U.N., {int(pooled['n_msun'])} M.S.U.N. of {result['n_candidates']}",
                  highlight=False)
    print_metrics({k: v for k, v in result["metrics"].items() if not k.startswith("source/")}, console,
                  title="all candidates")
    console.print(f"report: {result['out_dir']}/report.md")


@flows_app.command("rerun")
def flows_rerun(flow_run: Annotated[str, typer.Argument(help="Id of a flow run of a deployment (crashed, failed).")],
                wait: Annotated[bool, typer.Option(help="Follow the new run until it ends.")] = True) -> None:
    """Run a deployment's flow run again with the same parameters on the team's Prefect server (PREFECT_API_URL):
    how a run whose worker died is completed."""
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
