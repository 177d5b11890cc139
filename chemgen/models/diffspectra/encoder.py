"""The 3D molecule encoder of SpecFormer's pretraining: an invariant transformer over distance RBFs.

MolSpectra (ICLR 2025) pretrains SpecFormer against a 3D encoder of the same molecules: InfoNCE between the
spectra's embedding and the molecule's, while the 3D encoder also denoises coordinates. This is that encoder.
For atoms with types Z_i at positions x_i, perturbed by the pretraining's noise x~ = x + sigma eps (B, N, 3):

    e_k(r)  = phi(r) exp(-beta (exp(-alpha r) - mu_k)^2)        exp-normal RBFs, k < K; alpha = 5 / r_c
    phi(r)  = (cos(pi r / r_c) + 1) / 2  for r < r_c, else 0   cosine cutoff
    h_i     = W_c [E(Z_i), sum_{j != i} phi(r_ij) (W_e e(r_ij)) * E'(Z_j)]   atom and neighbour embedding
    per layer (pre-norm residual):
        u       = LN(h);  q, k, v = W_q u, W_k u, W_v u         H heads of d / H channels
        dk, dv  = SiLU(W_dk e(r_ij)), SiLU(W_dv e(r_ij))        distance filters of the keys and the values
        a^h_ij  = SiLU(sum_c q_ic k_jc dk_ijc) phi(r_ij)        no softmax, as TorchMD-Net's attention
        h_i     <- h_i + W_o sum_j a^h_ij (v_j * dv_ij)
        h_i     <- h_i + FFN(LN(h_i))
    h       = LN(h)
    m       = sum_i W_m h_i                      (B, D)         the molecule's embedding (sum pooling)
    eps_hat = sum_{j != i} w_ij (x~_i - x~_j) / r_ij            (B, N, 3), w_ij = MLP(W h_i + W' h_j + W'' e(r_ij))

Everything before the last line reads the geometry through distances only, so h and m are invariant under
rotations, reflections and translations, and eps_hat, a sum of relative vectors with invariant weights, is
E(3)-equivariant; sums over j make the whole permutation-equivariant. Pairs run over the real atoms of each
molecule, self-pairs included (TorchMD-Net's ``loop=True``), each cut off at r_c.

Reference (MolSpectra ``examples/ET-QM9-QM9SP-PT.yaml``, ``torchmdnet/models/model.py``, ``torchmdnet/data.py``,
``torchmdnet/module.py``, ``scripts/2-qm9-qm9sp-pretrain.sh``): TorchMD-Net's equivariant transformer (ET) with
8 layers, 256 channels, 8 heads, 64 exp-normal RBFs, cutoff 5 A, neighbour embedding, SiLU attention; the
molecule feature is the sum over atoms of its scalar channels (``reduce_op: add``, no output head); the
noise head is its equivariant vector output; positions are perturbed by N(0, 0.04^2 A^2) noise and the head
regresses the noise standardised by running statistics (mean -> 0, std -> sigma, i.e. eps).

Deviations, and why:

* No vector channel. The ET carries per-atom vectors through every layer; here only the scalar track
  exists (TorchMD-Net's TorchMD-T, the ET without vectors) and the noise head builds vectors from relative
  positions at the end, EGNN-style. That keeps the encoder a few dense (B, N, N) products on any device,
  and its only job is to be a good enough 3D view of the molecule for SpecFormer to align with; it is not
  used at generation. An FFN per layer replaces the ET's vector-scalar gates as the layer's nonlinearity.
* A bias-free projection W_m to SpecFormer's width replaces the ET's equal widths (256 = 256 in the
  reference), so the cpu preset can give the two networks different sizes. Cosine similarity ignores the
  scale, so sum and mean pooling give the same InfoNCE.
* The ET starts from weights pretrained on PCQM4Mv2 by denoising; here the encoder starts from random weights
  (no such checkpoint exists in chemgen) and learns denoising and alignment together during the stage.
* The noise target is eps itself rather than running-standardised noise (the same target once the running
  statistics settle), and the noise is not centred, as the reference's: its mean is the one part an
  equivariant, translation-invariant head cannot predict (an irreducible 1/N of the loss per molecule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.config import ConfigError


@dataclass(frozen=True)
class EncoderConfig:
    """The 3D encoder's sizes; defaults are the reference ET's (8 layers, 256 channels, 8 heads, 64 RBFs, 5 A)."""

    width: int = 256
    n_layers: int = 8
    n_heads: int = 8
    num_rbf: int = 64
    cutoff: float = 5.0          # A
    mlp_ratio: int = 2

    def __post_init__(self) -> None:
        for name in ("width", "n_layers", "n_heads", "num_rbf", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"encoder.{name} must be a positive integer, got {value!r}")
        if self.width % self.n_heads:
            raise ConfigError(f"encoder.width {self.width} must be divisible by n_heads {self.n_heads}")
        if not self.cutoff > 0:
            raise ConfigError(f"encoder.cutoff must be positive (A), got {self.cutoff}")


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    return torch.where(r < cutoff, 0.5 * (torch.cos(r * math.pi / cutoff) + 1), torch.zeros_like(r))


class ExpNormalBasis(nn.Module):
    """r (...) -> phi(r) exp(-beta (exp(-alpha r) - mu_k)^2) (..., K): TorchMD-Net's ExpNormalSmearing (fixed)."""

    def __init__(self, num: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff)
        self.register_buffer("means", torch.linspace(start, 1.0, num), persistent=False)
        self.register_buffer("betas", torch.full((num,), (2.0 / num * (1 - start)) ** -2), persistent=False)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r[..., None]
        basis = torch.exp(-self.betas * (torch.exp(-self.alpha * r) - self.means) ** 2)
        return cosine_cutoff(r, self.cutoff) * basis


