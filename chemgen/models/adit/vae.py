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

chemgen adds two options. ``latent_noise`` perturbs the latents the decoder sees in training by
Gaussian noise of that fraction of their standard deviation: without it the decoder learns to
read latents to a precision no DiT reaches (measured: 1 % latent noise halves the EDM molecule
stability of reconstructions, 3 % destroys it). And a term aimed at what EDM's bond tables test (``weight_distance``):
the squared error of every molecular interatomic distance that is below ``distance_cutoff``
(2 A) in the true structure, in A^2. The output heads run in float32 even under bf16
autocast: bf16 resolves 3 A to about 0.01 A, half the precision stable molecules need.
The loss is written with masked sums, never boolean indexing, so a GPU step needs no host sync.

Shapes: B systems, N tokens (padded), d model width, c latent channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.dense import DenseBatch
from chemgen.models.adit.config import VAEConfig
from chemgen.geometry import cell_from_parameters, det_3x3, inverse_3x3, lattice_parameters, random_rotation
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


def latent_std(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the latents (B, N, c) over real atoms and channels: a scalar, no host sync."""
    m = mask[..., None].to(z.dtype)
    count = (m.sum() * z.shape[-1]).clamp_min(1)
    mean = (z * m).sum() / count
    return (((z - mean) ** 2 * m).sum() / count).sqrt()


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
        return self.encode_with_states(atomic_numbers, pos, frac_coords, mask)[0]

    def encode_with_states(self, atomic_numbers: torch.Tensor, pos: torch.Tensor, frac_coords: torch.Tensor,
                           mask: torch.Tensor) -> tuple[DiagonalGaussian, torch.Tensor]:
        """The posterior and the encoder's last hidden states (B, N, d): what REPA aligns the DiT with."""
        d = self.config.d_model
        h = (self.atom_type_embedder(atomic_numbers) + self.pos_embedder(pos)
             + self.frac_coords_embedder(frac_coords) + index_embedding(token_index(mask), d))  # (B, N, d)
        h = self.encoder(h, src_key_padding_mask=~mask)                                          # (B, N, d)
        return DiagonalGaussian(self.quant_conv(h) * mask[..., None]), h                         # (B, N, 2c)

    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> VAEOutput:
        h = self.post_quant_conv(z) + index_embedding(token_index(mask), self.config.d_model)    # (B, N, d)
        h = self.decoder(h, src_key_padding_mask=~mask)                                          # (B, N, d)
        with full_precision(h):  # float32 heads: bf16 outputs would round positions by ~0.01 A
            h = h.float()
            lattice = self.lattice_head(masked_mean(h, mask))                                    # (B, 6)
            return VAEOutput(self.atom_types_head(h), self.pos_head(h), self.frac_coords_head(h),
                             lattice[:, :3], lattice[:, 3:])

    def forward(self, batch: DenseBatch, sample_posterior: bool = True) -> tuple[VAEOutput, DiagonalGaussian]:
        posterior = self.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
        z = posterior.sample() if sample_posterior else posterior.mode()
        if self.training and self.config.latent_noise > 0:
            z = z + self.config.latent_noise * latent_std(z, batch.mask).detach() * torch.randn_like(z)
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
        if self.config.augment_translation:
            # ADiT: shift ~ N(mean, std of the batch's crystal lattice lengths) / 2; statistics as
            # masked sums over crystals so that the step never asks the host whether there are any
            lengths, _ = lattice_parameters(cell)                                                # (B, 3)
            weight = batch.pbc.to(pos.dtype)[:, None]
            count = weight.sum(0).clamp_min(1)
            mean = (lengths * weight).sum(0) / count
            var = ((lengths - mean) ** 2 * weight).sum(0) / (count - 1).clamp_min(1)
            shift = (mean + var.sqrt() * torch.randn_like(lengths)) / 2                         # (B, 3)
            pos = torch.where(periodic, pos + shift[:, None, :], pos)
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
        """ADiT's VAE loss (plus the optional short-distance term); ``train`` adds augmentations and corruption.

        Per-atom terms average over all real atoms of the batch and per-system terms over all systems,
        each weighted by whether it applies (crystal or molecule), as ADiT does.
        """
        cfg = self.config
        if train:
            batch = self.augment(batch)
        inputs = self.corrupt(batch) if train else batch
        out, posterior = self(inputs)
        mask, periodic = batch.mask, batch.pbc
        atom = mask.float()                                                                      # (B, N)
        crystal_atom = atom * periodic[:, None].float()
        molecule_atom = atom - crystal_atom
        crystal = periodic.float()                                                               # (B,)

        loss_types = F.cross_entropy(out.atom_type_logits.transpose(1, 2), batch.atomic_numbers, reduction="none")
        loss_frac = F.mse_loss(out.frac_coords, batch.frac_coords, reduction="none").mean(-1)
        pos_true = batch.pos / ANGSTROM_PER_NM
        centred_true = pos_true - masked_mean(pos_true, mask)[:, None]
        centred_pred = out.pos_nm - masked_mean(out.pos_nm, mask)[:, None]
        loss_pos = F.mse_loss(centred_pred, centred_true, reduction="none").mean(-1)           # (B, N) nm^2
        with full_precision(batch.cell):
            lengths, angles = lattice_parameters(batch.cell.float())
        lengths_scaled = lengths / batch.num_atoms[:, None].to(lengths.dtype) ** (1 / 3)
        loss_lengths = F.mse_loss(out.lengths_scaled, lengths_scaled, reduction="none").mean(-1)
        loss_angles = F.mse_loss(out.angles, angles, reduction="none").mean(-1)

        def per_atom(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return (values * weight).sum() / atom.sum().clamp_min(1)

        terms = {
            "atom_types": cfg.weight_atom_types * per_atom(loss_types, atom),
            "frac_coords": cfg.weight_frac_coords * per_atom(loss_frac, crystal_atom),
            "pos": cfg.weight_pos * per_atom(loss_pos, molecule_atom),
            "lengths": cfg.weight_lengths * (crystal * loss_lengths).mean(),
            "angles": cfg.weight_angles * (crystal * loss_angles).mean(),
            "kl": cfg.kl_weight * per_atom(posterior.kl(), atom),
        }
        if cfg.weight_distance > 0:
            terms["distance"] = cfg.weight_distance * short_distance_error(
                out.pos_nm * ANGSTROM_PER_NM, batch.pos, molecule_atom, cfg.distance_cutoff)
        with torch.no_grad():
            correct = (out.atom_type_logits.argmax(-1) == batch.atomic_numbers).float()
            molecule_pos = (loss_pos * molecule_atom).sum() / molecule_atom.sum().clamp_min(1)
        return {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()},
                "atom_type_accuracy": (correct * atom).sum() / atom.sum().clamp_min(1),
                "pos_rmsd_angstrom": (3 * molecule_pos).sqrt() * ANGSTROM_PER_NM}


def short_distance_error(pred: torch.Tensor, true: torch.Tensor, weight: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Mean squared error (A^2) of the distances of atom pairs closer than ``cutoff`` in the true structure.

    pred, true: (B, N, 3) Angstrom; weight: (B, N) 1 for atoms whose pairs count (real molecule atoms).
    These pairs are the bonds EDM's stability tables judge, with margins of a few pm.
    """
    pred, true = pred.float(), true.float()
    d_true, pairs = short_pairs(true, weight, cutoff)
    d_pred = (pred[:, :, None] - pred[:, None, :]).square().sum(-1).add(1e-12).sqrt()  # cdist's gradient is NaN at 0
    return ((d_pred - d_true).square() * pairs).sum() / pairs.sum().clamp_min(1)


def short_pairs(true: torch.Tensor, weight: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """True distances (B, N, N) and the weight of each pair: both atoms' weights if they are closer than
    ``cutoff`` and distinct, else 0 (the pairs EDM's bond tables judge)."""
    d_true = torch.cdist(true, true)
    eye = torch.eye(true.shape[1], device=true.device, dtype=torch.bool)
    weight = weight.to(d_true.dtype)
    return d_true, weight[:, :, None] * weight[:, None, :] * ((d_true < cutoff) & ~eye).to(d_true.dtype)


def full_precision(like: torch.Tensor):
    """Geometry (inverses, determinants) in float32 even under bf16 autocast, which lacks them."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def cartesian_to_fractional(pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) Cartesian -> fractional in [0, 1) with lattice rows (B, 3, 3); molecules give garbage, mask them."""
    eye = torch.eye(3, device=cell.device, dtype=cell.dtype)
    safe = torch.where(det_3x3(cell).abs()[:, None, None] > 1e-8, cell, eye)
    return (pos @ inverse_3x3(safe)) % 1.0


def _replace(batch: DenseBatch, **changes: torch.Tensor) -> DenseBatch:
    import dataclasses

    return dataclasses.replace(batch, **changes)


@dataclass
class DecodedBatch:
    """Generated systems as padded tensors (float32, on the model's device)."""

    atomic_numbers: torch.Tensor  # (B, N) long
    pos: torch.Tensor             # (B, N, 3) Angstrom (molecules)
    frac_coords: torch.Tensor     # (B, N, 3) in [0, 1) (crystals)
    cell: torch.Tensor            # (B, 3, 3) lattice rows (crystals)
    lengths: torch.Tensor         # (B, 3) Angstrom
    angles: torch.Tensor          # (B, 3) degrees
    mask: torch.Tensor            # (B, N)
    periodic: torch.Tensor        # (B,) bool


@torch.no_grad()
def decode_latents(vae: AllAtomVAE, z: torch.Tensor, mask: torch.Tensor, periodic: torch.Tensor) -> DecodedBatch:
    """VAE latents (B, N, c) -> systems: element by argmax (never the mask token), lattice from lengths
    and angles, crystal positions as frac @ cell, molecule positions in Angstrom."""
    out = vae.decode(z, mask)
    logits = out.atom_type_logits.clone()
    logits[..., 0] = -torch.inf  # type 0 is the mask token, never an element
    types = logits.argmax(-1) * mask
    n = mask.sum(1, keepdim=True).float()
    lengths = out.lengths_scaled.float() * n ** (1 / 3)
    cell = cell_from_parameters(lengths, out.angles.float())
    frac = out.frac_coords % 1.0
    pos_molecule = out.pos_nm * ANGSTROM_PER_NM
    pos = torch.where(periodic[:, None, None], frac @ cell, pos_molecule) * mask[..., None]
    return DecodedBatch(types, pos, frac, cell, lengths, torch.rad2deg(out.angles), mask, periodic)
