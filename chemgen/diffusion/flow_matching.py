"""Linear flow matching with clean-data prediction (ADiT, Sec. 3.2; Lipman et al. 2023).

Noise x_0 ~ N(0, I), centred over each system's tokens; data x_1. For t in [0, 1]:

    x_t = (1 - t) x_0 + t x_1                     (linear interpolant)
    v(x_t, t) = (x_1_hat - x_t) / (1 - t)          (velocity from the predicted clean sample)
    L = || (x_1 - x_1_hat) / (1 - min(t, 0.9)) ||^2  averaged over real tokens and channels

Sampling integrates dx/dt = v from t = min_t to 1 with Euler (ADiT's sampler) or Heun
(second order, fewer steps for the same error), with optional classifier-free guidance
and self-conditioning. The denoiser is any callable ``f(x_t, t, x_sc) -> x_1_hat``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chemgen.errors import UsageError

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def centred_gaussian(shape: tuple[int, ...], mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) noise (B, N, c), mean-free over each system's real tokens, zero at padding."""
    if generator is None:  # no generator argument at all: torch.compile traces this with symbolic shapes
        noise = torch.randn(shape, device=mask.device)
    else:
        noise = torch.randn(shape, generator=generator).to(mask.device)
    m = mask[..., None].to(noise.dtype)
    mean = (noise * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return (noise - mean) * m


class LinearFlowMatching:
    def __init__(self, min_t: float = 0.01):
        self.min_t = min_t

    def sample_t(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """t ~ U[min_t, 1 - min_t]."""
        return torch.rand(batch_size, device=device) * (1 - 2 * self.min_t) + self.min_t

    def interpolate(self, x_1: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x_0 = centred_gaussian(tuple(x_1.shape), mask)
        t = t[:, None, None]
        return ((1 - t) * x_0 + t * x_1) * mask[..., None]

    def loss(self, x_1: torch.Tensor, x_1_hat: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-system loss (B,): squared error scaled by 1 / (1 - min(t, 0.9))^2, mean over tokens and channels."""
        scale = 1 - torch.clamp(t, max=0.9)[:, None, None]
        error = ((x_1 - x_1_hat) / scale) ** 2 * mask[..., None]
        return error.sum((1, 2)) / (mask.sum(1) * x_1.shape[-1]).clamp_min(1)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, mask: torch.Tensor, channels: int, num_steps: int = 100,
               solver: str = "euler", self_condition: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrate from noise at t = min_t to data at t = 1; returns x_1_hat (B, N, c).

        Euler takes num_steps - 1 steps over linspace(min_t, 1, num_steps) and ends with the
        denoiser's prediction at t = 1, as ADiT does; Heun averages the velocity at both
        ends of each step (the last step, where v is undefined at t = 1, is Euler).
        """
        if solver not in ("euler", "heun"):
            raise UsageError(f"unknown solver {solver!r} (euler or heun)")
        b = mask.shape[0]
        x = centred_gaussian((b, mask.shape[1], channels), mask, generator)
        ts = torch.linspace(self.min_t, 1.0, num_steps, device=mask.device)
        x_sc = None

        def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            nonlocal x_sc
            x_1_hat = denoiser(x_t, t.expand(b), x_sc) * mask[..., None]
            if self_condition:
                x_sc = x_1_hat
            return x_1_hat

        for t_1, t_2 in zip(ts[:-1], ts[1:]):
            dt = t_2 - t_1
            v_1 = (predict(x, t_1) - x) / (1 - t_1)
            if solver == "heun" and t_2 < 1.0:
                x_euler = x + dt * v_1
                v_2 = (predict(x_euler, t_2) - x_euler) / (1 - t_2)
                x = x + dt * 0.5 * (v_1 + v_2)
            else:
                x = x + dt * v_1
        return predict(x, ts[-1])
