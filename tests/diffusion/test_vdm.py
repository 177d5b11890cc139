"""EDM's variational diffusion pinned by closed forms: the schedule against its formula written out here,
the loss against hand-computed values, the sampler against the ideal denoiser of a Gaussian target."""

from __future__ import annotations

import math

import pytest
import torch

from chemgen.diffusion.vdm import (
    Feature,
    NoiseSchedule,
    VariationalDiffusion,
    alpha,
    sigma,
    sigma_and_alpha_t_given_s,
)


def edm_polynomial_alphas2(timesteps: int, s: float, power: float) -> list[float]:
    """EDM's polynomial schedule in plain Python: (1 - (x / (T+1))^p)^2 on x = linspace(0, T+1, T+1), each
    step's ratio alpha_t^2 / alpha_{t-1}^2 clipped to >= 0.001 and re-accumulated, then squeezed to [s, 1-s]."""
    steps = timesteps + 1
    spacing = steps / (steps - 1)
    raw = [(1 - ((i * spacing) / steps) ** power) ** 2 for i in range(steps)]
    out, previous, accumulated = [], 1.0, 1.0
    for value in raw:
        accumulated *= min(max(value / previous, 0.001), 1.0)
        out.append(accumulated)
        previous = value
    return [(1 - 2 * s) * a + s for a in out]


@pytest.mark.parametrize("t", [0, 1, 2, 100, 250, 400, 499, 500])
def test_polynomial_2_schedule_matches_edm_formula(t):
    schedule = NoiseSchedule("polynomial_2", timesteps=500, precision=1e-5)
    a2 = edm_polynomial_alphas2(500, 1e-5, 2.0)[t]
    expected = math.log((1 - a2) / a2)    # gamma = -log(alpha^2 / sigma^2)
    assert schedule.table[t].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert schedule(torch.tensor([t / 500])).item() == pytest.approx(expected, rel=1e-6)   # float32 lookup


def test_schedule_end_points_and_monotonicity():
    schedule = NoiseSchedule("polynomial_2", timesteps=500, precision=1e-5)
    s = 1e-5
    assert schedule.table[0].item() == pytest.approx(math.log(s / (1 - s)), rel=1e-9)   # alpha_0^2 = 1 - s
    assert torch.all(schedule.table[1:] > schedule.table[:-1])
    # the last step's ratio (0 unclipped) is clipped to 0.001, so alpha_T^2 stays a little above s
    a2_T = torch.sigmoid(-schedule.table[-1]).item()
    assert s < a2_T < 1e-3
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule("cosine")


def test_alpha_sigma_and_the_transition_kernel_agree():
    schedule = NoiseSchedule("polynomial_2", 500, 1e-5)
    g = schedule.table
    gamma_s, gamma_t = g[[10, 100, 300, 499]], g[[11, 150, 301, 500]]
    assert torch.allclose(alpha(g) ** 2 + sigma(g) ** 2, torch.ones_like(g), atol=1e-12)
    sigma2_ts, _, alpha_ts = sigma_and_alpha_t_given_s(gamma_t, gamma_s)
    # q(z_t | x) must equal q(z_t | z_s) after q(z_s | x)
    assert torch.allclose(alpha_ts * alpha(gamma_s), alpha(gamma_t), rtol=1e-10)
    assert torch.allclose(alpha_ts ** 2 * sigma(gamma_s) ** 2 + sigma2_ts, sigma(gamma_t) ** 2, rtol=1e-10)


def padded_mask() -> torch.Tensor:
    return torch.tensor([[True, True, True, True], [True, True, False, False], [True, True, True, False]])


