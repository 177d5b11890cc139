"""DiffSpectra's Diffusion Molecule Transformer (DMT): a graph transformer over atoms and atom pairs that
predicts the clean molecule x0 = (positions, atom types, formal charges, bond types) from its noised state.

DMT is JODO's Diffusion Graph Transformer with the spectrum as a condition (AzureLeon1/DiffSpectra
``models/dmt.py``, ``models/layers.py``, ``models/utils.py``; sizes from ``configs/diffspectra_qm9s.py``).
With z_t = (x, h, e) (`chemgen.diffusion.vp.GraphState`), the noise level lambda = log(alpha^2 / sigma^2),
the spectrum embedding s (B, C) and the self-conditioning estimate (x^sc, h^sc, e^sc):

    c        = time_mlp(lambda) + cond_lin(s)                      the spectrum is ADDED to the time embedding
    a_i      = W_a [h_i, h^sc_i]                                   atoms, nf channels
    p_ij     = W_p [e_ij, e^sc_ij, GBF(|x^sc_i - x^sc_j|^2; c)]    pairs, nf / 4 channels
    A^2D_ij  = [e^sc_ij says "bonded"],  A^3D_ij = [|x^sc_i - x^sc_j|^2 <= 2 A^2]     two adjacency heads
    for each of L blocks (adaLN: shift / scale / gate regressed from c):
        d_ij  = GBF(|x_i - x_j|^2; c);   p_ij <- W [d_ij, p_ij]
        m_i   = sum_j softmax_j(heads) v_j * tanh(W_1 p_ij)        14 learned heads q_i.(k_j * tanh(W_0 p_ij)),
                                                                   2 heads uniform over the neighbours in A^2D, A^3D
        a     <- adaLN residual of m, then of an FFN;   p <- adaLN residual of W(m_i + m_j), then of an FFN
        x_i   <- x_i + sum_j s (x_i - x_j) / |x_i - x_j| mean_k(A^k_ij tanh(phi_k(a_i, a_j, p_ij, d_ij; c)))
        x     <- x - CoM(x)
    outputs: x (data prediction), MLP([a^0, W_1 a^1, ..., W_L a^L]) for the node channels and the same
    over pairs, symmetrised, for the bond channels.

The block keeps the reference's unusual adaLN order: after each attention residual the stream is
re-normalised and modulated (a = mod(LN(a_in + g * m))) and the FFN's residual adds to that modulated stream.

Equivariance. Geometry enters only through squared distances |x_i - x_j|^2 (of x and of x^sc), which are
invariant under rotations, reflections and translations; the position update is a sum of x_i - x_j times
invariant weights, so it commutes with any orthogonal map, and the CoM removal after every block makes the
output translation invariant (the data prediction is centred). Every operation is per atom or per pair with
sums and softmaxes over j, so permuting the atoms permutes the outputs. DMT is therefore E(3)-equivariant,
reflections included, not only SE(3) as the paper says: it reads no chirality (no cross products, no signed
volumes), so a molecule and its mirror image get mirrored predictions. `tests/models/diffspectra/test_dmt.py`
checks rotations, reflections, translations and permutations in float64.

Outputs are x0 estimates in the diffusion's normalised space (`chemgen.diffusion.vp`): the node and bond
channels regress the centred, scaled one-hots with the reference's squared error, so their argmax is the
predicted class (they serve as the class logits; no softmax or cross-entropy is involved, as in the reference).

Deviations from the reference:

* Dense (B, N, N, .) pair tensors with masks instead of PyG edge lists over all pairs of real atoms; the same
  pairs, the same sums. A fully-masked softmax row (a molecule of one atom) gives zero instead of NaN.
* Charges and bonds are one-hot (3 charge channels, 4 bond channels, see `chemgen.diffusion.vp`): the node
  head outputs 5 + 3 channels (reference 5 + 1), and one pair head outputs the 4 bond channels where the
  reference has two heads (edge exists, bond order). The self-conditioning bond adjacency A^2D is "the
  no-bond channel <= 0" (estimated P(no bond) <= 1/2), the reference's "exists channel >= 0" (edge_quan_th 0).
* ``spatial_cut_off = 2`` is compared, as in the reference (``coord2diff_adj``), with the SQUARED distance:
  A^3D joins atoms within sqrt(2) ~ 1.41 A in the self-conditioning geometry, not 2 A. Kept, and named
  `DMTConfig.spatial_cutoff_sq` (A^2) so that it reads as what it is.
* Without self-conditioning input (first sampling step, half the training steps) the reference feeds zero
  positions, which give zero distance features and all-ones adjacencies; the same here, keyed on the
  estimate being absent rather than on the distances summing to zero.
* ``cond`` may be None (no spectrum: c = time_mlp(lambda)); the reference requires a context.
* The Gaussian basis uses math.pi and the model's dtype (the reference's ``gaussian`` uses pi = 3.14159, a
  4e-7 relative change, and casts its means and widths to float32 whatever the model's dtype).
* The reference's NaN guard (zeroing positions when any is NaN, with a print) is left out.
* ``n_heads`` counts the two adjacency heads, as the reference's ``n_heads = 16`` does (14 learned heads of
  (16 x 16) // 14 = 18 query/key channels, plus 2; value heads 16 x 16).

Initialisation is the reference's: PyTorch defaults (the adaLN regressions are not zero-initialised), the GBF
means and widths U(0, 3), the position-update scale s = 0.01, the learned sinusoidal frequencies N(0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.config import ConfigError
from chemgen.diffusion.vdm import remove_mean_with_mask
from chemgen.diffusion.vp import GraphState, pair_mask_of
from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS, BOND_ORDERS, FORMAL_CHARGES

ADJACENCY_HEADS = 2          # A^2D (bonds of the self-conditioning estimate) and A^3D (its close pairs)
NO_ADJACENCY_LOGIT = -1e10   # the reference's "-inf" for non-adjacent pairs in the adjacency heads


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DMTConfig:
    """The DMT's sizes; defaults are the reference's QM9S model (``configs/diffspectra_qm9s.py``)."""

    nf: int = 256                      # atom channels; pairs get nf // 4, the time embedding 4 nf
    n_layers: int = 8
    n_heads: int = 16                  # including the ADJACENCY_HEADS
    mlp_ratio: int = 2
    dropout: float = 0.1
    cond_dim: int = 256                # the spectrum embedding's width (SpecFormer's output, = nf in the reference)
    num_atom_types: int = len(ATOM_ELEMENTS)
    num_charges: int = len(FORMAL_CHARGES)
    num_bond_types: int = len(BOND_ORDERS)
    spatial_cutoff_sq: float = 2.0     # A^2, on squared distances (the reference's spatial_cut_off)
    time_frequencies: int = 16         # learned sinusoidal embedding of the noise level
    coord_scale_init: float = 1e-2     # CoorsNorm's initial scale s

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be at least 1, got {self.n_layers}")
        if self.n_heads <= ADJACENCY_HEADS:
            raise ConfigError(f"n_heads counts the {ADJACENCY_HEADS} adjacency heads and needs at least one more, "
                              f"got {self.n_heads}")
        if self.nf % self.n_heads or self.nf % 4:
            raise ConfigError(f"nf {self.nf} must be divisible by 4 and by n_heads {self.n_heads}")
        if self.edge_nf < 4:
            raise ConfigError(f"nf // 4 = {self.edge_nf} pair channels is too few (need >= 4): raise nf")
        if 2 * self.edge_nf < self.n_layers:
            raise ConfigError(f"each of the {self.n_layers} layers reads out (2 nf / 4) // n_layers pair channels: "
                              f"nf {self.nf} is too small")
        if self.mlp_ratio < 1:
            raise ConfigError(f"mlp_ratio must be at least 1, got {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cond_dim < 1 or self.time_frequencies < 2 or self.time_frequencies % 2:
            raise ConfigError(f"cond_dim must be >= 1 and time_frequencies even and >= 2, got "
                              f"{self.cond_dim}, {self.time_frequencies}")
        if min(self.num_atom_types, self.num_charges) < 1 or self.num_bond_types < 2:
            raise ConfigError("need >= 1 atom type, >= 1 charge class and >= 2 bond classes (class 0: no bond)")
        if self.spatial_cutoff_sq <= 0:
            raise ConfigError(f"spatial_cutoff_sq must be positive, got {self.spatial_cutoff_sq}")

    @property
    def edge_nf(self) -> int:
        return self.nf // 4

    @property
    def time_dim(self) -> int:
        return 4 * self.nf

    @property
    def node_features(self) -> int:
        return self.num_atom_types + self.num_charges


DMT_SIZES: dict[str, DMTConfig] = {
    "paper": DMTConfig(),
    "tiny": DMTConfig(nf=32, n_layers=2, n_heads=4, cond_dim=16),   # tests
}


# ---------------------------------------------------------------------------- embeddings
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def per_system(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, 1, ..., 1, d) broadcasting over the atom (or pair) axes of ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 2)), v.shape[-1])


class LearnedSinusoidalEmbedding(nn.Module):
    """lambda -> [lambda, sin(2 pi w lambda), cos(2 pi w lambda)], w ~ N(0, 1) learned (crowsonkb's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = x[:, None] * self.weights[None] * 2 * math.pi
        return torch.cat([x[:, None], freqs.sin(), freqs.cos()], dim=-1)                       # (B, dim + 1)


class ConditionedGaussianBasis(nn.Module):
    """r2 -> [r2', N(r2'; mu_k, sigma_k)]_{k < K-1} with r2' = r2 (1 + a) + b, (a, b) regressed from c
    (the reference's CondGaussianLayer; the basis acts on squared distances)."""

    def __init__(self, num: int, time_dim: int):
        super().__init__()
        self.means = nn.Parameter(torch.empty(num - 1).uniform_(0, 3))
        self.stds = nn.Parameter(torch.empty(num - 1).uniform_(0, 3))
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2))

    def forward(self, r2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time_mlp(c).chunk(2, dim=-1)                                     # (B, 1) each
        x = r2 * (1 + scale[:, :, None]) + shift[:, :, None]                                 # (B, N, N)
        std = self.stds.abs() + 1e-5
        basis = torch.exp(-0.5 * ((x[..., None] - self.means) / std) ** 2) / (math.sqrt(2 * math.pi) * std)
        return torch.cat([x[..., None], basis], dim=-1)                                      # (B, N, N, K)


def squared_distances(pos: torch.Tensor) -> torch.Tensor:
    return ((pos[:, :, None] - pos[:, None]) ** 2).sum(-1)                                   # (B, N, N)


# ---------------------------------------------------------------------------- attention
class MixedAttention(nn.Module):
    """Graph-transformer attention with pair gating and two adjacency heads (the reference's TransMixLayer).

    Learned heads: logit_ij = sum_c q_ic k_jc tanh(W_0 p_ij)_c / sqrt(C); adjacency heads: logit 1 on
    adjacent pairs, -1e10 elsewhere (a uniform average over the neighbours). Messages v_j * tanh(W_1 p_ij).
    """

    def __init__(self, nf: int, edge_nf: int, n_heads: int):
        super().__init__()
        self.heads, self.channels = n_heads, nf // n_heads                    # value heads (H, C)
        self.sub_heads = n_heads - ADJACENCY_HEADS
        self.sub_channels = (n_heads * self.channels) // self.sub_heads     # query/key channels per learned head
        qk = self.sub_heads * self.sub_channels
        self.q, self.k, self.v = nn.Linear(nf, qk), nn.Linear(nf, qk), nn.Linear(nf, nf)
        self.edge_key = nn.Linear(edge_nf, qk, bias=False)                  # lin_edge0
        self.edge_value = nn.Linear(edge_nf, nf, bias=False)                # lin_edge1

    def forward(self, a: torch.Tensor, p: torch.Tensor, adjacency: torch.Tensor,
                pair_mask: torch.Tensor) -> torch.Tensor:
        """a (B, N, nf), p (B, N, N, edge_nf), adjacency (B, 2, N, N) bool, pair_mask (B, N, N) -> (B, N, nf)."""
        b, n, _ = a.shape
        q = self.q(a).view(b, n, self.sub_heads, self.sub_channels)
        k = self.k(a).view(b, n, self.sub_heads, self.sub_channels)
        gate = torch.tanh(self.edge_key(p)).view(b, n, n, self.sub_heads, self.sub_channels)
        learned = torch.einsum("bisc,bjsc,bijsc->bsij", q, k, gate) / math.sqrt(self.channels)
        fixed = torch.where(adjacency, torch.ones((), dtype=a.dtype, device=a.device),
                            torch.full((), NO_ADJACENCY_LOGIT, dtype=a.dtype, device=a.device))
        logits = torch.cat([fixed, learned], dim=1)                                           # (B, H, N, N)
        logits = logits.masked_fill(~pair_mask[:, None], torch.finfo(logits.dtype).min)
        attn = torch.softmax(logits, dim=-1) * pair_mask[:, None].to(a.dtype)   # a row with no j: 0, not NaN
        v = self.v(a).view(b, n, self.heads, self.channels)
        v_gate = torch.tanh(self.edge_value(p)).view(b, n, n, self.heads, self.channels)
        return torch.einsum("bhij,bjhc,bijhc->bihc", attn, v, v_gate).reshape(b, n, -1)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: int, dropout: float):
        super().__init__(nn.Linear(dim, dim * ratio), nn.SiLU(), nn.Dropout(dropout), nn.Linear(dim * ratio, dim),
                         nn.Dropout(dropout))


