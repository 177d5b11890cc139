"""DiffSpectra's VP diffusion pinned by closed forms: the schedules against their formulas, the noise's
constraints, the loss against a hand computation, self-conditioning's two passes, the posterior step against
the marginal it must preserve, and the sampler (seeded, and exact with an oracle denoiser)."""

from __future__ import annotations

import math

import pytest
import torch

from chemgen.config import ConfigError
from chemgen.diffusion.vp import (
    COSINE_T_MAX,
    CategoricalBlock,
    GraphState,
    JointVP,
    VPConfig,
    VPSchedule,
    kabsch_align,
    pair_mask_of,
)
from chemgen.testing import random_rotations

BLOCKS = (CategoricalBlock("atom_types", 5, 4.0), CategoricalBlock("charges", 3, 4.0))


def make_vp(**changes) -> JointVP:
    return JointVP(VPConfig(**changes), BLOCKS, edge_classes=4)


def toy_data(sizes=(7, 5, 3), seed=0, dtype=torch.float64):
    """Random molecules-like data: positions, class indices, symmetric bonds, and the padding mask."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(sizes), max(sizes)
    mask = torch.arange(n)[None] < torch.tensor(sizes)[:, None]
    pos = 2 * torch.randn(b, n, 3, generator=g, dtype=dtype) + 3.0            # off-centre on purpose
    nodes = {"atom_types": torch.randint(0, 5, (b, n), generator=g), "charges": torch.randint(0, 3, (b, n), generator=g)}
    upper = torch.triu(torch.randint(0, 4, (b, n, n), generator=g), 1)
    return pos, nodes, upper + upper.transpose(1, 2), mask


def com(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (pos * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


# ---------------------------------------------------------------------------- the schedule
def test_cosine_schedule_is_dpm_solvers_formula_and_monotone():
    schedule = VPSchedule("cosine")
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones_like(t), atol=1e-12)
    assert torch.all(alpha[1:] < alpha[:-1]) and torch.all(sigma[1:] > sigma[:-1])
    lam = schedule.log_snr(t[1:-1])
    assert torch.all(lam[1:] < lam[:-1])
    assert alpha[0].item() == 1.0 and sigma[0].item() == 0.0
    s = 0.008
    for tt in (1e-5, 0.1, 0.5, 0.9, COSINE_T_MAX):
        expected = math.cos((tt + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
        got = schedule.alpha_sigma(torch.tensor([tt], dtype=torch.float64))[0].item()
        assert got == pytest.approx(expected, rel=1e-12)
        sigma2 = -math.expm1(2 * math.log(expected))                   # 1 - alpha^2 without cancellation
        assert schedule.log_snr(torch.tensor([tt], dtype=torch.float64)).item() == pytest.approx(math.log(expected ** 2 / sigma2), rel=1e-9)
    # sampling starts at DPM-Solver's T = 0.9946, where alpha is small but not 0
    assert schedule.t_max == COSINE_T_MAX and 5e-3 < schedule.alpha_sigma(torch.tensor([COSINE_T_MAX]))[0].item() < 1e-2


def test_linear_schedule_uses_the_listed_betas():
    schedule = VPSchedule("linear", beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    expected = torch.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.allclose(alpha, expected, rtol=1e-12) and torch.allclose(alpha ** 2 + sigma ** 2, torch.ones(3, dtype=torch.float64))
    assert schedule.t_max == 1.0


def test_config_validation():
    with pytest.raises(ConfigError, match="schedule"):
        VPConfig(schedule="polynomial_2")
    with pytest.raises(ConfigError, match="loss_weights"):
        VPConfig(loss_weights=(1.0, 0.25))
    with pytest.raises(ConfigError, match="num_steps"):
        VPConfig(num_steps=0)
    with pytest.raises(ConfigError, match="self_condition_prob"):
        VPConfig(self_condition_prob=1.5)
    with pytest.raises(ConfigError, match="edge_classes"):
        JointVP(VPConfig(), BLOCKS, edge_classes=1)
    assert VPConfig().loss_weights == (1.0, 0.25, 0.1) and VPConfig().num_steps == 1000


# ---------------------------------------------------------------------------- data and noise
def test_normalize_centres_scales_and_decodes_back():
    vp = make_vp()
    pos, nodes, bonds, mask = toy_data()
    z0 = vp.normalize(pos, nodes, bonds, mask)
    assert torch.allclose(com(z0.pos, mask), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)
    real = z0.nodes[mask]
    assert set(real.unique().tolist()) == {-0.25, 0.25}                       # (2 onehot - 1) / 4
    assert torch.all((real > 0).sum(-1) == 2)                                 # one hot class per block
    pm = pair_mask_of(mask)
    assert set(z0.edges[pm].unique().tolist()) == {-1.0, 1.0}
    assert torch.all(z0.edges[~pm] == 0) and torch.all(z0.nodes[~mask] == 0)
    pos_back, nodes_back, bonds_back = vp.decode(z0, mask)
    assert torch.allclose(pos_back, (pos - com(pos, mask)[:, None]) * mask[..., None], atol=1e-12)
    for name in nodes:
        assert torch.equal(nodes_back[name], nodes[name] * mask)
    assert torch.equal(bonds_back, bonds * pm)


def test_noise_and_noising_keep_com_zero_and_edges_symmetric():
    vp = make_vp()
    pos, nodes, bonds, mask = toy_data(sizes=(9, 6, 2, 9))
    z0 = vp.normalize(pos, nodes, bonds, mask)
    eps = vp.noise(mask, torch.float64, torch.Generator().manual_seed(3))
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    for state in (eps, vp.q_sample(z0, t, eps)):
        assert torch.allclose(com(state.pos, mask), torch.zeros(4, 3, dtype=torch.float64), atol=1e-12)
        assert torch.all(state.pos[~mask] == 0) and torch.all(state.nodes[~mask] == 0)
        assert torch.equal(state.edges, state.edges.transpose(1, 2))
        assert torch.all(state.edges[~pair_mask_of(mask)] == 0)                # diagonal and padding
    # each unordered pair gets one unit-variance draw (mirrored), not the average of two
    big = vp.noise(torch.ones(64, 12, dtype=torch.bool), torch.float64, torch.Generator().manual_seed(4))
    i, j = torch.triu_indices(12, 12, 1)
    upper = big.edges[:, i, j]
    assert upper.std().item() == pytest.approx(1.0, abs=0.02)
    assert big.nodes.std().item() == pytest.approx(1.0, abs=0.02)


def test_kabsch_finds_the_rotation_and_stays_proper_for_planar_molecules():
    g = torch.Generator().manual_seed(5)
    pos = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    pos = pos - pos.mean(1, keepdim=True)
    rotation = random_rotations(4, seed=5)
    rotated = pos @ rotation.transpose(1, 2)
    assert torch.allclose(kabsch_align(pos, rotated), rotated, atol=1e-10)
    planar = pos.clone()
    planar[..., 2] = 0                                                        # det(A) = 0 exactly
    aligned = kabsch_align(planar, torch.randn(4, 6, 3, generator=g, dtype=torch.float64))
    gram = lambda x: x @ x.transpose(1, 2)
    assert torch.allclose(gram(aligned), gram(planar), atol=1e-10)


# ---------------------------------------------------------------------------- the loss
def test_loss_is_the_weighted_data_prediction_error():
    """A denoiser that predicts 0 everywhere: the loss is sqrt(alpha/sigma) (1 sum|x0|^2/3 + 0.25 sum|h0|^2/8
    + 0.1 sum|e0|^2/4), sums over real atoms and pairs; an oracle of z0 (no alignment) has loss 0."""
    vp = make_vp(align_positions=False)
    pos, nodes, bonds, mask = toy_data()
    z0 = vp.normalize(pos, nodes, bonds, mask)
    t = torch.tensor([0.05, 0.5, 0.9], dtype=torch.float64)

    def zero(z_t, noise_level, mask, cond=None, self_cond=None):
        return z_t.map(torch.zeros_like)

    terms = vp.loss(zero, z0, mask, t=t, self_condition=False)
    alpha, sigma = vp.schedule.alpha_sigma(t)
    n_atoms, n_pairs = mask.sum(1).double(), pair_mask_of(mask).sum((1, 2)).double()
    expected = torch.sqrt(alpha / sigma) * (
        (z0.pos ** 2).sum((1, 2)) / 3 + 0.25 * n_atoms * 0.0625 + 0.1 * n_pairs)   # each channel +-1/4, +-1
    assert torch.allclose(terms.loss, expected, rtol=1e-12)
    assert torch.allclose(terms.nodes, n_atoms * 0.0625) and torch.allclose(terms.edges, n_pairs)

    oracle = lambda z_t, noise_level, mask, cond=None, self_cond=None: z0
    assert torch.all(vp.loss(oracle, z0, mask, t=t, self_condition=False).loss == 0)


def test_loss_targets_the_geometry_aligned_onto_z_t():
    vp = make_vp()
    pos, nodes, bonds, mask = toy_data(sizes=(8, 8))
    z0 = vp.normalize(pos, nodes, bonds, mask)
    eps = vp.noise(mask, torch.float64, torch.Generator().manual_seed(6))
    t = torch.tensor([0.9, 0.9], dtype=torch.float64)
    seen = {}

    def aligned_oracle(z_t, noise_level, mask, cond=None, self_cond=None):
        seen["z_t"] = z_t
        return z0.replace(pos=kabsch_align(z0.pos, z_t.pos))

    terms = vp.loss(aligned_oracle, z0, mask, t=t, eps=eps, self_condition=False)
    assert torch.allclose(terms.pos, torch.zeros(2, dtype=torch.float64), atol=1e-20)
    # the unaligned geometry is penalised although it is the same molecule
    unaligned = vp.loss(lambda *a, **k: z0, z0, mask, t=t, eps=eps, self_condition=False)
    assert torch.all(unaligned.pos > 1e-3)
    assert torch.allclose(seen["z_t"].pos, vp.q_sample(z0, t, eps).pos)


def test_self_conditioning_runs_twice_and_feeds_the_detached_estimate():
    vp = make_vp()
    pos, nodes, bonds, mask = toy_data()
    z0 = vp.normalize(pos, nodes, bonds, mask)
    weight = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    calls = []

    def denoise(z_t, noise_level, mask, cond=None, self_cond=None):
        calls.append((self_cond, cond, torch.is_grad_enabled(), z_t))
        return z_t.map(lambda v: weight * v)

    cond = torch.randn(3, 4)
    terms = vp.loss(denoise, z0, mask, cond=cond, self_condition=True)
    assert terms.self_conditioned and len(calls) == 2
    (first, cond1, grad1, z_t1), (second, cond2, grad2, z_t2) = calls
    assert first is None and not grad1 and grad2                              # the first pass under no_grad
    assert cond1 is cond and cond2 is cond                                    # the condition passes through
    assert z_t1 is z_t2                                                       # both passes see the same z_t
    assert not second.nodes.requires_grad and torch.allclose(second.nodes, 0.5 * z_t1.nodes)
    terms.loss.sum().backward()
    assert weight.grad is not None and weight.grad.abs() > 0

    calls.clear()
    vp.loss(denoise, z0, mask, self_condition=False)
    assert len(calls) == 1
    g = torch.Generator().manual_seed(0)
    used = [vp.loss(denoise, z0, mask, generator=g).self_conditioned for _ in range(400)]
    assert 0.42 < sum(used) / 400 < 0.58                                     # probability 0.5, per batch
    assert not any(make_vp(self_condition=False).loss(denoise, z0, mask).self_conditioned for _ in range(20))


# ---------------------------------------------------------------------------- sampling
def shrink(z_t: GraphState, noise_level, mask, cond=None, self_cond=None) -> GraphState:
    """A deterministic stand-in denoiser that reads every input it is given."""
    out = z_t.map(lambda v: 0.5 * v)
    if self_cond is not None:
        out = out.replace(nodes=out.nodes + 0.1 * self_cond.nodes)
    if cond is not None:
        out = out.replace(nodes=out.nodes + cond.sum(-1)[:, None, None] * 0.01 * mask[..., None])
    return out


def test_sampler_is_reproducible_from_a_seed():
    vp = make_vp()
    mask = torch.arange(6)[None] < torch.tensor([6, 4])[:, None]
    cond = torch.ones(2, 3)
    one = vp.sample(shrink, mask, cond, num_steps=25, generator=torch.Generator().manual_seed(0))
    two = vp.sample(shrink, mask, cond, num_steps=25, generator=torch.Generator().manual_seed(0))
    other = vp.sample(shrink, mask, cond, num_steps=25, generator=torch.Generator().manual_seed(1))
    for block in ("pos", "nodes", "edges"):
        assert torch.equal(getattr(one, block), getattr(two, block))
        assert not torch.allclose(getattr(one, block), getattr(other, block))
    assert torch.allclose(com(one.pos, mask), torch.zeros(2, 3), atol=1e-6)
    assert torch.equal(one.edges, one.edges.transpose(1, 2)) and torch.all(one.edges[~pair_mask_of(mask)] == 0)


def test_sampler_with_an_oracle_recovers_x0():
    vp = make_vp()
    pos, nodes, bonds, mask = toy_data(dtype=torch.float32)
    z0 = vp.normalize(pos, nodes, bonds, mask)
    seen_levels = []

    def oracle(z_t, noise_level, mask, cond=None, self_cond=None):
        seen_levels.append(noise_level[0].item())
        return z0

    for steps in (1000, 7):
        seen_levels.clear()
        out = vp.sample(oracle, mask, num_steps=steps, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(out.pos, z0.pos, atol=1e-6)
        pos_hat, nodes_hat, bonds_hat = vp.decode(out, mask)
        assert torch.allclose(pos_hat, (pos - com(pos, mask)[:, None]) * mask[..., None], atol=1e-5)
        assert all(torch.equal(nodes_hat[k], nodes[k] * mask) for k in nodes)
        assert torch.equal(bonds_hat, bonds * pair_mask_of(mask))
        assert len(seen_levels) == steps and seen_levels == sorted(seen_levels)   # noise falls every step
    t_grid, s_grid = vp.time_grid()
    assert len(t_grid) == 1000 and t_grid[0].item() == COSINE_T_MAX and t_grid[-1].item() == pytest.approx(1e-3)
    assert s_grid[-1].item() == 0.0


def test_posterior_step_preserves_the_marginal():
    """z_t ~ q(z_t | x0), then z_s ~ q(z_s | z_t, x0) with the true x0, must be distributed as q(z_s | x0):
    (z_s - alpha_s x0) / sigma_s is standard normal in every block."""
    vp = make_vp()
    b, n = 96, 10
    mask = torch.ones(b, n, dtype=torch.bool)
    g = torch.Generator().manual_seed(7)
    pos, nodes, bonds, _ = toy_data(sizes=(n,) * b, seed=8)
    z0 = vp.normalize(pos, nodes, bonds, mask)
    t, s = 0.7, 0.4
    z_t = vp.q_sample(z0, torch.full((b,), t, dtype=torch.float64), vp.noise(mask, torch.float64, g))
    z_s, _, _ = vp.p_sample(lambda *a, **k: z0, z_t, t, s, mask, generator=g)
    alpha_s, sigma_s = (v.item() for v in vp.schedule.alpha_sigma(torch.tensor([s])))
    pos_eps = (z_s.pos - alpha_s * z0.pos) / sigma_s
    node_eps = (z_s.nodes - alpha_s * z0.nodes) / sigma_s
    i, j = torch.triu_indices(n, n, 1)
    edge_eps = ((z_s.edges - alpha_s * z0.edges) / sigma_s)[:, i, j]
    assert node_eps.mean().abs() < 0.03 and node_eps.std().item() == pytest.approx(1.0, abs=0.03)
    assert edge_eps.mean().abs() < 0.03 and edge_eps.std().item() == pytest.approx(1.0, abs=0.03)
    # zero-CoM positions: (n - 1) / n of the variance per coordinate
    assert pos_eps.var().item() == pytest.approx((n - 1) / n, abs=0.05)
