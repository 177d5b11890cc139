"""Human-readable summaries of the spectra dataset: a rich table and matplotlib plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_spectra_manifest(m: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{m['name']} (spectra)", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = m["counts"]
    table.add_row("molecules", f"{counts['molecules']:,} ({counts['ok']:,} with spectra, {counts['failed']:,} failed)")
    table.add_row("by split", " / ".join(f"{k} {v['ok']:,} of {v['molecules']:,}" for k, v in counts["by_split"].items()))
    table.add_row("computed without gap", f"positions 0..{counts['contiguous_prefix']:,} of the order")
    table.add_row("order", m["order"])
    table.add_row("shards", f"{len(m['shards'])} ({sum(s['bytes'] for s in m['shards']) / 1e6:.2f} MB, "
                  f"{sum(s['bytes'] for s in m['shards']) / max(counts['molecules'], 1):,.0f} bytes/molecule)")
    table.add_row("compute", f"{m['compute_seconds'] / 3600:.2f} core-hours "
                  f"({m['compute_seconds'] / max(counts['molecules'], 1):.2f} s/molecule)")
    table.add_row("tblite", ", ".join(m["tblite_versions"]))
    table.add_row("content hash", m["content_hash"])
    if m["failure_reasons"]:
        table.add_row("failures", "; ".join(f"{k}: {v}" for k, v in m["failure_reasons"].items()))
    console.print(table)


def plot_spectra_dataset(folder: Path, out: Path, examples: int = 4) -> list[Path]:
    """Broadened IR and Raman spectra of a few molecules, and the frequency histogram, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from chemgen.spectra import broadening, shards

    out.mkdir(parents=True, exist_ok=True)
    table = shards.read_table(folder, ["qm9_index", "smiles", "frequencies_cm1", "ir_km_mol", "raman_a4_amu"],
                              only_ok=True)
    rows = table.slice(0, examples).to_pylist()
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.2 * len(rows)), sharex=True, squeeze=False)
    grid = broadening.GRID_CM1
    for ax, row in zip(axes[:, 0], rows):
        ir = broadening.broaden(row["frequencies_cm1"], row["ir_km_mol"], kind="ir")
        raman = broadening.broaden(row["frequencies_cm1"], row["raman_a4_amu"], kind="raman")
        ax.plot(grid, ir / max(ir.max(), 1e-12), label="IR", lw=1)
        ax.plot(grid, -raman / max(raman.max(), 1e-12), label="Raman (down)", lw=1)
        ax.set_title(f"gdb9_{row['qm9_index']:06d}  {row['smiles']}", fontsize=9)
        ax.set_yticks([])
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("wavenumber / cm$^{-1}$ (scaled)")
    fig.tight_layout()
    examples_path = out / "spectra_examples.png"
    fig.savefig(examples_path, dpi=120)
    plt.close(fig)

    frequencies = np.concatenate([np.asarray(f) for f in table.column("frequencies_cm1").to_pylist()])
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(frequencies, bins=200, color="0.3")
    ax.set_xlabel("harmonic frequency / cm$^{-1}$ (unscaled GFN2-xTB)")
    ax.set_ylabel("modes")
    fig.tight_layout()
    hist_path = out / "frequency_histogram.png"
    fig.savefig(hist_path, dpi=120)
    plt.close(fig)
    return [examples_path, hist_path, plot_b3lyp_comparison(folder, out)]


def plot_b3lyp_comparison(folder: Path, out: Path) -> Path:
    """xTB against QM9's B3LYP harmonic frequencies (rank-paired), with the fitted scale line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from chemgen.spectra import shards, validation

    table = shards.read_table(folder, ["qm9_index", "frequencies_cm1"], only_ok=True)
    xtb = [np.asarray(f) for f in table.column("frequencies_cm1").to_pylist()]
    x, y, _ = validation.paired_frequencies(xtb, validation.b3lyp_frequencies(table.column("qm9_index").to_pylist()))
    fit = validation.fit_scale_factor(xtb, validation.b3lyp_frequencies(table.column("qm9_index").to_pylist()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.hexbin(x, y, gridsize=120, bins="log", cmap="Greys", mincnt=1)
    line = np.array([0, 4200])
    ax.plot(line, line, color="0.6", lw=0.8, label="y = x")
    ax.plot(line, fit.scale * line, color="tab:red", lw=1, label=f"y = {fit.scale:.4f} x")
    ax.set_xlabel("GFN2-xTB harmonic frequency / cm$^{-1}$")
    ax.set_ylabel("B3LYP/6-31G(2df,p) (QM9) / cm$^{-1}$")
    ax.set_title(f"{fit.molecules:,} molecules, {fit.modes:,} modes: MAE {fit.mae_cm1:.1f} cm$^{{-1}}$ "
                 f"scaled, r = {fit.pearson_r:.4f}", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "xtb_vs_b3lyp.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_scale_fit(folder: Path, console: Console) -> None:
    from chemgen.spectra import broadening, validation

    fit = validation.fit_on_dataset(folder)
    console.print(f"xTB vs B3LYP (QM9) harmonic frequencies, rank-paired: {fit.molecules:,} molecules, {fit.modes:,} "
                  f"modes ({fit.skipped_molecules} molecules left out: imaginary modes or other mode counts); "
                  f"fitted scale {fit.scale:.4f} (in use: {broadening.XTB_TO_B3LYP_SCALE}); MAE {fit.mae_raw_cm1:.1f} "
                  f"cm^-1 raw, {fit.mae_cm1:.1f} scaled; RMSE {fit.rmse_cm1:.1f}; r = {fit.pearson_r:.5f}",
                  highlight=False)
