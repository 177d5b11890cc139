"""Scores for generated crystals, each named after the protocol it follows.

Protocols (../shared/reference/ANCHORS.md, A3/A4 and B7):

* ``cdvae/*`` — CDVAE ``scripts/compute_metrics.py`` / ``eval_utils.py``: structural validity
  (every interatomic distance >= 0.5 A under periodic boundaries, volume >= 0.1 A^3), SMACT
  compositional validity as smact 2.2.1 computed it (SMACT14 oxidation states), coverage
  (COV-R / COV-P) and Wasserstein distances of density and of the number of elements.
* ``adit/*`` validity — ADiT ``src/eval/crystal.py``: smact 2.6; a crystal with a lattice angle
  outside (50, 130) degrees or a volume below 0.1 A^3 is not constructed, so its composition is
  invalid too; more than 1e7 oxidation-state combinations make a composition invalid.
* ``<preset>/*`` — uniqueness and novelty (`MATCHER_PRESETS`): ``adit`` is ADiT's
  (``src/eval/crystal_generation.py``: ltol 0.3, stol 0.5, angle_tol 10; novelty per unique group,
  on unreduced cells, over unique groups); ``pymatgen`` uses pymatgen's default tolerances (0.2,
  0.3, 5), as FlowMM does, per valid sample on reduced cells. Novelty is checked against the
  training split only, as the published models do; a sample whose formula matches a training row
  without coordinates is "undetermined" and reported apart, never as novel.
* ``chgnet_mp20/*`` — stability from a batched CHGNet relaxation (`chemgen.scoring.relax`) against
  the MP-20 hull (`chemgen.scoring.hull`). The headline is the metastable rate (E_hull <= 0.1
  eV/atom, MatterGen's "stable"); "stable" (E_hull <= 0, FlowMM/ADiT) is reported as an expected
  count, sum of Phi(-E_hull / sigma) with sigma CHGNet's held-out error, beside the hard call kept
  for the literature; S.U.N. / M.S.U.N. combine them with uniqueness and novelty.

The protocols live in three modules, one concern each: `chemgen.scoring.crystal_validity` (structural and
SMACT validity), `chemgen.scoring.crystal_novelty` (StructureMatcher uniqueness and novelty) and
`chemgen.scoring.crystal_distribution` (Wasserstein distances, fingerprints and coverage); stability is
`chemgen.scoring.stability`. `score_crystals` here runs them all on one batch.

Validity never depends on whether coverage is computed: CrystalNN fingerprint failures are
counted apart (CDVAE and ADiT, which always fingerprint, would also call those crystals invalid).

One bad structure never stops a batch: it is scored invalid and the reason is kept per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chemgen.atoms import AtomicSystem
from chemgen.errors import UsageError
from chemgen.scoring.crystal_distribution import coverage_against, matminer_available, sample_fingerprints, wasserstein_metrics
from chemgen.scoring.crystal_novelty import MATCHER_PRESETS, NOVEL, ReferenceSet, uniqueness_novelty_metrics
from chemgen.scoring.crystal_validity import CrystalRecord, Validity, assess_validity, to_structure

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymatgen.core import Structure

    from chemgen.scoring.hull import ElementalReferences, MP20Hull, StabilitySigma


# ============================================================================ the entry point
@dataclass
class CrystalScores:
    """Metrics (flat, protocol-prefixed keys), per-sample records and notes on what was skipped."""

    metrics: dict[str, float]
    records: list[CrystalRecord]
    notes: dict[str, str] = field(default_factory=dict)
    gt_densities: np.ndarray | None = None
    gt_n_elements: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        return dict(self.metrics)

    def to_frame(self) -> Any:
        """Per-sample records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([{**vars(r), "valid": r.valid} for r in self.records])


def _as_reference_set(references: ReferenceSet | Iterable[Any] | None) -> ReferenceSet | None:
    if references is None or isinstance(references, ReferenceSet):
        return references
    return ReferenceSet.from_structures(references)


