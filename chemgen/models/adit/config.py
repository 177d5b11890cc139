"""ADiT's config: the VAE, the latent DiT, the flow and the training of its two stages (``vae``, ``dit``).

Defaults are the paper's (Joshi et al. 2025; facebookresearch/all-atom-diffusion-transformer ``configs/``);
the shipped sizes are chemgen/configs/adit-*.yaml (``tiny`` for tests, ``cpu``, ``gpu-quick``, ``dit-s``,
``dit-b``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chemgen.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from chemgen.datasets import label_order


@dataclass(frozen=True)
class VAEConfig:
    d_model: int = 512
    num_heads: int = 8
    dim_feedforward: int = 2048
    encoder_layers: int = 8
    decoder_layers: int = 8
    latent_dim: int = 8
    max_atom_types: int = 100
    kl_weight: float = 1e-5
    # ADiT's loss weights: periodic (crystals) / non-periodic (molecules)
    weight_atom_types: float = 1.0
    weight_lengths: float = 1.0
    weight_angles: float = 10.0
    weight_frac_coords: float = 10.0
    weight_pos: float = 10.0          # positions in nm^2: 10 here is 0.1 per A^2
    # chemgen's optional short-distance term (A^2) on molecular pairs closer than distance_cutoff (A)
    weight_distance: float = 0.0
    distance_cutoff: float = 2.0
    # Denoising corruption during training: fraction of atom types masked, of positions jittered
    corrupt_fraction: float = 0.1
    corrupt_pos_std: float = 0.1  # Angstrom
    # chemgen: Gaussian noise added to the latents the decoder sees in training, relative to their
    # standard deviation, so that it tolerates the DiT's errors (0 = ADiT)
    latent_noise: float = 0.0
    augment_rotation: bool = True
    augment_translation: bool = True


@dataclass(frozen=True)
class DiTConfig:
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 12
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1
    num_datasets: int = len(label_order())  # conditioning labels 1..num_datasets, 0 = CFG's null class
    # the labels' datasets in order (label = position + 1): saved with every export and lineage, so a model
    # trained with one order is never read with another (`chemgen.datasets.label_order` must agree)
    datasets: tuple[str, ...] = label_order()
    num_spacegroups: int = 230
    spacegroup_conditioning: bool = False
    # REPA (Yu et al. 2025): align the DiT's hidden states after block `repa_depth` (1-based), through a small
    # MLP, with the frozen VAE encoder's states of the clean system (negative cosine similarity, this weight);
    # 0 turns it off (no projector in the checkpoint)
    repa_weight: float = 0.0
    repa_depth: int = 2


@dataclass(frozen=True)
class FlowConfig:
    min_t: float = 0.01
    num_steps: int = 100
    self_condition_prob: float = 0.5
    cfg_scale: float = 2.0
    solver: str = "euler"

    def __post_init__(self) -> None:
        if self.solver not in ("euler", "heun"):
            raise ConfigError(f"solver must be 'euler' or 'heun', got {self.solver!r}")


@dataclass(frozen=True)
class ADiTConfig(ModelConfig):
    name: str = "adit"
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae_train: TrainConfig = field(default_factory=TrainConfig)
    dit_train: TrainConfig = field(default_factory=TrainConfig)
