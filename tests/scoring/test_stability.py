"""Tests of the stability proxy: batched CHGNet relaxation, leave-one-out hull queries, sigma and metrics.

Real structures are small MP-20 test rows (<= 5 atoms), rattled with a fixed seed so FIRE has work to
do; step caps are small. The FIRE and cell-filter maths are checked against ASE itself.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.calculators.calculator import Calculator, all_changes

from chemgen.scoring.hull import HullEntry, MP20Hull, StabilitySigma, load_chgnet_sigma, residual_stats, sample_mp20_rows
from chemgen.scoring.stability import stability_metrics, stable_probability
from chemgen.scoring.relax import FireParams, FireState, RelaxOutcome, fire_step, frechet_cell_force, relax_structures
from chemgen.scoring.stability import relax_and_score

SMALL_ROWS = ["mp-1225695", "mp-1218989", "mp-867922", "mp-1228956"]  # CuNi, SmThCN, ScAlRh2, AlAu4


@pytest.fixture(scope="module")
def model():
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False)


@pytest.fixture(scope="module")
def rattled(data_dir: Path) -> list:
    """Four small MP-20 test crystals, atoms moved by ~0.1 A and the cell strained by up to 3 %."""
    from pymatgen.core import Lattice, Structure

    rows = pd.read_csv(data_dir / "mp_20" / "test.csv.gz", nrows=40).set_index("material_id").loc[SMALL_ROWS]
    rng = np.random.default_rng(7)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in rows["cif"]:
            s = Structure.from_str(cif, fmt="cif", primitive=False)
            lattice = Lattice(s.lattice.matrix @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))))
            shift = rng.normal(0, 0.1, (len(s), 3)) @ np.linalg.inv(lattice.matrix)  # Cartesian -> fractional
            out.append(Structure(lattice, s.species, s.frac_coords + shift))
    return out


# ----------------------------------------------------------------------------- FIRE and the cell filter vs ASE
class Springs(Calculator):
    """ASE calculator: every atom on its own spring to the origin, of its own stiffness."""

    implemented_properties = ("energy", "forces")

    def __init__(self, stiffness: np.ndarray) -> None:
        super().__init__()
        self.stiffness = stiffness

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions
        self.results = {"energy": 0.5 * float(np.sum(self.stiffness[:, None] * d**2)),
                        "forces": -self.stiffness[:, None] * d}


def test_batched_fire_follows_ase_fire_step_by_step() -> None:
    """Two systems at once: a stiff one (FIRE overshoots: uphill resets) and a far one (maxstep cap)."""
    from ase import Atoms
    from ase.optimize import FIRE

    rng = np.random.default_rng(0)
    systems = [(np.array([30.0, 5.0, 12.0]), rng.normal(0, 0.3, (3, 3))),
               (np.array([1.0, 0.5]), rng.normal(0, 30.0, (2, 3)))]
    expected = []
    for k, x0 in systems:
        atoms = Atoms("H" * len(k), positions=x0)
        atoms.calc = Springs(k)
        opt, path = FIRE(atoms, logfile=None), []
        for _ in opt.irun(fmax=1e-9, steps=40):
            path.append(atoms.positions.copy())
        expected.append(np.array(path[1:]))  # after each step

    owner = np.concatenate([np.full(len(k), i) for i, (k, _) in enumerate(systems)])
    stiff = np.concatenate([k for k, _ in systems])
    x = np.concatenate([x0 for _, x0 in systems])
    vel = np.zeros_like(x)
    params = FireParams()
    state = FireState(np.full(2, params.dt), np.full(2, params.astart), np.zeros(2, int), np.zeros(2, bool))
    got, dts = [], []
    for _ in range(40):
        x, vel = fire_step(x, vel, -stiff[:, None] * x, owner, state, params)
        got.append(x.copy())
        dts.append(state.dt.copy())
    got = np.array(got)
    assert np.min(np.array(dts)[:, 0]) < params.dt  # the stiff system went uphill and halved dt
    first = got[0, owner == 1] - systems[1][1]
    assert np.linalg.norm(first) == pytest.approx(params.maxstep)  # the far one was capped
    for i in range(2):
        np.testing.assert_allclose(got[:, owner == i], expected[i], atol=1e-10)


def test_frechet_cell_force_matches_ase_filter() -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter
    from ase.stress import full_3x3_to_voigt_6_stress
    from scipy.linalg import expm

    rng = np.random.default_rng(1)
    n = 5
    atoms = Atoms("Si" * n, scaled_positions=rng.random((n, 3)), cell=np.diag([4.0, 5.0, 6.0]) + rng.normal(0, .3, (3, 3)),
                  pbc=True)
    filt = FrechetCellFilter(atoms)
    log_f = rng.normal(0, 0.05, (3, 3))
    atoms.set_cell(atoms.cell[:] @ expm(log_f).T, scale_atoms=True)
    stress = rng.normal(0, 0.01, (3, 3))
    stress = 0.5 * (stress + stress.T)
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((n, 3)),
                                       stress=full_3x3_to_voigt_6_stress(stress))
    ase_cell_rows = filt.get_forces()[n:]
    ours = frechet_cell_force(log_f[None], -atoms.cell.volume * stress[None], np.array([n]))[0]
    np.testing.assert_allclose(ours, ase_cell_rows, rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------- batched relaxation vs StructOptimizer
def test_batched_relaxation_matches_struct_optimizer(model, rattled: list) -> None:
    from chgnet.model import StructOptimizer

    batched = relax_structures(rattled, model, fmax=0.1, steps=60, batch_size=3, progress=False)
    optimizer = StructOptimizer(model=model)
    for structure, outcome in zip(rattled, batched, strict=True):
        result = optimizer.relax(structure, fmax=0.1, steps=60, verbose=False)
        energy = result["trajectory"].energies[-1] / len(structure)
        assert outcome.status == "converged" and outcome.error is None
        assert abs(outcome.energy_per_atom - energy) < 0.005  # measured: < 1e-4 eV/atom
        assert abs(outcome.steps - (len(result["trajectory"].energies) - 2)) <= 2  # same FIRE path
        assert outcome.energy_per_atom < outcome.initial_energy_per_atom  # it did relax
        final = result["final_structure"]
        assert outcome.structure.volume == pytest.approx(final.volume, rel=0.01)
        assert outcome.fmax < 0.1


def test_bad_structures_fail_alone(model, rattled: list, monkeypatch: pytest.MonkeyPatch) -> None:
    from pymatgen.core import Lattice, Structure

    from chemgen.scoring import relax

    nan_coords = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, np.nan, 0.5]])
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [4, 4, 0]]), ["Na"], [[0, 0, 0]])
    batch = [rattled[0], nan_coords, None, flat, rattled[1]]
    # and one good-looking crystal whose CHGNet pass raises: it must not take the batch down with it
    poisoned = len(rattled[3])
    assert poisoned not in {len(s) for s in rattled[:3]}
    real_forward = relax._forward

    def forward(model, graphs):
        if any(len(g.atomic_number) == poisoned for g in graphs):
            raise RuntimeError("poisoned")
        return real_forward(model, graphs)

    monkeypatch.setattr(relax, "_forward", forward)
    out = relax_structures([*batch, rattled[3]], model, steps=30, batch_size=8, progress=False)
    assert [o.status for o in out] == ["converged", "failed", "failed", "failed", "converged", "failed"]
    assert "non-finite" in out[1].error and out[2].error == "no structure" and "degenerate" in out[3].error
    assert "poisoned" in out[5].error
    monkeypatch.setattr(relax, "_forward", real_forward)
    alone = relax_structures([rattled[0], rattled[1]], model, steps=30, progress=False)
    assert [o.energy_per_atom for o in alone] == pytest.approx([out[0].energy_per_atom, out[4].energy_per_atom],
                                                               abs=1e-5)


def test_step_cap_and_time_budget_are_flagged(model, rattled: list) -> None:
    capped = relax_structures(rattled[:2], model, steps=2, progress=False)
    assert all(o.status == "step_cap" and o.steps == 2 and math.isfinite(o.energy_per_atom) for o in capped)
    assert all(o.fmax >= 0.1 for o in capped)
    late = relax_structures(rattled[:2], model, time_budget_s=0.0, progress=False)
    assert all(o.status == "time_budget" and o.steps == 0 and math.isnan(o.energy_per_atom) for o in late)
    assert all("budget" in o.error for o in late)


def test_parallel_workers_give_the_serial_result(rattled: list) -> None:
    serial = relax_structures(rattled[:2], steps=5, progress=False)
    parallel = relax_structures(rattled[:2], steps=5, workers=2, progress=False)
    assert [o.status for o in parallel] == [o.status for o in serial]
    assert [o.energy_per_atom for o in parallel] == pytest.approx([o.energy_per_atom for o in serial], abs=1e-5)


# ----------------------------------------------------------------------------- relax and score
def _li_mg_hull() -> MP20Hull:
    return MP20Hull([HullEntry("li", "Li", 0.0), HullEntry("mg", "Mg", 0.0), HullEntry("a", "LiMg", -0.10),
                     HullEntry("b", "Li2Mg", -0.05), HullEntry("c", "LiMg2", -0.04)])


def test_relax_and_score_uses_references_and_hull(model) -> None:
    from pymatgen.core import Lattice, Structure

    from chemgen.scoring.hull import ElementalReferences

    refs = ElementalReferences({"Li": -1.9, "Mg": -1.6})
    limg = Structure(Lattice.cubic(3.45), ["Li", "Mg"], [[0, 0, 0], [0.52, 0.5, 0.49]])  # CsCl type, rattled
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # no Na/Cl reference
    hull = _li_mg_hull()
    records = relax_and_score([limg, nacl, None], hull, refs, model=model, steps=40, progress=False)
    r = records[0]
    assert r.status == "converged" and r.error is None
    assert r.e_form_per_atom == pytest.approx(r.energy_per_atom - (-1.9 - 1.6) / 2)
    assert r.e_above_hull == pytest.approx(r.e_form_per_atom - (-0.10))
    assert "no elemental reference" in records[1].error and records[1].status == "failed"
    assert records[2].error == "no structure" and math.isnan(records[2].e_above_hull)


# ----------------------------------------------------------------------------- leave-one-out hull
def test_hull_without_an_entry() -> None:
    hull = _li_mg_hull()
    assert hull.e_above_hull("LiMg", -0.10) == pytest.approx(0.0)
    # Li2Mg and LiMg2 lie above the Li-LiMg-Mg hull; without LiMg both become vertices and the hull
    # at x_Mg = 1/2 is their equal mix
    mix = 0.5 * (-0.05) + 0.5 * (-0.04)
    assert hull.hull_energy_per_atom("LiMg", exclude="a") == pytest.approx(mix)
    assert hull.e_above_hull("LiMg", -0.10, exclude=["a"]) == pytest.approx(-0.10 - mix)
    # an entry above the hull changes nothing, so the cached diagram is served
    assert hull.phase_diagram({"Li", "Mg"}, exclude="c") is hull.phase_diagram({"Li", "Mg"})
    assert hull.phase_diagram({"Li", "Mg"}, exclude="a") is not hull.phase_diagram({"Li", "Mg"})
    assert hull.hull_energy_per_atom("LiMg") == pytest.approx(-0.10)  # the cache is untouched


# ----------------------------------------------------------------------------- sigma and metrics
def test_sigma_from_rows_and_its_cache(tmp_path: Path) -> None:
    residuals = np.array([-0.02, -0.01, 0.0, 0.01, 0.02, 0.8])  # one CHGNet outlier
    rows = pd.DataFrame({"formation_energy_per_atom": np.zeros(6), "e_form_chgnet": residuals,
                         "e_form_chgnet_sp": residuals * 2})
    sigma = StabilitySigma.from_rows(rows)
    assert sigma.method == "rms" and sigma.sigma == pytest.approx(np.sqrt(np.mean(residuals**2)))
    robust = StabilitySigma.from_rows(rows, "robust")
    assert robust.sigma == pytest.approx(1.4826 * 0.015) == sigma.relaxed["robust"]
    assert sigma.sigma > 10 * robust.sigma  # the outlier dominates the RMS, not the robust spread
    assert sigma.single_point["mae"] == pytest.approx(2 * sigma.relaxed["mae"])
    path = tmp_path / "sigma.json"
    sigma.to_json(path)
    assert load_chgnet_sigma(path) == sigma  # served from the file, nothing rebuilt
    assert residual_stats([np.nan]) == {"n": 0.0}
    with pytest.raises(ValueError):
        StabilitySigma.from_rows(rows, "std")


def test_stability_metrics() -> None:
    e = np.array([-0.05, 0.0, 0.05, 0.2, np.nan])
    un = np.array([True, False, True, True, True])
    sigma = 0.04
    m = stability_metrics(e, n_total=10, sigma=sigma, unique_novel=un, sun_prefix="chgnet_mp20+mattergen")
    phi = [0.5 * math.erfc(x / (sigma * math.sqrt(2))) for x in e[:4]]
    assert m["chgnet_mp20/metastable_rate"] == 0.3 and m["chgnet_mp20/stable_rate"] == 0.2
    assert m["chgnet_mp20/expected_stable_count"] == pytest.approx(sum(phi))
    assert m["chgnet_mp20/expected_stable_rate"] == pytest.approx(sum(phi) / 10)
    assert m["chgnet_mp20/n_relaxed"] == 4 and m["chgnet_mp20/mean_e_above_hull"] == pytest.approx(0.05)
    assert m["chgnet_mp20+mattergen/msun_rate"] == 0.2 and m["chgnet_mp20+mattergen/sun_rate"] == 0.1
    assert m["chgnet_mp20+mattergen/expected_sun_rate"] == pytest.approx((phi[0] + phi[2] + phi[3]) / 10)
    assert stable_probability([0.0, np.nan], sigma).tolist() == [0.5, 0.0]
    assert "chgnet_mp20/msun_rate" not in stability_metrics(e, 5, sigma)
    with pytest.raises(ValueError):
        stability_metrics(e, 5, sigma, unique_novel=un[:3])


def test_sample_rows_is_a_seeded_prefix(data_dir: Path) -> None:
    from chemgen.scoring.hull import ElementalReferences

    small = sample_mp20_rows("val", 5, seed=3, data_dir=data_dir)
    large = sample_mp20_rows("val", 20, seed=3, data_dir=data_dir)
    assert list(large["material_id"][:5]) == list(small["material_id"])
    only_o = sample_mp20_rows("val", None, seed=3, data_dir=data_dir,
                              references=ElementalReferences({"Li": 0.0, "O": 0.0}))
    from pymatgen.core import Composition

    assert 0 < len(only_o) < 100
    assert all(Composition(f).chemical_system_set <= {"Li", "O"} for f in only_o["pretty_formula"])


def test_outcome_flag() -> None:
    assert RelaxOutcome(None, 0.0, 0.0, 3, 0.05, "converged").converged
    assert not RelaxOutcome(None, 0.0, 0.0, 3, 0.5, "step_cap").converged