def test_noise_is_centred_on_real_atoms_and_zero_on_padding():
    vdm = VariationalDiffusion([Feature("onehot", 2, "categorical", 4.0), Feature("n", 1, "integer", 10.0)])
    mask = padded_mask()
    eps = vdm.noise(mask, generator=torch.Generator().manual_seed(0))
    assert eps.shape == (3, 4, 6)
    assert torch.allclose(eps[..., :3].sum(1), torch.zeros(3, 3), atol=1e-6)
    assert torch.all(eps[~mask] == 0)
    again = vdm.noise(mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(eps, again)


def test_normalize_centres_positions_and_divides_features():
    vdm = VariationalDiffusion([Feature("onehot", 2, "categorical", 4.0), Feature("n", 1, "integer", 10.0)])
    mask = padded_mask()
    pos = torch.randn(3, 4, 3) + 5.0
    onehot = torch.nn.functional.one_hot(torch.randint(0, 2, (3, 4)), 2)
    number = torch.randint(1, 10, (3, 4, 1))
    xh = vdm.normalize(pos, {"onehot": onehot, "n": number}, mask)
    assert torch.allclose(xh[..., :3].sum(1), torch.zeros(3, 3), atol=1e-5)
    assert torch.allclose(xh[..., 3:5][mask], onehot[mask] / 4.0)
    assert torch.allclose(xh[..., 5:][mask], number[mask] / 10.0)
    assert torch.all(xh[~mask] == 0)


def test_l2_loss_normalisation_and_extra_error():
    """L_t = 1/2 (||eps - eps_hat||^2 / (N_pad D) + extra); an oracle denoiser scores (about) zero at every t."""
    vdm = VariationalDiffusion([Feature("onehot", 2, "categorical", 4.0), Feature("n", 1, "integer", 10.0)])
    mask = padded_mask()
    onehot = torch.nn.functional.one_hot(torch.randint(0, 2, (3, 4)), 2)
    xh = vdm.normalize(torch.randn(3, 4, 3), {"onehot": onehot, "n": torch.randint(1, 10, (3, 4, 1))}, mask)
    eps = vdm.noise(mask, generator=torch.Generator().manual_seed(1))
    t_int = torch.tensor([0, 7, 500])

    zero = vdm.loss(lambda z, t, m: torch.zeros_like(z), xh, mask, t_int=t_int, eps=eps)
    assert torch.allclose(zero.error, (eps ** 2).sum((1, 2)) / (4 * 6))
    assert torch.allclose(zero.loss[1:], 0.5 * zero.error[1:])

    extra = vdm.loss(lambda z, t, m: torch.zeros_like(z), xh, mask, lambda e_hat, e, a, m: a[:, 0] * 0 + 2.0,
                     t_int=t_int, eps=eps)
    assert torch.allclose(extra.loss[1:], 0.5 * (zero.error[1:] + 2.0))
    assert extra.loss[0] == zero.loss[0]            # t = 0 is L_0, which has no extra error

    oracle = vdm.loss(lambda z, t, m: eps, xh, mask, t_int=t_int, eps=eps)
    assert torch.all(oracle.error == 0)
    # L_0: x exact, and at sigma_0 ~ 3e-3 the discretised likelihood of h is ~1
    assert oracle.loss.abs().max() < 1e-6


def test_t0_likelihood_penalises_features_far_from_their_values():
    vdm = VariationalDiffusion([Feature("n", 1, "integer", 10.0)])
    mask = torch.ones(1, 2, dtype=torch.bool)
    xh = vdm.normalize(torch.zeros(1, 2, 3), {"n": torch.tensor([[[6], [8]]])}, mask)
    eps = torch.zeros_like(xh)
    good = vdm.loss(lambda z, t, m: eps, xh, mask, t_int=torch.tensor([0]), eps=eps).loss
    shifted = xh.clone()
    shifted[..., 3] += 0.1          # z_0 reads 7 and 9 instead of 6 and 8
    bad = -vdm.log_pxh_given_z0(xh, shifted, vdm.gamma.at(torch.tensor([0])), eps, eps, mask)
    assert good.item() == pytest.approx(0.0, abs=1e-6)
    assert bad.item() > 20


class GaussianTarget:
    """The ideal denoiser of x ~ N(0, SX^2) (positions, zero-CoM) and h ~ N(0, SH^2): E[eps | z_t]."""

    SX, SH = 1.5, 0.5

    def __init__(self, vdm: VariationalDiffusion):
        self.vdm = vdm

    def __call__(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        g = self.vdm.gamma(t)[:, None, None]
        var = torch.tensor([self.SX ** 2] * 3 + [self.SH ** 2] * (z.shape[-1] - 3))
        return sigma(g) * z / (alpha(g) ** 2 * var + sigma(g) ** 2) * mask[..., None]


def test_ancestral_sampler_recovers_a_gaussian_target():
    vdm = VariationalDiffusion([Feature("n", 1, "integer", 1.0)], timesteps=500)
    mask = torch.ones(1000, 5, dtype=torch.bool)
    pos, h = vdm.sample(GaussianTarget(vdm), mask, generator=torch.Generator().manual_seed(0))
    assert pos.mean(1).abs().max() < 1e-5                              # centre of mass at 0
    # zero-CoM over 5 atoms keeps 4 of 5 degrees of freedom: per-entry variance SX^2 (1 - 1/5)
    assert pos.var().item() == pytest.approx(GaussianTarget.SX ** 2 * 0.8, rel=0.05)
    assert h["n"].dtype == torch.long and h["n"].shape == (1000, 5, 1)


def test_sampling_is_reproducible_and_fewer_steps_subsample_the_schedule():
    vdm = VariationalDiffusion([Feature("onehot", 3, "categorical", 4.0)], timesteps=500)
    mask = padded_mask()
    seen: list[torch.Tensor] = []

    def spy(z, t, m):
        seen.append(t.clone())
        return torch.zeros_like(z)

    a = vdm.sample(spy, mask, num_steps=10, generator=torch.Generator().manual_seed(3))
    assert [round(float(t[0]) * 500) for t in seen] == [500, 450, 400, 350, 300, 250, 200, 150, 100, 50, 0]
    b = vdm.sample(lambda z, t, m: torch.zeros_like(z), mask, num_steps=10, generator=torch.Generator().manual_seed(3))
    c = vdm.sample(lambda z, t, m: torch.zeros_like(z), mask, num_steps=10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["onehot"], b[1]["onehot"])
    assert not torch.equal(a[0], c[0])
    assert torch.all(a[0][~mask] == 0) and torch.all(a[1]["onehot"][~mask] == 0)
    with pytest.raises(ValueError, match="num_steps"):
        vdm.sample(spy, mask, num_steps=501)
