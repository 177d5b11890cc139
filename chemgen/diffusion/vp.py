"""The continuous-time VP diffusion of a molecular graph with 3D positions, as DiffSpectra (and JODO) run it.

The joint state z = (x, h, e) of B molecules padded to N atoms holds three blocks:

    x  (B, N, 3)      positions / pos_norm, centre of mass 0 over the real atoms, 0 at padding
    h  (B, N, F)      node features: each categorical block (atom type, formal charge) one-hot, centred to
                      +-1 (2 onehot - 1) and divided by its normalisation value; 0 at padding
    e  (B, N, N, K)   bond type one-hot, centred, / edge_norm; symmetric, 0 on the diagonal and padding

and each block is noised with the same VP marginal

    q(z_t | z_0) = N(alpha_t z_0, sigma_t^2 I),   alpha_t^2 + sigma_t^2 = 1,   t in (eps, 1]

where the position noise lives in the zero-CoM subspace of each molecule and the edge noise is symmetric
(one draw per unordered pair, mirrored; none on the diagonal). The denoiser predicts the data, x0_hat =
f(z_t, lambda_t, c, x0_sc), from the noise level lambda_t = log(alpha_t^2 / sigma_t^2), the conditioning c
(passed through untouched: for DiffSpectra the (B, C) SpecFormer embedding) and, with self-conditioning,
its own earlier estimate x0_sc. The training loss of each molecule is

    L = sqrt(alpha_t / sigma_t) [ w_x sum_i mean_c (x0_hat - R x0)^2 + w_h sum_i mean_c (h0_hat - h0)^2
                                  + w_e sum_ij mean_c (e0_hat - e0)^2 ]

(sums over real atoms and pairs, means over channels; R x0 is the clean geometry rotated onto z_t by Kabsch,
the reference's ``noise_align``), and ancestral sampling walks t_0 = T > t_1 > ... > t_{S-1} = eps_s, s = 0
after the last step, drawing z_s ~ q(z_s | z_t, x0 = x0_hat):

    mean = alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0_hat
    std  = sigma_{t|s} sigma_s / sigma_t,   alpha_{t|s} = alpha_t / alpha_s,   sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2

and returns the last mean (at s = 0 it is x0_hat itself).

The numbers are the reference's (AzureLeon1/DiffSpectra ``configs/diffspectra_qm9s.py``, ``losses.py``,
``sampling.py``, ``utils.py``, ``diffusion/noise_schedule.py``, ``models/utils.py``):

* Schedule: ``sde.schedule = 'cosine'``. The config also sets ``continuous_beta_0 = 0.1`` and
  ``continuous_beta_1 = 20``, but `NoiseScheduleVP` (DPM-Solver's) reads them only for ``'linear'``: the
  QM9S model is trained and sampled with the cosine schedule, log alpha_t = log cos((t + s)/(1 + s) pi/2) -
  log cos(s/(1 + s) pi/2), s = 0.008, and sampling starts at DPM-Solver's T = 0.9946 (the cosine's alpha
  reaches 0 at t = 1). ``"linear"`` (log alpha_t = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2, T = 1) is kept
  for the listed betas.
* Training t ~ U(1e-5, 1); sampling on linspace(T, 1e-3, 1000) then s = 0.
* ``normalize_factors = '1, 4, 4, 1'`` (positions, atom types, formal charges, edges) and
  ``data.centered = True`` (one-hots mapped to 2 onehot - 1 before the division);
  ``loss_weights = '1., 0.25, 0.1'`` (positions, node features, edges); ``reduce_mean = False`` (sums over
  atoms and pairs, not means); the sqrt(alpha_t / sigma_t) weight of data prediction.
* Self-conditioning (``self_cond = True``, type ``'ori'``): with probability 0.5 per batch (the reference
  draws Python's ``random()`` once per step) the model first runs without it, under no_grad, and its
  detached estimate is fed to the second run; the sampler feeds each step's estimate to the next step.

Deviations from the reference:

* Formal charges and bond types are one-hot blocks here (charges {-1, 0, +1}; bonds none / single /
  double / triple), where the reference compresses them: a charge is one scalar channel fc / 4 and a bond
  two channels [exists, order / 3] (``compress_edge``), decoded by rounding. The one-hot blocks are
  centred like the atom types; decoding is an argmax per block. Normalisation values, loss weights and
  the per-channel means are the reference's, so a node's loss averages over its 8 channels (5 + 3) where
  the reference averages over 6 (5 + 1), and a pair's over 4 channels where the reference's has 2.
* Kabsch alignment uses d = sign(det(U V^T)) for the proper-rotation correction; the reference's
  sign(det(A)) is the same whenever det(A) != 0, but at det(A) = 0 (exactly planar or linear geometry)
  it returns 0 and collapses an axis.
* The schedule is evaluated in float64 (alpha at t -> 1 underflows float32 and the reference's float32
  cos((1 + s)/(1 + s) pi/2) can be negative); coefficients are cast to the state's dtype.
* Noise is drawn from an optional CPU ``torch.Generator`` (then moved), so samples are reproducible from a
  seed on any device; the self-conditioning coin and t use the same generator.
* The sampler projects each state and each estimate back onto the constraints (zero CoM, symmetric and
  masked edges). For a denoiser that already honours them (DMT does) this changes nothing but rounding.

Nothing here imports a model: the denoiser is a callable (`JointDenoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from chemgen.config import ConfigError
from chemgen.diffusion.vdm import (
    remove_mean_with_mask,
    sample_center_gravity_zero_gaussian,
    sample_gaussian,
)

COSINE_S = 0.008
COSINE_T_MAX = 0.9946   # DPM-Solver's end time for the cosine schedule (alpha_1 = 0)
SCHEDULES = ("cosine", "linear")


# ---------------------------------------------------------------------------- the state
@dataclass(frozen=True)
class GraphState:
    """The joint state z = (x, h, e) in the diffusion's (normalised) space."""

    pos: torch.Tensor     # (B, N, 3)
    nodes: torch.Tensor   # (B, N, F)   categorical node blocks side by side
    edges: torch.Tensor   # (B, N, N, K)

    def replace(self, **changes: torch.Tensor) -> GraphState:
        return replace(self, **changes)

    def map(self, fn) -> GraphState:
        """The same function applied to every block."""
        return GraphState(*(fn(getattr(self, f.name)) for f in fields(self)))

    def detach(self) -> GraphState:
        return self.map(torch.Tensor.detach)

    def to(self, dtype: torch.dtype) -> GraphState:
        return self.map(lambda v: v.to(dtype))


