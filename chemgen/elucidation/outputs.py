"""One query's candidates as files: ``candidates.csv``, ``candidates.sdf`` and one PNG per candidate.

``candidates.csv``
    rank, smiles, inchikey, sources (where it came from: library:<name>, user:<name>, model; ``;``-joined),
    count (samples of the generator), fraction, similarity, score, formula, formula_match, then similarity_ir,
    similarity_raman, sample_smiles (the representative's own tautomer), failure and image (the PNG's name).
    Empty cells where a value is absent (not scored, or its spectra failed).
``candidates.sdf``
    the candidates in 3D with explicit hydrogens (a library's relaxed geometry, a sample's own), in rank order,
    named ``<query> rank <n>``, with the CSV's values as properties.
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

CSV_COLUMNS = ("rank", "smiles", "inchikey", "sources", "count", "fraction", "similarity", "score", "formula",
               "formula_match", "similarity_ir", "similarity_raman", "sample_smiles", "failure", "image")
COLOURS = {"ir": "tab:red", "raman": "tab:blue"}
LABELS = {"ir": "IR", "raman": "Raman"}


def image_name(candidate: Candidate) -> str:
    return f"candidate-{candidate.rank:02d}.png"


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _row(candidate: Candidate) -> dict[str, str]:
    return {
        "rank": str(candidate.rank), "smiles": candidate.smiles, "inchikey": candidate.inchikey,
        "sources": ";".join(candidate.sources or ("model",)),
        "count": str(candidate.count), "fraction": _number(candidate.fraction),
        "similarity": _number(candidate.similarity), "score": _number(candidate.score),
        "formula": candidate.formula,
        "formula_match": "" if candidate.formula_match is None else str(candidate.formula_match).lower(),
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
            mol = Chem.Mol(candidate.mol) if candidate.mol is not None else _embedded(candidate.smiles)
            if mol is None:
                continue
            mol.SetProp("_Name", f"{query_name} rank {candidate.rank}")
            mol.SetProp("query", query_name)
            for column, value in _row(candidate).items():
                if value != "":
                    mol.SetProp(column, value)
            writer.write(mol)
    finally:
        writer.close()


def _embedded(smiles: str) -> Chem.Mol | None:
    """A 3D structure from SMILES (RDKit ETKDG, seeded), for a candidate known only by its SMILES."""
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    mol = Chem.AddHs(mol)
    return mol if AllChem.EmbedMolecule(mol, randomSeed=0) == 0 else None


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
    origin = [s for s in candidate.sources if s != "model"]
    sampled = "; ".join(([f"from {', '.join(origin)}"] if origin else [])
                        + ([f"sampled {candidate.count}x ({candidate.fraction:.0%} of valid samples)"]
                           if candidate.count else []))
    if candidate.failure:
        return f"{head}\nno computed spectrum: {candidate.failure[:90]}; {sampled}"
    if candidate.similarity is None:
        return f"{head}\nnot compared with the query; {sampled}"
    parts = ", ".join(f"{LABELS[k]} {v:.3f}" for k, v in candidate.similarities.items())
    return f"{head}\nspectral similarity {candidate.similarity:.3f} ({parts}); {sampled}"


class _Overlays:
    """The per-candidate PNGs of one query, drawn on one figure: the query's curves, axes and fonts are laid out
    once and each candidate only swaps its curves, picture and titles (ten figures built from scratch took
    seconds, more than the library search they illustrate)."""

    def __init__(self, query_name: str, query: dict[str, tuple[np.ndarray, np.ndarray]],
                 candidates: Sequence[Candidate]):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.query_name = query_name
        computed = {k for c in candidates for k, v in (c.spectra or {}).items() if v is not None}
        kinds = [k for k in COMPARED_KINDS if k in query or k in computed] or list(COMPARED_KINDS[:1])
        height = 1.2 + 2.4 * len(kinds)
        self.fig = Figure(figsize=(11, height))
        FigureCanvasAgg(self.fig)
        grid = self.fig.add_gridspec(len(kinds), 2, width_ratios=(3.2, 1), left=0.06, right=0.98,
                                     bottom=0.5 / height, top=1 - 0.75 / height, wspace=0.08, hspace=0.3)
        self.axes, self.lines = {}, {}
        for row, kind in enumerate(kinds):
            ax = self.axes[kind] = self.fig.add_subplot(grid[row, 0])
            if kind in query:
                values, covered = query[kind]
                shown = np.where(covered, values, np.nan) / max(float(np.abs(values[covered]).max(initial=0)), 1e-12)
                ax.plot(GRID_CM1, shown, color="black", lw=1.0, label=f"query {LABELS[kind]}")
            (self.lines[kind],) = ax.plot(GRID_CM1, np.full(GRID_CM1.shape, np.nan), color=COLOURS[kind], lw=1.0,
                                          alpha=0.85, label=f"candidate {LABELS[kind]} (computed)")
            ax.set_xlim(GRID_CM1[0], GRID_CM1[-1])
            ax.set_ylim(-0.05, 1.08)
            ax.set_ylabel("normalised")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
            if row == len(kinds) - 1:
                ax.set_xlabel("wavenumber / cm$^{-1}$")
        self.picture = self.fig.add_subplot(grid[:, 1])
        self.picture.axis("off")
        self.image = None
        self.title = self.fig.suptitle("", fontsize=9)

    def draw(self, path: Path, candidate: Candidate) -> None:
        computed = candidate.spectra or {}
        for kind, line in self.lines.items():
            spectrum = computed.get(kind)
            if spectrum is not None:
                spectrum = np.asarray(spectrum, dtype=np.float64)
                line.set_ydata(spectrum / max(float(np.abs(spectrum).max()), 1e-12))
            line.set_visible(spectrum is not None)
        picture = _depiction(candidate.sample_smiles)
        if picture is not None and self.image is not None and self.image.get_array().shape == picture.shape:
            self.image.set_data(picture)
        elif picture is not None:
            if self.image is not None:
                self.image.remove()
            self.image = self.picture.imshow(picture)
        if self.image is not None:
            self.image.set_visible(picture is not None)
        self.picture.set_title(f"{'as sampled' if candidate.count else 'structure'}: {candidate.sample_smiles}",
                               fontsize=8)
        self.title.set_text(_title(self.query_name, candidate))
        self.fig.savefig(path, format="png", dpi=100, pil_kwargs={"compress_level": 3})


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
        overlays = _Overlays(query_name, query, ordered) if ordered else None
        for candidate in ordered:
            names.append(image_name(candidate))
            overlays.draw(staging / names[-1], candidate)
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