def score_crystals(
    systems: Sequence[AtomicSystem | Structure | None],
    references: ReferenceSet | Iterable[AtomicSystem | Structure] | None = None,
    preset: str = "adit",
    validity: Validity = "cdvae",
    ground_truth: Sequence[AtomicSystem | Structure] | None = None,
    compute_coverage: bool = False,
    stability: bool = False,
    hull: MP20Hull | None = None,
    chgnet_references: ElementalReferences | None = None,
    sigma: StabilitySigma | float | None = None,
    relax_fmax: float = 0.1,
    relax_steps: int = 200,
    relax_workers: int = 1,
    relax_budget_s: float | None = None,
    dataset: str = "mp20",
    seed: int = 0,
) -> CrystalScores:
    """Score generated crystals.

    Parameters
    ----------
    systems : generated samples; ``None`` marks a sample the model failed to produce (invalid)
    references : known structures for novelty: the training split, as the published models check
        (`chemgen.scoring.report.training_references`); a `ReferenceSet` reuses its parsed and
        reduced structures across calls and carries the formulas of rows without coordinates
    preset : uniqueness/novelty rules (`MATCHER_PRESETS`): "adit" or "pymatgen"
    validity : "cdvae" (smact 2.2.1) or "adit" (smact 2.6, the lattice-angle rule, the 1e7
        oxidation-combination cap, and an unconstructed crystal's composition counted invalid)
    ground_truth : reference distribution for Wasserstein distances and coverage (CDVAE: test set)
    compute_coverage : COV-R/COV-P (needs matminer and ``ground_truth``)
    stability : relax valid samples with CHGNet, many at once (`chemgen.scoring.relax`), and score
        E_hull on the MP-20 hull; set ``torch.set_num_threads`` before calling (the library leaves it
        alone) or use ``relax_workers`` processes of one thread each
    hull, chgnet_references, sigma : defaults are `load_mp20_hull()`, `load_chgnet_references()` and
        `load_chgnet_sigma()` (CHGNet's held-out error, for the expected stable count)
    relax_steps, relax_budget_s : FIRE step cap per structure and wall-time budget for all of them

    Returns
    -------
    CrystalScores; rates are fractions of all samples unless the key says otherwise.
    """
    if preset not in MATCHER_PRESETS:
        raise UsageError(f"unknown matcher preset {preset!r}; choose from {sorted(MATCHER_PRESETS)}")
    records, structures = [], []
    for i, system in enumerate(systems):
        record, structure = assess_validity(i, system, validity)
        records.append(record)
        structures.append(structure)
    n = len(records)
    notes: dict[str, str] = {}
    metrics: dict[str, float] = {"n_samples": float(n)}
    if n == 0:
        return CrystalScores(metrics, records, {"empty": "no samples"})

    fps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if compute_coverage:
        if not matminer_available():
            notes["coverage"] = "skipped: matminer is not installed"
        elif ground_truth is None:
            notes["coverage"] = "skipped: no ground_truth given"
        else:
            fps = sample_fingerprints(records, structures)
            metrics["cdvae/n_fingerprint_failed"] = float(sum(r.fingerprint_failed for r in records))

    metrics[f"{validity}/struct_valid"] = float(np.mean([r.struct_valid for r in records]))
    metrics[f"{validity}/comp_valid"] = float(np.mean([r.comp_valid for r in records]))
    metrics[f"{validity}/valid"] = float(np.mean([r.valid for r in records]))
    valid = [r for r in records if r.valid]
    metrics[f"{validity}/n_valid"] = float(len(valid))
    if valid:
        metrics.update(uniqueness_novelty_metrics(valid, structures, _as_reference_set(references), preset, notes))

    gt_density = gt_nelem = None
    if ground_truth is not None:
        gt = [to_structure(s) for s in ground_truth]
        gt_density = np.array([s.density for s in gt])
        gt_nelem = np.array([len(s.composition.elements) for s in gt])
        metrics.update(wasserstein_metrics([r.density for r in valid], [r.n_elements for r in valid],
                                           gt_density, gt_nelem, seed=seed))
        if fps:
            metrics.update(coverage_against(fps, gt, n, dataset, notes))

    if stability:
        metrics.update(_stability_metrics(records, structures, preset, hull, chgnet_references, sigma,
                                          relax_fmax, relax_steps, references is not None, relax_workers,
                                          relax_budget_s))
    return CrystalScores(metrics, records, notes, gt_density, gt_nelem)


