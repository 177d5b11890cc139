"""Tests of the crystal scores on small real slices of MP-20 (../shared/data, or $CHEMGEN_DATA_DIR)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chemgen.atoms import AtomicSystem
from chemgen.scoring.crystals import (
    ReferenceSet,
    coverage,
    novel_mask,
    plot_crystal_scores,
    score_crystals,
    smact_validity,
    structure_validity,
    unique_mask,
    wasserstein_metrics,
)
from chemgen.scoring.hull import MP20Hull, fit_elemental_references, stability_rates

DATA_DIR = Path(os.environ.get("CHEMGEN_DATA_DIR", Path(__file__).resolve().parents[2] / "../shared/data"))
MP20 = DATA_DIR / "mp_20"



def _structures(cifs: pd.Series) -> list:
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CIF rounding notices
        return [Structure.from_str(c, fmt="cif", primitive=False) for c in cifs]


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    return pd.read_csv(MP20 / "test.csv.gz", nrows=400)


@pytest.fixture(scope="module")
def test_structures(test_rows: pd.DataFrame) -> list:
    return _structures(test_rows["cif"].iloc[:60])


@pytest.fixture(scope="module")
def hull() -> MP20Hull:
    return MP20Hull.from_mp20(DATA_DIR)


def _cubic(symbols: list[str], frac: list[list[float]], a: float = 5.0) -> AtomicSystem:
    from chemgen.atoms import ATOMIC_NUMBERS

    return AtomicSystem.crystal([ATOMIC_NUMBERS[s] for s in symbols], frac, np.eye(3) * a)


# ----------------------------------------------------------------------------- validity
def test_real_mp20_rows_are_structurally_valid(test_structures: list) -> None:
    systems = [AtomicSystem.from_pymatgen(s) for s in test_structures]
    scores = score_crystals(systems)
    assert scores.metrics["cdvae/struct_valid"] == 1.0
    # MP-20 is not all SMACT-balanced (intermetallics with non-metals): CDVAE reports ~0.91 on its test set
    assert 0.75 < scores.metrics["cdvae/comp_valid"] < 1.0


def test_close_atoms_are_invalid_and_distance_is_periodic() -> None:
    too_close = _cubic(["Na", "Cl"], [[0.5, 0.5, 0.5], [0.52, 0.5, 0.5]])  # 0.1 A apart
    across_boundary = _cubic(["Na", "Cl"], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]])  # 0.1 A via the image
    fine = _cubic(["Na", "Cl"], [[0.5, 0.5, 0.5], [0.62, 0.5, 0.5]])  # 0.6 A apart
    scores = score_crystals([too_close, across_boundary, fine])
    assert [r.struct_valid for r in scores.records] == [False, False, True]
    assert "apart" in scores.records[0].reason


def test_tiny_volume_and_adit_angle_rule() -> None:
    from pymatgen.core import Lattice, Structure

    tiny = Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]])  # 0.064 A^3
    assert structure_validity(tiny)[0] is False
    skewed = Structure(Lattice.from_parameters(4, 4, 4, 40, 90, 90), ["Cu"], [[0, 0, 0]])
    assert structure_validity(skewed)[0] is True
    assert structure_validity(skewed, angle_range=(50, 130))[0] is False
    cdvae, adit = (score_crystals([skewed], validity=v).metrics for v in ("cdvae", "adit"))
    assert cdvae["cdvae/valid"] == 1.0 and adit["adit/valid"] == 0.0


def test_bad_samples_never_stop_the_batch() -> None:
    from pymatgen.core import Lattice, Structure

    nan_structure = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]])
    good = _cubic(["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    scores = score_crystals([None, nan_structure, good, "not a crystal"])
    assert [r.valid for r in scores.records] == [False, False, True, False]
    assert all(r.reason for r in scores.records if not r.valid)
    assert scores.metrics["cdvae/valid"] == 0.25


def test_smact_composition_validity() -> None:
    assert smact_validity(("Na", "Cl"), (1, 1))
    assert not smact_validity(("Na", "Cl"), (1, 2))
    assert smact_validity(("Fe",), (1,))  # one element
    assert smact_validity(("Cu", "Zn"), (1, 1))  # all metals: an alloy
    assert not smact_validity(("Cu", "Zn"), (1, 1), include_alloys=False)
    assert not smact_validity(("Na", "Cl"), (1, 1), max_combinations=1)  # ADiT's cap (1e7) in miniature
    nacl = _cubic(["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], a=5.64)
    nacl2 = _cubic(["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.0, 0.0]], a=5.64)
    assert [r.comp_valid for r in score_crystals([nacl, nacl2]).records] == [True, False]


# ----------------------------------------------------------------------------- uniqueness, novelty
def _disguise(structure, seed: int):
    """The same crystal rotated, translated, with its sites permuted."""
    from pymatgen.core import Structure
    from pymatgen.core.operations import SymmOp

    rng = np.random.default_rng(seed)
    rotation = SymmOp.from_axis_angle_and_translation(rng.normal(size=3), float(rng.uniform(10, 80)))
    moved = structure.copy()
    moved.apply_operation(rotation)
    moved.translate_sites(list(range(len(moved))), rng.uniform(size=3), to_unit_cell=True)
    order = rng.permutation(len(moved))
    return Structure(moved.lattice, [moved[i].species for i in order], moved.frac_coords[order])


@pytest.mark.parametrize("preset", ["cdvae", "mattergen"])
def test_a_structure_matched_against_itself_is_not_novel(test_structures: list, preset: str) -> None:
    originals = test_structures[:10]
    disguised = [_disguise(s, seed=i) for i, s in enumerate(originals)]
    refs = ReferenceSet.from_structures(originals)
    formulas = [s.composition.reduced_formula for s in disguised]
    assert not novel_mask(disguised, formulas, refs, preset).any()
    # A strongly strained copy (c stretched 1.5x) is a different crystal under both presets.
    strained = [s.copy() for s in originals[:3]]
    for s in strained:
        s.lattice = s.lattice.__class__(s.lattice.matrix * np.array([[1.0], [1.0], [1.5]]))
    assert novel_mask(strained, [s.composition.reduced_formula for s in strained], refs, preset).all()


def test_duplicates_reduce_uniqueness_exactly(test_structures: list) -> None:
    originals = test_structures[:20]
    copies = [_disguise(s, seed=100 + i) for i, s in enumerate(originals[:5])]
    samples = [AtomicSystem.from_pymatgen(s) for s in originals + copies]
    n_distinct = unique_mask(originals, [s.composition.reduced_formula for s in originals]).sum()
    scores = score_crystals(samples, preset="cdvae")
    n_valid = scores.metrics["cdvae/n_valid"]
    valid_copies = sum(r.valid for r in scores.records[20:])
    assert valid_copies > 0
    assert scores.metrics["cdvae/unique_rate"] == pytest.approx((n_valid - valid_copies) / n_valid)
    assert n_distinct == 20
    assert not any(r.unique for r in scores.records[20:] if r.valid)


def test_novelty_against_a_reference_table(test_rows: pd.DataFrame) -> None:
    refs = ReferenceSet.from_cifs(test_rows["pretty_formula"].iloc[:50], test_rows["cif"].iloc[:50])
    samples = _structures(test_rows["cif"].iloc[40:60])  # first 10 are in the references
    scores = score_crystals(samples, references=refs, preset="mattergen")
    novel = [r.novel for r in scores.records if r.valid]
    known = [r.novel for r in scores.records[:10] if r.valid]
    assert known and not any(known)
    assert scores.metrics["mattergen/novel_rate"] == pytest.approx(np.mean(novel))
    assert scores.metrics["mattergen/novel_rate"] < 1.0


# ----------------------------------------------------------------------------- distributions, coverage
def test_wasserstein_and_coverage_math() -> None:
    rng = np.random.default_rng(0)
    dens, nel = rng.uniform(2, 8, 300), rng.integers(1, 5, 300)
    same = wasserstein_metrics(dens, nel, dens, nel)
    assert same["cdvae/wdist_density"] == 0.0 and same["cdvae/wdist_num_elems"] == 0.0
    shifted = wasserstein_metrics(dens + 1.0, nel, dens, nel)
    assert shifted["cdvae/wdist_density"] == pytest.approx(1.0)

    from chemgen.scoring.crystals import MAGPIE_SCALER_MEANS

    struct_fp = rng.uniform(size=(20, 61))
    comp_fp = MAGPIE_SCALER_MEANS + rng.normal(size=(20, 132))
    full = coverage(struct_fp, comp_fp, struct_fp, comp_fp, n_generated=40)
    assert full["cdvae/cov_recall"] == 1.0 and full["cdvae/cov_precision"] == 0.5  # 20 of 40 generated
    far = coverage(struct_fp + 1.0, comp_fp, struct_fp, comp_fp)
    assert far["cdvae/cov_recall"] == 0.0


def test_crystalnn_fingerprints_if_matminer_is_installed(test_structures: list) -> None:
    pytest.importorskip("matminer")
    from chemgen.scoring.crystals import fingerprints

    struct_fp, comp_fp = fingerprints(test_structures[0])
    assert struct_fp.shape == (61,) and comp_fp.shape == (132,)


def test_plots_are_written(tmp_path: Path, test_structures: list) -> None:
    scores = score_crystals(test_structures[:30], ground_truth=test_structures[30:60])
    for r, e in zip(scores.records, np.linspace(-0.1, 0.3, 30), strict=True):
        r.e_above_hull = float(e)
    paths = plot_crystal_scores(scores, tmp_path)
    assert {p.name for p in paths} == {"e_above_hull.png", "density.png", "num_elements.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


# ----------------------------------------------------------------------------- hull and stability
def test_hull_reproduces_the_dataset_e_above_hull(hull: MP20Hull, test_rows: pd.DataFrame) -> None:
    canonical = test_rows[test_rows["e_above_hull"].notna()]
    ours = np.array([hull.e_above_hull(f, e) for f, e in
                     zip(canonical["pretty_formula"], canonical["formation_energy_per_atom"], strict=True)])
    column = canonical["e_above_hull"].to_numpy()
    diff = column - ours
    # MP-20 lacks some MP phases (> 20 atoms), so our hull can only lie below MP's: column >= ours.
    assert diff.min() > -1e-4  # rounding of the stored column
    assert np.median(np.abs(diff)) < 1e-6
    assert np.mean(np.abs(diff)) < 0.01
    assert np.mean(np.abs(diff) < 1e-3) > 0.8


def test_hull_elements_and_rates(hull: MP20Hull, tmp_path: Path) -> None:
    assert hull.e_above_hull("O2", 0.0) == pytest.approx(0.0)
    assert len(hull.entries) == 45229
    from pymatgen.core import Composition

    li_mg = MP20Hull(e for e in hull.entries if Composition(e.formula).chemical_system_set <= {"Li", "Mg"})
    path = tmp_path / "hull.json"
    li_mg.to_json(path)
    again = MP20Hull.from_json(path)
    assert len(again.entries) == len(li_mg.entries) > 10
    assert again.hull_energy_per_atom("Li2Mg") == pytest.approx(hull.hull_energy_per_atom("Li2Mg"))
    assert hull.hull_energy_per_atom("Li2Mg") < 0
    rates = stability_rates([-0.05, 0.0, 0.05, 0.2, np.nan])
    assert rates == {"chgnet_mp20/stable_rate": 0.4, "chgnet_mp20/metastable_rate": 0.6}


def test_chgnet_relaxation_gives_e_above_hull_near_the_column(hull: MP20Hull, test_rows: pd.DataFrame) -> None:
    torch = pytest.importorskip("torch")
    from chgnet.model import CHGNet, StructOptimizer
    from pymatgen.core import Composition

    from chemgen.scoring.hull import chgnet_energies_per_atom, chgnet_stability

    torch.set_num_threads(1)
    # Three canonical Li-Mg test rows (LiMg, Li2Mg, LiMg2); the Li-Mg system has 17 val rows to fit on.
    picks = test_rows[test_rows["material_id"].isin(["mp-1094982", "mp-976843", "mp-865939"])]
    assert len(picks) == 3 and picks["e_above_hull"].notna().all()
    elements = set().union(*(Composition(f).chemical_system_set for f in picks["pretty_formula"]))
    # Fit the elemental references on val rows in the same chemical space (a few dozen single points).
    val = pd.read_csv(MP20 / "val.csv.gz")
    fit_rows = val[[Composition(f).chemical_system_set <= elements for f in val["pretty_formula"]]].head(60)
    model = CHGNet.load(verbose=False)
    energies = chgnet_energies_per_atom(_structures(fit_rows["cif"]), model)
    refs = fit_elemental_references(fit_rows["pretty_formula"], energies, fit_rows["formation_energy_per_atom"])
    assert set(refs.mu) == elements and refs.rmse < 0.15
    optimizer = StructOptimizer(model=model)
    for structure, column in zip(_structures(picks["cif"]), picks["e_above_hull"], strict=True):
        record = chgnet_stability(structure, hull, refs, optimizer, fmax=0.1, steps=100)
        assert record.error is None and record.steps >= 1
        assert abs(record.e_above_hull - column) < 0.05  # measured: <= 0.02

    # The same through the entry point: E_hull per sample, rates over all samples, S.U.N. needs novelty.
    samples = _structures(picks["cif"]) + [None]
    scores = score_crystals(samples, references=ReferenceSet.from_cifs(fit_rows["pretty_formula"], fit_rows["cif"]),
                            preset="mattergen", stability=True, hull=hull, chgnet_references=refs, relax_steps=100)
    e_hull = np.array([r.e_above_hull for r in scores.records[:3]], float)
    assert scores.metrics["chgnet_mp20/n_relaxed"] == 3 and np.all(np.abs(e_hull - picks["e_above_hull"]) < 0.05)
    assert scores.metrics["chgnet_mp20/metastable_rate"] == pytest.approx(np.sum(e_hull <= 0.1) / 4)
    assert scores.metrics["chgnet_mp20+mattergen/msun_rate"] <= scores.metrics["chgnet_mp20/metastable_rate"]