# ---------------------------------------------------------------------------- positions
class EquivariantUpdate(nn.Module):
    """x_i <- x_i + sum_j s (x_i - x_j) / |x_i - x_j| mean_k(A^k_ij tanh(phi_k)), A^0 = 1, with
    phi = MLP(mod(LN(W [a_i, a_j, p_ij, d_ij]); c)) (the reference's MultiCondEquiUpdate + CoorsNorm)."""

    def __init__(self, nf: int, edge_nf: int, time_dim: int, coord_scale_init: float):
        super().__init__()
        self.coord_scale = nn.Parameter(torch.tensor(float(coord_scale_init)))
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * nf))
        self.input_lin = nn.Linear(2 * nf + 2 * edge_nf, nf)            # [a_i, a_j, p_ij, d_ij]
        self.norm = nn.LayerNorm(nf, elementwise_affine=False, eps=1e-6)
        self.coord_mlp = nn.Sequential(nn.Linear(nf, nf), nn.SiLU(), nn.Linear(nf, 1 + ADJACENCY_HEADS, bias=False))

    def forward(self, a: torch.Tensor, p: torch.Tensor, d: torch.Tensor, pos: torch.Tensor, c: torch.Tensor,
                adjacency: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        nf = a.shape[-1]
        w_i, w_j, w_pd = self.input_lin.weight.split([nf, nf, self.input_lin.in_features - 2 * nf], dim=1)
        x = (F.linear(a, w_i)[:, :, None] + F.linear(a, w_j)[:, None]
             + F.linear(torch.cat([p, d], dim=-1), w_pd, self.input_lin.bias))               # (B, N, N, nf)
        shift, scale = self.time_mlp(c).chunk(2, dim=-1)
        x = modulate(self.norm(x), per_system(shift, x), per_system(scale, x))
        heads = torch.tanh(self.coord_mlp(x))                                                 # (B, N, N, 3)
        ones = torch.ones_like(adjacency[:, :1])
        weight = (heads * torch.cat([ones, adjacency], dim=1).permute(0, 2, 3, 1).to(heads.dtype)).mean(-1)
        diff = pos[:, :, None] - pos[:, None]                                                 # (B, N, N, 3)
        # clamp r^2, not r: sqrt's gradient at the zero diagonal would be inf (times 0: NaN)
        unit = diff / torch.sqrt((diff ** 2).sum(-1, keepdim=True).clamp_min(1e-16)) * self.coord_scale
        return pos + (unit * (weight * pair_mask.to(weight.dtype))[..., None]).sum(2)


# ---------------------------------------------------------------------------- the block
class EquivariantMixBlock(nn.Module):
    def __init__(self, config: DMTConfig):
        super().__init__()
        nf, enf, tdim = config.nf, config.edge_nf, config.time_dim
        self.distance = ConditionedGaussianBasis(enf, tdim)
        self.edge_in = nn.Linear(2 * enf, enf)                   # [d_ij, p_ij] -> p_ij
        self.attention = MixedAttention(nf, enf, config.n_heads)
        self.node_to_edge = nn.Linear(nf, enf)
        self.norm1_node = nn.LayerNorm(nf, elementwise_affine=False, eps=1e-6)
        self.norm1_edge = nn.LayerNorm(enf, elementwise_affine=False, eps=1e-6)
        self.norm2_node = nn.LayerNorm(nf, elementwise_affine=False, eps=1e-6)
        self.norm2_edge = nn.LayerNorm(enf, elementwise_affine=False, eps=1e-6)
        self.ffn_node = FeedForward(nf, config.mlp_ratio, config.dropout)
        self.ffn_edge = FeedForward(enf, config.mlp_ratio, config.dropout)
        self.adaLN_node = nn.Sequential(nn.SiLU(), nn.Linear(tdim, 6 * nf))
        self.adaLN_edge = nn.Sequential(nn.SiLU(), nn.Linear(tdim, 6 * enf))
        self.position_update = EquivariantUpdate(nf, enf, tdim, config.coord_scale_init)

    def forward(self, a: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, c: torch.Tensor, mask: torch.Tensor,
                pair_mask: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, pm = mask[..., None].to(a.dtype), pair_mask[..., None].to(p.dtype)
        a_in, p_in = a, p
        d = self.distance(squared_distances(pos), c) * pm                                  # (B, N, N, edge_nf)
        p = self.edge_in(torch.cat([d, p], dim=-1))

        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            per_system(v, a) for v in self.adaLN_node(c).chunk(6, dim=-1))
        e_shift_msa, e_scale_msa, e_gate_msa, e_shift_mlp, e_scale_mlp, e_gate_mlp = (
            per_system(v, p) for v in self.adaLN_edge(c).chunk(6, dim=-1))
        a = modulate(self.norm1_node(a), shift_msa, scale_msa)
        p = modulate(self.norm1_edge(p), e_shift_msa, e_scale_msa)

        message = self.attention(a, p, adjacency, pair_mask)                                # (B, N, nf)
        pair_message = self.node_to_edge(message[:, :, None] + message[:, None])           # (B, N, N, edge_nf)

        a = modulate(self.norm2_node(a_in + gate_msa * message), shift_mlp, scale_mlp) * m
        a = (a + gate_mlp * self.ffn_node(a)) * m
        p = modulate(self.norm2_edge(p_in + e_gate_msa * pair_message), e_shift_mlp, e_scale_mlp)
        p = (p + e_gate_mlp * self.ffn_edge(p)) * pm          # pairs outside the molecule stay 0

        pos = self.position_update(a, p, d, pos, c, adjacency, pair_mask)
        return a, p, pos


# ---------------------------------------------------------------------------- the network
def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden // 2), nn.SiLU(),
                         nn.Linear(hidden // 2, out_dim))


class DMT(nn.Module):
    """x0_hat = DMT(z_t, lambda, mask, spectrum embedding, self-conditioning): a `chemgen.diffusion.vp.JointDenoiser`."""

    def __init__(self, config: DMTConfig):
        super().__init__()
        self.config = config
        nf, enf, tdim, layers = config.nf, config.edge_nf, config.time_dim, config.n_layers
        self.time_mlp = nn.Sequential(LearnedSinusoidalEmbedding(config.time_frequencies),
                                      nn.Linear(config.time_frequencies + 1, tdim), nn.GELU(), nn.Linear(tdim, tdim))
        self.cond_lin = nn.Linear(config.cond_dim, tdim)
        self.node_emb = nn.Linear(2 * config.node_features, nf)                     # [h, h^sc]
        self.edge_emb = nn.Linear(2 * config.num_bond_types + enf, enf)            # [e, e^sc, GBF(r2^sc)]
        self.distance = ConditionedGaussianBasis(enf, tdim)                        # for the self-cond geometry
        self.blocks = nn.ModuleList(EquivariantMixBlock(config) for _ in range(layers))
        node_read, edge_read = (2 * nf) // layers, (2 * enf) // layers             # per-layer readout widths
        self.node_readouts = nn.ModuleList(nn.Linear(nf, node_read) for _ in range(layers))
        self.edge_readouts = nn.ModuleList(nn.Linear(enf, edge_read) for _ in range(layers))
        self.node_head = _head(node_read * layers + nf, nf, config.node_features)
        self.edge_head = _head(edge_read * layers + enf, enf, config.num_bond_types)

    def conditioning(self, noise_level: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """c = time_mlp(lambda) + cond_lin(s)  (B, 4 nf)."""
        c = self.time_mlp(noise_level)
        return c if cond is None else c + self.cond_lin(cond.to(c.dtype))

    def forward(self, z_t: GraphState, noise_level: torch.Tensor, mask: torch.Tensor,
                cond: torch.Tensor | None = None, self_cond: GraphState | None = None) -> GraphState:
        """z_t normalised (B, N, 3 | F | N x K), noise_level (B,), mask (B, N) bool, cond (B, cond_dim) or None."""
        b, n, _ = z_t.pos.shape
        pair_mask = pair_mask_of(mask)
        m, pm = mask[..., None].to(z_t.pos.dtype), pair_mask[..., None].to(z_t.pos.dtype)
        c = self.conditioning(noise_level.to(z_t.pos.dtype), cond)                           # (B, 4 nf)

        if self_cond is None:   # the reference's zero estimate: zero distances, every pair adjacent
            sc_nodes, sc_edges = torch.zeros_like(z_t.nodes), torch.zeros_like(z_t.edges)
            sc_dist = z_t.edges.new_zeros(b, n, n, self.config.edge_nf)
            adjacency = pair_mask[:, None].expand(b, ADJACENCY_HEADS, n, n)
        else:
            sc_nodes, sc_edges = self_cond.nodes, self_cond.edges
            r2 = squared_distances(self_cond.pos)
            sc_dist = self.distance(r2, c) * pm
            bonded = self_cond.edges[..., 0] <= 0                                            # P(no bond) <= 1/2
            close = r2 <= self.config.spatial_cutoff_sq
            adjacency = torch.stack([bonded, close], dim=1) & pair_mask[:, None]              # (B, 2, N, N)

        a = self.node_emb(torch.cat([z_t.nodes, sc_nodes], dim=-1))                          # (B, N, nf)
        p = self.edge_emb(torch.cat([z_t.edges, sc_edges, sc_dist], dim=-1)) * pm           # (B, N, N, nf / 4)
        pos = z_t.pos
        node_reads, edge_reads = [a], [p]
        for block, node_read, edge_read in zip(self.blocks, self.node_readouts, self.edge_readouts):
            a, p, pos = block(a, p, pos, c, mask, pair_mask, adjacency)
            pos = remove_mean_with_mask(pos * m, mask)
            node_reads.append(node_read(a))
            edge_reads.append(edge_read(p))

        nodes = self.node_head(torch.cat(node_reads, dim=-1)) * m                           # (B, N, F)
        edges = self.edge_head(torch.cat(edge_reads, dim=-1))                                # (B, N, N, K)
        edges = 0.5 * (edges + edges.transpose(1, 2)) * pm
        return GraphState(remove_mean_with_mask(pos * m, mask), nodes, edges)


__all__ = ["ADJACENCY_HEADS", "DMT", "DMT_SIZES", "DMTConfig"]
