"""Pictures of spectra: computed IR above, Raman mirrored below, sticks under the broadened curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_ir_raman(path: Path, title: str, grid: np.ndarray, ir: np.ndarray, raman: np.ndarray | None,
                  frequencies: np.ndarray | None = None, ir_sticks: np.ndarray | None = None,
                  raman_sticks: np.ndarray | None = None) -> Path:
    """One PNG: normalised IR (up) and Raman (down) spectra with their stick spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chemgen.io import atomic_write

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(grid, ir / max(ir.max(), 1e-12), color="tab:red", lw=1.1, label="IR")
    if frequencies is not None and ir_sticks is not None:
        ax.vlines(frequencies, 0, ir_sticks / max(ir_sticks.max(), 1e-12), color="tab:red", alpha=0.35, lw=0.8)
    if raman is not None:
        ax.plot(grid, -raman / max(raman.max(), 1e-12), color="tab:blue", lw=1.1, label="Raman (mirrored)")
        if frequencies is not None and raman_sticks is not None:
            ax.vlines(frequencies, 0, -raman_sticks / max(raman_sticks.max(), 1e-12), color="tab:blue", alpha=0.35,
                      lw=0.8)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xlim(grid[0], grid[-1])
    ax.set_xlabel("wavenumber / cm$^{-1}$")
    ax.set_ylabel("normalised")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=130)
    plt.close(fig)
    return path
