"""GFMDiff on real QM9 molecules: an E(3)-equivariant, padding-blind DTN, the reference's factorised layers,
EDM valences, GFLoss against a slow reading of its definition, a loss that falls, reproducible samples."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from chemgen.bonds import (
    DOUBLE_BOND_PM,
    MARGINS_PM,
    SINGLE_BOND_PM,
    TRIPLE_BOND_PM,
    edm_bond_orders,
)
from chemgen.config import from_dict
from chemgen.data.tensors import TensorPack
from chemgen.models.protocol import Generator
from chemgen.models.gfmdiff import PRESETS, GFMDiff, GFMDiffConfig, preset
from chemgen.models.gfmdiff.bonds import (
    QM9_ELEMENTS,
    bond_cutoffs_angstrom,
    edm_thresholds_pm,
    edm_valence,
)
from chemgen.models.gfmdiff.dtn import DualTrackTransformer
from chemgen.models.gfmdiff.gfloss import gfloss, predicted_valence
from chemgen.testing import ATOM_INVARIANTS, MASK, POSITIONS, VECTORS, assert_equivariant

SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


@pytest.fixture(scope="module")
def pack(qm9_systems) -> TensorPack:
    return TensorPack.from_systems(qm9_systems[:8])


@pytest.fixture(scope="module")
def small_pack(qm9_systems) -> TensorPack:
    """The 8 smallest of the sampled molecules (the DTN's triplet track costs N^3: keeps training tests fast)."""
    return TensorPack.from_systems(sorted(qm9_systems, key=lambda s: s.num_atoms)[:8])


def noisy_input(batch, generator: torch.Generator, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t-like input: real positions jittered, random features; t in [0, 1]."""
    mask = batch.mask
    b, n = mask.shape
    pos = batch.pos.to(dtype) + 0.2 * torch.randn(b, n, 3, generator=generator, dtype=dtype)
    z = torch.cat([pos, torch.randn(b, n, 7, generator=generator, dtype=dtype)], dim=-1) * mask[..., None]
    return z, torch.rand(b, generator=generator, dtype=dtype)


def lively_dtn(seed: int = 0) -> DualTrackTransformer:
    """The tiny DTN in float64 with position updates of order 1 (the paper's init moves atoms by ~1e-3,
    which would hide equivariance errors)."""
    torch.manual_seed(seed)
    dtn = DualTrackTransformer(preset("tiny").dtn, node_features=7).double().eval()
    for block in dtn.blocks:
        nn.init.normal_(block.position_update.phi[-1].weight, std=0.3)
    return dtn


# ---------------------------------------------------------------------------- configs
def test_presets_sizes_and_yaml_round_trip():
    counts = {}
    for name in PRESETS:
        config = preset(name)
        with torch.device("meta"):   # the paper's size has 92 M parameters: count without allocating them
            counts[name] = sum(p.numel() for p in DualTrackTransformer(config.dtn, 7).parameters())
        plain = json.loads(json.dumps(config.to_dict()))          # what a YAML file gives: lists, ints
        assert from_dict(GFMDiffConfig, plain) == config
    # the reference's EquiGNN at the paper's size (5 blocks, emb 256, hidden 512, 8 heads) has 92,452,527
    assert counts == {"tiny": 130_006, "cpu": 1_134_521, "gpu": 92_452_527}
    gpu = preset("gpu")
    assert (gpu.diffusion.timesteps, gpu.diffusion.norm_values, gpu.diffusion.gfloss_weight) == (500, (4.0, 10.0, 10.0), 0.01)
    assert gpu.denoiser_train.ema_decay == 0.999 and gpu.data.datasets == ("qm9",)


# ---------------------------------------------------------------------------- the DTN
def test_dtn_is_e3_and_permutation_equivariant(pack):
    dtn = lively_dtn()
    batch = pack.dense([0, 1, 2])
    g = torch.Generator().manual_seed(1)
    z, t = noisy_input(batch, g)
    mask = batch.mask
    out = dtn(z, t, mask)
    scale = out.abs().max().item()
    assert out[..., :3].abs().max() > 1e-2             # the positions really move
    assert torch.allclose(out[..., :3].sum(1), torch.zeros(3, 3, dtype=torch.float64), atol=1e-9)   # CoM removed

    def denoise(pos, h, mask):
        eps_hat = dtn(torch.cat([pos, h], dim=-1), t, mask)
        return eps_hat[..., :3], eps_hat[..., 3:]

    # padding moves too under the permutation, with the mask
    assert_equivariant(denoise, (z[..., :3], z[..., 3:], mask), (POSITIONS, ATOM_INVARIANTS, MASK),
                       (VECTORS, ATOM_INVARIANTS), tolerance=1e-9 * max(1.0, scale))


def test_dtn_output_does_not_depend_on_padding(pack):
    dtn = lively_dtn(1)
    batch = pack.dense(list(range(8)))
    z, t = noisy_input(batch, torch.Generator().manual_seed(2))
    together = dtn(z, t, batch.mask)
    for i in (0, 5):
        n = int(batch.num_atoms[i])
        alone = dtn(z[i:i + 1, :n], t[i:i + 1], batch.mask[i:i + 1, :n])
        assert torch.allclose(alone[0], together[i, :n], atol=1e-10)
        assert torch.all(together[i, n:] == 0)


def test_factorised_layers_equal_the_direct_forms():
    torch.manual_seed(0)
    dtn = DualTrackTransformer(preset("tiny").dtn, 7).double()
    block = dtn.blocks[0]
    b, n, d = 2, 6, 32
    a = torch.randn(b, n, d, dtype=torch.float64)
    p = torch.randn(b, n, n, d, dtype=torch.float64)
    tri = torch.randn(b, n, n, n, d // 2, dtype=torch.float64)
    pair_mask = torch.ones(b, n, n, dtype=torch.bool)

    low = block.low2high                      # direct: W vec(L_i (x) R_j), the (B, N, N, d^2) outer product
    an = low.norm(a)
    left, right = an * low.left(an), an * low.right(an)
    outer = (left[:, :, None, :, None] * right[:, None, :, None, :]).reshape(b, n, n, d * d)
    assert torch.allclose(low(a), low.proj(outer), atol=1e-10)

    att = block.triplet_attention            # direct: keys and values of every (i, j, k) projected in full
    pn = att.norm(p)
    h, dh = att.h, att.dh
    q = att.q(pn).view(b, n, n, h, dh) / dh ** 0.5
    keys = att.k(pn).view(b, n, n, h, dh)[:, :, None] + att.k_angle(tri).view(b, n, n, n, h, dh)
    values = att.v(pn).view(b, n, n, h, dh)[:, :, None] + att.v_angle(tri).view(b, n, n, n, h, dh)
    attn = torch.softmax(torch.einsum("bijhc,bijkhc->bhijk", q, keys), dim=-1)
    direct = att.out(torch.einsum("bhijk,bijkhc->bijhc", attn, values).reshape(b, n, n, d)) * torch.sigmoid(att.gate(pn))
    assert torch.allclose(att(p, tri, pair_mask), direct, atol=1e-10)


# ---------------------------------------------------------------------------- valences and GFLoss
def test_valence_is_edm_bond_order_sum(qm9_systems):
    pack = TensorPack.from_systems(qm9_systems)
    batch = pack.dense(torch.arange(len(pack)))
    valence = edm_valence(batch.atomic_numbers, batch.pos, batch.mask, edm_thresholds_pm())
    standard = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}
    agree = total = 0
    for i, system in enumerate(qm9_systems):
        n = system.num_atoms
        # the packed positions (float32, centred) give the same orders as chemgen.bonds on the record
        expected = edm_bond_orders(system.atomic_numbers, system.pos).sum(1)
        assert np.array_equal(valence[i, :n].numpy(), expected)
        agree += sum(int(v) == standard[int(z)] for v, z in zip(valence[i, :n], system.atomic_numbers))
        total += n
    assert agree / total > 0.97          # EDM's atom stability of QM9 itself is 99 %
    assert torch.all(valence[~batch.mask] == 0)


def cutoff_slow(za: int, zb: int) -> float:
    """Longest bonding distance (A) of a pair under EDM's tables, read straight from chemgen.bonds."""
    a, b = SYMBOL[za], SYMBOL[zb]
    best = -np.inf
    for table, margin in zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), MARGINS_PM):
        length = table.get((a, b), table.get((b, a)))
        if length is not None:
            best = max(best, (length + margin) / 100)
    return best


