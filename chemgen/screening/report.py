"""A screening's files: the ranked candidates table, each valid candidate's CIF, the metastable ones together, the
E_hull distribution of every source on one plot, and the Markdown report that compares the sources."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from chemgen.screening.candidates import SourceRun

COLOURS = {"adit": "tab:blue", "substitution": "tab:orange", "random": "tab:green", "upload": "tab:purple"}


def write_cifs(structures: dict[int, Any], out: Path) -> dict[int, str]:
    """Each valid candidate's structure (relaxed where it was) as ``cifs/candidate-<index>.cif``; relative paths."""
    from chemgen import io as structure_io

    paths = {}
    for index, system in structures.items():
        relative = f"cifs/candidate-{index}.cif"
        structure_io.write(out / relative, [system.replace(material_id=f"candidate-{index}")])
        paths[index] = relative
    return paths


def plot_e_hull(table: Any, out: Path) -> str:
    """E_hull per source, overlaid (step histograms, clipped at 1 eV/atom); the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from chemgen.io import atomic_write

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(-0.2, 1.0, 37)
    for source in table.source.unique():
        values = table[table.source == source].e_above_hull.astype(float)
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(values.clip(-0.2, 1.0), bins=bins, histtype="step", lw=1.6, label=f"{source} ({len(values)})",
                    color=COLOURS.get(source))
    ax.axvline(0.0, color="k", lw=0.8)
    ax.axvline(0.1, color="tab:red", lw=0.8, ls="--", label="metastable (0.1 eV/atom)")
    ax.set_xlabel("E above hull after relaxation (eV/atom, clipped at 1)")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(out / "e_above_hull.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return "e_above_hull.png"


def _pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def markdown(table: Any, metrics: dict[str, dict[str, float]], runs: list[SourceRun], system: str,
             plot: str, settings: dict[str, Any]) -> str:
    lines = [f"# Crystal screening: {system}", "",
             f"{len(table)} candidates from {', '.join(r.source for r in runs)}; "
             f"relaxed with CHGNet (at most {settings.get('relax_steps')} FIRE steps, fmax "
             f"{settings.get('fmax')} eV/A); E_hull on the MP-20 hull"
             + (f" with {settings['reference_entries']} reference entries of the team" if settings.get("reference_entries")
                else "") + "; novelty against MP-20's training structures (ADiT's StructureMatcher tolerances).",
             "", "## Sources compared", "",
             "| source | candidates | valid | unique | novel | metastable | S.U.N. | M.S.U.N. | median E_hull | "
             "s per candidate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        m = metrics[run.source]
        median = m["e_hull_median"]
        lines.append(f"| {run.source} | {int(m['candidates'])} | {_pct(m['valid'])} | {_pct(m['unique'])} | "
                     f"{_pct(m['novel'])} | {_pct(m['metastable'])} | {_pct(m['sun'])} | {_pct(m['msun'])} | "
                     f"{'-' if not math.isfinite(median) else f'{median:.3f}'} | "
                     f"{m['seconds_per_candidate']:.2f} |")
    pooled = metrics["pooled"]
    lines += ["", f"Pooled, duplicates across sources counted once: {int(pooled['unique'])} unique structures, "
                  f"{int(pooled['n_metastable'])} metastable ({_pct(pooled['metastable'])} of {len(table)}), "
                  f"{int(pooled['n_sun'])} S.U.N., {int(pooled['n_msun'])} M.S.U.N.", ""]
    lines += ["How each source ran:", ""] + [f"- **{r.source}**: {r.note or '-'}; {r.attempts} tries, "
                                             f"{len(r.failures)} dropped, {r.seconds:.1f} s" for r in runs]
    lines += ["", "## Top candidates", "",
              "| rank | formula | source(s) | space group (generated -> relaxed) | E_hull (eV/atom) | novelty | M.S.U.N. |",
              "|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(table[table.unique].head(25).itertuples(), 1):
        e_hull = "-" if not math.isfinite(row.e_above_hull) else f"{row.e_above_hull:.3f}"
        lines.append(f"| {rank} | {row.formula} | {row.found_by} | {row.space_group_before or '-'} -> "
                     f"{row.space_group_after or '-'} | {e_hull} | {row.novelty or '-'} | {row.msun} |")
    lines += ["", f"![E_hull by source]({plot})", ""]
    return "\n".join(lines)
