"""Stability of crystals from CHGNet: relaxed energies -> formation energy and E_hull on the MP-20 scale -> rates.

* `StabilityRecord` — one crystal's relaxed energy, formation energy, energy above the MP-20 hull and the
  relaxation's outcome (`stability_record` turns an energy into one; `chgnet_stability` relaxes one structure
  with CHGNet's own optimiser, `relax_and_score` many at once with `chemgen.scoring.relax`'s batched FIRE).
* `stability_metrics` — the metastable rate (E_hull <= 0.1 eV/atom, MatterGen's "stable" and the headline),
  the hard stable rate (<= 0, FlowMM / ADiT, kept for the literature) and the expected stable count
  sum_i Phi(-E_hull_i / sigma), with sigma CHGNet's held-out error (`chemgen.scoring.hull.StabilitySigma`);
  with uniqueness and novelty, the (M)S.U.N. rates.

The hull and the energy scale are `chemgen.scoring.hull`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from chemgen.scoring.hull import METASTABLE_THRESHOLD, STABLE_THRESHOLD, ElementalReferences, MP20Hull, StabilitySigma
from chemgen.scoring.relax import RelaxOutcome, relax_structures, relax_with_chgnet

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymatgen.core import Composition, Structure


@dataclass(frozen=True)
class StabilityRecord:
    """CHGNet-relaxed energy, formation energy and energy above the MP-20 hull (eV/atom).

    ``status`` is the batched relaxation's (`chemgen.scoring.relax.RelaxOutcome.status`:
    converged, step_cap, time_budget, failed); None from the one-at-a-time `chgnet_stability`.
    """

    energy_per_atom: float
    e_form_per_atom: float
    e_above_hull: float
    steps: int
    structure: Structure | None = None
    error: str | None = None
    status: str | None = None


def stability_record(composition: Composition, energy_per_atom: float, steps: int, structure: Structure | None,
                     hull: MP20Hull, references: ElementalReferences, error: str | None = None,
                     status: str | None = None) -> StabilityRecord:
    """A relaxed CHGNet energy as a formation energy and E_hull on the MP-20 scale; NaN, with the
    reason, where either cannot be had. One place for the one-at-a-time and the batched route."""
    nan = float("nan")
    if not np.isfinite(energy_per_atom):
        return StabilityRecord(nan, nan, nan, steps, structure, error=error or "non-finite energy", status=status)
    e_form = references.formation_energy_per_atom(composition, energy_per_atom)
    try:
        e_hull = hull.e_above_hull(composition, e_form)
    except KeyError as exc:
        return StabilityRecord(energy_per_atom, e_form, nan, steps, structure, error=str(exc), status=status)
    return StabilityRecord(energy_per_atom, e_form, e_hull, steps, structure, error=error, status=status)


def chgnet_stability(structure: Structure, hull: MP20Hull, references: ElementalReferences,
                     optimizer: Any = None, fmax: float = 0.1, steps: int = 200) -> StabilityRecord:
    """Relax with CHGNet, then E_form and E_hull on the MP-20 scale; failures are recorded, not raised."""
    nan = float("nan")
    comp = structure.composition
    missing = sorted({el.symbol for el in comp.elements} - set(references.mu))
    if missing:
        return StabilityRecord(nan, nan, nan, 0, error=f"no elemental reference for {missing}")
    try:
        relaxed = relax_with_chgnet(structure, fmax=fmax, steps=steps, optimizer=optimizer)
    except (ValueError, RuntimeError, IndexError) as exc:  # graph construction / NaN forces
        return StabilityRecord(nan, nan, nan, 0, error=f"relaxation failed: {type(exc).__name__}: {exc}")
    return stability_record(comp, relaxed.energy_per_atom, relaxed.steps, relaxed.structure, hull, references)


def stable_probability(e_above_hull: Sequence[float], sigma: float | StabilitySigma) -> np.ndarray:
    """P_i = Phi(-E_hull_i / sigma): the chance that DFT puts sample i on or below the hull, given
    CHGNet's E_hull and a normal error of spread sigma; 0 where E_hull is NaN (not relaxed, failed)."""
    from scipy.special import ndtr

    s = sigma.sigma if isinstance(sigma, StabilitySigma) else float(sigma)
    if not s > 0:
        raise ValueError(f"sigma must be positive, got {s}")
    e = np.asarray(e_above_hull, float)
    return np.where(np.isfinite(e), ndtr(-np.where(np.isfinite(e), e, 0.0) / s), 0.0)


