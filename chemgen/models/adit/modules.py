"""Thin Lightning modules for ADiT's two stages; the maths lives in vae.py, dit.py and model.py."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.optim.swa_utils import AveragedModel

from chemgen.dense import DenseBatch
from chemgen.generation.trainer import ema_decay_at
from chemgen.config import ADiTConfig, TrainConfig, from_dict
from chemgen.models.adit.model import ADiT
from chemgen.models.adit.vae import AllAtomVAE


class _ADiTStage(L.LightningModule):
    train_config: TrainConfig

    def transfer_batch_to_device(self, batch: DenseBatch, device: torch.device, dataloader_idx: int) -> DenseBatch:
        return batch.to(device)

    def _log_dict(self, prefix: str, values: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = prefix == "train"
        self.log_dict({f"{prefix}/{k}": v.detach().float() for k, v in values.items()}, on_step=on_step,
                      on_epoch=not on_step, prog_bar=False, batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{prefix}_loss", values["loss"].detach().float(), prog_bar=True, on_step=on_step,
                 on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay)


class VAEModule(_ADiTStage):
    """Stage 1: the all-atom VAE."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})  # plain dict: checkpoints load with weights_only=True
        self.config = from_dict(ADiTConfig, config)
        self.train_config = self.config.vae_train
        self.vae = AllAtomVAE(self.config.vae)

    def training_step(self, batch: DenseBatch, batch_idx: int) -> torch.Tensor:
        out = self.vae.loss(batch, train=True)
        self._log_dict("train", out, len(batch.num_atoms))
        return out["loss"]

    def validation_step(self, batch: DenseBatch, batch_idx: int) -> None:
        self._log_dict("val", self.vae.loss(batch, train=False), len(batch.num_atoms))
        if batch_idx == 0:
            self._diagnostics_batch = batch

    def on_validation_epoch_end(self) -> None:
        """Reconstruction diagnostics of the first validation batch at every validation (MLflow: ``diag/...``):
        what separates the VAE's error from the DiT's (`chemgen.models.adit.diagnostics`)."""
        batch = getattr(self, "_diagnostics_batch", None)
        if batch is None or self.trainer.sanity_checking:
            return
        from chemgen.models.adit import diagnostics

        metrics, decoded = diagnostics.reconstruction_metrics(self, batch)
        molecules = ~batch.pbc
        if molecules.any():
            try:
                for name, values in (("true", batch), ("recon", decoded)):
                    stability = diagnostics.edm_stability(values.atomic_numbers[molecules], values.pos[molecules],
                                                          batch.mask[molecules])
                    metrics.update({f"{name}_{k}": v for k, v in stability.items()})
            except ImportError:  # a machine without RDKit: the geometric diagnostics only
                pass
        self.log_dict({f"diag/{k}": float(v) for k, v in metrics.items()}, on_epoch=True, batch_size=len(batch.mask))


def _warm_ema(decay: float):
    """AveragedModel's update with `ema_decay_at`'s warm-up (a short run's average must not be its init)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(int(num_averaged), decay))

    return update


class DiTModule(_ADiTStage):
    """Stage 2: the latent DiT on a frozen VAE, with an EMA copy of the DiT for sampling."""

    def __init__(self, config: dict[str, Any], vae_state: dict[str, torch.Tensor] | None = None,
                 num_atoms_histogram: torch.Tensor | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = from_dict(ADiTConfig, config)
        self.train_config = self.config.dit_train
        self.model = ADiT(self.config)
        if vae_state is not None:
            self.model.vae.load_state_dict(vae_state)
        if num_atoms_histogram is not None:
            self.model.num_atoms_histogram.copy_(num_atoms_histogram)
        self.model.freeze_vae()
        self.ema = AveragedModel(self.model.dit, multi_avg_fn=_warm_ema(self.train_config.ema_decay),
                                 use_buffers=True)
        self.ema.requires_grad_(False)

    def train(self, mode: bool = True) -> DiTModule:
        super().train(mode)
        self.model.vae.eval()  # the VAE stays frozen in eval mode
        return self

    def training_step(self, batch: DenseBatch, batch_idx: int) -> torch.Tensor:
        out = self.model.dit_loss(batch)
        self._log_dict("train", out, len(batch.num_atoms))
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: DenseBatch, batch_idx: int) -> None:
        self.ema.update_parameters(self.model.dit)

    def validation_step(self, batch: DenseBatch, batch_idx: int) -> None:
        self._log_dict("val", self.model.dit_loss(batch), len(batch.num_atoms))
        if batch_idx == 0:
            self._diagnostics_batch = batch

    def on_validation_epoch_end(self) -> None:
        """The EMA DiT's clean-latent error at t = 0.5 / 0.9 / 0.99 on the first validation batch, in latent
        standard deviations (MLflow: ``diag/dit_error_...``), to set against the decoder's noise tolerance."""
        batch = getattr(self, "_diagnostics_batch", None)
        if batch is None or self.trainer.sanity_checking:
            return
        from types import SimpleNamespace

        from chemgen.models.adit.diagnostics import dit_prediction_error

        ema = SimpleNamespace(vae=self.model.vae, dit=self.ema.module, config=self.config)
        metrics = dit_prediction_error(ema, batch)
        self.log_dict({f"diag/{k}": v for k, v in metrics.items()}, on_epoch=True, batch_size=len(batch.mask))

    def ema_model(self) -> ADiT:
        """A copy of the full model whose DiT carries the EMA weights (what sampling uses)."""
        model = ADiT(self.config)
        model.load_state_dict(self.model.state_dict())
        model.dit.load_state_dict(self.ema.module.state_dict())
        return model.eval()
