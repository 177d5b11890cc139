"""DiffSpectra's DMT on real QM9 molecules: E(3) and permutation equivariance in float64, padding blindness,
the spectrum added to the time embedding, the self-conditioning adjacency (squared-distance cutoff), a loss
that falls under Adam, and the RDKit <-> dense-tensor round trip (zwitterions, nitro, aromatic rings)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from chemgen.bonds import BondPerceptionError, rdkit_determine_bonds
from chemgen.config import ConfigError
from chemgen.diffusion.vp import (
    CategoricalBlock,
    GraphState,
    JointVP,
    VPConfig,
    pair_mask_of,
)
from chemgen.models.diffspectra.dmt import DMT, DMT_SIZES, DMTConfig
from chemgen.models.diffspectra.graphs import (
    FORMAL_CHARGES,
    GraphEncodingError,
    graph_to_mol,
    graphs_to_mols,
    mol_to_tensors,
    mols_to_graphs,
)
from chemgen.testing import (
    ATOM_INVARIANTS,
    MASK,
    PAIR_INVARIANTS,
    POSITIONS,
    VECTORS,
    assert_equivariant,
)

TINY = DMT_SIZES["tiny"]
BLOCKS = (CategoricalBlock("atom_types", 5, 4.0), CategoricalBlock("charges", 3, 4.0))


def embedded(smiles: str, seed: int = 0) -> Chem.Mol:
    """A molecule from SMILES with explicit H and an ETKDG conformer."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return mol


@pytest.fixture(scope="module")
def qm9_mols() -> list[Chem.Mol]:
    """20 real QM9 molecules with bonds and charges perceived from their DFT geometry (rdDetermineBonds):
    the first 6 zwitterions of the table and 14 others drawn at random."""
    from chemgen.data.qm9 import read_qm9_frame, row_to_system

    frame = read_qm9_frame()
    charged = frame.SMILES.str.contains("+", regex=False)
    mols = []
    for rows, want in ((frame[charged].head(10), 6), (frame[~charged].sample(n=40, random_state=0), 14)):
        got = 0
        for row in rows.itertuples(index=False):
            try:
                mols.append(rdkit_determine_bonds(row_to_system(row)))
            except BondPerceptionError:
                continue
            got += 1
            if got == want:
                break
    assert len(mols) == 20
    return mols


@pytest.fixture(scope="module")
def vp() -> JointVP:
    return JointVP(VPConfig(), BLOCKS, edge_classes=4)


def lively_dmt(seed: int = 0, dtype=torch.float64, **changes) -> DMT:
    """The tiny DMT in eval mode with position updates of order 1 (the reference's scale 0.01 would move atoms
    by ~0.01 A and hide equivariance errors)."""
    torch.manual_seed(seed)
    model = DMT(dataclasses.replace(TINY, coord_scale_init=0.5, **changes)).to(dtype).eval()
    return model


def noisy_state(vp: JointVP, graphs, t: float, seed: int, dtype=torch.float64) -> GraphState:
    z0 = vp.normalize(graphs.pos.to(dtype), graphs.node_classes(), graphs.bonds, graphs.mask)
    eps = vp.noise(graphs.mask, dtype, torch.Generator().manual_seed(seed))
    return vp.q_sample(z0, torch.full((len(graphs.mask),), t, dtype=torch.float64), eps)


def first_atoms(state: GraphState, i: int, n: int) -> GraphState:
    """Molecule i of a batch, cut to its n atoms."""
    return GraphState(state.pos[i:i + 1, :n], state.nodes[i:i + 1, :n], state.edges[i:i + 1, :n, :n])


# ---------------------------------------------------------------------------- config
def test_config_validation_and_the_papers_size():
    with pytest.raises(ConfigError, match="adjacency heads"):
        DMTConfig(n_heads=2)
    with pytest.raises(ConfigError, match="divisible"):
        DMTConfig(nf=250)
    with pytest.raises(ConfigError, match="dropout"):
        DMTConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="too few"):
        DMTConfig(nf=8, n_heads=4)
    paper = DMT_SIZES["paper"]
    assert (paper.nf, paper.n_layers, paper.n_heads, paper.mlp_ratio, paper.dropout) == (256, 8, 16, 2, 0.1)
    assert (paper.edge_nf, paper.time_dim, paper.spatial_cutoff_sq) == (64, 1024, 2.0)
    with torch.device("meta"):
        count = sum(p.numel() for p in DMT(paper).parameters())
    assert count == 27_788_924   # without SpecFormer; the reference's two 1-channel bond heads would give 27,801,752


