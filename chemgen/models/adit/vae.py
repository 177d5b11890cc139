"""ADiT's all-atom VAE (Joshi et al. 2025, Sec. 3.1): one autoencoder for molecules and crystals.

Every atom i of a system becomes one token

    h_i = Emb(Z_i) + MLP(x_i) + MLP(f_i) + PE(i)                     (unified representation)

with atomic number Z_i, Cartesian position x_i (Angstrom) and fractional coordinates f_i
(zero for molecules). A pre-norm Transformer encoder maps the tokens to a per-atom
diagonal Gaussian posterior q(z_i | system) with a small latent z_i in R^latent_dim.
A Transformer decoder maps latents back to atom types, positions (nm, mean-centred),
fractional coordinates and, from the mean-pooled tokens, the lattice: lengths / N^(1/3)
and angles in radians. The loss is

    L = sum_k w_k(periodic) * L_k  +  beta * KL(q(z | system) || N(0, I)),   beta ~ 1e-5.

Shapes: B systems, N tokens (padded), d model width, c latent channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.batching import DenseBatch
from chemgen.config import VAEConfig
from chemgen.geometry import lattice_parameters, random_rotation
from chemgen.nn import index_embedding

ANGSTROM_PER_NM = 10.0


def transformer_stack(d_model: int, num_heads: int, dim_feedforward: int, num_layers: int) -> nn.TransformerEncoder:
    """Pre-norm Transformer (GELU-tanh, no dropout) with a final LayerNorm, as ADiT's encoder/decoder."""
    layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout=0.0,
                                       activation=nn.GELU(approximate="tanh"), batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


def coordinate_mlp(d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, d_model, bias=False), nn.SiLU(), nn.Linear(d_model, d_model))


def token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token within its system: (B, N) -> 0, 1, 2, ... over real atoms."""
    return torch.cumsum(mask.long(), dim=-1) - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of (B, N, ...) counting only real atoms -> (B, ...)."""
    weights = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1)


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) per token; logvar clamped to [-30, 20] as in latent diffusion."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=-1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over latent channels: (B, N)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).sum(-1)


@dataclass
class VAEOutput:
    atom_type_logits: torch.Tensor  # (B, N, T)
    pos_nm: torch.Tensor            # (B, N, 3), mean-centred target units (nm)
    frac_coords: torch.Tensor       # (B, N, 3)
    lengths_scaled: torch.Tensor    # (B, 3) lattice lengths / N^(1/3)
    angles: torch.Tensor            # (B, 3) radians


class AllAtomVAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        # ---- encoder: h_i = Emb(Z_i) + MLP(x_i) + MLP(f_i) + PE(i)
        self.atom_type_embedder = nn.Embedding(config.max_atom_types, d)  # type 0 = masked atom
        self.pos_embedder = coordinate_mlp(d)
        self.frac_coords_embedder = coordinate_mlp(d)
        self.encoder = transformer_stack(d, config.num_heads, config.dim_feedforward, config.encoder_layers)
        self.quant_conv = nn.Linear(d, 2 * config.latent_dim, bias=False)       # -> (mean, logvar)
        # ---- decoder
        self.post_quant_conv = nn.Linear(config.latent_dim, d, bias=False)
        self.decoder = transformer_stack(d, config.num_heads, config.dim_feedforward, config.decoder_layers)
        self.atom_types_head = nn.Linear(d, config.max_atom_types)
        self.pos_head = nn.Linear(d, 3, bias=False)
        self.frac_coords_head = nn.Linear(d, 3, bias=False)
        self.lattice_head = nn.Linear(d, 6, bias=False)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, atomic_numbers: torch.Tensor, pos: torch.Tensor, frac_coords: torch.Tensor,
               mask: torch.Tensor) -> DiagonalGaussian:
        d = self.config.d_model
        h = (self.atom_type_embedder(atomic_numbers) + self.pos_embedder(pos)
             + self.frac_coords_embedder(frac_coords) + index_embedding(token_index(mask), d))  # (B, N, d)
        h = self.encoder(h, src_key_padding_mask=~mask)                                          # (B, N, d)
        return DiagonalGaussian(self.quant_conv(h) * mask[..., None])                            # (B, N, 2c)

    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> VAEOutput:
        h = self.post_quant_conv(z) + index_embedding(token_index(mask), self.config.d_model)    # (B, N, d)
        h = self.decoder(h, src_key_padding_mask=~mask)                                          # (B, N, d)
        lattice = self.lattice_head(masked_mean(h, mask))                                        # (B, 6)
        return VAEOutput(self.atom_types_head(h), self.pos_head(h), self.frac_coords_head(h),
                         lattice[:, :3], lattice[:, 3:])

    def forward(self, batch: DenseBatch, sample_posterior: bool = True) -> tuple[VAEOutput, DiagonalGaussian]:
        posterior = self.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z * batch.mask[..., None], batch.mask), posterior

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def augment(self, batch: DenseBatch) -> DenseBatch:
        """Random rotation of every system, random translation of crystals (fractional wrapped)."""
        with full_precision(batch.pos):
            return self._augment(batch)

    def _augment(self, batch: DenseBatch) -> DenseBatch:
        pos, cell, frac = batch.pos, batch.cell, batch.frac_coords
        periodic = batch.pbc[:, None, None]
        if self.config.augment_translation and batch.pbc.any():
            lengths, _ = lattice_parameters(cell[batch.pbc])
            mean = lengths.mean(0).abs().expand(len(pos), 3)
            std = (lengths.std(0).nan_to_num(0).abs() + 1e-8).expand(len(pos), 3)
            shift = torch.normal(mean, std) / 2                       # ADiT: ~ N(mean length, std) / 2
            moved = pos + shift[:, None, :]
            pos = torch.where(periodic, moved, pos)
            frac = torch.where(periodic, cartesian_to_fractional(pos, cell), frac)
        if self.config.augment_rotation:
            rotation = random_rotation(len(pos), device=pos.device, dtype=pos.dtype)          # (B, 3, 3)
            pos = pos @ rotation.transpose(1, 2)
            cell = cell @ rotation.transpose(1, 2)                                               # fractional unchanged
        return _replace(batch, pos=pos * batch.mask[..., None], cell=cell, frac_coords=frac * batch.mask[..., None])

    @torch.no_grad()
    def corrupt(self, batch: DenseBatch) -> DenseBatch:
        """Denoising corruption: mask a fraction of atom types, jitter a fraction of positions."""
        fraction, std = self.config.corrupt_fraction, self.config.corrupt_pos_std
        if fraction <= 0:
            return batch
        with full_precision(batch.pos):
            return self._corrupt(batch, fraction, std)

    def _corrupt(self, batch: DenseBatch, fraction: float, std: float) -> DenseBatch:
        mask = batch.mask
        drop_type = (torch.rand(mask.shape, device=mask.device) < fraction) & mask
        jitter = ((torch.rand(mask.shape, device=mask.device) < fraction) & mask)[..., None]
        pos = batch.pos + jitter * torch.randn_like(batch.pos) * std
        frac = torch.where(batch.pbc[:, None, None], cartesian_to_fractional(pos, batch.cell), batch.frac_coords)
        return _replace(batch, atomic_numbers=batch.atomic_numbers.masked_fill(drop_type, 0), pos=pos,
                        frac_coords=frac * mask[..., None])

    def loss(self, batch: DenseBatch, train: bool = True) -> dict[str, torch.Tensor]:
        """ADiT's VAE loss; ``train`` adds augmentations and denoising corruption."""
        cfg = self.config
        if train:
            batch = self.augment(batch)
        inputs = self.corrupt(batch) if train else batch
        out, posterior = self(inputs)
        mask, periodic = batch.mask, batch.pbc
        atom_periodic = periodic[:, None].expand_as(mask)[mask]                                  # (A,)

        loss_types = F.cross_entropy(out.atom_type_logits[mask], batch.atomic_numbers[mask], reduction="none")
        loss_frac = F.mse_loss(out.frac_coords, batch.frac_coords, reduction="none").mean(-1)[mask]
        pos_true = batch.pos / ANGSTROM_PER_NM
        centred_true = pos_true - masked_mean(pos_true, mask)[:, None]
        centred_pred = out.pos_nm - masked_mean(out.pos_nm, mask)[:, None]
        loss_pos = F.mse_loss(centred_pred, centred_true, reduction="none").mean(-1)[mask]
        with full_precision(batch.cell):
            lengths, angles = lattice_parameters(batch.cell)
        lengths_scaled = lengths / batch.num_atoms[:, None].to(lengths.dtype) ** (1 / 3)
        loss_lengths = F.mse_loss(out.lengths_scaled, lengths_scaled, reduction="none").mean(-1)
        loss_angles = F.mse_loss(out.angles, angles, reduction="none").mean(-1)
        loss_kl = posterior.kl()[mask]

        p, m = atom_periodic.to(loss_types.dtype), (~atom_periodic).to(loss_types.dtype)
        sample_p = periodic.to(loss_types.dtype)
        terms = {
            "atom_types": (cfg.weight_atom_types * loss_types).mean(),
            "frac_coords": (cfg.weight_frac_coords * p * loss_frac).mean(),
            "pos": (cfg.weight_pos * m * loss_pos).mean(),
            "lengths": (cfg.weight_lengths * sample_p * loss_lengths).mean(),
            "angles": (cfg.weight_angles * sample_p * loss_angles).mean(),
            "kl": (cfg.kl_weight * loss_kl).mean(),
        }
        with torch.no_grad():
            predicted = out.atom_type_logits[mask].argmax(-1)
            rmsd_molecules = (loss_pos[~atom_periodic].mean() * 3).sqrt() * ANGSTROM_PER_NM if m.any() else loss_pos.new_zeros(())
        return {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()},
                "atom_type_accuracy": (predicted == batch.atomic_numbers[mask]).float().mean(),
                "pos_rmsd_angstrom": rmsd_molecules}


def full_precision(like: torch.Tensor):
    """Geometry (inverses, determinants) in float32 even under bf16 autocast, which lacks them."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def cartesian_to_fractional(pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) Cartesian -> fractional in [0, 1) with lattice rows (B, 3, 3); molecules give garbage, mask them."""
    safe = torch.where(torch.det(cell).abs()[:, None, None] > 1e-8, cell, torch.eye(3, device=cell.device, dtype=cell.dtype))
    return (pos @ torch.linalg.inv(safe)) % 1.0


def _replace(batch: DenseBatch, **changes: torch.Tensor) -> DenseBatch:
    import dataclasses

    return dataclasses.replace(batch, **changes)
