"""SpecFormer, the spectral encoder of DiffSpectra and MolSpectra: a PatchTST-style Transformer over spectra.

Each spectrum x_m (B, L_m) of modality m (UV-Vis, IR, Raman) is transformed, cut into overlapping patches and
embedded; the tokens of all modalities attend to each other, and a flatten head reads the molecule's vector:

    x~_m   = log10(1 + s_m max(x_m, 0))                      input transform (s_m: a unit scale, below)
    p_m    = unfold(x~_m, P_m, S_m)                (B, N_m, P_m)   N_m = (L_m - P_m) // S_m + 1
    h_m    = p_m W_P,m + W_pos,m                   (B, N_m, d)     per-modality projection and learnt positions
    h      = [h_uv ; h_ir ; h_raman]               (B, T, d)       T = sum_m N_m tokens
    h      = Encoder(h)                                            n_layers x (residual attention, BatchNorm, FFN)
    c      = LayerNorm(W_head flatten(h))          (B, out)        the conditioning vector

Geometry (reference): UV-Vis 701 points, patch 20, stride 10 -> 69 patches; IR and Raman 3,501 points
(500-4,000 cm^-1), patch 50, stride 25 -> 139 patches each; d = 128, 3 layers, 16 heads, d_ff 256, GELU,
post-norm with BatchNorm over d (statistics over batch and tokens, as PatchTST), RealFormer's residual
attention (each layer adds the previous layer's pre-softmax scores), out = 256. Initialisation as the
reference: Xavier-uniform projections with zero biases, positions U(-0.02, 0.02).

Pretraining (MolSpectra, ICLR 2025): `SpecFormer.masked_reconstruction` hides 10 % of each spectrum's patches
(MolSpectra's ``random_masking``: the patch vectors are set to zero, in the transformed space, exactly
N - int(N (1 - r)) per spectrum, i.e. 14 of 139), and a Linear head per modality (d -> P_m) reconstructs them;
the loss is the MSE over the masked patches, summed over modalities. `info_nce` aligns the SpecFormer
embedding with a 3D encoder's (cosine similarities / tau, tau = 0.07).

Reference code read: DiffSpectra ``models/specformer.py`` and ``datasets/build_dataset.py`` (EdgeComSpectra:
``log10(x + 1)`` on the dataset's raw values), ``configs/diffspectra_qm9s.py``, ``models/dmt.py`` (how the
encoder is built: all defaults, output = nf = 256); MolSpectra ``torchmdnet/models/Sp.py`` (SpecFormer with
masking and reconstruction heads), ``torchmdnet/models/SpecFormer_layers.py`` (``positional_encoding``),
``torchmdnet/module.py`` (``ctr_loss_fn``), ``scripts/2-qm9-qm9sp-pretrain.sh`` (log10, mask ratios 0.1).

Deviations, and why:

* Missing modalities. The reference builds one model per modality set (``spectra_version`` ir / raman / uv /
  allspectra); chemgen conditions on IR + Raman, IR only or Raman only with one model. A boolean ``present``
  (B, M) says which spectra a row has. An absent spectrum is replaced by zeros before anything reads it (so
  its values, even NaN, cannot leak), its tokens are key-padded out of attention, left out of the BatchNorm
  statistics (`MaskedBatchNorm`) and zeroed before the flatten head. A row's embedding therefore depends on
  its present spectra only. A row with no spectrum at all attends over its (zeroed) tokens and comes out as
  one constant vector, LayerNorm of the head's bias: a learnable "no spectra" condition for guidance.
  With every modality present the network is exactly the reference's.
* Modality dropout. To train that one model, `drop_modalities` hides each present spectrum of a training
  example with probability ``modality_dropout`` (0.3: about half the examples keep both spectra, a quarter
  each keep one), never all of them; `SpecFormer` applies it itself in training mode, like nn.Dropout.
* Input scale. Neither reference normalises per spectrum: DiffSpectra applies log10(x + 1) to QM9S's raw
  values (MolSpectra's alternative, ``minmax``, uses dataset-wide constants; its pretraining script picks
  log10). Where log10(x + 1) bends depends on the units, so chemgen's spectra (area-normalised bands, km/mol
  per cm^-1 and A^4/amu per cm^-1, `chemgen.spectra.broadening`) are first multiplied by s = 100 / ln 10: for
  IR this converts to the decadic molar absorption coefficient (L mol^-1 cm^-1), and our largest IR value
  becomes ~2.6e3, against QM9S's 2.03e3 (the maximum in MolSpectra's min-max table). Raman activity has no
  such unit; the same factor puts our Raman peaks at 10^2-10^4, like QM9S's Raman (maximum 1.98e4). Values
  are clamped at zero first (an experimental baseline below zero would make the log undefined). The
  transform lives in the model (as in MolSpectra; DiffSpectra does it in its dataset), so every caller feeds
  raw spectra.
* InfoNCE direction. MolSpectra's ``ctr_loss_fn`` is one-sided: each molecule picks its spectrum among the
  batch's spectra (rows = molecules, logsumexp over spectra). `info_nce` does the same by default and offers
  ``symmetric=True`` (CLIP: the mean of both directions).
* Left out: PatchTST options the reference never turns on (pre-norm, individual heads, stored attention,
  other positional encodings, learnable attention scale); the reference's attention scale is the fixed
  (d / heads)^-1/2 used here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.config import ConfigError
from chemgen.errors import UsageError

# Reference geometry of each modality: (points, patch length, stride).
MODALITY_GEOMETRY: dict[str, tuple[int, int, int]] = {"uv": (701, 20, 10), "ir": (3501, 50, 25),
                                                      "raman": (3501, 50, 25)}
# km/mol per cm^-1 -> L mol^-1 cm^-1 (decadic molar absorption coefficient); used for Raman too (docstring).
UNIT_SCALE = 100.0 / math.log(10.0)
DEFAULT_SCALE: dict[str, float] = {"uv": 1.0, "ir": UNIT_SCALE, "raman": UNIT_SCALE}


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SpecFormerConfig:
    """SpecFormer's sizes; defaults are the reference's, for the IR + Raman spectra chemgen computes.

    The per-modality tuples run parallel to ``modalities`` (the reference's ``patch_len=[20, 50, 50]``
    lists); `SpecFormerConfig.for_modalities` fills them with the reference geometry.
    """

    modalities: tuple[str, ...] = ("ir", "raman")
    lengths: tuple[int, ...] = (3501, 3501)
    patch_len: tuple[int, ...] = (50, 50)
    stride: tuple[int, ...] = (25, 25)
    input_scale: tuple[float, ...] = (UNIT_SCALE, UNIT_SCALE)   # s_m in log10(1 + s_m x)
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 16
    d_ff: int = 256
    dropout: float = 0.0           # residual and FFN dropout (reference: 0)
    attn_dropout: float = 0.0
    head_dropout: float = 0.0
    output_dim: int = 256
    res_attention: bool = True
    mask_ratio: float = 0.1        # masked-patch pretraining, per spectrum
    modality_dropout: float = 0.3  # chance a present spectrum is hidden from a training example
    temperature: float = 0.07      # InfoNCE

    def __post_init__(self) -> None:
        for name in ("modalities", "lengths", "patch_len", "stride", "input_scale"):  # lists from code or YAML
            object.__setattr__(self, name, tuple(getattr(self, name)))
        m = len(self.modalities)
        if m == 0:
            raise ConfigError("modalities: at least one is needed")
        unknown = [n for n in self.modalities if n not in MODALITY_GEOMETRY]
        if unknown or len(set(self.modalities)) != m:
            raise ConfigError(f"modalities {self.modalities}: each once, from {sorted(MODALITY_GEOMETRY)}")
        for name in ("lengths", "patch_len", "stride", "input_scale"):
            if len(getattr(self, name)) != m:
                raise ConfigError(f"{name} needs one value per modality {self.modalities}, got {getattr(self, name)}")
        for name in ("lengths", "patch_len", "stride"):
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in getattr(self, name)):
                raise ConfigError(f"{name} must be positive integers, got {getattr(self, name)}")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 for v in self.input_scale):
            raise ConfigError(f"input_scale must be positive numbers, got {self.input_scale}")
        object.__setattr__(self, "input_scale", tuple(float(v) for v in self.input_scale))
        for name, length, patch in zip(self.modalities, self.lengths, self.patch_len):
            if patch > length:
                raise ConfigError(f"{name}: patch_len {patch} exceeds the spectrum's {length} points")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "output_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        for name in ("dropout", "attn_dropout", "head_dropout", "modality_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for name, n, k in zip(self.modalities, self.num_patches, self.num_masked):
            if not 1 <= k < n:
                raise ConfigError(f"{name}: mask_ratio {self.mask_ratio} masks {k} of {n} patches (need 1..{n - 1})")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")

    @classmethod
    def for_modalities(cls, *names: str, **changes) -> SpecFormerConfig:
        """The reference geometry and unit scales for ``names`` (in that token order), plus ``changes``.

        ``SpecFormerConfig.for_modalities("uv", "ir", "raman")`` is the reference's ``allspectra`` model.
        """
        unknown = [n for n in names if n not in MODALITY_GEOMETRY]
        if unknown:
            raise ConfigError(f"unknown modalities {unknown} (known: {sorted(MODALITY_GEOMETRY)})")
        geometry = [MODALITY_GEOMETRY[n] for n in names]
        return cls(modalities=tuple(names), lengths=tuple(g[0] for g in geometry),
                   patch_len=tuple(g[1] for g in geometry), stride=tuple(g[2] for g in geometry),
                   input_scale=tuple(DEFAULT_SCALE[n] for n in names), **changes)

    @property
    def num_patches(self) -> tuple[int, ...]:
        """N_m = (L_m - P_m) // S_m + 1 tokens per modality (torch unfold drops a remainder, as the reference)."""
        return tuple((n - p) // s + 1 for n, p, s in zip(self.lengths, self.patch_len, self.stride))

    @property
    def num_masked(self) -> tuple[int, ...]:
        """Patches masked per spectrum in pretraining: N - int(N (1 - r)), as MolSpectra's ``random_masking``."""
        return tuple(n - int(n * (1 - self.mask_ratio)) for n in self.num_patches)

    @property
    def num_tokens(self) -> int:
        """T = sum_m N_m, the length of the token sequence (278 for IR + Raman, 347 with UV-Vis)."""
        return sum(self.num_patches)


# ---------------------------------------------------------------------------- input
def transform_spectra(x: torch.Tensor, scale: float) -> torch.Tensor:
    """log10(1 + scale * max(x, 0)), elementwise: (..., L) -> (..., L)."""
    return torch.log10(1 + scale * x.clamp(min=0))


def drop_modalities(present: torch.Tensor, p: float, generator: torch.Generator | None = None,
                    keep_one: bool = True) -> torch.Tensor:
    """Modality dropout: hide each present spectrum with probability ``p``.

    ``present`` (B, M) bool -> (B, M) bool, never True where ``present`` is False. With ``keep_one`` a row that
    had a spectrum keeps at least one (a random one of those it had) when all would be hidden.
    """
    if p <= 0:
        return present
    draw = torch.rand(present.shape, generator=generator, device=present.device)
    kept = present & (draw >= p)
    if keep_one:
        lost = present.any(1) & ~kept.any(1)                                                     # (B,)
        pick = torch.rand(present.shape, generator=generator, device=present.device).masked_fill(~present, -1.0)
        one = F.one_hot(pick.argmax(1), present.shape[1]).bool()                                 # (B, M)
        kept = torch.where(lost[:, None], one, kept)
    return kept


def mask_patches(patches: torch.Tensor, k: int, present: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MolSpectra's ``random_masking``: zero ``k`` random patches of every spectrum.

    patches (B, N, P), present (B,) bool (rows without this spectrum are left alone) -> (masked patches
    (B, N, P), hidden (B, N) bool with k True per present row).
    """
    b, n, _ = patches.shape
    noise = torch.rand(b, n, generator=generator, device=patches.device)
    hidden = torch.zeros(b, n, dtype=torch.bool, device=patches.device)
    hidden.scatter_(1, noise.argsort(1)[:, n - k:], True)             # the k largest draws are hidden
    if present is not None:
        hidden &= present[:, None]
    return patches.masked_fill(hidden[..., None], 0.0), hidden


# ---------------------------------------------------------------------------- encoder layers
class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature axis of tokens (B, T, d), as PatchTST's Transpose-BatchNorm1d-Transpose,
    with statistics from the tokens where ``mask`` (B, T) is True only.

    With every token real it is nn.BatchNorm1d exactly (biased variance to normalise, unbiased variance into
    the running estimate). Padded tokens are normalised with the real tokens' statistics.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
        # Masked sums rather than x[mask]: boolean indexing would wait for the GPU to count the real tokens,
        # once per layer and step. A batch of fewer than two real tokens uses the running statistics.
        weight = (torch.ones(x.shape[:-1], device=x.device) if mask is None else mask.float())[..., None]
        n, tokens = weight.sum(), tuple(range(x.dim() - 1))
        batch = n > 1
        mean = (x.float() * weight).sum(tokens) / n.clamp_min(1)
        var = (((x.float() - mean) ** 2) * weight).sum(tokens) / n.clamp_min(1)
        with torch.no_grad():
            step = self.momentum * batch.float()
            self.running_mean.lerp_(mean.detach(), step)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), step)
            self.num_batches_tracked += batch.long()
        mean = torch.where(batch, mean, self.running_mean)
        var = torch.where(batch, var, self.running_var)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ResidualAttention(nn.Module):
    """Multi-head self-attention with RealFormer's residual scores (PatchTST's ``_MultiheadAttention``).

    scores_l = Q K^T / sqrt(d_k) + scores_{l-1}; keys where ``key_padding`` (B, T) is True get -inf.
    (B, T, d) -> ((B, T, d), scores (B, heads, T, T)).
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.d_k = n_heads, d_model // n_heads
        self.scale = self.d_k ** -0.5
        self.W_Q = nn.Linear(d_model, d_model)
        self.W_K = nn.Linear(d_model, d_model)
        self.W_V = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.to_out = nn.Sequential(nn.Linear(d_model, d_model), nn.Dropout(proj_dropout))
        for lin in (self.W_Q, self.W_K, self.W_V):  # the reference resets these three, not to_out
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None,
                key_padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.W_Q(x).view(b, t, self.n_heads, self.d_k).transpose(1, 2)                     # (B, H, T, d_k)
        k = self.W_K(x).view(b, t, self.n_heads, self.d_k).transpose(1, 2)
        v = self.W_V(x).view(b, t, self.n_heads, self.d_k).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * self.scale                                           # (B, H, T, T)
        if prev is not None:
            scores = scores + prev
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        attn = self.attn_dropout(scores.softmax(-1))
        out = (attn @ v).transpose(1, 2).reshape(b, t, -1)                                      # (B, T, d)
        return self.to_out(out), scores


class EncoderLayer(nn.Module):
    """Post-norm Transformer layer (PatchTST's ``TSTEncoderLayer``): attention, add, BatchNorm; FFN, add, BatchNorm."""

    def __init__(self, config: SpecFormerConfig):
        super().__init__()
        d = config.d_model
        self.res_attention = config.res_attention
        self.self_attn = ResidualAttention(d, config.n_heads, config.attn_dropout, config.dropout)
        self.dropout_attn = nn.Dropout(config.dropout)
        self.norm_attn = MaskedBatchNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Dropout(config.dropout),
                                nn.Linear(config.d_ff, d))
        self.dropout_ffn = nn.Dropout(config.dropout)
        self.norm_ffn = MaskedBatchNorm(d)
        for lin in (self.ff[0], self.ff[3]):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None, key_padding: torch.Tensor | None,
                token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h (B, T, d), prev scores (B, H, T, T) or None, key_padding and token_mask (B, T) -> (h, scores)."""
        attended, scores = self.self_attn(h, prev if self.res_attention else None, key_padding)
        h = self.norm_attn(h + self.dropout_attn(attended), token_mask)
        h = self.norm_ffn(h + self.dropout_ffn(self.ff(h)), token_mask)
        return h, (scores if self.res_attention else None)


# ---------------------------------------------------------------------------- SpecFormer
Spectra = Mapping[str, torch.Tensor | None] | Sequence[torch.Tensor | None]


class MaskedReconstruction(NamedTuple):
    """What `SpecFormer.masked_reconstruction` returns: the loss (scalar) and the embedding (B, out) of the
    masked input (MolSpectra aligns this embedding with the 3D encoder's)."""

    loss: torch.Tensor
    embedding: torch.Tensor


class SpecFormer(nn.Module):
    """Spectra -> one conditioning vector per molecule; see the module docstring for the equations.

    Call it with ``spectra``, either a mapping ``{modality: (B, L_m) raw spectrum}`` (a missing key is an absent
    modality) or a sequence in ``config.modalities`` order (None for an absent one), and optionally
    ``present`` (B, M) bool for rows that lack some spectra. Returns (B, output_dim).
    """

    def __init__(self, config: SpecFormerConfig | None = None):
        super().__init__()
        self.config = config = config or SpecFormerConfig()
        d = config.d_model
        self.W_P = nn.ModuleList(nn.Linear(p, d) for p in config.patch_len)                    # Eq. 1 of PatchTST
        self.W_pos = nn.ParameterList(nn.Parameter(torch.empty(n, d).uniform_(-0.02, 0.02))
                                      for n in config.num_patches)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.head = nn.Linear(config.num_tokens * d, config.output_dim)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.out_norm = nn.LayerNorm(config.output_dim)
        self.reconstruct_heads = nn.ModuleList(nn.Linear(d, p) for p in config.patch_len)      # MolSpectra
        for lin in [*self.W_P, self.head, *self.reconstruct_heads]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        starts = [0, *torch.tensor(config.num_patches).cumsum(0).tolist()]
        self.token_slices = [slice(a, b) for a, b in itertools.pairwise(starts)]
        # token_modality[t]: which modality token t belongs to, to expand (B, M) masks to (B, T)
        self.register_buffer("token_modality", torch.repeat_interleave(
            torch.arange(len(config.modalities)), torch.tensor(config.num_patches)), persistent=False)

    # -- inputs
    def prepare(self, spectra: Spectra, present: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Raw spectra (class docstring) -> transformed x~_m (B, L_m) per modality, zero where absent, and
        present (B, M) bool. Checks names and shapes; no modality dropout here."""
        names = self.config.modalities
        if isinstance(spectra, Mapping):
            extra = sorted(set(spectra) - set(names))
            if extra:
                raise UsageError(f"SpecFormer for {names} got spectra of {extra}")
            given = [spectra.get(n) for n in names]
        else:
            given = list(spectra)
            if len(given) != len(names):
                raise UsageError(f"SpecFormer for {names} needs {len(names)} spectra (None for absent), got {len(given)}")
        first = next((x for x in given if x is not None), None)
        if first is None and present is None:
            raise UsageError("no spectra given: pass at least one, or present (B, M) to ask for the null embedding")
        b = len(first) if first is not None else len(present)
        device = first.device if first is not None else present.device
        dtype = self.W_P[0].weight.dtype
        if present is None:
            present = torch.tensor([x is not None for x in given], device=device).expand(b, -1)
        if present.shape != (b, len(names)) or present.dtype != torch.bool:
            raise UsageError(f"present must be a ({b}, {len(names)}) bool tensor, got {tuple(present.shape)} {present.dtype}")
        out = []
        for i, (name, x, length, scale) in enumerate(zip(names, given, self.config.lengths, self.config.input_scale)):
            if x is None:
                if bool(present[:, i].any()):
                    raise UsageError(f"present marks {name} spectra that were not given")
                out.append(torch.zeros(b, length, device=device, dtype=dtype))
                continue
            if x.shape != (b, length):
                raise UsageError(f"{name} spectra must be ({b}, {length}), got {tuple(x.shape)}")
            x = torch.where(present[:, i, None], x.to(dtype), 0.0)   # an absent spectrum's values never enter
            out.append(transform_spectra(x, scale))
        return out, present

    def patchify(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """Transformed spectra (B, L_m) -> patches (B, N_m, P_m), one tensor per modality."""
        return [s.unfold(-1, p, st) for s, p, st in zip(x, self.config.patch_len, self.config.stride)]

    def _prepare_step(self, spectra: Spectra, present: torch.Tensor | None,
                      generator: torch.Generator | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`prepare`, then in training mode the modality dropout (hidden spectra zeroed like absent ones)."""
        x, present = self.prepare(spectra, present)
        if self.training and self.config.modality_dropout > 0:
            present = drop_modalities(present, self.config.modality_dropout, generator)
            x = [torch.where(present[:, i, None], s, 0.0) for i, s in enumerate(x)]
        return x, present

    # -- network
    def encode(self, patches: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (B, N_m, P_m) per modality and present (B, M) -> tokens h (B, T, d), embedding c (B, out)."""
        h = torch.cat([self.dropout(W_P(p) + W_pos) for p, W_P, W_pos in zip(patches, self.W_P, self.W_pos)],
                      dim=1)                                                                    # (B, T, d)
        token_mask = present[:, self.token_modality]                                            # (B, T)
        # Absent keys are padded out; a row with no spectrum keeps all its keys so its softmax stays defined.
        key_padding = ~token_mask & token_mask.any(1, keepdim=True)
        scores = None
        for layer in self.layers:
            h, scores = layer(h, scores, key_padding, token_mask)
        flat = torch.where(token_mask[..., None], h, 0.0).flatten(1)                            # (B, T d)
        return h, self.out_norm(self.head_dropout(self.head(flat)))                             # (B, out)

    def forward(self, spectra: Spectra, present: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw spectra (see the class docstring) -> embedding (B, output_dim). ``generator`` drives the
        modality dropout of training mode."""
        x, present = self._prepare_step(spectra, present, generator)
        return self.encode(self.patchify(x), present)[1]

    def masked_reconstruction(self, spectra: Spectra, present: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> MaskedReconstruction:
        """MolSpectra's masked-patch pretraining: loss (scalar) and the masked input's embedding (B, out).

        Per present spectrum, ``config.num_masked`` random patches are zeroed; the reconstruction head of its
        modality predicts them from the encoder's tokens. Loss: per modality, the squared error averaged over
        patch points and over the masked patches of the batch; summed over the modalities present in it.
        """
        x, present = self._prepare_step(spectra, present, generator)
        patches = self.patchify(x)
        masked, masks = zip(*(mask_patches(p, k, present[:, i], generator)
                              for i, (p, k) in enumerate(zip(patches, self.config.num_masked))))
        h, embedding = self.encode(list(masked), present)
        loss = embedding.new_zeros(())
        for target, hidden, head, tokens in zip(patches, masks, self.reconstruct_heads, self.token_slices):
            # masked sums, not error[hidden]: no wait for the GPU; a modality absent from the batch adds 0
            error = (head(h[:, tokens]) - target).square().mean(-1)                             # (B, N_m)
            weight = hidden.to(error.dtype)
            loss = loss + (error * weight).sum() / weight.sum().clamp_min(1)
        return MaskedReconstruction(loss, embedding)


# ---------------------------------------------------------------------------- contrastive alignment
def info_nce(spec_emb: torch.Tensor, mol_emb: torch.Tensor, temperature: float = 0.07,
             symmetric: bool = False) -> torch.Tensor:
    """InfoNCE between spectra and 3D-molecule embeddings of the same B molecules, row for row.

    spec_emb (B, D_s) and mol_emb (B, D) with D_s == D (project first if they differ) -> scalar.
    S_ij = cos(mol_i, spec_j) / temperature; loss = mean_i [log sum_j exp S_ij - S_ii] (MolSpectra's
    ``ctr_loss_fn``: each molecule picks its spectrum). ``symmetric`` averages it with the spectra -> molecules
    direction. Equal similarities everywhere give log B.
    """
    if spec_emb.shape != mol_emb.shape or spec_emb.dim() != 2:
        raise UsageError(f"info_nce needs two (B, D) embeddings of one shape, got {tuple(spec_emb.shape)} "
                         f"and {tuple(mol_emb.shape)}")
    logits = F.normalize(mol_emb, dim=-1) @ F.normalize(spec_emb, dim=-1).T / temperature     # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss
