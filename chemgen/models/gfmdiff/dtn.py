"""The Dual-Track Transformer (DTN), GFMDiff's E(3)-equivariant denoiser (Xu et al., AAAI 2024, Sec. "DTN").

Two tracks of embeddings are updated together in every InterBlock:

    atom track   a_i   (B, N, d)    attention over atoms j, keys and values biased by the pair embedding p_ij
    pair track   p_ij  (B, N, N, d) + Low2High: the outer product a_i (x) a_j projected back to d
                                    + attention over the third atoms k, keyed by the angle at i of (j, i, k)
    positions    x_i   (B, N, 3)    x_i += sum_j (x_i - x_j) / (|x_i - x_j| + 1) tanh(phi(a_i, a_j, p_ij)) 20

The pair track starts from radial basis functions of the (squared) distance fused with both endpoint
embeddings, the triplet track from radial basis functions of the angles (0..pi, step 0.1); both are
recomputed from the updated positions after every block. The output is the predicted noise: for the
positions x_out - x_in with the centre of mass removed, for the features a read-out of the atom track.
Time enters as EDM does it: t in [0, 1] is appended to every atom's features.

Why plain tensor algebra and not e3nn: every geometric input is an invariant (distances, angles) and the
only vector operation is the position update, a sum of relative vectors x_i - x_j weighted by invariants,
which is E(3)-equivariant by construction (rotations and reflections act on x_i - x_j alone, translations
cancel). There are no higher-order irreps to couple, so e3nn's tensor products would add cost and no
expressiveness; dense (B, N, ...) tensors with a mask keep the triplet track one einsum.

Deviations from the reference code (``models/diff/dtn.py``, ``layers.py``), none of which changes a
parameter's shape:

* The triplet attention masks keys (i, k) that are not real atom pairs. The reference adds
  ``(1 - mask) * 1e-9`` (evidently meant as -1e9), a no-op, so its softmax also runs over padding atoms
  and over k = i, and a molecule's output depends on how much its batch is padded.
* Low2High and the triplet attention are evaluated in factorised form (the same parameters contracted
  in another order): ``W vec(L_i (x) R_j)`` without the (B, N, N, d^2) outer product, and the angle keys
  and values without the (B, N, N, N, d) projections. `tests/models/test_gfmdiff.py` checks both against
  the direct forms.
* The pair and triplet embeddings refreshed after the last block are not computed (the reference computes
  and discards them). Linear maps of concatenations ([a_i, a_j, p_ij] and the like) are applied block by
  block, the atom blocks once per atom, again with the reference's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.diffusion.vdm import remove_mean_with_mask
from chemgen.models.gfmdiff.config import DTNConfig


# ---------------------------------------------------------------------------- geometry
def pair_geometry(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances r2_ij (B, N, N) and EGNN's normalised differences (x_i - x_j) / (|x_i - x_j| + 1)."""
    diff = pos[:, :, None] - pos[:, None]                                                   # (B, N, N, 3)
    r2 = (diff ** 2).sum(-1)
    return r2, diff / (diff.norm(dim=-1, keepdim=True) + 1)


def triplet_angles(pos: torch.Tensor) -> torch.Tensor:
    """theta_ijk (B, N, N, N): the angle at atom i between x_j - x_i and x_k - x_i (pi / 2 where j or k is i)."""
    diff = pos[:, :, None] - pos[:, None]                                                   # (B, N, N, 3): x_i - x_j
    unit = diff / (diff.norm(dim=-1, keepdim=True) + 1e-5)
    cos = (unit[:, :, :, None] * unit[:, :, None]).sum(-1)   # elementwise: autocast would run an einsum in bf16
    return torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))   # the clamp keeps acos' gradient finite for collinear atoms


def linear_of_concat(linear: nn.Linear, *parts: torch.Tensor) -> torch.Tensor:
    """linear(cat(parts, -1)) without materialising the concatenation (on triplets it is the costliest copy)."""
    weights = linear.weight.split([part.shape[-1] for part in parts], dim=1)
    out = F.linear(parts[0], weights[0], linear.bias)
    for part, weight in zip(parts[1:], weights[1:]):
        out = out + F.linear(part, weight)
    return out


