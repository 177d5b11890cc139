"""``chemgen score``: score structure files with the reference papers' protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chemgen.data.store import StoreError
from chemgen.cli.common import CommandLineError, StoreDir, checked, console, err_console, folder_callback


def score(
    path: Annotated[Path, typer.Argument(help="SDF, XYZ/extXYZ, a CIF file or folder, or a CSV (cif or xyz column).")],
    kind: Annotated[str, typer.Option(help="molecule | crystal")],
    protocol: Annotated[Optional[list[str]], typer.Option(
        help="Molecules, repeatable: edm (EDM's released code), rdkit (rdDetermineBonds, RDKit's valence rules), "
             "edm_mmff (MMFF94-relaxed, then EDM; ~10 ms a molecule). Default: edm and rdkit.")] = None,
    preset: Annotated[str, typer.Option(
        help="Crystals: uniqueness/novelty rules, adit (ADiT's: 0.3/0.5/10, per unique group) or pymatgen "
             "(pymatgen's default tolerances, as FlowMM; per sample).")] = "adit",
    validity: Annotated[str, typer.Option(
        help="Crystals: cdvae (smact 2.2.1), or adit (smact 2.6, the (50, 130) degree lattice-angle rule).")] = "cdvae",
    reference: Annotated[Optional[Path], typer.Option(
        help="Novelty reference structures (default: MP-20's training split; molecules: QM9's).")] = None,
    stability: Annotated[bool, typer.Option(help="Crystals: CHGNet relaxation and E_hull (slow: ~1 s per structure).")] = False,
    out: Annotated[Path, typer.Option(callback=folder_callback,
                                      help="Folder for scores.json, per_sample.csv and plots.")] = Path("scores"),
    store: StoreDir = None,
) -> None:
    """Score generated structures with the reference protocols; prints a table, writes JSON, CSV and PNGs."""
    from chemgen.scoring import report

    # Every option is checked before any file is read or reference built.
    if kind not in report.KINDS:
        raise CommandLineError(f"--kind must be one of {', '.join(report.KINDS)}, got {kind!r}")
    if kind == "molecule":
        from chemgen.scoring.molecules import DEFAULT_PROTOCOLS, check_protocols, reference_smiles

        protocols = tuple(protocol or DEFAULT_PROTOCOLS)
        checked(check_protocols, protocols)
    else:
        from chemgen.scoring.crystal_novelty import MATCHER_PRESETS

        if preset not in MATCHER_PRESETS:
            raise CommandLineError(f"--preset must be one of {', '.join(sorted(MATCHER_PRESETS))}, got {preset!r}")
        if validity not in ("cdvae", "adit"):
            raise CommandLineError(f"--validity must be cdvae or adit, got {validity!r}")
    systems, reasons = report.read_structures(path, kind)
    if kind == "molecule":
        if reference is not None:
            ref_systems = [s for s in report.read_structures(reference, "molecule")[0] if s is not None]
            references = reference_smiles(ref_systems, protocols)
        else:
            references = optional_reference(lambda: report.qm9_reference_smiles(protocols, store))
        metrics, table, scores = report.score_systems(systems, kind, reasons, protocols=protocols, references=references)
    else:
        if reference is not None:
            references = [s for s in report.read_structures(reference, "crystal")[0] if s is not None]
        else:
            references = optional_reference(report.training_references)
        metrics, table, scores = report.score_systems(systems, kind, reasons, preset=preset, references=references,
                                                      stability=stability, validity=validity)
    paths = report.save_report(metrics, table, scores, kind, out, context={"input": str(path)})
    report.print_metrics(metrics, console, title=f"{kind} scores: {path}")
    unreadable = sum(r is not None for r in reasons)
    if unreadable:
        console.print(f"[yellow]{unreadable} item(s) could not be read and were scored invalid (see per_sample.csv)[/]")
    console.print(f"wrote {paths['json']}, {paths['csv']} and {len(paths) - 2} plot(s)")


def optional_reference(build):
    """Novelty needs a curated reference; without one the other metrics are still computed."""
    try:
        return build()
    except StoreError as err:
        err_console.print(f"[yellow]no novelty reference ({err}); novelty is not reported[/]", soft_wrap=True)
        return None