def pair_mask_of(mask: torch.Tensor) -> torch.Tensor:
    """(B, N, N) True for pairs of distinct real atoms."""
    n = mask.shape[1]
    return mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)


def project(state: GraphState, mask: torch.Tensor) -> GraphState:
    """Onto the state space: positions centred, padding zeroed, edges symmetric with a zero diagonal."""
    m, pm = mask[..., None].to(state.pos.dtype), pair_mask_of(mask)[..., None].to(state.edges.dtype)
    edges = 0.5 * (state.edges + state.edges.transpose(1, 2)) * pm
    return GraphState(remove_mean_with_mask(state.pos * m, mask), state.nodes * m, edges)


def _standard_normal(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                     generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _per_system(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcasting over ``like``, in its dtype."""
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _lincomb(a: torch.Tensor, x: GraphState, b: torch.Tensor, y: GraphState) -> GraphState:
    """a x + b y block by block, a and b (B,)."""
    return GraphState(*(_per_system(a, u) * u + _per_system(b, v) * v
                        for u, v in ((x.pos, y.pos), (x.nodes, y.nodes), (x.edges, y.edges))))


# ---------------------------------------------------------------------------- the noise schedule
class VPSchedule:
    """alpha_t, sigma_t of a continuous-time VP SDE (DPM-Solver's NoiseScheduleVP), in float64.

    ``"cosine"``: log alpha_t = log cos((t + s)/(1 + s) pi/2) - log cos(s/(1 + s) pi/2), s = 0.008, t_max 0.9946.
    ``"linear"``: log alpha_t = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2, t_max 1.
    """

    def __init__(self, kind: str = "cosine", beta_min: float = 0.1, beta_max: float = 20.0):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown VP schedule {kind!r}; choose from {SCHEDULES}")
        self.kind, self.beta_min, self.beta_max = kind, beta_min, beta_max
        self.t_max = COSINE_T_MAX if kind == "cosine" else 1.0
        self._cosine_log_alpha_0 = math.log(math.cos(COSINE_S / (1 + COSINE_S) * math.pi / 2))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        if self.kind == "cosine":
            log_alpha = torch.log(torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2)) - self._cosine_log_alpha_0
            return log_alpha.clamp_max(0.0)   # at t = 0 rounding may leave +1e-17: sigma would be sqrt(< 0)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), float64; sigma from -expm1(2 log alpha) keeps its precision near t = 0."""
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2 * log_alpha))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2), the noise level the denoiser reads (float64)."""
        log_alpha = self.log_alpha(t)
        return 2 * log_alpha - torch.log(-torch.expm1(2 * log_alpha))


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CategoricalBlock:
    """One categorical node block of h: its name, number of classes and normalisation value."""

    name: str
    num_classes: int
    norm: float


@dataclass(frozen=True)
class VPConfig:
    """The diffusion's settings; defaults are the reference's QM9S config."""

    schedule: str = "cosine"
    beta_min: float = 0.1              # read by the "linear" schedule only (listed, unused, in the reference)
    beta_max: float = 20.0
    pos_norm: float = 1.0              # normalize_factors[0]
    edge_norm: float = 1.0             # normalize_factors[3]; the node blocks carry their own
    centered: bool = True              # one-hots as 2 onehot - 1
    loss_weights: tuple[float, float, float] = (1.0, 0.25, 0.1)   # positions, node features, edges
    align_positions: bool = True       # Kabsch-align the target geometry onto z_t (noise_align)
    self_condition: bool = True
    self_condition_prob: float = 0.5
    train_eps: float = 1e-5            # t ~ U(train_eps, 1)
    sample_eps: float = 1e-3           # the last sampling time before s = 0
    num_steps: int = 1000              # sampling steps

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "linear" and not 0 <= self.beta_min < self.beta_max:
            raise ConfigError(f"need 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if self.pos_norm <= 0 or self.edge_norm <= 0:
            raise ConfigError(f"normalisation values must be positive, got pos {self.pos_norm}, edge {self.edge_norm}")
        if len(self.loss_weights) != 3 or any(w < 0 for w in self.loss_weights):
            raise ConfigError(f"loss_weights needs 3 non-negative values (positions, nodes, edges), got {self.loss_weights}")
        if not 0 <= self.self_condition_prob <= 1:
            raise ConfigError(f"self_condition_prob must be in [0, 1], got {self.self_condition_prob}")
        if not 0 < self.train_eps < 1 or not 0 < self.sample_eps < 1:
            raise ConfigError(f"train_eps and sample_eps must be in (0, 1), got {self.train_eps}, {self.sample_eps}")
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be at least 1, got {self.num_steps}")


class JointDenoiser(Protocol):
    """x0_hat = f(z_t, lambda_t, mask, cond, self_cond): data predictions in the normalised space."""

    def __call__(self, z_t: GraphState, noise_level: torch.Tensor, mask: torch.Tensor,
                 cond: torch.Tensor | None = None, self_cond: GraphState | None = None) -> GraphState: ...


@dataclass
class VPLossTerms:
    loss: torch.Tensor         # (B,) the weighted loss of each molecule
    pos: torch.Tensor          # (B,) sum_i mean_c of the squared position error (unweighted)
    nodes: torch.Tensor        # (B,)
    edges: torch.Tensor        # (B,)
    t: torch.Tensor            # (B,) float64
    self_conditioned: bool


# ---------------------------------------------------------------------------- geometry
@torch.no_grad()
def kabsch_align(pos: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """``pos`` (B, N, 3) rotated (proper rotation about the origin) to best fit ``onto``; padding rows must be 0.

    With A = onto^T pos = U S V^T the rotation is U diag(1, 1, d) V^T, d = det(U V^T) (see the module notes).
    """
    a = torch.einsum("bki,bkj->bij", onto.double(), pos.double())                        # (B, 3, 3)
    u, _, vh = torch.linalg.svd(a)
    d = torch.sign(torch.linalg.det(u @ vh))
    rotation = u @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ vh
    return (pos.double() @ rotation.transpose(1, 2)).to(pos.dtype)


# ---------------------------------------------------------------------------- the diffusion
class JointVP:
    """VP diffusion of (positions, categorical node blocks, bond-type edges); see the module docstring."""

    def __init__(self, config: VPConfig, node_blocks: Sequence[CategoricalBlock], edge_classes: int):
        if not node_blocks or any(b.num_classes < 1 or b.norm <= 0 for b in node_blocks):
            raise ConfigError(f"node blocks need at least one class and a positive norm: {node_blocks}")
        if edge_classes < 2:
            raise ConfigError(f"edge_classes must be at least 2 (class 0 is 'no bond'), got {edge_classes}")
        self.config = config
        self.node_blocks = tuple(node_blocks)
        self.edge_classes = edge_classes
        self.schedule = VPSchedule(config.schedule, config.beta_min, config.beta_max)
        self.slices: dict[str, slice] = {}
        start = 0
        for block in self.node_blocks:
            self.slices[block.name] = slice(start, start + block.num_classes)
            start += block.num_classes
        self.node_features = start

    # ------------------------------------------------------------------ data <-> normalised state
    def _encode(self, classes: torch.Tensor, num_classes: int, norm: float, mask: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        onehot = F.one_hot(classes.clamp_min(0), num_classes).to(dtype)
        if self.config.centered:
            onehot = 2 * onehot - 1
        return onehot / norm * mask[..., None].to(dtype)

    def normalize(self, pos: torch.Tensor, node_classes: Mapping[str, torch.Tensor], edge_classes: torch.Tensor,
                  mask: torch.Tensor) -> GraphState:
        """Clean data -> z_0. pos (B, N, 3) Angstrom; node_classes[name] (B, N) and edge_classes (B, N, N)
        class indices (anything at padding and on the diagonal)."""
        dtype = pos.dtype
        m = mask[..., None].to(dtype)
        x = remove_mean_with_mask(pos * m, mask) / self.config.pos_norm
        h = torch.cat([self._encode(node_classes[b.name], b.num_classes, b.norm, mask, dtype)
                       for b in self.node_blocks], dim=-1)
        e = self._encode(edge_classes, self.edge_classes, self.config.edge_norm, pair_mask_of(mask), dtype)
        return GraphState(x, h, e)

    def decode(self, state: GraphState, mask: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """z_0 -> (positions in Angstrom, {block: class index (B, N)}, bond class (B, N, N)): argmax per block
        (centring and scaling keep the order of the channels), 0 at padding and on the diagonal."""
        state = project(state, mask)
        pos = state.pos * self.config.pos_norm
        nodes = {b.name: state.nodes[..., self.slices[b.name]].argmax(-1) * mask for b in self.node_blocks}
        bonds = state.edges.argmax(-1) * pair_mask_of(mask)
        return pos, nodes, bonds

    # ------------------------------------------------------------------ noise
    def noise(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> GraphState:
        """eps: zero-CoM Gaussian positions, Gaussian node features, symmetric Gaussian edges (one draw per
        unordered pair of real atoms); drawn in that order from ``generator`` (on the CPU) when given."""
        b, n = mask.shape
        pos = sample_center_gravity_zero_gaussian((b, n, 3), mask, dtype, generator)
        nodes = sample_gaussian((b, n, self.node_features), mask, dtype, generator)
        # (B, K, N, N) as the reference draws it; the strict lower triangle mirrored, then masked
        lower = torch.tril(_standard_normal((b, self.edge_classes, n, n), mask.device, dtype, generator), diagonal=-1)
        edges = (lower + lower.transpose(-1, -2)).permute(0, 2, 3, 1) * pair_mask_of(mask)[..., None].to(dtype)
        return GraphState(pos, nodes, edges)

    def q_sample(self, z0: GraphState, t: torch.Tensor, eps: GraphState) -> GraphState:
        """z_t = alpha_t z_0 + sigma_t eps."""
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        return _lincomb(alpha_t, z0, sigma_t, eps)

    def sample_t(self, batch_size: int, device: torch.device | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U(train_eps, 1), float64; drawn on ``device`` unless a (CPU) generator fixes it, since a copy
        from the host would wait for the GPU at every training step."""
        if generator is None:
            u = torch.rand(batch_size, dtype=torch.float64, device=device)
        else:
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64).to(device)
        return u * (1 - self.config.train_eps) + self.config.train_eps

    # ------------------------------------------------------------------ the loss
    def loss(self, denoise: JointDenoiser, z0: GraphState, mask: torch.Tensor, cond: torch.Tensor | None = None,
             t: torch.Tensor | None = None, eps: GraphState | None = None, self_condition: bool | None = None,
             generator: torch.Generator | None = None) -> VPLossTerms:
        """The data-prediction loss of each molecule for a clean, normalised ``z0``.

        ``t``, ``eps`` and ``self_condition`` may be fixed (evaluation at given steps and noise); by default t
        and eps are drawn and self-conditioning is used with probability ``self_condition_prob`` (when the
        config enables it).
        """
        cfg = self.config
        device, dtype = z0.pos.device, z0.pos.dtype
        b = mask.shape[0]
        t = self.sample_t(b, device, generator) if t is None else t.to(device=device, dtype=torch.float64)
        eps = self.noise(mask, dtype, generator) if eps is None else eps
        z_t = self.q_sample(z0, t, eps)
        noise_level = self.schedule.log_snr(t).to(dtype)

        target_pos = kabsch_align(z0.pos, z_t.pos) if cfg.align_positions else z0.pos
        if self_condition is None:
            coin = torch.rand((), generator=generator).item()
            self_condition = cfg.self_condition and coin < cfg.self_condition_prob
        self_cond = None
        if self_condition:
            with torch.no_grad():
                self_cond = project(denoise(z_t, noise_level, mask, cond, None), mask).detach()
        pred = denoise(z_t, noise_level, mask, cond, self_cond)

        m, pm = mask[..., None].to(dtype), pair_mask_of(mask)[..., None].to(dtype)
        loss_pos = (((pred.pos - target_pos) * m) ** 2).mean(-1).sum(-1)                      # (B,)
        loss_nodes = (((pred.nodes - z0.nodes) * m) ** 2).mean(-1).sum(-1)
        loss_edges = (((pred.edges - z0.edges) * pm) ** 2).mean(-1).sum((1, 2))
        w_x, w_h, w_e = cfg.loss_weights
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        weight = torch.sqrt(alpha_t / sigma_t).to(dtype)
        loss = weight * (w_x * loss_pos + w_h * loss_nodes + w_e * loss_edges)
        return VPLossTerms(loss, loss_pos.detach(), loss_nodes.detach(), loss_edges.detach(), t, bool(self_condition))

    # ------------------------------------------------------------------ sampling
    def time_grid(self, num_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, s) float64: t = linspace(t_max, sample_eps, S), s = t shifted by one with 0 after the last."""
        steps = self.config.num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {steps}")
        t = torch.linspace(self.schedule.t_max, self.config.sample_eps, steps, dtype=torch.float64)
        return t, torch.cat([t[1:], torch.zeros(1, dtype=torch.float64)])

    def p_sample(self, denoise: JointDenoiser, z_t: GraphState, t: float, s: float, mask: torch.Tensor,
                 cond: torch.Tensor | None = None, self_cond: GraphState | None = None,
                 generator: torch.Generator | None = None, temperature: float = 1.0
                 ) -> tuple[GraphState, GraphState, GraphState]:
        """One ancestral step t -> s < t: (z_s, its mean, x0_hat)."""
        b, dtype = mask.shape[0], z_t.pos.dtype
        t_vec = torch.full((b,), t, dtype=torch.float64)
        alpha_t, sigma_t = self.schedule.alpha_sigma(t_vec)
        alpha_s, sigma_s = self.schedule.alpha_sigma(torch.full((b,), s, dtype=torch.float64))
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = sigma_t ** 2 - alpha_ts ** 2 * sigma_s ** 2
        std = torch.sqrt(sigma2_ts) * sigma_s / sigma_t

        noise_level = self.schedule.log_snr(t_vec).to(device=mask.device, dtype=dtype)
        x0_hat = project(denoise(z_t, noise_level, mask, cond, self_cond), mask).to(dtype)
        dev = mask.device
        mean = _lincomb((alpha_ts * sigma_s ** 2 / sigma_t ** 2).to(dev), z_t,
                        (alpha_s * sigma2_ts / sigma_t ** 2).to(dev), x0_hat)
        z_s = _lincomb(torch.ones(b, dtype=torch.float64, device=dev), mean,
                       (std * temperature).to(dev), self.noise(mask, dtype, generator))
        return project(z_s, mask), project(mean, mask), x0_hat

    @torch.no_grad()
    def sample(self, denoise: JointDenoiser, mask: torch.Tensor, cond: torch.Tensor | None = None,
               num_steps: int | None = None, generator: torch.Generator | None = None, temperature: float = 1.0,
               dtype: torch.dtype = torch.float32) -> GraphState:
        """Ancestral sampling from z_T ~ N(0, I) (zero-CoM positions, symmetric edges) for the atoms in
        ``mask``; returns the normalised z_0 (`decode` reads it). ``num_steps`` defaults to the config's
        (1000, the reference's); fewer steps walk the same schedule with larger jumps."""
        t_grid, s_grid = self.time_grid(num_steps)
        z = self.noise(mask, dtype, generator)
        mean, self_cond = z, None
        for t, s in zip(t_grid.tolist(), s_grid.tolist()):
            z, mean, x0_hat = self.p_sample(denoise, z, t, s, mask, cond, self_cond, generator, temperature)
            if self.config.self_condition:
                self_cond = x0_hat
        return mean


__all__ = [
    "COSINE_T_MAX", "CategoricalBlock", "GraphState", "JointDenoiser", "JointVP", "VPConfig", "VPLossTerms",
    "VPSchedule", "kabsch_align", "pair_mask_of", "project",
]
