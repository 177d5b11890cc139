"""GFMDiff end to end: EDM's diffusion over QM9 molecules with the Dual-Track Transformer and GFLoss.

A molecule is diffused as [x, one-hot type / 4, atomic number / 10, valence / 10] (the reference's
``include_an`` and ``include_de``), x in Angstrom with its centre of mass at 0. One training stage,
"denoiser", fits the DTN's noise prediction with EDM's l2 loss plus 0.01 GFLoss, and keeps an EMA (0.999)
of its weights. Generation draws the number of atoms from the training histogram and samples ancestrally
over the T = 500 steps of the polynomial_2 schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chemgen.data.tensors import TensorPack
from chemgen.datasets import dataset_label, resolve_dataset
from chemgen.dense import DenseBatch
from chemgen.diffusion.vdm import Feature, LossTerms, VariationalDiffusion
from chemgen.errors import UsageError
from chemgen.models.protocol import TrainingStage
from chemgen.models.gfmdiff.bonds import (
    QM9_ELEMENTS,
    bond_cutoffs_angstrom,
    edm_thresholds_pm,
    edm_valence,
)
from chemgen.models.gfmdiff.config import GFMDiffConfig
from chemgen.models.gfmdiff.dtn import DualTrackTransformer
from chemgen.models.gfmdiff.gfloss import gfloss

MAX_ATOMS = 64   # size of the number-of-atoms histogram (QM9 <= 29), as ADiT's
MONITOR_T = (0.1, 0.5, 0.9)


@dataclass
class GeneratedMolecules:
    """Generated molecules as padded tensors (what `chemgen.samples.to_systems` reads)."""

    atomic_numbers: torch.Tensor  # (B, N) long, 0 at padding
    pos: torch.Tensor             # (B, N, 3) Angstrom, centre of mass at 0
    frac_coords: torch.Tensor     # (B, N, 3) zeros (molecules)
    cell: torch.Tensor            # (B, 3, 3) zeros
    mask: torch.Tensor            # (B, N)
    periodic: torch.Tensor        # (B,) False
    valence: torch.Tensor         # (B, N) long: the generated valence feature (rounded from z_0)


class GFMDiff(nn.Module):
    """GFMDiff as a `chemgen.models.protocol.Generator`: one stage, "denoiser"."""

    stage_names = ("denoiser",)

    def __init__(self, config: GFMDiffConfig):
        super().__init__()
        self.config = config
        diffusion = config.diffusion
        norm_types, norm_number, norm_valence = diffusion.norm_values
        self.diffusion = VariationalDiffusion(
            (Feature("types", len(QM9_ELEMENTS), "categorical", norm_types),
             Feature("atomic_number", 1, "integer", norm_number),
             Feature("valence", 1, "integer", norm_valence)),
            diffusion.timesteps, diffusion.noise_schedule, diffusion.noise_precision)
        self.dynamics = DualTrackTransformer(config.dtn, node_features=self.diffusion.dims - 3)
        self.register_buffer("num_atoms_histogram", torch.zeros(MAX_ATOMS + 1))   # QM9 training sizes
        # constants of the element set and EDM's bond table: rebuilt from code, not saved
        elements = torch.tensor(QM9_ELEMENTS)
        type_index = torch.full((int(elements.max()) + 1,), -1, dtype=torch.long)
        type_index[elements] = torch.arange(len(elements))
        self.register_buffer("elements", elements, persistent=False)
        self.register_buffer("type_index", type_index, persistent=False)
        self.register_buffer("thresholds_pm", edm_thresholds_pm(), persistent=False)
        self.register_buffer("bond_cutoffs", bond_cutoffs_angstrom(QM9_ELEMENTS), persistent=False)

    # ------------------------------------------------------------------ data -> z
    def clean_xh(self, batch: DenseBatch) -> torch.Tensor:
        """[x, one-hot / 4, Z / 10, valence / 10] (B, N, 10) of a batch of QM9 molecules."""
        mask = batch.mask
        types = torch.nn.functional.one_hot(self.type_index[batch.atomic_numbers].clamp_min(0), len(QM9_ELEMENTS))
        valence = edm_valence(batch.atomic_numbers, batch.pos, mask, self.thresholds_pm)
        return self.diffusion.normalize(batch.pos.float(), {"types": types, "atomic_number": batch.atomic_numbers[..., None],
                                                            "valence": valence[..., None]}, mask)

    def gfloss_term(self, eps_hat: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        weight = self.config.diffusion.gfloss_weight
        norm_types, _, norm_valence = self.config.diffusion.norm_values
        return weight * gfloss(eps_hat, eps, alpha_t, mask, self.bond_cutoffs, self.diffusion.slices["types"],
                               self.diffusion.slices["valence"].start, norm_types, norm_valence)

    def loss_terms(self, batch: DenseBatch, t_int: torch.Tensor | None = None,
                   eps: torch.Tensor | None = None) -> LossTerms:
        extra = self.gfloss_term if self.config.diffusion.gfloss else None
        return self.diffusion.loss(self.dynamics, self.clean_xh(batch), batch.mask, extra, t_int, eps)

    def loss(self, batch: DenseBatch) -> dict[str, torch.Tensor]:
        """The stage's loss (mean over systems of L_t, or L_0 where t = 0); logged beside it, over the
        systems with t > 0, the noise error ||eps - eps_hat||^2 / (N D) and the weighted GFLoss term."""
        terms = self.loss_terms(batch)
        positive = (terms.t_int > 0).float()
        count = positive.sum().clamp_min(1)
        return {"loss": terms.loss.mean(),
                "eps_mse": ((terms.error * positive).sum() / count).detach(),
                "gfloss": ((terms.extra * positive).sum() / count).detach()}

    # ------------------------------------------------------------------ the generator protocol
    def training_stage(self, name: str, train: TensorPack, trained: tuple[str, ...] = ()) -> TrainingStage:
        if name != "denoiser":
            raise KeyError(f"GFMDiff has stages {self.stage_names}, not {name!r}")
        self.check_molecules(train)
        self.set_histogram(train, keep_existing=True)
        self.train()
        cfg = self.config.denoiser_train
        return TrainingStage("denoiser", self.loss, list(self.dynamics.parameters()), cfg.weight_decay, cfg.grad_clip,
                             ema_module=self.dynamics, ema_decay=cfg.ema_decay,
                             info={"gfloss": self.config.diffusion.gfloss})

    def check_molecules(self, pack: TensorPack) -> None:
        if bool(pack.pbc.any()):
            raise UsageError("GFMDiff generates molecules: the training pack holds crystals (train it on qm9 alone)")
        known = torch.isin(pack.atomic_numbers, self.elements.cpu())
        if not bool(known.all()):
            other = sorted(set(pack.atomic_numbers[~known].tolist()))
            raise UsageError(f"GFMDiff's one-hot covers H, C, N, O, F; the training pack has elements {other}")

    def set_histogram(self, train: TensorPack, keep_existing: bool = False) -> None:
        """The training molecules' sizes that generation draws from; a continued lineage keeps its own
        (fine-tuning on a slice must not change what sizes the model generates)."""
        if keep_existing and float(self.num_atoms_histogram.sum()) > 0:
            return
        self.num_atoms_histogram.copy_(train.num_atoms_histogram(dataset_label("qm9"), MAX_ATOMS).float())

    @torch.no_grad()
    def stage_monitor(self, name: str, batch: DenseBatch) -> dict[str, float]:
        """Noise-prediction error on held-out molecules at t = 0.1, 0.5, 0.9 (fixed noise, live weights)."""
        training = self.dynamics.training
        self.dynamics.eval()
        try:
            batch = self._molecules(batch)
            if batch is None:
                return {}
            generator = torch.Generator().manual_seed(0)
            eps = self.diffusion.noise(batch.mask, generator=generator).to(batch.pos.device)
            metrics = {}
            for t in MONITOR_T:
                t_int = torch.full((len(batch.mask),), round(t * self.diffusion.timesteps), device=batch.pos.device)
                metrics[f"eps_mse_t{t:g}"] = float(self.loss_terms(batch, t_int, eps).error.mean())
            return metrics
        finally:
            self.dynamics.train(training)

    @torch.no_grad()
    def stage_diagnostics(self, name: str, val: TensorPack, out_dir: Path, per_kind: int | None = None,
                          chunk_size: int = 128) -> dict[str, Any]:
        """The loss on up to ``per_kind`` held-out molecules (1,000 on a GPU, 200 on a CPU, where the triplet
        track makes each one costly), at 10 fixed steps each with fixed noise."""
        self.eval()
        device = self.num_atoms_histogram.device
        per_kind = per_kind or (1000 if device.type == "cuda" else 200)
        batch = val.held_out(per_kind, seed=0).to(device)
        batch = self._molecules(batch)
        if batch is None:
            return {}
        generator = torch.Generator().manual_seed(0)
        totals = {"val_loss": 0.0, "val_eps_mse": 0.0}
        count = 0
        steps = torch.linspace(1, self.diffusion.timesteps, 10).round().long()
        by_size = torch.argsort(batch.mask.sum(-1).cpu(), stable=True)   # chunks of similar size pad little
        for chunk in by_size.split(chunk_size):
            width = int(batch.mask[chunk.to(device)].sum(-1).max())
            part = batch.select(chunk).crop_atoms(width)
            for step in steps.tolist():
                eps = self.diffusion.noise(part.mask, generator=generator).to(part.pos.device)
                terms = self.loss_terms(part, torch.full((len(chunk),), step, device=part.pos.device), eps)
                totals["val_loss"] += float(terms.loss.sum())
                totals["val_eps_mse"] += float(terms.error.sum())
                count += len(chunk)
        return {k: v / count for k, v in totals.items()}

    @staticmethod
    def _molecules(batch: DenseBatch) -> DenseBatch | None:
        keep = ~batch.pbc
        if not bool(keep.any()):
            return None
        return batch.select(keep)

    def checkpoint_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"dynamics": self.dynamics.state_dict(), "num_atoms_histogram": {"counts": self.num_atoms_histogram}}

    def load_checkpoint_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        self.dynamics.load_state_dict(groups["dynamics"])
        self.num_atoms_histogram.copy_(groups["num_atoms_histogram"]["counts"])

    # ------------------------------------------------------------------ generation
    def draw_num_atoms(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        hist = self.num_atoms_histogram.float().cpu()
        if float(hist.sum()) == 0:
            raise UsageError("no number-of-atoms histogram: this GFMDiff has not been trained")
        return torch.multinomial(hist, num_samples, replacement=True, generator=generator)

    @torch.no_grad()
    def generate(self, num_samples: int, kind: str = "qm9", num_steps: int | None = None, solver: str | None = None,
                 cfg_scale: float | None = None, seed: int | None = None, chunk_size: int = 128) -> GeneratedMolecules:
        """``num_samples`` QM9-like molecules (``kind`` "qm9" or "molecule") as padded tensors.

        Sizes come from the training histogram; each chunk of ``chunk_size`` molecules of similar size is
        sampled ancestrally over ``num_steps`` (default the config's, T = 500 for the paper's numbers).
        GFMDiff is unconditional and has one sampler: ``solver`` may be None or "ancestral", ``cfg_scale``
        None or 1. A ``seed`` makes the samples reproducible (the noise is drawn on the CPU).
        """
        dataset, _ = resolve_dataset(kind)
        if dataset != "qm9":
            raise UsageError(f"this model was not trained on {dataset!r}: GFMDiff generates QM9 molecules")
        if solver not in (None, "ancestral"):
            raise UsageError(f"GFMDiff samples ancestrally (solver 'ancestral'), not with {solver!r}")
        if cfg_scale not in (None, 1.0):
            raise UsageError("GFMDiff is unconditional: no classifier-free guidance (cfg_scale must be None or 1)")
        self.eval()
        device = self.num_atoms_histogram.device
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        num_atoms = self.draw_num_atoms(num_samples, generator)
        width = int(num_atoms.max())
        types = torch.zeros(num_samples, width, dtype=torch.long, device=device)
        pos = torch.zeros(num_samples, width, 3, device=device)
        valence = torch.zeros(num_samples, width, dtype=torch.long, device=device)
        steps = num_steps or self.config.diffusion.num_steps
        for chunk in torch.argsort(num_atoms, stable=True).split(chunk_size):   # pad each chunk to its own size
            n = int(num_atoms[chunk].max())
            mask = (torch.arange(n)[None] < num_atoms[chunk, None]).to(device)
            x, h = self.diffusion.sample(self.dynamics, mask, steps, generator)
            pos[chunk.to(device), :n] = x.float()
            types[chunk.to(device), :n] = h["types"]
            valence[chunk.to(device), :n] = h["valence"][..., 0]
        mask = (torch.arange(width)[None] < num_atoms[:, None]).to(device)
        atomic_numbers = self.elements[types] * mask
        return GeneratedMolecules(atomic_numbers, pos * mask[..., None], torch.zeros_like(pos),
                                  torch.zeros(num_samples, 3, 3, device=device), mask,
                                  torch.zeros(num_samples, dtype=torch.bool, device=device), valence * mask)

