"""Molecule scores under the EDM and rdDetermineBonds protocols, on real QM9 molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chemgen.atoms import AtomicSystem
from chemgen.data.qm9 import iter_qm9, read_qm9_frame
from chemgen.scoring.molecules import (
    ALLOWED_VALENCES, MoleculeScores, allowed_valence, novel_smiles, plot_molecule_scores, reference_smiles,
    score_molecules, score_one, uniqueness,
)

SAMPLE_SIZE = 2000
SAMPLE_SEED = 0


@pytest.fixture(scope="module")
def qm9_sample() -> list[AtomicSystem]:
    """2,000 real QM9 molecules chosen by a fixed seed."""
    frame = read_qm9_frame()
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(frame), SAMPLE_SIZE, replace=False))
    systems = [s for _, s in iter_qm9(frame.iloc[rows])]
    assert all(isinstance(s, AtomicSystem) for s in systems)
    return systems


@pytest.fixture(scope="module")
def sample_scores(qm9_sample) -> MoleculeScores:
    return score_molecules(qm9_sample)


@pytest.fixture(scope="module")
def good(qm9_sample, sample_scores) -> list[AtomicSystem]:
    """Sample molecules valid and stable under both protocols, with distinct SMILES."""
    edm, rdkit = sample_scores["edm"], sample_scores["rdkit"]
    ok = edm.valid & edm.molecule_stable & rdkit.valid & rdkit.molecule_stable
    return [s for s, keep in zip(qm9_sample, ok) if keep][:20]


def _binomial_tolerance(p: float, n: int, z: float = 4.0) -> float:
    """z standard errors of a fraction p estimated from n independent molecules."""
    return z * math.sqrt(p * (1 - p) / n)


# EDM / GeoLDM Table 1, "Data" row (QM9 with hydrogens); ANCHORS A1.
@pytest.mark.parametrize(("key", "expected"), [
    ("edm/molecule_stability", 0.952),
    ("edm/validity", 0.977),
])
def test_edm_scores_of_real_qm9_match_published_data_row(sample_scores, key, expected):
    # A 2,000-molecule sample: 4 binomial standard errors (1.2 points for stability, 0.9 for validity).
    assert sample_scores.as_dict()[key] == pytest.approx(expected, abs=_binomial_tolerance(expected, SAMPLE_SIZE))


def test_edm_atom_stability_of_real_qm9_matches_published_data_row(sample_scores):
    # ~36k atoms, but unstable atoms cluster in ~100 molecules (2-3 each): the standard error
    # is ~0.1 point. This code gives 99.36 % on all of QM9, above the published 99.0 %, so the
    # bound is the 0.5 point the published value is trusted to; it still fails on a wrong
    # margin (single-bond margin 5 instead of 10 pm gives 98.1 % on this sample).
    assert sample_scores.as_dict()["edm/atom_stability"] == pytest.approx(0.990, abs=0.005)


def test_real_qm9_is_unique_and_rdkit_protocol_is_close_behind(sample_scores):
    scores = sample_scores.as_dict()
    assert scores["edm/uniqueness"] == 1.0  # QM9 has no duplicate graphs at this sample size
    assert scores["edm/valid_and_unique"] == pytest.approx(scores["edm/validity"] * scores["edm/uniqueness"])
    # rdDetermineBonds fails on ~5 % of QM9 and then counts the molecule invalid and unstable.
    assert 0.90 < scores["rdkit/validity"] < scores["edm/validity"]
    assert 0.90 < scores["rdkit/molecule_stability"] <= scores["rdkit/validity"] + 1e-12


def test_scores_name_their_protocol_and_are_fractions(sample_scores):
    scores = sample_scores.as_dict()
    assert {k.split("/")[0] for k in scores} == {"edm", "rdkit"}
    assert "edm/novelty" not in scores  # no reference given
    for key, value in scores.items():
        assert isinstance(value, float)
        if key.endswith("num_molecules"):
            assert value == SAMPLE_SIZE
        else:
            assert 0.0 <= value <= 1.0, key


def test_per_molecule_arrays_are_consistent(sample_scores):
    edm = sample_scores["edm"]
    assert edm.num_atoms.shape == edm.valid.shape == (SAMPLE_SIZE,)
    assert edm.atom_valences.size == edm.num_atoms.sum() == edm.atom_stable.size
    assert np.bincount(edm.atom_molecule, weights=edm.atom_stable, minlength=SAMPLE_SIZE).astype(int).tolist() \
        == edm.num_stable_atoms.tolist()
    assert all((s is None) == (not ok) for s, ok in zip(edm.smiles, edm.valid))
    assert all((f is None) == ok for f, ok in zip(edm.failures, edm.valid))
    frame = sample_scores.to_frame()
    assert len(frame) == SAMPLE_SIZE and "rdkit/failure" in frame


def test_allowed_valence_table():
    z = np.array([1, 6, 7, 8, 9, 15, 15, 15, 6, 10])
    v = np.array([1, 4, 3, 2, 1, 3, 5, 4, 40, 0])
    assert allowed_valence(z, v).tolist() == [True] * 7 + [False, False, False]
    assert ALLOWED_VALENCES["P"] == (3, 5) and ALLOWED_VALENCES["Hg"] == (1, 2)


def test_compressed_molecule_is_invalid_and_stretched_one_unstable(qm9_sample):
    system = next(s for s in qm9_sample if s.num_atoms >= 15)
    centre = system.pos.mean(axis=0)
    compressed = system.replace(pos=centre + 0.6 * (system.pos - centre))
    stretched = system.replace(pos=centre + 2.0 * (system.pos - centre))
    scores = score_molecules([system, compressed, stretched])
    edm, rdkit = scores["edm"], scores["rdkit"]
    assert edm.molecule_stable.tolist() == [True, False, False]
    assert edm.num_stable_atoms[2] == 0  # every bond broken
    assert edm.valid.tolist()[:2] == [True, False]
    assert "valence" in edm.failures[1]
    # EDM lets lone atoms take implicit H, so atoms pulled apart still sanitize (as in EDM):
    # the largest fragment is then a single heavy atom with its hydrogens.
    assert edm.valid[2] and edm.smiles[2] in {"C", "N", "O", "F"}
    assert rdkit.valid.tolist() == [True, False, False]
    assert all(f.startswith("rdDetermineBonds") for f in rdkit.failures[1:])


def test_bad_molecules_are_invalid_and_never_stop_the_batch(good):
    good = good[0]
    nan_pair = (good.atomic_numbers, np.full_like(good.pos, np.nan))
    bad_numbers = (np.array([6, 0, 1]), np.zeros((3, 3)))
    neon = AtomicSystem.molecule([10, 6], [[0, 0, 0], [3, 0, 0]])
    crystal = AtomicSystem.crystal([6], [[0, 0, 0]], np.eye(3) * 3.0)
    lone_carbon = AtomicSystem.molecule([6], [[0, 0, 0]])
    batch = [good, nan_pair, bad_numbers, neon, crystal, "not a molecule", lone_carbon, good.replace()]
    scores = score_molecules(batch)
    edm, rdkit = scores["edm"], scores["rdkit"]
    assert edm.valid.tolist() == [True, False, False, False, False, False, True, True]
    assert "NaN" in edm.failures[1] and "unreadable" in edm.failures[2]
    assert "outside EDM's atom decoder" in edm.failures[3] and "periodic" in edm.failures[4]
    assert edm.smiles[6] == "C"  # EDM: a lone C takes four implicit H and sanitizes (methane)
    assert edm.molecule_stable.tolist() == [True] + [False] * 6 + [True]
    # Atoms of unreadable molecules still count in the atom-stability denominator.
    assert edm.num_atoms.tolist() == [good.num_atoms, good.num_atoms, 3, 2, 1, 0, 1, good.num_atoms]
    assert rdkit.valid[[0, 7]].all() and not rdkit.valid[1:7].any()
    scores.as_dict()  # metrics of a batch with failures compute


def test_uniqueness_and_novelty_exact_fractions(good):
    a, b, c = good[:3]
    nan_pair = (a.atomic_numbers, np.full_like(a.pos, np.nan))
    reference = reference_smiles([a])
    scores = score_molecules([a, a, b, c, nan_pair], reference_smiles=reference).as_dict()
    for p in ("edm", "rdkit"):
        assert scores[f"{p}/validity"] == 4 / 5
        assert scores[f"{p}/uniqueness"] == 3 / 4
        assert scores[f"{p}/valid_and_unique"] == 3 / 5
        assert scores[f"{p}/novelty"] == 2 / 3  # EDM: novel / unique
        assert scores[f"{p}/novelty_over_valid"] == 2 / 4  # ADiT: novel / valid


def test_uniqueness_and_novelty_helpers():
    assert uniqueness(["C", "C", "O", "N"]) == 3 / 4
    assert uniqueness([]) == 0.0  # EDM reports 0 when nothing is valid
    assert novel_smiles(["C", "C", "O", "N"], {"C", "CC"}) == {"O", "N"}


def test_reference_smiles_are_whole_molecules_but_scores_keep_the_largest_fragment(good):
    big = max(good, key=lambda s: s.num_atoms)
    small = min(good, key=lambda s: s.num_atoms)
    assert big.num_atoms > small.num_atoms
    pair = AtomicSystem.molecule(np.concatenate([big.atomic_numbers, small.atomic_numbers]),
                                 np.concatenate([big.pos, small.pos + 20.0]))
    (reference,) = reference_smiles([pair], protocols=("edm",)).values()
    (whole,) = reference
    scored = score_molecules([pair, big], protocols=("edm",))["edm"].smiles
    assert "." in whole and scored[0] == scored[1] and scored[0] in whole.split(".")


def test_score_one_and_argument_errors(qm9_sample, good):
    outcome = score_one(good[0], "edm")
    assert outcome.valid and outcome.atom_stable.all() and outcome.valences.sum() % 2 == 0
    # Cyanogen N#C-C#N: its 1.38 A C-C bond is shorter than EDM's C=C threshold (139 pm), so C
    # gets valence 5 and the molecule fails sanitization, as it does in EDM.
    cyanogen = next(s for s in qm9_sample if s.formula == "C2N2")
    outcome = score_one(cyanogen, "edm")
    assert outcome.valences.tolist() == [3, 5, 5, 3] and not outcome.valid
    with pytest.raises(ValueError, match="no molecules"):
        score_molecules([])
    with pytest.raises(ValueError, match="protocols"):
        score_molecules(qm9_sample[:1], protocols=("adit",))
    with pytest.raises(TypeError, match="maps each protocol"):
        score_molecules(qm9_sample[:1], reference_smiles={"C"})


def test_plot_molecule_scores_writes_pngs(sample_scores, tmp_path):
    subset = MoleculeScores({"edm": sample_scores["edm"]})
    paths = plot_molecule_scores(subset, tmp_path / "plots")
    assert [p.name for p in paths] == ["edm_valence_by_element.png", "edm_num_atoms.png", "edm_stability.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
