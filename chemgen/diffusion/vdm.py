"""EDM's variational diffusion for 3D molecules (Hoogeboom et al. 2022; Kingma et al. 2021), as GFMDiff uses it.

A molecule is positions x (N, 3, Angstrom, centre of mass at 0) and node features h, each feature divided
by its normalisation value (EDM's ``norm_values``). With gamma_t the negative log signal-to-noise ratio,

    alpha_t^2 = sigmoid(-gamma_t),   sigma_t^2 = sigmoid(gamma_t)
    q(z_t | x, h) = N(alpha_t [x, h], sigma_t^2 I)                 x-noise lives in the zero-CoM subspace
    L_t = 1/2 ||eps - eps_hat(z_t, t)||^2 / (N D)                   t = 1..T (EDM's "l2" training loss)
    L_0 = -log p(x, h | z_0)                                        t = 0: Gaussian for x, discretised for h

and ancestral sampling walks p(z_s | z_t) = N(mu, sigma_{t->s}^2) from z_T ~ N(0, I) down to z_0, then draws
(x, h) from p(x, h | z_0). The schedule is EDM's ``polynomial_2`` (clipped alpha steps, precision s) over
T = 500 steps for GFMDiff; the denoiser is any callable ``eps_hat = f(z_t, t, mask)`` with t in [0, 1].

Nothing here imports a model. Constant terms of the ELBO (the prior KL at T, log p(N), the Gaussian
normalisers) carry no gradient and are left out of the loss, as EDM's l2 training leaves them out of
its gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t, mask) -> eps_hat
ExtraError = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (eps_hat, eps, alpha_t, mask) -> (B,)


# ---------------------------------------------------------------------------- the noise schedule
def clip_noise_schedule(alphas2: np.ndarray, clip_value: float = 0.001) -> np.ndarray:
    """Clip each step's alpha_t^2 / alpha_{t-1}^2 from below, so no single step destroys most of the signal."""
    alphas2 = np.concatenate([np.ones(1), alphas2])
    steps = np.clip(alphas2[1:] / alphas2[:-1], a_min=clip_value, a_max=1.0)
    return np.cumprod(steps)


def polynomial_alphas2(timesteps: int, precision: float = 1e-4, power: float = 2.0) -> np.ndarray:
    """EDM's alpha_t^2 for t = 0..T: (1 - (x / (T+1))^power)^2 on x = linspace(0, T+1, T+1), clipped,
    then squeezed into [s, 1 - s] (s = precision) so that gamma stays finite at both ends."""
    steps = timesteps + 1
    x = np.linspace(0, steps, steps)
    alphas2 = clip_noise_schedule((1 - np.power(x / steps, power)) ** 2, clip_value=0.001)
    return (1 - 2 * precision) * alphas2 + precision


class NoiseSchedule(nn.Module):
    """gamma_t = -log(alpha_t^2 / sigma_t^2) on the grid t = k / T, k = 0..T (EDM's PredefinedNoiseSchedule)."""

    def __init__(self, name: str = "polynomial_2", timesteps: int = 500, precision: float = 1e-5):
        super().__init__()
        kind, _, power = name.partition("_")
        if kind != "polynomial" or not power:
            raise ValueError(f"unknown noise schedule {name!r} (EDM's 'polynomial_<power>', e.g. polynomial_2)")
        alphas2 = polynomial_alphas2(timesteps, precision, float(power))
        gamma = -(np.log(alphas2) - np.log(1 - alphas2))
        self.timesteps = timesteps
        # derived from the config, so not saved with the weights; float64 here, cast where it is used
        self.register_buffer("table", torch.from_numpy(gamma), persistent=False)

    def at(self, t_int: torch.Tensor) -> torch.Tensor:
        """gamma at integer steps (any shape), float32."""
        return self.table[t_int].float()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """gamma at t in [0, 1], read at round(t T) as EDM does."""
        return self.at(torch.round(t * self.timesteps).long())


def alpha(gamma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sigmoid(-gamma))


def sigma(gamma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sigmoid(gamma))


def snr(gamma: torch.Tensor) -> torch.Tensor:
    return torch.exp(-gamma)


