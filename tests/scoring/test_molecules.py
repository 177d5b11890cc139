"""Molecule scores under the EDM, rdDetermineBonds and MMFF-relaxed protocols, on real QM9 molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

import chemgen.bonds as bonds
from chemgen.atoms import AtomicSystem
from chemgen.data.qm9 import iter_qm9, read_qm9_frame
from chemgen.bonds import ALLOWED_VALENCES, allowed_valence
from chemgen.scoring.molecules import MoleculeScores, ProtocolScores, novel_smiles, plot_molecule_scores, rdkit_stable_atoms, reference_smiles, score_molecules, score_one, uniqueness
from chemgen.scoring.relax_molecules import aligned_rmsd, relax_molecule, widened_connectivity

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


# EDM protocol on all 130,831 QM9 molecules, as this code reproduces it (docs/guides/scoring.md; EDM/GeoLDM's
# published "Data" row, ANCHORS B2, rounds to 99.0 / 95.2 / 97.7).
FULL_QM9_EDM = {"atom_stability": 0.9936, "molecule_stability": 0.9528, "validity": 0.9768}
Z = 4.0  # standard errors: a correct table fails by chance with probability ~6e-5 per metric


def _standard_errors(p: ProtocolScores) -> dict[str, float]:
    """Sampling errors of the three fractions over molecules drawn independently from QM9.

    Molecule stability and validity are binomial over molecules. Atom stability is a ratio of
    sums over molecules whose unstable atoms come in clusters (2-3 per unstable molecule), so
    atoms are not independent draws: its error is the delta-method (cluster) error of the ratio.
    """
    n = p.num_molecules
    unstable = (p.num_atoms - p.num_stable_atoms).astype(float)
    rate = unstable.sum() / p.num_atoms.sum()
    atom = math.sqrt(((unstable - rate * p.num_atoms) ** 2).sum() * n / (n - 1)) / p.num_atoms.sum()
    binomial = {key: math.sqrt(f * (1 - f) / n) for key, f in
                (("molecule_stability", p.molecule_stable.mean()), ("validity", p.valid.mean()))}
    return {"atom_stability": atom, **binomial}


def _edm_fractions(p: ProtocolScores) -> dict[str, float]:
    metrics = p.metrics()
    return {key: metrics[f"{p.protocol}/{key}"] for key in FULL_QM9_EDM}


@pytest.mark.parametrize("key", list(FULL_QM9_EDM))
def test_edm_scores_of_a_qm9_slice_match_the_full_qm9_values(sample_scores, key):
    # The slice is 2,000 molecules drawn from all of QM9, so it estimates the full-data value with
    # a sampling error: atom stability 0.08 points, molecule stability 0.5, validity 0.4.
    edm = sample_scores["edm"]
    tolerance = Z * _standard_errors(edm)[key]
    assert _edm_fractions(edm)[key] == pytest.approx(FULL_QM9_EDM[key], abs=tolerance)


def test_a_wrong_margin_table_fails_the_full_qm9_check(qm9_sample, sample_scores, monkeypatch):
    """The check above has the power to see a margin table 1 pm off: with margins (10, 4, 3)
    instead of EDM's (10, 5, 3) all of QM9 scores 98.74 % atom stability."""
    assert bonds.MARGINS_PM == (10, 5, 3)
    wrong = np.stack([bonds._threshold_matrix(table, margin) for table, margin in
                      zip((bonds.SINGLE_BOND_PM, bonds.DOUBLE_BOND_PM, bonds.TRIPLE_BOND_PM), (10, 4, 3))])
    monkeypatch.setattr(bonds, "_EDM_THRESHOLDS_PM", wrong)
    edm = score_molecules(qm9_sample, protocols=("edm",))["edm"]
    errors = _standard_errors(sample_scores["edm"])
    misses = {key: abs(value - FULL_QM9_EDM[key]) / errors[key] for key, value in _edm_fractions(edm).items()}
    # Well beyond Z (measured: 9 and 6 standard errors), so a slice drawn with another seed fails too.
    assert misses["atom_stability"] > Z + 3 and misses["molecule_stability"] > Z + 1, misses


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