class GaussianRBF(nn.Module):
    """exp(-gamma (x - mu_k)^2) on the centres mu_k = start + k step < stop (numpy's arange), then linear."""

    def __init__(self, start: float, stop: float, step: float, gamma: float, out_dim: int):
        super().__init__()
        count = math.ceil((stop - start) / step)
        self.register_buffer("centers", start + step * torch.arange(count, dtype=torch.float32), persistent=False)
        self.gamma = gamma
        self.linear = nn.Linear(count, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.exp(-self.gamma * torch.square(x[..., None] - self.centers.to(x.dtype))))


# ---------------------------------------------------------------------------- the atom track
class AtomAttention(nn.Module):
    """a_i <- sum_j softmax_j(q_i . (k_j + k^p_ij)) W_add(v_i + v_j + v^p_ij), heads of d / h channels;
    j runs over the other real atoms (the reference's NodeTransformerLayer, no output projection)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.h, self.dh = num_heads, dim // num_heads
        self.atom_norm, self.pair_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_pair, self.v_pair = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_add = nn.Linear(self.dh, self.dh)
        self.dropout = nn.Dropout(dropout)

    def forward(self, a: torch.Tensor, p: torch.Tensor, atom_mask: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = a.shape
        a, p = self.atom_norm(a), self.pair_norm(p)
        heads = (b, n, self.h, self.dh)
        q = self.q(a).view(heads) / math.sqrt(self.dh)                                       # (B, N, h, dh)
        k, v = self.k(a).view(heads), self.v(a).view(heads)
        k_p, v_p = self.k_pair(p).view(b, n, n, self.h, self.dh), self.v_pair(p).view(b, n, n, self.h, self.dh)
        logits = torch.einsum("bihc,bjhc->bhij", q, k) + torch.einsum("bihc,bijhc->bhij", q, k_p)
        logits = logits.masked_fill(~pair_mask[:, None], torch.finfo(logits.dtype).min)
        attn = self.dropout(torch.softmax(logits, dim=-1))                                   # (B, h, N, N)
        values = self.v_add(v[:, :, None] + v[:, None] + v_p)                                # (B, N_i, N_j, h, dh)
        out = torch.einsum("bhij,bijhc->bihc", attn, values).reshape(b, n, -1)
        return out * atom_mask[..., None]


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


# ---------------------------------------------------------------------------- the pair track
class Low2High(nn.Module):
    """o_ij = W vec(L_i (x) R_j) + b with L = a * W_1 a, R = a * W_2 a after a LayerNorm: the atom track
    written into the pair track. W is ``proj.weight`` (d, d * d), index (o, x d + y) for L_x R_y, as the
    reference's Linear(d * d, d); contracted as sum_x L_ix (sum_y W_oxy R_jy)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.left, self.right = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim * dim, dim)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        a = self.norm(a)
        left, right = a * self.left(a), a * self.right(a)                                    # (B, N, d)
        d = a.shape[-1]
        w = self.proj.weight.view(-1, d, d)                                                  # (d_out, d_L, d_R)
        right_w = torch.einsum("oxy,bjy->bjox", w, right)                                    # (B, N, d_out, d)
        return torch.einsum("bix,bjox->bijo", left, right_w) + self.proj.bias