# ---------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("self_conditioned", [False, True])
def test_dmt_is_e3_and_permutation_equivariant(qm9_mols, vp, self_conditioned):
    model = lively_dmt()
    graphs = mols_to_graphs(qm9_mols[:3], dtype=torch.float64)        # sizes differ: padding is exercised
    mask = graphs.mask
    z_t = noisy_state(vp, graphs, 0.3, seed=1)
    g = torch.Generator().manual_seed(2)
    lam = torch.tensor([2.0, -1.0, 4.0], dtype=torch.float64)
    cond = torch.randn(3, TINY.cond_dim, generator=g, dtype=torch.float64)
    self_cond = noisy_state(vp, graphs, 0.05, seed=3) if self_conditioned else None
    out = model(z_t, lam, mask, cond, self_cond)
    assert (out.pos - z_t.pos).abs().max() > 0.1                        # the positions really move
    assert torch.equal(out.edges, out.edges.transpose(1, 2)) and torch.all(out.edges[~pair_mask_of(mask)] == 0)
    assert (out.pos * mask[..., None]).sum(1).abs().max() < 1e-10       # centred

    # positions rotate, the translation is removed (the prediction is centred); nodes and bonds are invariant
    fields_in = [POSITIONS, ATOM_INVARIANTS, PAIR_INVARIANTS, MASK]
    args = [z_t.pos, z_t.nodes, z_t.edges, mask]
    if self_conditioned:   # the estimate moves with the input
        fields_in += [POSITIONS, ATOM_INVARIANTS, PAIR_INVARIANTS]
        args += [self_cond.pos, self_cond.nodes, self_cond.edges]

    def denoise(pos, nodes, edges, mask, *estimate):
        x0 = model(GraphState(pos, nodes, edges), lam, mask, cond, GraphState(*estimate) if estimate else None)
        return x0.pos, x0.nodes, x0.edges

    assert_equivariant(denoise, args, fields_in, (VECTORS, ATOM_INVARIANTS, PAIR_INVARIANTS), tolerance=1e-10)


