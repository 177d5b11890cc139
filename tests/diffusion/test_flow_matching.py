"""Flow matching pinned by analytic cases: no network, exact answers.

A centred isotropic Gaussian target has a closed-form ideal denoiser, so the samplers must recover
its variance; the loss weight and classifier-free guidance are checked against hand-computed values.
"""

from __future__ import annotations

import pytest
import torch

from chemgen.diffusion.flow_matching import LinearFlowMatching, centred_gaussian
from chemgen.models.adit.dit import DiT

SIGMA = 2.0  # std of the target x_1 ~ N(0, SIGMA^2 I), centred over each system's tokens


def ideal_denoiser(x_t: torch.Tensor, t: torch.Tensor, x_sc=None) -> torch.Tensor:
    """E[x_1 | x_t] for x_t = (1 - t) x_0 + t x_1, x_0 ~ N(0, I), x_1 ~ N(0, SIGMA^2 I), both centred."""
    t = t[:, None, None]
    return t * SIGMA**2 / ((1 - t) ** 2 + t**2 * SIGMA**2) * x_t


@pytest.mark.parametrize("solver, steps", [("euler", 200), ("heun", 50)])
def test_samplers_recover_the_moments_of_a_gaussian_target(solver, steps):
    torch.manual_seed(0)
    mask = torch.ones(4000, 5, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    x = LinearFlowMatching(min_t=0.01).sample(ideal_denoiser, mask, channels=3, num_steps=steps, solver=solver,
                                              self_condition=False, generator=generator)
    n = mask.shape[1]
    # Centring over 5 tokens keeps 4 of 5 degrees of freedom: per-entry variance SIGMA^2 (1 - 1/5).
    assert x.mean(1).abs().max() < 1e-5
    assert x.var().item() == pytest.approx(SIGMA**2 * (1 - 1 / n), rel=0.03)


def test_centred_noise_is_mean_free_and_zero_on_padding():
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    noise = centred_gaussian((2, 4, 3), mask, torch.Generator().manual_seed(0))
    assert torch.allclose(noise.sum(1), torch.zeros(2, 3), atol=1e-6)
    assert (noise[~mask] == 0).all()


def test_loss_weight_is_one_over_one_minus_t_squared_clamped_at_0_9():
    flow = LinearFlowMatching()
    x_1 = torch.ones(3, 2, 4)
    x_1_hat = torch.zeros(3, 2, 4)
    mask = torch.ones(3, 2, dtype=torch.bool)
    loss = flow.loss(x_1, x_1_hat, torch.tensor([0.0, 0.5, 0.99]), mask)
    assert torch.allclose(loss, torch.tensor([1.0, 4.0, 100.0]))
    half = flow.loss(x_1, x_1_hat, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([[True, False]] * 3))
    assert torch.allclose(half, torch.tensor([4.0, 4.0, 4.0]))  # padding neither adds error nor dilutes it


class _StubDiT:
    """Returns 1 for the conditional label and 0 for the null class (label 0), per token and channel."""

    def __call__(self, x_t, t, labels, mask, x_sc=None, spacegroup=None):
        assert spacegroup is None or torch.equal(spacegroup != 0, labels != 0)  # both labels null together
        return (labels != 0).float()[:, None, None].expand_as(x_t).clone()


@pytest.mark.parametrize("scale, expected", [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (0.0, 0.0)])
def test_classifier_free_guidance_extrapolates_from_the_unconditional_output(scale, expected):
    x_t = torch.zeros(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = DiT.forward_with_cfg(_StubDiT(), x_t, torch.zeros(2), torch.tensor([1, 2]), mask, scale)
    assert torch.allclose(out, torch.full_like(x_t, expected))   # uncond + s (cond - uncond) = 0 + s * 1
    with_groups = DiT.forward_with_cfg(_StubDiT(), x_t, torch.zeros(2), torch.tensor([1, 2]), mask, scale,
                                       spacegroup=torch.tensor([225, 12]))
    assert torch.allclose(with_groups, out)