class TripletAttention(nn.Module):
    """p_ij <- gate_ij * W_o sum_k softmax_k(q_ij . (k_ik + k^a_ijk)) (v_ik + v^a_ijk), k over the real atoms
    other than i; k^a, v^a are projections of the angle embedding of (j, i, k) (the reference's TriTransLayer).

    The angle terms are contracted per head before projecting: q_ij . (W_ka t_ijk + b) = (W_ka^T q_ij) . t_ijk
    + q_ij . b, and sum_k attn_ijk (W_va t_ijk + b) = W_va (sum_k attn_ijk t_ijk) + b, since sum_k attn_ijk = 1.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.h, self.dh = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_angle, self.v_angle = nn.Linear(dim // 2, dim), nn.Linear(dim // 2, dim)
        self.out, self.gate = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, p: torch.Tensor, tri: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        b, n = p.shape[:2]
        p = self.norm(p)
        heads = (b, n, n, self.h, self.dh)
        q = self.q(p).view(heads) / math.sqrt(self.dh)                                       # (B, N_i, N_j, h, dh)
        k, v = self.k(p).view(heads), self.v(p).view(heads)                                  # indexed (i, k)
        w_k = self.k_angle.weight.view(self.h, self.dh, -1)                                  # (h, dh, d/2)
        w_v = self.v_angle.weight.view(self.h, self.dh, -1)
        q_angle = torch.einsum("bijhc,hce->bijhe", q, w_k)                                   # W_ka^T q_ij
        logits = (torch.einsum("bijhc,bikhc->bhijk", q, k)
                  + torch.einsum("bijhe,bijke->bhijk", q_angle, tri)
                  + torch.einsum("bijhc,hc->bhij", q, self.k_angle.bias.view(self.h, self.dh))[..., None])
        logits = logits.masked_fill(~pair_mask[:, None, :, None, :], torch.finfo(logits.dtype).min)
        attn = self.dropout(torch.softmax(logits, dim=-1))                                   # (B, h, N_i, N_j, N_k)
        out = torch.einsum("bhijk,bikhc->bijhc", attn, v)
        tri_mean = torch.einsum("bhijk,bijke->bijhe", attn, tri)                             # sum_k attn t_ijk
        out = out + torch.einsum("bijhe,hce->bijhc", tri_mean, w_v) + self.v_angle.bias.view(self.h, self.dh)
        return self.out(out.reshape(b, n, n, -1)) * torch.sigmoid(self.gate(p))


# ---------------------------------------------------------------------------- positions
class PositionUpdate(nn.Module):
    """x_i <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + 1) tanh(phi([a_i, a_j, W_e p_ij])) coord_range."""

    def __init__(self, dim: int, coord_range: float):
        super().__init__()
        self.coord_range = coord_range
        self.pair_read = nn.Linear(dim, 3)            # the reference's "dist_decoder": p_ij -> 3 invariants
        last = nn.Linear(dim, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)   # start near the identity map on positions
        self.phi = nn.Sequential(nn.Linear(2 * dim + 3, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), last)

    def forward(self, a: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, diff: torch.Tensor,
                pair_mask: torch.Tensor) -> torch.Tensor:
        first = self.phi[0]                                  # on [a_i, a_j, e_ij], applied blockwise
        w_i, w_j, w_e = first.weight.split([a.shape[-1], a.shape[-1], 3], dim=1)
        hidden = (F.linear(a, w_i)[:, :, None] + F.linear(a, w_j)[:, None]
                  + F.linear(self.pair_read(p), w_e, first.bias))                       # (B, N, N, d)
        weight = torch.tanh(self.phi[1:](hidden)) * self.coord_range
        # the sum runs in the positions' precision: a bf16 step would round every atom's move
        return pos + (diff * weight.to(pos.dtype) * pair_mask[..., None]).sum(2)


# ---------------------------------------------------------------------------- the block and the network
class InterBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, num_heads: int, dropout: float, coord_range: float):
        super().__init__()
        self.atom_attention = AtomAttention(dim, num_heads, dropout)
        self.atom_ffn = FeedForward(dim, hidden, dropout)
        self.low2high = Low2High(dim)
        self.pair_norm = nn.LayerNorm(dim)
        self.triplet_attention = TripletAttention(dim, num_heads, dropout)
        self.pair_ffn = FeedForward(dim, hidden, dropout)
        self.position_update = PositionUpdate(dim, coord_range)
        self.dropout = nn.Dropout(dropout)

    def forward(self, a: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, diff: torch.Tensor, tri: torch.Tensor,
                atom_mask: torch.Tensor, pair_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, pm = atom_mask[..., None].to(a.dtype), pair_mask[..., None].to(p.dtype)
        a = a + self.dropout(self.atom_attention(a, p, atom_mask, pair_mask))
        a = (a + self.dropout(self.atom_ffn(a))) * m
        p = self.pair_norm(p + self.dropout(self.low2high(a)))
        p = p + self.dropout(self.triplet_attention(p, tri, pair_mask))
        p = (p + self.dropout(self.pair_ffn(p))) * pm
        return a, p, self.position_update(a, p, pos, diff, pair_mask)


class DualTrackTransformer(nn.Module):
    """eps_hat = DTN(z_t, t): z_t (B, N, 3 + F) = [positions, node features], t (B,) in [0, 1], mask (B, N)."""

    def __init__(self, config: DTNConfig, node_features: int):
        super().__init__()
        d = config.emb_dim
        self.node_features = node_features
        self.atom_embedding = nn.Linear(node_features + 1, d)                   # + 1: time, as EDM appends it
        self.distance_embedding = GaussianRBF(0.0, 10.0, 0.2, 10.0, d)          # on squared distances (A^2)
        self.angle_embedding = GaussianRBF(0.0, math.pi, 0.1, 10.0, d // 2)
        self.pair_fuse = nn.Linear(3 * d, d)                                    # [a_j, a_i, p_ij] -> p_ij
        self.pair_refresh = nn.Linear(2 * d, d)                                 # [rbf(r2_ij), p_ij] after a block
        self.triplet_refresh = nn.Linear(d, d // 2)                             # [rbf(theta_ijk), t_ijk] after a block
        self.blocks = nn.ModuleList(InterBlock(d, config.hidden_dim, config.num_heads, config.dropout,
                                               config.coord_range) for _ in range(config.num_blocks))
        self.atom_out = nn.Sequential(nn.Linear(d, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, d),
                                      nn.ReLU(), nn.Linear(d, node_features + 1, bias=False))

    def fuse(self, a: torch.Tensor, p: torch.Tensor, pm: torch.Tensor) -> torch.Tensor:
        """pair_fuse([a_j, a_i, p_ij] on real pairs), applied blockwise: the atom terms per atom, then broadcast."""
        w_j, w_i, w_p = self.pair_fuse.weight.split(a.shape[-1], dim=1)
        atoms = (F.linear(a, w_j)[:, None] + F.linear(a, w_i)[:, :, None]) * pm
        return atoms + F.linear(p, w_p, self.pair_fuse.bias)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = z_t.shape
        pos_in, h = z_t[..., :3], z_t[..., 3:]
        pair_mask = mask[:, :, None] & mask[:, None] & ~torch.eye(n, dtype=torch.bool, device=mask.device)
        m, pm = mask[..., None].to(z_t.dtype), pair_mask[..., None].to(z_t.dtype)   # (B, N, 1), (B, N, N, 1)

        h = torch.cat([h, t.to(z_t.dtype)[:, None, None].expand(b, n, 1)], dim=-1) * m
        a = F.relu(self.atom_embedding(h)) * m                                       # (B, N, d)
        r2, diff = pair_geometry(pos_in)
        p = self.fuse(a, self.distance_embedding(r2 * pair_mask), pm)                # (B, N, N, d)
        tri = F.relu(self.angle_embedding(triplet_angles(pos_in) * pm))              # (B, N, N, N, d/2)

        pos = pos_in
        for i, block in enumerate(self.blocks):
            a, p, pos = block(a, p * pm, pos, diff, tri, mask, pair_mask)
            if i + 1 < len(self.blocks):   # the geometry of the updated positions, for the next block
                r2, diff = pair_geometry(pos)
                angles = self.angle_embedding(triplet_angles(pos) * pm)
                tri = F.relu(linear_of_concat(self.triplet_refresh, angles, tri))
                p = F.relu(linear_of_concat(self.pair_refresh, self.distance_embedding(r2), p))
                p = self.fuse(a, p, pm)

        h_out = (self.atom_out(a) * m)[..., : self.node_features]                   # the time channel is dropped
        velocity = remove_mean_with_mask(pos - pos_in, mask)
        return torch.cat([velocity, h_out.to(velocity.dtype)], dim=-1) * m