class DistanceAttention(nn.Module):
    """One pre-norm layer: SiLU attention with distance-filtered keys and values, then an FFN."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        d, self.heads = config.width, config.n_heads
        self.norm_attn = nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.key_filter = nn.Linear(config.num_rbf, d)
        self.value_filter = nn.Linear(config.num_rbf, d)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.SiLU(), nn.Linear(config.mlp_ratio * d, d))

    def forward(self, h: torch.Tensor, rbf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """h (B, N, d), rbf (B, N, N, K), weight (B, N, N) = phi(r_ij) on real pairs, 0 elsewhere."""
        b, n, d = h.shape
        c = d // self.heads
        u = self.norm_attn(h)
        q, k, v = (lin(u).view(b, n, self.heads, c) for lin in (self.q, self.k, self.v))
        dk = F.silu(self.key_filter(rbf)).view(b, n, n, self.heads, c)
        dv = F.silu(self.value_filter(rbf)).view(b, n, n, self.heads, c)
        attn = F.silu(torch.einsum("bihc,bjhc,bijhc->bhij", q, k, dk)) * weight[:, None]     # (B, H, N, N)
        message = torch.einsum("bhij,bjhc,bijhc->bihc", attn, v, dv).reshape(b, n, d)
        h = h + self.out(message)
        return h + self.ffn(self.norm_ffn(h))


class MoleculeEncoder(nn.Module):
    """(atom types, positions, mask) -> (molecule embedding (B, out_dim), predicted noise eps_hat (B, N, 3))."""

    def __init__(self, config: EncoderConfig, num_atom_types: int, out_dim: int):
        super().__init__()
        self.config = config
        d = config.width
        self.rbf = ExpNormalBasis(config.num_rbf, config.cutoff)
        self.embedding = nn.Embedding(num_atom_types, d)
        self.neighbour_embedding = nn.Embedding(num_atom_types, d)
        self.neighbour_filter = nn.Linear(config.num_rbf, d)
        self.combine = nn.Linear(2 * d, d)
        self.layers = nn.ModuleList(DistanceAttention(config) for _ in range(config.n_layers))
        self.out_norm = nn.LayerNorm(d)
        self.project = nn.Linear(d, out_dim, bias=False)               # W_m
        self.noise_pair = nn.Linear(2 * d + config.num_rbf, d)          # [h_i, h_j, e_ij] -> hidden, factorised below
        self.noise_out = nn.Sequential(nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))

    def forward(self, types: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """types (B, N) long (index into the element list, anything at padding), pos (B, N, 3) A, mask (B, N)."""
        pairs = mask[:, :, None] & mask[:, None, :]                                            # self-pairs kept
        diff = pos[:, :, None] - pos[:, None]                                                  # (B, N, N, 3)
        # clamp r^2, not r: sqrt's gradient at the zero diagonal would be inf (times 0: NaN)
        r = torch.sqrt((diff ** 2).sum(-1).clamp_min(1e-12))
        rbf = self.rbf(r) * pairs[..., None].to(pos.dtype)                                     # (B, N, N, K)
        weight = cosine_cutoff(r, self.config.cutoff) * pairs.to(pos.dtype)
        off_diagonal = pairs & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        types = types.clamp_min(0) * mask
        # times phi on real pairs: W_e's bias would otherwise reach padding and atoms beyond the cutoff
        neighbour_weight = (self.neighbour_filter(rbf) * (weight * off_diagonal.to(weight.dtype))[..., None])
        neighbours = torch.einsum("bijd,bjd->bid", neighbour_weight, self.neighbour_embedding(types))
        h = self.combine(torch.cat([self.embedding(types), neighbours], dim=-1))
        m = mask[..., None].to(h.dtype)
        h = h * m
        for layer in self.layers:
            h = layer(h, rbf, weight) * m
        h = self.out_norm(h) * m
        embedding = self.project(h).sum(1)                                                      # (B, out_dim)

        d = h.shape[-1]
        w_i, w_j, w_e = self.noise_pair.weight.split([d, d, rbf.shape[-1]], dim=1)
        pair = (F.linear(h, w_i)[:, :, None] + F.linear(h, w_j)[:, None]
                + F.linear(rbf, w_e, self.noise_pair.bias))                                    # (B, N, N, d)
        w = self.noise_out(pair)[..., 0]                                                        # (B, N, N)
        eps_hat = ((w * off_diagonal.to(w.dtype))[..., None] * diff / r[..., None]).sum(2)      # (B, N, 3)
        return embedding, eps_hat * m


__all__ = ["EncoderConfig", "ExpNormalBasis", "MoleculeEncoder", "cosine_cutoff"]
