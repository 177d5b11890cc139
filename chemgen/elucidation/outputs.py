"""One query's candidates as files: ``candidates.csv``, ``candidates.sdf`` and one PNG per candidate.

``candidates.csv``
    rank, smiles, inchikey, count, fraction, similarity, score, formula, then similarity_ir,
    similarity_raman, sample_smiles (the representative's own tautomer), failure and image (the PNG's
    name). Empty cells where a value is absent (not re-ranked, or its spectra failed).
``candidates.sdf``
    the representatives in 3D with explicit hydrogens, in rank order, named ``<query> rank <n>``, with
    the CSV's values as properties.
``candidate-<rank>.png``
    per modality, the query's spectrum and the candidate's computed one (each scaled to its maximum,
    query in black); the candidate drawn in 2D (as sampled) beside them; similarity, count and SMILES
    in the title.

Everything is written into a hidden staging folder inside ``folder`` and moved into place only when all
of it was written, so a failure leaves the folder as it was; candidate PNGs of an earlier, longer list
are removed.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from chemgen.elucidation.ranking import Candidate
from chemgen.elucidation.rerank import COMPARED_KINDS, QuerySpectra, query_arrays
from chemgen.spectra.broadening import GRID_CM1

CSV_COLUMNS = ("rank", "smiles", "inchikey", "count", "fraction", "similarity", "score", "formula",
               "similarity_ir", "similarity_raman", "sample_smiles", "failure", "image")
COLOURS = {"ir": "tab:red", "raman": "tab:blue"}
LABELS = {"ir": "IR", "raman": "Raman"}


def image_name(candidate: Candidate) -> str:
    return f"candidate-{candidate.rank:02d}.png"


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _row(candidate: Candidate) -> dict[str, str]:
    return {
        "rank": str(candidate.rank), "smiles": candidate.smiles, "inchikey": candidate.inchikey,
        "count": str(candidate.count), "fraction": _number(candidate.fraction),
        "similarity": _number(candidate.similarity), "score": _number(candidate.score),
        "formula": candidate.formula,
        **{f"similarity_{k}": _number(candidate.similarities.get(k)) for k in COMPARED_KINDS},
        "sample_smiles": candidate.sample_smiles, "failure": candidate.failure or "",
        "image": image_name(candidate),
    }


def _write_csv(path: Path, candidates: Sequence[Candidate]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_row(c) for c in candidates)


def _write_sdf(path: Path, query_name: str, candidates: Sequence[Candidate]) -> None:
    writer = Chem.SDWriter(str(path))
    try:
        for candidate in candidates:
            mol = Chem.Mol(candidate.mol)
            mol.SetProp("_Name", f"{query_name} rank {candidate.rank}")
            mol.SetProp("query", query_name)
            for column, value in _row(candidate).items():
                if value != "":
                    mol.SetProp(column, value)
            writer.write(mol)
    finally:
        writer.close()


def _depiction(smiles: str, size: int = 320) -> np.ndarray | None:
    """An RGBA image of the molecule drawn in 2D (RDKit, Cairo); None if RDKit cannot draw it."""
    import matplotlib.image

    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    drawer = rdMolDraw2D.MolDraw2DCairo(size, size)
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    return matplotlib.image.imread(io.BytesIO(drawer.GetDrawingText()), format="png")


def _title(query_name: str, candidate: Candidate) -> str:
    head = f"{query_name}: candidate {candidate.rank}  {candidate.smiles}  ({candidate.formula})"
    sampled = f"sampled {candidate.count}x ({candidate.fraction:.0%} of valid samples)"
    if candidate.failure:
        return f"{head}\nno computed spectrum: {candidate.failure[:90]}; {sampled}"
    if candidate.similarity is None:
        return f"{head}\nnot compared with the query; {sampled}"
    parts = ", ".join(f"{LABELS[k]} {v:.3f}" for k, v in candidate.similarities.items())
    return f"{head}\nspectral similarity {candidate.similarity:.3f} ({parts}); {sampled}"


def _plot(path: Path, query_name: str, candidate: Candidate, query: dict[str, tuple[np.ndarray, np.ndarray]]
          ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    computed = candidate.spectra or {}
    kinds = [k for k in COMPARED_KINDS if k in query or k in computed] or list(COMPARED_KINDS[:1])
    fig = plt.figure(figsize=(11, 1.2 + 2.4 * len(kinds)))
    grid = fig.add_gridspec(len(kinds), 2, width_ratios=(3.2, 1))
    for row, kind in enumerate(kinds):
        ax = fig.add_subplot(grid[row, 0])
        if kind in query:
            values, covered = query[kind]
            shown = np.where(covered, values, np.nan) / max(float(np.abs(values[covered]).max(initial=0)), 1e-12)
            ax.plot(GRID_CM1, shown, color="black", lw=1.0, label=f"query {LABELS[kind]}")
        if computed.get(kind) is not None:
            spectrum = np.asarray(computed[kind], dtype=np.float64)
            ax.plot(GRID_CM1, spectrum / max(float(np.abs(spectrum).max()), 1e-12), color=COLOURS[kind], lw=1.0,
                    alpha=0.85, label=f"candidate {LABELS[kind]} (computed)")
        ax.set_xlim(GRID_CM1[0], GRID_CM1[-1])
        ax.set_ylabel("normalised")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        if row == len(kinds) - 1:
            ax.set_xlabel("wavenumber / cm$^{-1}$")
    picture = fig.add_subplot(grid[:, 1])
    picture.axis("off")
    image = _depiction(candidate.sample_smiles)
    if image is not None:
        picture.imshow(image)
    picture.set_title(f"as sampled: {candidate.sample_smiles}", fontsize=8)
    fig.suptitle(_title(query_name, candidate), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_candidates(folder: str | os.PathLike, query_name: str, candidates: Sequence[Candidate],
                     query_spectra: QuerySpectra | None = None) -> list[Path]:
    """Write the files (module docstring) into ``folder``; returns their paths: CSV, SDF, then the PNGs.

    ``query_spectra`` as for `chemgen.elucidation.rerank.rerank` (values or ``(values, covered)`` per
    modality); without it the PNGs show the candidates' computed spectra only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    query = query_arrays(query_spectra) if query_spectra else {}
    ordered = sorted(candidates, key=lambda c: c.rank)
    staging = Path(tempfile.mkdtemp(prefix=".candidates-", dir=folder))
    try:
        names = ["candidates.csv", "candidates.sdf"]
        _write_csv(staging / names[0], ordered)
        _write_sdf(staging / names[1], query_name, ordered)
        for candidate in ordered:
            names.append(image_name(candidate))
            _plot(staging / names[-1], query_name, candidate, query)
        for stale in folder.glob("candidate-*.png"):
            if stale.name not in names:
                stale.unlink()
        for name in names:  # on disk before any is renamed into place
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]