def gfloss_slow(eps_hat, eps, alpha_t, mask) -> list[float]:
    """GFLoss by loops, as the reference's ``calc_error`` defines it."""
    out = []
    b, n, _ = eps.shape
    for s in range(b):
        total = 0.0
        for i in range(n):
            if not mask[s, i]:
                continue
            p_i = torch.softmax(eps_hat[s, i, 3:8], -1)
            v = 0.0
            for j in range(n):
                if j == i or not mask[s, j]:
                    continue
                p_j = torch.softmax(eps_hat[s, j, 3:8], -1)
                d = float((eps_hat[s, i, :3] - eps_hat[s, j, :3]).norm())
                for a, za in enumerate(QM9_ELEMENTS):
                    for c, zc in enumerate(QM9_ELEMENTS):
                        if d < cutoff_slow(za, zc):
                            v += 4 * float(p_i[a] * p_j[c])
            v /= 10
            total += float(alpha_t[s]) * ((v + float(eps[s, i, 9])) / 2 - float(eps_hat[s, i, 9])) ** 2
        out.append(total / n)
    return out


def test_gfloss_matches_its_definition_and_has_a_floor_at_a_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    eps = torch.randn(2, 6, 10, generator=g, dtype=torch.float64) * mask[..., None]
    eps[..., :3] *= 0.5          # noise positions close enough for the bond test to fire
    eps_hat = (eps + 0.3 * torch.randn(2, 6, 10, generator=g, dtype=torch.float64)) * mask[..., None]
    alpha_t = torch.tensor([[0.9], [0.4]], dtype=torch.float64)
    cutoffs = bond_cutoffs_angstrom()
    assert cutoffs[1, 1].item() == pytest.approx(1.64) and cutoffs[0, 4].item() == pytest.approx(1.02)

    value = gfloss(eps_hat, eps, alpha_t, mask, cutoffs, slice(3, 8), 9)
    assert value.tolist() == pytest.approx(gfloss_slow(eps_hat, eps, alpha_t, mask), rel=1e-10)

    # a perfect prediction leaves alpha_t ((v(eps) - V) / 2)^2 per atom: not zero, and not the network's to lower
    floor = gfloss(eps, eps, alpha_t, mask, cutoffs, slice(3, 8), 9)
    assert floor.tolist() == pytest.approx(gfloss_slow(eps, eps, alpha_t, mask), rel=1e-10)
    v = predicted_valence(eps[..., :3], eps[..., 3:8], mask, cutoffs)
    assert torch.allclose(floor, (alpha_t * ((v - eps[..., 9]) / 2) ** 2 * mask).sum(1) / 6)
    assert torch.all(floor > 0)

    # only the valence channel learns from it: the bond test is a step and the types are detached
    eps_hat.requires_grad_(True)
    gfloss(eps_hat, eps, alpha_t, mask, cutoffs, slice(3, 8), 9).sum().backward()
    assert torch.all(eps_hat.grad[..., :9] == 0) and eps_hat.grad[..., 9].abs().sum() > 0