def _stability_metrics(records: list[CrystalRecord], structures: list[Structure | None], preset: str,
                       hull: MP20Hull | None, chgnet_references: ElementalReferences | None,
                       sigma: StabilitySigma | float | None, fmax: float, steps: int, have_novelty: bool,
                       relax_workers: int, relax_budget_s: float | None) -> dict[str, float]:
    """Batched CHGNet relaxation of every valid sample, E_hull on the MP-20 hull; the metastable rate
    (headline), hard and expected stable rates and (M)S.U.N. over all samples (`chemgen.scoring.stability.stability_metrics`)."""
    from chemgen.scoring.hull import load_chgnet_references, load_chgnet_sigma, load_mp20_hull
    from chemgen.scoring.stability import relax_and_score, stability_metrics

    hull = hull or load_mp20_hull()
    chgnet_references = chgnet_references or load_chgnet_references()
    sigma = sigma if sigma is not None else load_chgnet_sigma(references=chgnet_references)
    valid = [r for r in records if r.valid]
    results = relax_and_score([structures[r.index] for r in valid], hull, chgnet_references, fmax=fmax, steps=steps,
                              workers=relax_workers, time_budget_s=relax_budget_s, progress=len(valid) >= 20)
    for r, result in zip(valid, results, strict=True):
        r.e_form_per_atom, r.e_above_hull, r.stability_error = result.e_form_per_atom, result.e_above_hull, result.error
        r.relax_status = result.status
    e_hull = np.array([np.nan if r.e_above_hull is None else r.e_above_hull for r in records])
    unique_novel = [bool(r.unique) and r.novelty == NOVEL for r in records] if have_novelty else None
    metrics = stability_metrics(e_hull, len(records), sigma, unique_novel, sun_prefix=f"chgnet_mp20+{preset}")
    metrics["chgnet_mp20/n_converged"] = float(sum(r.relax_status == "converged" for r in valid))
    return metrics


# ============================================================================ plots
def plot_crystal_scores(scores: CrystalScores, out_dir: str | Path) -> list[Path]:
    """Save PNG histograms (E_hull, density vs ground truth, number of elements); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    e_hull = np.array([r.e_above_hull for r in scores.records if r.e_above_hull is not None], float)
    e_hull = e_hull[np.isfinite(e_hull)]
    if e_hull.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(e_hull, bins=40, color="tab:blue")
        for x, label in ((0.0, "stable"), (0.1, "metastable")):
            ax.axvline(x, color="k", ls="--", lw=0.8)
            ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=7, va="top")
        ax.set(xlabel="E above MP-20 hull (eV/atom)", ylabel="samples", title="CHGNet-relaxed stability")
        save(fig, "e_above_hull.png")

    density = np.array([r.density for r in scores.records if r.valid and r.density is not None], float)
    if density.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bins = np.linspace(0, max(density.max(), *(scores.gt_densities if scores.gt_densities is not None
                                                    else [0.0])), 50)
        ax.hist(density, bins=bins, density=True, alpha=0.6, label="generated (valid)")
        if scores.gt_densities is not None:
            ax.hist(scores.gt_densities, bins=bins, density=True, alpha=0.6, label="reference")
        ax.set(xlabel="density (g/cm$^3$)", ylabel="probability density")
        ax.legend()
        save(fig, "density.png")

    n_elem = np.array([r.n_elements for r in scores.records if r.valid and r.n_elements], int)
    if n_elem.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        top = max(n_elem.max(), scores.gt_n_elements.max() if scores.gt_n_elements is not None else 0)
        edges = np.arange(0.5, top + 1.5)
        ax.hist(n_elem, bins=edges, density=True, alpha=0.6, label="generated (valid)")
        if scores.gt_n_elements is not None:
            ax.hist(scores.gt_n_elements, bins=edges, density=True, alpha=0.6, label="reference")
        ax.set(xlabel="number of elements", ylabel="fraction")
        ax.legend()
        save(fig, "num_elements.png")
    return written
