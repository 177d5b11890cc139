"""DiffSpectra's config: SpecFormer, the DMT, the VP diffusion, the 3D encoder of pretraining, and two stages.

Defaults are the reference's. DiffSpectra (AzureLeon1/DiffSpectra ``configs/diffspectra_qm9s.py``): DMT nf 256,
8 layers, 16 heads, dropout 0.1; VP cosine schedule, normalize_factors 1, 4, 4, 1, loss weights 1, 0.25, 0.1,
1,000 ancestral steps; AdamW lr 2e-4, grad clip 10, batch 128, EMA 0.999 over the whole network (SpecFormer
sits inside the DMT there and trains with it). MolSpectra (AzureLeon1/MolSpectra
``scripts/2-qm9-qm9sp-pretrain.sh``, ``examples/ET-QM9-QM9SP-PT.yaml``): SpecFormer pretraining with
reconstruction, contrastive and denoising weights 1 / 1 / 1, position noise 0.04 A, lr 4e-4, batch 128.

Two stages, each with its `TrainConfig` named after it (``<stage>_train``, as `train_stages` looks them up):
``specformer`` (MolSpectra's pretraining) then ``denoiser`` (DiffSpectra's diffusion, SpecFormer trained
jointly). No separate switch decides whether SpecFormer is pretrained: the denoiser stage starts from
whatever SpecFormer the model holds, so a run that gives the specformer stage no budget is the "without
pretraining" ablation, and the lineage's per-stage step counts record which one a checkpoint is.

The shipped sizes (`preset`, chemgen/configs/diffspectra-*.yaml): ``tiny`` (tests), ``cpu``, ``gpu`` (the papers').
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chemgen.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from chemgen.diffusion.vp import VPConfig
from chemgen.models.diffspectra.dmt import DMTConfig
from chemgen.models.diffspectra.encoder import EncoderConfig
from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS, BOND_ORDERS, FORMAL_CHARGES
from chemgen.models.diffspectra.specformer import SpecFormerConfig

SPECTRUM_POINTS = 3501                  # the 500-4,000 cm^-1 grid of `chemgen.spectra.broadening`, 1 cm^-1
PACK_MODALITIES = ("ir", "raman")       # what the spectra pack holds (`chemgen.models.diffspectra.data`)


@dataclass(frozen=True)
class PretrainConfig:
    """MolSpectra's pretraining objective: weights of its three losses and the position noise."""

    reconstruct_weight: float = 1.0     # masked-patch reconstruction (SpecFormer)
    contrastive_weight: float = 1.0     # InfoNCE between SpecFormer's and the 3D encoder's embeddings
    denoising_weight: float = 1.0       # coordinate denoising (3D encoder)
    position_noise: float = 0.04        # sigma of the Gaussian added to every coordinate, A

    def __post_init__(self) -> None:
        weights = (self.reconstruct_weight, self.contrastive_weight, self.denoising_weight)
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError(f"pretraining weights must be >= 0 and not all 0, got {weights}")
        if not self.position_noise > 0:
            raise ConfigError(f"position_noise must be positive (A), got {self.position_noise}")


def _train(**changes: Any) -> TrainConfig:
    base = TrainConfig(tokens_per_batch=2048, cuda_tokens_per_batch=4096, lr=2e-4, grad_clip=10.0, ema_decay=0.999)
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class DiffSpectraConfig(ModelConfig):
    name: str = "diffspectra"
    data: DataConfig = field(default_factory=lambda: DataConfig(("qm9",)))
    specformer: SpecFormerConfig = field(default_factory=SpecFormerConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    diffusion: VPConfig = field(default_factory=VPConfig)
    atom_type_norm: float = 4.0         # normalize_factors[1]
    charge_norm: float = 4.0            # normalize_factors[2]
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    specformer_train: TrainConfig = field(default_factory=lambda: _train(lr=4e-4))
    denoiser_train: TrainConfig = field(default_factory=_train)

    def __post_init__(self) -> None:
        sf = self.specformer
        unknown = [m for m in sf.modalities if m not in PACK_MODALITIES]
        if unknown:
            raise ConfigError(f"specformer.modalities {sf.modalities}: chemgen's spectra are {PACK_MODALITIES}, "
                              f"not {unknown}")
        if any(n != SPECTRUM_POINTS for n in sf.lengths):
            raise ConfigError(f"specformer.lengths must be {SPECTRUM_POINTS} (the 500-4,000 cm^-1 grid), got {sf.lengths}")
        if self.dmt.cond_dim != sf.output_dim:
            raise ConfigError(f"dmt.cond_dim {self.dmt.cond_dim} must equal specformer.output_dim {sf.output_dim} "
                              f"(the spectrum embedding is the DMT's condition)")
        vocabulary = (len(ATOM_ELEMENTS), len(FORMAL_CHARGES), len(BOND_ORDERS))
        if (self.dmt.num_atom_types, self.dmt.num_charges, self.dmt.num_bond_types) != vocabulary:
            raise ConfigError(f"dmt's classes (atom types, charges, bonds) must be the graph vocabulary's {vocabulary}, "
                              f"got {(self.dmt.num_atom_types, self.dmt.num_charges, self.dmt.num_bond_types)}")
        if self.atom_type_norm <= 0 or self.charge_norm <= 0:
            raise ConfigError(f"atom_type_norm and charge_norm must be positive, got {self.atom_type_norm}, "
                              f"{self.charge_norm}")


def preset(name: str) -> DiffSpectraConfig:
    """A shipped config by name: ``tiny`` (tests), ``cpu`` (trains on a 2-core CPU in the background),
    ``gpu`` (the papers' networks and recipes); chemgen/configs/diffspectra-<name>.yaml."""
    from chemgen.models.specs import load_config

    return load_config(name, "diffspectra")


PRESETS = ("tiny", "cpu", "gpu")