def stability_metrics(e_above_hull: Sequence[float], n_total: int, sigma: float | StabilitySigma,
                      unique_novel: Sequence[bool] | None = None, prefix: str = "chgnet_mp20",
                      sun_prefix: str | None = None) -> dict[str, float]:
    """Stability of generated crystals: the metastable rate (headline), hard and expected stable rates.

    Parameters
    ----------
    e_above_hull : CHGNet E_hull per sample (eV/atom); NaN for samples not relaxed or failed
    n_total : the denominator of every rate (all generated samples)
    sigma : CHGNet's error spread (`load_chgnet_sigma`) for the probabilistic stable count
    unique_novel : per sample, unique and novel (aligned with ``e_above_hull``); adds S.U.N. rates
    prefix : key prefix of the stability metrics
    sun_prefix : key prefix of the S.U.N. metrics (default ``prefix``), e.g. ``chgnet_mp20+mattergen``

    Returns
    -------
    ``<prefix>/metastable_rate``: E_hull <= 0.1 eV/atom, MatterGen's "stable" and the headline: the
    threshold is wide compared with CHGNet's error. ``<prefix>/stable_rate``: E_hull <= 0
    (FlowMM / ADiT / LeMat), kept for comparison with the literature; on an MP-20 hull this hard
    call is mostly the sign of CHGNet's error. ``<prefix>/expected_stable_count`` = sum_i P_i and
    ``expected_stable_rate`` = that / n_total with P_i = `stable_probability`. Also ``n_relaxed``,
    ``mean_e_above_hull`` and ``sigma``; with ``unique_novel``: ``<sun_prefix>/msun_rate``,
    ``sun_rate`` and ``expected_sun_rate``.
    """
    e = np.asarray(e_above_hull, float)
    finite = np.isfinite(e)
    below = np.where(finite, e, np.inf)
    stable, metastable = below <= STABLE_THRESHOLD, below <= METASTABLE_THRESHOLD
    probability = stable_probability(e, sigma)
    s = sigma.sigma if isinstance(sigma, StabilitySigma) else float(sigma)
    n = float(n_total) if n_total > 0 else float("nan")
    out = {f"{prefix}/metastable_rate": metastable.sum() / n,
           f"{prefix}/stable_rate": stable.sum() / n,
           f"{prefix}/expected_stable_rate": probability.sum() / n,
           f"{prefix}/expected_stable_count": float(probability.sum()),
           f"{prefix}/n_relaxed": float(finite.sum()),
           f"{prefix}/mean_e_above_hull": float(e[finite].mean()) if finite.any() else float("nan"),
           f"{prefix}/sigma": s}
    if unique_novel is not None:
        un = np.asarray(unique_novel, bool)
        if un.shape != e.shape:
            raise ValueError(f"unique_novel has {un.size} entries, e_above_hull {e.size}")
        sun = sun_prefix or prefix
        out |= {f"{sun}/msun_rate": (metastable & un).sum() / n, f"{sun}/sun_rate": (stable & un).sum() / n,
                f"{sun}/expected_sun_rate": (probability * un).sum() / n}
    return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- relax, then score
def relax_and_score(structures: Sequence[Structure | None], hull: MP20Hull, references: ElementalReferences, *,
                    model: Any = None, fmax: float = 0.1, steps: int = 200, batch_size: int = 32,
                    time_budget_s: float | None = None, workers: int = 1,
                    progress: bool = True) -> list[StabilityRecord]:
    """Batched `chgnet_stability`: relax all structures, then E_form and E_hull on the MP-20 scale.

    Structures with an element that has no CHGNet reference are not relaxed (error recorded).
    Structures stopped by the step cap or the time budget still get E_form and E_hull from their
    last energy; ``status`` says so, and callers decide whether to count them.
    """
    nan = math.nan
    records: list[StabilityRecord | None] = [None] * len(structures)
    todo: list[int] = []
    for i, structure in enumerate(structures):
        if structure is None:
            records[i] = StabilityRecord(nan, nan, nan, 0, error="no structure", status="failed")
            continue
        missing = sorted({el.symbol for el in structure.composition.elements} - set(references.mu))
        if missing:
            records[i] = StabilityRecord(nan, nan, nan, 0, error=f"no elemental reference for {missing}",
                                         status="failed")
        else:
            todo.append(i)
    outcomes = relax_structures([structures[i] for i in todo], model, fmax=fmax, steps=steps, batch_size=batch_size,
                                time_budget_s=time_budget_s, workers=workers, progress=progress)
    for i, outcome in zip(todo, outcomes, strict=True):
        records[i] = _score(structures[i], outcome, hull, references)
    return records  # type: ignore[return-value]


def _score(structure: Structure, outcome: RelaxOutcome, hull: MP20Hull,
           references: ElementalReferences) -> StabilityRecord:
    return stability_record(structure.composition, outcome.energy_per_atom, outcome.steps, outcome.structure, hull,
                            references, error=outcome.error, status=outcome.status)