def test_gfloss_reads_bonded_neighbours_from_a_real_molecule(qm9_systems):
    """Fed a real molecule's coordinates and crisp types, GFLoss's valence is 4/10 x its EDM-bonded neighbours."""
    system = qm9_systems[0]
    n = system.num_atoms
    types = torch.tensor([QM9_ELEMENTS.index(int(z)) for z in system.atomic_numbers])
    logits = 60.0 * nn.functional.one_hot(types, 5).double()               # softmax ~ one-hot
    pos = torch.tensor(system.pos, dtype=torch.float64)
    v = predicted_valence(pos[None], logits[None], torch.ones(1, n, dtype=torch.bool), bond_cutoffs_angstrom())
    neighbours = (edm_bond_orders(system.atomic_numbers, system.pos) > 0).sum(1)
    assert np.allclose(v[0].numpy(), 0.4 * neighbours, atol=1e-9)


# ---------------------------------------------------------------------------- the model
STEPS = 20


def test_loss_falls_on_real_molecules(small_pack):
    pack = small_pack
    torch.manual_seed(0)
    model = GFMDiff(preset("tiny"))
    batch = pack.dense(torch.arange(len(pack)))
    t_fixed = torch.linspace(25, 475, len(pack)).round().long()     # t > 0: the eps loss (+ GFLoss)
    eps_fixed = model.diffusion.noise(batch.mask, generator=torch.Generator().manual_seed(1))

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(model.loss_terms(batch, t_fixed, eps_fixed).loss.mean())

    before = fixed_loss()
    stage = model.training_stage("denoiser", pack)
    optimizer = torch.optim.Adam(stage.parameters, lr=2e-3)
    for _ in range(STEPS):
        losses = stage.loss(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in stage.parameters if p.grad is not None)
        optimizer.step()
    after = fixed_loss()
    assert set(losses) == {"loss", "eps_mse", "gfloss"} and float(losses["gfloss"]) > 0
    print(f'fixed-noise loss {before:.4f} -> {after:.4f} after {STEPS} Adam steps')
    assert after < 0.75 * before, (before, after)