def sigma_and_alpha_t_given_s(gamma_t: torch.Tensor, gamma_s: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(z_t | z_s) = N(alpha_{t|s} z_s, sigma_{t|s}^2): sigma^2_{t|s} = 1 - exp(softplus(g_s) - softplus(g_t)),
    written with expm1 / logsigmoid so that the tiny steps near t = 0 keep their precision."""
    sigma2_t_given_s = -torch.expm1(F.softplus(gamma_s) - F.softplus(gamma_t))
    alpha_t_given_s = torch.exp(0.5 * (F.logsigmoid(-gamma_t) - F.logsigmoid(-gamma_s)))
    return sigma2_t_given_s, torch.sqrt(sigma2_t_given_s), alpha_t_given_s


# ---------------------------------------------------------------------------- noise on masked molecules
def remove_mean_with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, 3) minus its mean over each system's real atoms; padding stays as it was (zero)."""
    m = mask[..., None].to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return x - mean * m


def _randn(shape: tuple[int, ...], mask: torch.Tensor, dtype: torch.dtype,
           generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:  # no generator argument at all: torch.compile traces this with symbolic shapes
        return torch.randn(shape, device=mask.device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(mask.device)


def sample_center_gravity_zero_gaussian(shape: tuple[int, ...], mask: torch.Tensor, dtype: torch.dtype = torch.float32,
                                        generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) projected onto the zero-CoM subspace of each system's real atoms (B, N, 3); zero at padding."""
    return remove_mean_with_mask(_randn(shape, mask, dtype, generator) * mask[..., None], mask)


def sample_gaussian(shape: tuple[int, ...], mask: torch.Tensor, dtype: torch.dtype = torch.float32,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    return _randn(shape, mask, dtype, generator) * mask[..., None]


def cdf_standard_gaussian(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2)))


# ---------------------------------------------------------------------------- the diffusion
@dataclass(frozen=True)
class Feature:
    """One block of node features in z: its width, how p(h | z_0) reads it, and EDM's normalisation value."""

    name: str
    width: int
    kind: Literal["categorical", "integer"]   # one-hot (argmax) or an integer (rounded)
    norm: float                               # h is diffused as h / norm


@dataclass
class LossTerms:
    loss: torch.Tensor       # (B,) the training loss of each system (L_t, or L_0 where t = 0)
    error: torch.Tensor      # (B,) ||eps - eps_hat||^2 / (N D), without any extra error
    extra: torch.Tensor      # (B,) the extra error (e.g. GFLoss) as added to ``error`` (0 where none)
    t_int: torch.Tensor      # (B,) the steps drawn


class VariationalDiffusion(nn.Module):
    """EDM's E(3) diffusion over [x, h]: the forward process, the l2 loss and the ancestral sampler.

    z is laid out as [x (3), features in the order given], each feature of ``Feature.width`` channels.
    """

    def __init__(self, features: Sequence[Feature], timesteps: int = 500, noise_schedule: str = "polynomial_2",
                 precision: float = 1e-5, n_dims: int = 3):
        super().__init__()
        self.features = tuple(features)
        self.n_dims = n_dims
        self.timesteps = timesteps
        self.gamma = NoiseSchedule(noise_schedule, timesteps, precision)
        self.slices: dict[str, slice] = {}
        start = n_dims
        for feature in self.features:
            self.slices[feature.name] = slice(start, start + feature.width)
            start += feature.width
        self.dims = start

    # ------------------------------------------------------------------ data <-> z space
    def normalize(self, pos: torch.Tensor, h: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """[x - CoM, h_f / norm_f ...] (B, N, D), zero at padding."""
        m = mask[..., None].to(pos.dtype)
        parts = [remove_mean_with_mask(pos * m, mask)] + [h[f.name].to(pos.dtype) / f.norm * m for f in self.features]
        return torch.cat(parts, dim=-1)

    def noise(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """eps (B, N, D): zero-CoM Gaussian positions, Gaussian features, zero at padding."""
        b, n = mask.shape
        eps_x = sample_center_gravity_zero_gaussian((b, n, self.n_dims), mask, dtype, generator)
        eps_h = sample_gaussian((b, n, self.dims - self.n_dims), mask, dtype, generator)
        return torch.cat([eps_x, eps_h], dim=-1)

    def q_sample(self, xh: torch.Tensor, gamma_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = alpha_t xh + sigma_t eps, gamma_t (B,)."""
        return alpha(gamma_t)[:, None, None] * xh + sigma(gamma_t)[:, None, None] * eps

    # ------------------------------------------------------------------ the loss
    def sample_t(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """t ~ U{0, ..., T} (training includes t = 0, whose term is L_0)."""
        return torch.randint(0, self.timesteps + 1, (batch_size,), device=device)

    def loss(self, denoise: Denoiser, xh: torch.Tensor, mask: torch.Tensor, extra_error: ExtraError | None = None,
             t_int: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> LossTerms:
        """EDM's l2 training loss of each system for clean, normalised ``xh`` (B, N, D).

        ``extra_error(eps_hat, eps, alpha_t, mask)`` (B,), alpha_t (B, 1), is added to the squared error of the t > 0 terms
        before the factor 1/2 (GFMDiff's GFLoss enters the loss this way). ``t_int`` and ``eps`` may be
        fixed (evaluation on the same steps and noise); by default they are drawn.
        """
        b, n, d = xh.shape
        if t_int is None:
            t_int = self.sample_t(b, xh.device)
        if eps is None:
            eps = self.noise(mask, xh.dtype)
        gamma_t = self.gamma.at(t_int).to(xh.dtype)                                        # (B,)
        z_t = self.q_sample(xh, gamma_t, eps)
        eps_hat = denoise(z_t, t_int.to(xh.dtype) / self.timesteps, mask).to(xh.dtype)
        eps_hat = eps_hat * mask[..., None].to(xh.dtype)

        # EDM's l2 normalisation: squared error over the padded atoms and all channels
        error = ((eps - eps_hat) ** 2).sum((1, 2)) / (n * d)                                 # (B,)
        extra = torch.zeros_like(error)
        if extra_error is not None:
            extra = extra_error(eps_hat, eps, alpha(gamma_t)[:, None], mask)
        loss_t = 0.5 * (error + extra)
        loss_0 = -self.log_pxh_given_z0(xh, z_t, gamma_t, eps, eps_hat, mask)
        return LossTerms(torch.where(t_int == 0, loss_0, loss_t), error, extra, t_int)

    def log_pxh_given_z0(self, xh: torch.Tensor, z_0: torch.Tensor, gamma_0: torch.Tensor, eps: torch.Tensor,
                         eps_hat: torch.Tensor, mask: torch.Tensor, epsilon: float = 1e-10) -> torch.Tensor:
        """log p(x, h | z_0) up to constants (B,): Gaussian for x (from eps_hat), and for each feature the
        probability mass of its true value within +-1/2 of the unnormalised z_0 (EDM reads h from z_0 itself)."""
        m = mask[..., None].to(xh.dtype)
        n = xh.shape[1]
        error_x = ((eps[..., : self.n_dims] - eps_hat[..., : self.n_dims]) ** 2).sum((1, 2)) / (n * self.n_dims)
        log_p = -0.5 * error_x
        sigma_0 = sigma(gamma_0)[:, None, None]
        for f in self.features:
            h = xh[..., self.slices[f.name]] * f.norm                 # the true value, unnormalised
            h_hat = z_0[..., self.slices[f.name]] * f.norm            # its estimate, read from z_0
            sigma_f = sigma_0 * f.norm
            if f.kind == "categorical":
                centred = h_hat - 1                                   # the true class sits at 1
                log_mass = torch.log(cdf_standard_gaussian((centred + 0.5) / sigma_f)
                                     - cdf_standard_gaussian((centred - 0.5) / sigma_f) + epsilon)
                log_prob = log_mass - torch.logsumexp(log_mass, dim=-1, keepdim=True)   # normalise over classes
                log_p = log_p + (log_prob * h * m).sum((1, 2))
            else:
                centred = torch.round(h) - h_hat
                log_mass = torch.log(cdf_standard_gaussian((centred + 0.5) / sigma_f)
                                     - cdf_standard_gaussian((centred - 0.5) / sigma_f) + epsilon)
                log_p = log_p + (log_mass * m).sum((1, 2))
        return log_p

    # ------------------------------------------------------------------ sampling
    def sample_p_zs_given_zt(self, denoise: Denoiser, s_int: torch.Tensor, t_int: torch.Tensor, z_t: torch.Tensor,
                             mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ancestral step: mu = z_t / alpha_{t|s} - sigma^2_{t|s} / (alpha_{t|s} sigma_t) eps_hat,
        std sigma_{t|s} sigma_s / sigma_t; positions re-centred."""
        gamma_s, gamma_t = self.gamma.at(s_int).to(z_t.dtype), self.gamma.at(t_int).to(z_t.dtype)
        sigma2_t_given_s, sigma_t_given_s, alpha_t_given_s = (
            v[:, None, None] for v in sigma_and_alpha_t_given_s(gamma_t, gamma_s))
        sigma_s, sigma_t = sigma(gamma_s)[:, None, None], sigma(gamma_t)[:, None, None]
        eps_hat = denoise(z_t, t_int.to(z_t.dtype) / self.timesteps, mask).to(z_t.dtype)
        mu = z_t / alpha_t_given_s - (sigma2_t_given_s / alpha_t_given_s / sigma_t) * eps_hat
        z_s = mu + sigma_t_given_s * sigma_s / sigma_t * self.noise(mask, z_t.dtype, generator)
        return torch.cat([remove_mean_with_mask(z_s[..., : self.n_dims], mask), z_s[..., self.n_dims:]], dim=-1)

    def sample_p_xh_given_z0(self, denoise: Denoiser, z_0: torch.Tensor, mask: torch.Tensor,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x ~ N((z_0 - sigma_0 eps_hat) / alpha_0, sigma_0^2 / alpha_0^2); features read from z_0 itself
        (argmax for one-hot blocks, rounding for integers), as EDM does."""
        zeros = torch.zeros(z_0.shape[0], dtype=torch.long, device=z_0.device)
        gamma_0 = self.gamma.at(zeros).to(z_0.dtype)[:, None, None]
        eps_hat = denoise(z_0, zeros.to(z_0.dtype), mask).to(z_0.dtype)
        mu = (z_0 - sigma(gamma_0) * eps_hat) / alpha(gamma_0)
        xh = mu + torch.exp(0.5 * gamma_0) * self.noise(mask, z_0.dtype, generator)   # std sigma_0 / alpha_0
        m = mask[..., None].to(z_0.dtype)
        pos = remove_mean_with_mask(xh[..., : self.n_dims] * m, mask)
        h: dict[str, torch.Tensor] = {}
        for f in self.features:
            value = z_0[..., self.slices[f.name]] * f.norm
            if f.kind == "categorical":
                h[f.name] = value.argmax(-1) * mask                                        # (B, N) class index
            else:
                h[f.name] = torch.round(value).long() * mask[..., None]                   # (B, N, width)
        return pos, h

    @torch.no_grad()
    def sample(self, denoise: Denoiser, mask: torch.Tensor, num_steps: int | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Ancestral sampling from z_T ~ N(0, I) (zero-CoM positions) to (x, h) for the atoms in ``mask``.

        ``num_steps`` (default T) walks the grid k T / num_steps, k = num_steps..0 (rounded to the schedule's
        steps): with num_steps = T this is EDM's sampler step for step; fewer steps jump between the same
        gammas with the exact q(z_t | z_s) of each jump (for tests and quick looks, not for reported numbers).
        """
        steps = self.timesteps if num_steps is None else int(num_steps)
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"num_steps must be in 1..{self.timesteps}, got {steps}")
        b = mask.shape[0]
        grid = torch.round(torch.arange(steps + 1, dtype=torch.float64) * self.timesteps / steps).long()
        z = self.noise(mask, torch.float32, generator)
        for k in reversed(range(steps)):
            s_int = grid[k].expand(b).to(mask.device)
            t_int = grid[k + 1].expand(b).to(mask.device)
            z = self.sample_p_zs_given_zt(denoise, s_int, t_int, z, mask, generator)
        return self.sample_p_xh_given_z0(denoise, z, mask, generator)