# ============================================================================ rdkit: RDKit's valence rules
def _embedded(smiles: str) -> AtomicSystem:
    """A 3D molecule with explicit hydrogens (ETKDG, then MMFF94)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0 and AllChem.MMFFOptimizeMolecule(mol) == 0
    return AtomicSystem.from_rdkit(mol)


def test_rdkit_protocol_uses_rdkit_valences_where_edm_table_does_not():
    # Divalent S, hexavalent S and a charged nitro group: EDM's table (S: 4 only, no charges)
    # calls some of their atoms unstable; RDKit's valence rules accept every atom.
    molecules = [_embedded(s) for s in ("CSC", "CS(=O)(=O)C", "C[N+](=O)[O-]")]
    scores = score_molecules(molecules, protocols=("edm", "rdkit"))
    edm, rdkit = scores["edm"], scores["rdkit"]
    assert rdkit.molecule_stable.all() and rdkit.valid.all()
    assert not edm.molecule_stable.any()
    assert rdkit.smiles[1] == "[H]C([H])([H])S(=O)(=O)C([H])([H])[H]"
    assert rdkit.smiles[2] == "[H]C([H])([H])[N+](=O)[O-]"


def test_rdkit_stable_atoms_are_those_without_unpaired_electrons():
    mol = Chem.AddHs(Chem.MolFromSmiles("[CH2]C[SH2]"))  # a carbon radical and trivalent S
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(True)
    Chem.SanitizeMol(mol)
    stable = rdkit_stable_atoms(mol)
    assert [a.GetSymbol() for a, ok in zip(mol.GetAtoms(), stable) if not ok] == ["C", "S"]
    assert stable.sum() == mol.GetNumAtoms() - 2


# ============================================================================ edm_mmff: relaxed, then EDM
NOISE_RMSD = 0.10  # Angstrom: raw EDM molecule stability ~4 %, relaxed ~88 % (bench, 500 molecules)


def _noisy(systems: list[AtomicSystem], rmsd: float, seed: int = 0) -> list[AtomicSystem]:
    """Each atom displaced by isotropic Gaussian noise of RMS length ``rmsd``."""
    rng = np.random.default_rng(seed)
    return [s.replace(pos=s.pos + rng.normal(0.0, rmsd / np.sqrt(3), s.pos.shape)) for s in systems]


@pytest.fixture(scope="module")
def noisy_qm9(qm9_sample) -> list[AtomicSystem]:
    return _noisy(qm9_sample[:200], NOISE_RMSD)


@pytest.fixture(scope="module")
def noisy_scores(noisy_qm9) -> MoleculeScores:
    return score_molecules(noisy_qm9, protocols=("edm", "edm_mmff"))


def test_relaxation_recovers_noisy_qm9_that_raw_edm_rejects(noisy_scores):
    scores = noisy_scores.as_dict()
    assert scores["edm/molecule_stability"] < 0.15
    assert scores["edm_mmff/molecule_stability"] > 0.70
    assert scores["edm_mmff/atom_stability"] > 0.95 > 0.80 > scores["edm/atom_stability"]
    assert scores["edm_mmff/validity"] > 0.90 and scores["edm_mmff/relaxed"] > 0.95
    edm_keys = {k.split("/", 1)[1] for k in scores if k.startswith("edm/")}
    assert {k.split("/", 1)[1] for k in scores if k.startswith("edm_mmff/")} == edm_keys | {"relaxed"}


def test_edm_scores_are_the_same_with_or_without_edm_mmff_beside_them(noisy_qm9, noisy_scores):
    alone = score_molecules(noisy_qm9, protocols=("edm",)).as_dict()
    assert alone == {k: v for k, v in noisy_scores.as_dict().items() if k.startswith("edm/")}


def test_relaxation_only_moves_atoms(noisy_qm9):
    for system in noisy_qm9[:10]:
        relaxed, relaxation = relax_molecule(system)
        assert relaxation.relaxed and relaxation.force_field == "mmff" and relaxation.converged
        assert relaxed.atomic_numbers.tolist() == system.atomic_numbers.tolist()
        assert relaxed.pos.shape == system.pos.shape and np.isfinite(relaxed.pos).all()
        moved = np.sqrt(((relaxed.pos - system.pos) ** 2).sum(axis=1).mean())  # without superposition
        assert 0.01 < relaxation.displacement <= moved + 1e-9
        assert relaxed.formula == system.formula and relaxed.dataset == system.dataset


def test_aligned_rmsd_ignores_rigid_motion_but_not_mirroring(good):
    pos = good[0].pos
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert aligned_rmsd(pos @ rotation.T + [1.0, -2.0, 3.0], pos) == pytest.approx(0.0, abs=1e-6)
    shifted = pos.copy()
    shifted[0] += [0.3, 0.0, 0.0]
    assert 0.0 < aligned_rmsd(shifted, pos) < 0.3 / np.sqrt(len(pos)) + 1e-9
    assert aligned_rmsd(pos * [1, 1, -1], pos) > 0.1  # a mirror image is another shape


def test_relaxation_never_adds_hydrogens(qm9_sample):
    # A heavy-atom skeleton (hydrogens stripped) has no closed-shell bond orders on its own atoms;
    # making hydrogens implicit would "fix" it, so relaxation must refuse instead.
    system = next(s for s in qm9_sample if s.num_atoms >= 15)
    heavy = system.atomic_numbers > 1
    skeleton = AtomicSystem.molecule(system.atomic_numbers[heavy], system.pos[heavy])
    relaxed, relaxation = relax_molecule(skeleton)
    assert relaxed is skeleton and not relaxation.relaxed
    assert "bond orders" in relaxation.failure or "unpaired electrons" in relaxation.failure


def test_unrelaxable_molecules_are_scored_raw_with_their_reason(qm9_sample, noisy_qm9):
    system = next(s for s in qm9_sample if s.num_atoms >= 15)
    heavy = system.atomic_numbers > 1
    skeleton = AtomicSystem.molecule(system.atomic_numbers[heavy], system.pos[heavy])
    hydrogen_selenide = AtomicSystem.molecule([34, 1, 1], [[0, 0, 0], [1.46, 0, 0], [-0.04, 1.46, 0]])
    nan_pair = (system.atomic_numbers, np.full_like(system.pos, np.nan))
    broken = next(s for s in noisy_qm9 if not score_one(s, "edm").atom_stable.all())  # EDM's bonds do not serve
    batch = [broken, skeleton, hydrogen_selenide, nan_pair]
    scores = score_molecules(batch, protocols=("edm", "edm_mmff"))
    edm, mmff = scores["edm"], scores["edm_mmff"]
    assert mmff.relaxed.tolist() == [True, False, False, False]
    assert "outside EDM's tables" in mmff.relaxations[2].failure
    assert mmff.relaxations[3] is None  # unreadable: nothing to relax
    frame = scores.to_frame()
    assert frame["edm_mmff/relaxation"][0] == "MMFF94 on widened EDM connectivity"
    assert frame["edm_mmff/relaxation"][1].startswith("not relaxed (raw geometry scored): ")
    assert frame["edm_mmff/relaxation"][3] == "not relaxed: unreadable input"
    assert frame["edm_mmff/displacement"][1] == 0.0 and np.isnan(frame["edm_mmff/displacement"][3])
    # Not relaxed = scored exactly as raw EDM scores it.
    for k in (1, 2, 3):
        assert (mmff.num_stable_atoms[k], mmff.valid[k], mmff.smiles[k]) == (edm.num_stable_atoms[k], edm.valid[k],
                                                                              edm.smiles[k])
    assert scores.as_dict()["edm_mmff/relaxed"] == 1 / 4


def test_widened_connectivity_is_edm_connectivity_on_real_molecules(good):
    for system in good:
        edm = bonds.edm_bond_orders(system.atomic_numbers, system.pos) > 0
        assert (widened_connectivity(system.atomic_numbers, system.pos) > 0).tolist() == edm.tolist()


def test_widened_connectivity_caps_neighbours_at_edm_valence():
    # An H squeezed between two carbons (1.2 A from each) is within 1.3 x 109 pm of both, but
    # H keeps one bond: the closer one relative to its table length.
    numbers = np.array([6, 1, 6])
    pos = np.array([[0.0, 0, 0], [1.15, 0, 0], [2.40, 0, 0]])
    adjacency = widened_connectivity(numbers, pos)
    assert adjacency.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_edm_mmff_novelty_reads_training_molecules_as_edm_does(good):
    train, generated = good[:5], good[3:8]
    reference = reference_smiles(train, protocols=("edm", "edm_mmff"))
    assert reference["edm_mmff"] == reference["edm"]
    scores = score_molecules(generated, reference_smiles={"edm": reference["edm"]},
                             protocols=("edm", "edm_mmff")).as_dict()
    assert scores["edm/novelty"] == 3 / 5
    assert "edm_mmff/novelty" in scores  # the edm set serves edm_mmff too


def test_default_protocols_stay_raw(qm9_sample):
    assert set(score_molecules(qm9_sample[:2]).protocols) == {"edm", "rdkit"}