def test_training_stage_checkpoints_and_protocol(small_pack, tmp_path):
    pack = small_pack
    model = GFMDiff(preset("tiny"))
    assert isinstance(model, Generator)
    stage = model.training_stage("denoiser", pack)
    assert stage.name == "denoiser" and stage.ema_module is model.dynamics and stage.ema_decay == 0.9
    assert float(model.num_atoms_histogram.sum()) == len(pack)
    with pytest.raises(KeyError):
        model.training_stage("vae", pack)
    with pytest.raises(ValueError, match="crystals"):
        model.training_stage("denoiser", dataclasses.replace(pack, pbc=torch.ones_like(pack.pbc)))
    # switching GFLoss off (the ablation) leaves the rest of the loss alone
    off = GFMDiff(dataclasses.replace(preset("tiny"), diffusion=dataclasses.replace(preset("tiny").diffusion, gfloss=False)))
    off.load_checkpoint_groups(model.checkpoint_groups())
    batch = pack.dense(torch.arange(4))
    t_int = torch.tensor([0, 100, 200, 300])
    eps = model.diffusion.noise(batch.mask, generator=torch.Generator().manual_seed(0))
    model.eval(), off.eval()
    with torch.no_grad():
        on_terms, off_terms = model.loss_terms(batch, t_int, eps), off.loss_terms(batch, t_int, eps)
    assert torch.allclose(on_terms.error, off_terms.error) and torch.all(off_terms.extra == 0)
    assert torch.allclose(on_terms.loss[1:] - off_terms.loss[1:], 0.5 * on_terms.extra[1:])
    assert on_terms.loss[0] == off_terms.loss[0] and torch.isfinite(on_terms.loss[0])   # t = 0: L_0, no GFLoss

    monitor = model.stage_monitor("denoiser", pack.dense(torch.arange(len(pack))))
    assert set(monitor) == {"eps_mse_t0.1", "eps_mse_t0.5", "eps_mse_t0.9"}
    diagnostics = model.stage_diagnostics("denoiser", pack, tmp_path)
    assert np.isfinite(diagnostics["val_loss"]) and diagnostics["val_eps_mse"] > 0

    fresh = GFMDiff(preset("tiny"))
    fresh.load_checkpoint_groups(model.checkpoint_groups())
    assert torch.equal(fresh.num_atoms_histogram, model.num_atoms_histogram)
    with torch.no_grad():
        assert torch.equal(fresh.loss_terms(batch, t_int, eps).loss, on_terms.loss)


def test_sampling_is_reproducible_from_a_seed(small_pack):
    pack = small_pack
    torch.manual_seed(0)
    model = GFMDiff(preset("tiny"))
    model.set_histogram(pack)
    first = model.generate(3, "qm9", num_steps=4, seed=0)
    again = model.generate(3, "molecule", num_steps=4, seed=0)
    other = model.generate(3, "qm9", num_steps=4, seed=1)
    for name in ("atomic_numbers", "pos", "mask", "valence"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert not torch.equal(first.pos, other.pos)
    mask = first.mask
    assert set(first.atomic_numbers[mask].tolist()) <= set(QM9_ELEMENTS)
    assert torch.all(first.atomic_numbers[~mask] == 0) and torch.all(first.pos[~mask] == 0)
    assert first.pos.sum(1).abs().max() < 1e-5 * first.pos.abs().max() * mask.shape[1]   # CoM at 0 (untrained: far flung)
    assert set(first.mask.sum(1).tolist()) <= set(pack.num_atoms.tolist())   # sizes from the training histogram
    assert not first.periodic.any() and torch.all(first.cell == 0)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(1, "qm9", num_steps=2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="ancestral"):
        model.generate(1, "qm9", num_steps=2, solver="euler")
    with pytest.raises(ValueError, match="QM9"):
        model.generate(1, "mp20", num_steps=2)