def test_dmt_output_does_not_depend_on_padding(qm9_mols, vp):
    model = lively_dmt(1)
    graphs = mols_to_graphs(qm9_mols[:4], dtype=torch.float64)
    z_t = noisy_state(vp, graphs, 0.5, seed=4)
    sc = noisy_state(vp, graphs, 0.1, seed=5)
    lam = torch.linspace(-2, 3, 4, dtype=torch.float64)
    cond = torch.randn(4, TINY.cond_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    together = model(z_t, lam, graphs.mask, cond, sc)
    for i in (0, 3):
        n = int(graphs.mask[i].sum())
        alone = model(first_atoms(z_t, i, n), lam[i:i + 1], graphs.mask[i:i + 1, :n], cond[i:i + 1],
                      first_atoms(sc, i, n))
        for block in ("pos", "nodes", "edges"):
            assert torch.allclose(getattr(alone, block), getattr(first_atoms(together, i, n), block), atol=1e-10)
        assert torch.all(together.nodes[i, n:] == 0) and torch.all(together.pos[i, n:] == 0)


# ---------------------------------------------------------------------------- conditioning
def test_the_spectrum_embedding_is_added_to_the_time_embedding_and_changes_the_output(qm9_mols, vp):
    model = lively_dmt(2)
    graphs = mols_to_graphs(qm9_mols[:2], dtype=torch.float64)
    z_t = noisy_state(vp, graphs, 0.4, seed=7)
    lam = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    s1, s2 = (torch.randn(2, TINY.cond_dim, generator=g, dtype=torch.float64) for _ in range(2))
    assert torch.allclose(model.conditioning(lam, s1), model.time_mlp(lam) + model.cond_lin(s1))
    assert torch.equal(model.conditioning(lam, None), model.time_mlp(lam))
    out1, out2, out_none = (model(z_t, lam, graphs.mask, s) for s in (s1, s2, None))
    for other in (out2, out_none):
        assert (out1.nodes - other.nodes).abs().max() > 1e-3
        assert (out1.edges - other.edges).abs().max() > 1e-3
        assert (out1.pos - other.pos).abs().max() > 1e-4
    # the same spectrum gives the same output (eval mode: no dropout)
    assert torch.equal(model(z_t, lam, graphs.mask, s1).nodes, out1.nodes)


def test_self_conditioning_adjacency_uses_bonds_and_squared_distance_cutoff():
    """A^2D: the estimate's no-bond channel <= 0; A^3D: |x_i - x_j|^2 <= 2 A^2, i.e. within 1.414 A."""
    model = lively_dmt(3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    pos = torch.tensor([[[0.0, 0, 0], [1.3, 0, 0], [2.8, 0, 0]]], dtype=torch.float64)   # 1.3 A, 1.5 A, 2.8 A
    edges = torch.full((1, 3, 3, 4), -1.0, dtype=torch.float64)
    edges[..., 0] = 1.0                                                   # "no bond" everywhere ...
    edges[0, 1, 2, 0] = edges[0, 2, 1, 0] = -0.2                          # ... except 1-2
    edges = edges * pair_mask_of(mask)[..., None]
    captured = {}
    def keep(module, args, out):   # returns None: the output is left as it is
        captured["adj"] = args[2]

    hook = model.blocks[0].attention.register_forward_hook(keep)
    model(GraphState(pos, torch.zeros(1, 3, TINY.node_features, dtype=torch.float64), edges),
          torch.zeros(1, dtype=torch.float64), mask, None, GraphState(pos, torch.zeros(1, 3, 8, dtype=torch.float64), edges))
    hook.remove()
    bonded, close = captured["adj"][0]
    assert bonded.tolist() == [[False, False, False], [False, False, True], [False, True, False]]
    assert close.tolist() == [[False, True, False], [True, False, False], [False, False, False]]   # 1.3 A only


# ---------------------------------------------------------------------------- training
def test_training_loss_falls_on_real_qm9_molecules(qm9_mols, vp):
    mols = sorted(qm9_mols, key=lambda m: m.GetNumAtoms())[:6]             # includes zwitterions
    graphs = mols_to_graphs(mols)
    assert graphs.charges[graphs.mask].ne(FORMAL_CHARGES.index(0)).any()
    z0 = vp.normalize(graphs.pos, graphs.node_classes(), graphs.bonds, graphs.mask)
    torch.manual_seed(0)
    model = DMT(TINY)
    cond = torch.randn(len(mols), TINY.cond_dim, generator=torch.Generator().manual_seed(0))  # stand-in spectra
    g = torch.Generator().manual_seed(1)
    fixed = [(t, vp.noise(graphs.mask, torch.float32, g)) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]

    def held_loss() -> float:
        model.eval()
        with torch.no_grad():
            total = sum(vp.loss(model, z0, graphs.mask, cond, t=torch.full((len(mols),), t, dtype=torch.float64),
                                eps=eps, self_condition=False).loss.mean() for t, eps in fixed)
        model.train()
        return float(total) / len(fixed)

    before = held_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    used_self_cond = 0
    for _ in range(100):
        terms = vp.loss(model, z0, graphs.mask, cond, generator=g)
        used_self_cond += terms.self_conditioned
        optimizer.zero_grad()
        terms.loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    after = held_loss()
    assert 25 < used_self_cond < 75
    assert after < 0.5 * before, (before, after)


def test_sampling_with_the_dmt_is_seeded_and_decodes(qm9_mols, vp):
    torch.manual_seed(0)
    model = DMT(TINY).eval()
    graphs = mols_to_graphs(qm9_mols[:2])
    cond = torch.randn(2, TINY.cond_dim)
    runs = [vp.sample(model, graphs.mask, cond, num_steps=4, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0].pos, runs[1].pos) and not torch.allclose(runs[0].pos, runs[2].pos)
    pos, nodes, bonds = vp.decode(runs[0], graphs.mask)
    assert torch.equal(bonds, bonds.transpose(1, 2)) and int(nodes["atom_types"].max()) < 5
    out = graphs_to_mols(dataclasses.replace(graphs, pos=pos, atom_types=nodes["atom_types"], charges=nodes["charges"],
                                             bonds=bonds))
    assert len(out) == 2 and all(m is None or m.GetNumAtoms() == int(n) for m, n in zip(out, graphs.num_atoms))


# ---------------------------------------------------------------------------- RDKit round trip
def test_rdkit_round_trip_keeps_canonical_smiles(qm9_mols):
    extra = [embedded(s) for s in ("C[N+](=O)[O-]", "c1ccncc1", "[C-]#[N+]C", "O=C([O-])C[NH3+]")]
    mols = qm9_mols + extra
    graphs = mols_to_graphs(mols)
    back = graphs_to_mols(graphs)
    for mol, rebuilt in zip(mols, back):
        assert rebuilt is not None, Chem.MolToSmiles(mol)
        assert Chem.MolToSmiles(rebuilt) == Chem.MolToSmiles(mol)
        assert Chem.MolToSmiles(Chem.RemoveHs(rebuilt)) == Chem.MolToSmiles(Chem.RemoveHs(mol))
        assert torch.allclose(torch.tensor(rebuilt.GetConformer().GetPositions()),
                              torch.tensor(mol.GetConformer().GetPositions()), atol=1e-5)
    charged = [m for m in mols if any(a.GetFormalCharge() for a in m.GetAtoms())]
    assert len(charged) >= 8                                   # 6 QM9 zwitterions, nitro, isocyanide, glycine
    assert any(b.GetIsAromatic() for m in mols for b in m.GetBonds())
    # aromatic rings are stored Kekule: pyridine has 3 double bonds, no aromatic class
    _, _, _, bonds = mol_to_tensors(extra[1])
    assert sorted(bonds[bonds > 0].tolist()).count(2) == 6 and bonds.max() == 2
    nitro = mol_to_tensors(extra[0])
    assert sorted(FORMAL_CHARGES[c] for c in nitro[2].tolist()) == [-1, 0, 0, 0, 0, 0, 1]   # CH3-N(+)(=O)-O(-)


def test_encoding_refuses_what_the_vocabulary_cannot_hold():
    with pytest.raises(GraphEncodingError, match="element S"):
        mol_to_tensors(embedded("CS"))
    with pytest.raises(GraphEncodingError, match="implicit hydrogens"):
        no_h = Chem.MolFromSmiles("CO")
        AllChem.EmbedMolecule(no_h, randomSeed=0)
        mol_to_tensors(no_h)
    with pytest.raises(GraphEncodingError, match="conformer"):
        mol_to_tensors(Chem.AddHs(Chem.MolFromSmiles("C")))
    # five bonds on a carbon is not a molecule; a bare carbon is a radical (hydrogens are never implied) ...
    pos = torch.zeros(6, 3)
    star = torch.zeros(6, 6, dtype=torch.long)
    star[0, 1:] = star[1:, 0] = 1
    assert graph_to_mol(pos, torch.tensor([1, 0, 0, 0, 0, 0]), torch.ones(6, dtype=torch.long), star) is None
    lone = graph_to_mol(torch.zeros(1, 3), torch.tensor([1]), torch.tensor([1]), torch.zeros(1, 1, dtype=torch.long))
    assert lone.GetAtomWithIdx(0).GetNumRadicalElectrons() == 4
    # ... unless asked to read it as the reference does (implicit H), and charges outside the allowed set drop
    methane = graph_to_mol(torch.zeros(1, 3), torch.tensor([1]), torch.tensor([2]), torch.zeros(1, 1, dtype=torch.long),
                           implicit_hydrogens=True, allowed_charges={(7, 1)})
    assert Chem.MolToSmiles(methane) == "C" and methane.GetAtomWithIdx(0).GetFormalCharge() == 0
