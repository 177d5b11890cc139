"""ADiT's latent Diffusion Transformer (Joshi et al. 2025, Sec. 3.2; DiT, Peebles & Xie 2023).

The denoiser sees the noisy latent x_t of every atom and, with self-conditioning, its
own previous estimate x_sc of the clean latent:

    h = Linear([x_t, x_sc]) + PE(i)                       (B, N, d)
    c = Emb_t(t) + Emb_dataset(y) (+ Emb_spacegroup(s))    (B, d)
    h = DiTBlock(h, c) x L                                 adaLN-Zero
    x_1_hat = FinalLayer(h, c)                             (B, N, c_latent)

It predicts the clean latent x_1 (not the velocity). Label 0 is the null class used by
classifier-free guidance.

With ``repa_weight > 0`` the DiT also has REPA's projector (Yu et al., "Representation Alignment for
Generation", ICLR 2025): an MLP from its hidden states after block ``repa_depth`` to the width of a
frozen encoder's states, trained to align with them (``forward(..., features=True)`` returns them).

The DiT works on latents divided by ``latent_scale``, the standard deviation of the VAE's
latents over training atoms (the scale factor of latent diffusion, Rombach et al. 2022): a VAE
trained with heavy position weights spreads its latents far wider than the N(0, I) noise the flow
starts from. The scale is a buffer, so it travels with the DiT's weights; checkpoints made before
it existed load with scale 1 (what they were trained with).
"""

from __future__ import annotations

import torch
from torch import nn

from chemgen.models.adit.config import DiTConfig
from chemgen.nn import DiTBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, index_embedding


class DiT(nn.Module):
    def __init__(self, config: DiTConfig, d_x: int, d_align: int | None = None):
        super().__init__()
        self.config = config
        self.d_x = d_x
        d = config.d_model
        self.x_embedder = nn.Linear(2 * d_x, d)
        self.t_embedder = TimestepEmbedder(d)
        self.dataset_embedder = LabelEmbedder(config.num_datasets, d, config.class_dropout)
        self.spacegroup_embedder = (LabelEmbedder(config.num_spacegroups, d, config.class_dropout)
                                    if config.spacegroup_conditioning else None)
        self.blocks = nn.ModuleList([DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers)])
        self.final_layer = FinalLayer(d, d_x)
        self.repa_projector = (nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d_align))
                               if config.repa_weight > 0 and d_align else None)
        self.register_buffer("latent_scale", torch.ones(()))
        self._initialize_weights()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        state_dict.setdefault(prefix + "latent_scale", torch.ones(()))  # checkpoints from before the scale
        if self.spacegroup_embedder is not None:  # a lineage that turns space-group conditioning on: a new table
            state_dict.setdefault(prefix + "spacegroup_embedder.table.weight",
                                  self.spacegroup_embedder.table.weight.detach().clone())
        repa = prefix + "repa_projector."
        if self.repa_projector is None:  # the projector only trains: a DiT without REPA ignores one
            for key in [k for k in state_dict if k.startswith(repa)]:
                del state_dict[key]
        else:  # a lineage that turns REPA on: a fresh projector
            for name, value in self.repa_projector.state_dict().items():
                state_dict.setdefault(repa + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _initialize_weights(self) -> None:
        """DiT's initialisation; the adaLN-Zero and output zero-inits live in DiTBlock and FinalLayer."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and not _is_zero_init(module, self):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.dataset_embedder.table.weight, std=0.02)
        if self.spacegroup_embedder is not None:
            nn.init.normal_(self.spacegroup_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, dataset_idx: torch.Tensor, mask: torch.Tensor,
                x_sc: torch.Tensor | None = None, spacegroup: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, N, c), t (B,), dataset_idx (B,) with 0 = null, mask (B, N) -> x_1_hat (B, N, c); with
        ``features`` also REPA's projection of the hidden states after block ``repa_depth`` (B, N, d_align)."""
        if x_sc is None:
            x_sc = torch.zeros_like(x_t)
        h = self.x_embedder(torch.cat([x_t, x_sc], dim=-1))                                  # (B, N, d)
        h = h + index_embedding(torch.cumsum(mask.long(), -1) - 1, self.config.d_model)
        c = self.t_embedder(t) + self.dataset_embedder(dataset_idx)                          # (B, d)
        if self.spacegroup_embedder is not None:
            c = c + self.spacegroup_embedder(spacegroup if spacegroup is not None else torch.zeros_like(dataset_idx))
        aligned = None
        for depth, block in enumerate(self.blocks, start=1):
            h = block(h, c, ~mask)                                                            # (B, N, d)
            if features and depth == self.config.repa_depth:
                aligned = self.repa_projector(h)                                              # (B, N, d_align)
        x_1_hat = self.final_layer(h, c) * mask[..., None]                                   # (B, N, c)
        return (x_1_hat, aligned) if features else x_1_hat

    def forward_with_cfg(self, x_t: torch.Tensor, t: torch.Tensor, dataset_idx: torch.Tensor, mask: torch.Tensor,
                         cfg_scale: float, x_sc: torch.Tensor | None = None,
                         spacegroup: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier-free guidance: x_uncond + s * (x_cond - x_uncond), both halves in one pass; the
        unconditional half gets the null class for the dataset and the space group."""
        if cfg_scale == 1.0:
            return self(x_t, t, dataset_idx, mask, x_sc, spacegroup)
        both = lambda v: None if v is None else torch.cat([v, v], dim=0)  # noqa: E731
        null = lambda v: None if v is None else torch.cat([v, torch.zeros_like(v)], dim=0)  # noqa: E731
        out = self(both(x_t), both(t), null(dataset_idx), both(mask), both(x_sc), null(spacegroup))
        cond, uncond = out.chunk(2, dim=0)
        return uncond + cfg_scale * (cond - uncond)


def _is_zero_init(module: nn.Linear, model: DiT) -> bool:
    zero = [b.adaLN_modulation[-1] for b in model.blocks] + [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    return any(module is z for z in zero)


# Model sizes (ADiT / DiT naming). tiny and cpu are chemgen's for tests and 2-core machines.
DIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "num_heads": 2, "num_layers": 2},
    "cpu": {"d_model": 192, "num_heads": 6, "num_layers": 6},
    "S": {"d_model": 384, "num_heads": 6, "num_layers": 12},
    "B": {"d_model": 768, "num_heads": 12, "num_layers": 12},
    "L": {"d_model": 1024, "num_heads": 16, "num_layers": 24},
}
