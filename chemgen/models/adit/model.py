"""ADiT end to end: the frozen VAE, the latent DiT and the flow, plus generation.

Training has two stages (ADiT Sec. 3): first the VAE alone (`AllAtomVAE.loss`), then
the DiT on latents of the frozen VAE (`ADiT.dit_loss`). Generation draws the number
of atoms from the training histogram of the requested dataset, integrates the flow in
latent space with classifier-free guidance on the dataset label, and decodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from chemgen.config import ConfigError
from chemgen.models.adit.config import ADiTConfig
from chemgen.data.tensors import TensorPack
from chemgen.datasets import dataset_label, label_order, resolve_dataset
from chemgen.dense import DenseBatch
from chemgen.diffusion.flow_matching import LinearFlowMatching
from chemgen.errors import UsageError
from chemgen.models.protocol import TrainingStage
from chemgen.models.adit.dit import DiT
from chemgen.models.adit.vae import AllAtomVAE, DecodedBatch, decode_latents, latent_std

NUM_SPACEGROUP_LABELS = 231  # 0 = none, 1..230 international numbers
MAX_ATOMS = 64  # size of the number-of-atoms histograms (QM9 <= 29, MP-20 <= 20, MPTS-52 <= 52)


class ADiT(nn.Module):
    """ADiT as a `chemgen.models.protocol.Generator`: stages "vae" then "dit"."""

    stage_names = ("vae", "dit")

    def __init__(self, config: ADiTConfig):
        super().__init__()
        if tuple(config.dit.datasets) != label_order() or config.dit.num_datasets != len(label_order()):
            raise ConfigError(f"config {config.name!r} labels datasets {config.dit.datasets} ({config.dit.num_datasets} "
                              f"labels), but chemgen labels them {label_order()}: the model would read the wrong datasets")
        self.config = config
        self.vae = AllAtomVAE(config.vae)
        self.dit = DiT(config.dit, d_x=config.vae.latent_dim, d_align=config.vae.d_model)
        self.flow = LinearFlowMatching(config.flow.min_t)
        # (datasets + 1, MAX_ATOMS + 1) counts of training systems by size, to draw N at sampling time
        self.register_buffer("num_atoms_histogram", torch.zeros(config.dit.num_datasets + 1, MAX_ATOMS + 1))
        # (datasets + 1, MAX_ATOMS + 1, 231) counts by size and space group, to draw a crystal's space group
        # given its size when the DiT is conditioned on space groups (empty: the null class 0)
        self.register_buffer("spacegroup_histogram", torch.zeros(config.dit.num_datasets + 1, MAX_ATOMS + 1,
                                                                 NUM_SPACEGROUP_LABELS))

    # ------------------------------------------------------------------ the generator protocol
    def training_stage(self, name: str, train: TensorPack, trained: tuple[str, ...] = ()) -> TrainingStage:
        if name == "vae":
            self.vae.train()
            cfg = self.config.vae_train
            return TrainingStage("vae", lambda batch: self.vae.loss(batch, train=True), list(self.vae.parameters()),
                                 cfg.weight_decay, cfg.grad_clip)
        if name == "dit":
            self.set_histograms(train, keep_existing=True)
            info = {}
            if "vae" in trained or float(self.dit.latent_scale) == 1.0:  # a new VAE: new latent statistics
                info["latent_scale"] = self.fit_latent_scale(train)
            self.train()
            self.freeze_vae()  # the VAE stays frozen, in eval mode
            cfg = self.config.dit_train
            return TrainingStage("dit", self.dit_loss, list(self.dit.parameters()), cfg.weight_decay, cfg.grad_clip,
                                 ema_module=self.dit, ema_decay=cfg.ema_decay, info=info)
        raise KeyError(f"ADiT has stages {self.stage_names}, not {name!r}")

    @torch.no_grad()
    def stage_diagnostics(self, name: str, val: TensorPack, out_dir: Path, per_kind: int = 1000) -> dict[str, Any]:
        """After the VAE: reconstructions of held-out systems (saved for EDM scoring on a CPU machine);
        after the DiT: its clean-latent prediction error."""
        from chemgen.models.adit import diagnostics

        self.eval()
        batch = val.held_out(per_kind).to(self.num_atoms_histogram.device)
        if name == "vae":
            metrics, decoded = diagnostics.reconstruction_metrics(self, batch)
            diagnostics.save_reconstructions(Path(out_dir) / "reconstructions.pt", batch, decoded,
                                             diagnostics.perturbed_reconstructions(self, batch))
            return metrics
        return diagnostics.dit_prediction_error(self, batch)

    @torch.no_grad()
    def stage_monitor(self, name: str, batch: DenseBatch) -> dict[str, float]:
        """During the VAE stage: reconstruction errors (and EDM stability of the reconstructed molecules where
        RDKit is installed); during the DiT stage: its clean-latent error at t = 0.5 / 0.9 / 0.99 (live weights)."""
        from chemgen.models.adit import diagnostics

        training = self.vae.training if name == "vae" else self.dit.training
        self.eval()
        try:
            if name == "dit":
                return diagnostics.dit_prediction_error(self, batch)
            metrics, decoded = diagnostics.reconstruction_metrics(self, batch)
            molecules = ~batch.pbc
            if molecules.any():
                try:
                    stability = diagnostics.edm_stability(decoded.atomic_numbers[molecules], decoded.pos[molecules],
                                                          batch.mask[molecules])
                    metrics.update({f"recon_{k}": v for k, v in stability.items()})
                except ImportError:  # a GPU machine without RDKit: the geometric diagnostics only
                    pass
            return metrics
        finally:
            (self.vae if name == "vae" else self.dit).train(training)

    def set_histograms(self, train: TensorPack, keep_existing: bool = False) -> None:
        """The training sets' sizes, and sizes by space group, that generation draws from. ``keep_existing`` keeps
        the rows of datasets a continued lineage already has: fine-tuning on a slice (the demo's first 2,000 QM9
        rows are its smallest molecules) must not change what sizes the model generates."""
        datasets = range(self.config.dit.num_datasets + 1)
        sizes = torch.stack([train.num_atoms_histogram(i, MAX_ATOMS) for i in datasets]).float()
        groups = torch.stack([train.spacegroup_histogram(i, MAX_ATOMS) for i in datasets]).float()
        if keep_existing:
            known = self.num_atoms_histogram.sum(-1).cpu() > 0                                  # (datasets + 1,)
            sizes = torch.where(known[:, None], self.num_atoms_histogram.cpu(), sizes)
            groups = torch.where(known[:, None, None], self.spacegroup_histogram.cpu(), groups)
        self.num_atoms_histogram.copy_(sizes)
        self.spacegroup_histogram.copy_(groups)

    def checkpoint_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"vae": self.vae.state_dict(), "dit": self.dit.state_dict(),
                "num_atoms_histogram": {"counts": self.num_atoms_histogram},
                "spacegroup_histogram": {"counts": self.spacegroup_histogram}}

    def load_checkpoint_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Weights and histograms by group; checkpoints from before space groups were kept load without them."""
        self.vae.load_state_dict(groups["vae"])
        self.dit.load_state_dict(groups["dit"])
        for name in ("num_atoms_histogram", "spacegroup_histogram"):
            if name in groups:
                getattr(self, name).copy_(groups[name]["counts"])

    def freeze_vae(self) -> None:
        self.vae.requires_grad_(False)
        self.vae.eval()

    # ------------------------------------------------------------------ stage 2 loss
    def dit_loss(self, batch: DenseBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            # ADiT trains the DiT on augmented (rotated / translated) systems too
            clean = self.vae.augment(batch) if self.training else batch
            posterior, states = self.vae.encode_with_states(clean.atomic_numbers, clean.pos, clean.frac_coords,
                                                            clean.mask)
            x_1 = posterior.sample() * batch.mask[..., None] / self.dit.latent_scale           # (B, N, c)
        t = self.flow.sample_t(len(x_1), x_1.device)
        x_t = self.flow.interpolate(x_1, t, batch.mask)
        spacegroup = batch.spacegroup if self.config.dit.spacegroup_conditioning else None
        x_sc = None
        if self.training and self.config.flow.self_condition_prob > 0:
            # self-conditioning: a first estimate without gradient, kept for a random half of the systems
            # (chosen per system on the device, so the step has one graph and no host decision)
            with torch.no_grad():
                keep = torch.rand(len(x_1), 1, 1, device=x_1.device) < self.config.flow.self_condition_prob
                x_sc = self.dit(x_t, t, batch.dataset_idx, batch.mask, None, spacegroup) * keep
        repa = self.dit.repa_projector is not None and self.training
        out = self.dit(x_t, t, batch.dataset_idx, batch.mask, x_sc, spacegroup, features=repa)
        x_1_hat, aligned = out if repa else (out, None)
        per_system = self.flow.loss(x_1, x_1_hat, t, batch.mask)
        losses = {"loss": per_system.mean(), "latent_std": latent_std(x_1, batch.mask)}
        if aligned is not None:
            # REPA: -cos(projected DiT states, frozen encoder states) over real atoms
            similarity = torch.nn.functional.cosine_similarity(aligned.float(), states.float(), dim=-1)   # (B, N)
            alignment = -(similarity * batch.mask).sum() / batch.mask.sum().clamp_min(1)
            losses["repa_alignment"] = alignment.detach()
            losses["loss"] = losses["loss"] + self.config.dit.repa_weight * alignment
        return losses

    @torch.no_grad()
    def fit_latent_scale(self, data: DenseBatch | TensorPack, systems: int = 4096) -> float:
        """Set the DiT's latent scale to the standard deviation of the VAE's posterior means over the real
        atoms of a batch, or of ``systems`` training systems drawn from a pack (seed 0): a few thousand suffice."""
        if isinstance(data, TensorPack):
            pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:systems]
            data = data.dense(pick).to(self.num_atoms_histogram.device)
        batch = data
        posterior = self.vae.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
        std = float(latent_std(posterior.mean.float(), batch.mask))
        self.dit.latent_scale.fill_(std)
        return std

    # ------------------------------------------------------------------ generation
    def draw_num_atoms(self, dataset_idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hist = self.num_atoms_histogram[dataset_idx].float().cpu()                            # (B, MAX+1)
        if (hist.sum(-1) == 0).any():
            raise UsageError("no number-of-atoms histogram for a requested dataset (was it in the training data?)")
        return torch.multinomial(hist, 1, generator=generator).squeeze(-1).to(dataset_idx.device)

    def draw_spacegroups(self, dataset_idx: torch.Tensor, num_atoms: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Space groups drawn from the training crystals of the same dataset and size, or None (the null
        class) when the DiT is not conditioned on them or the training data carried none."""
        if not self.config.dit.spacegroup_conditioning:
            return None
        hist = self.spacegroup_histogram[dataset_idx, num_atoms].float().cpu()                 # (B, 231)
        hist[:, 0] += (hist.sum(-1) == 0).float()  # a size never seen with a space group: the null class
        return torch.multinomial(hist, 1, generator=generator).squeeze(-1).to(dataset_idx.device)

    @torch.no_grad()
    def sample_latents(self, dataset_idx: torch.Tensor, num_atoms: torch.Tensor, num_steps: int | None = None,
                       solver: str | None = None, cfg_scale: float | None = None,
                       generator: torch.Generator | None = None,
                       spacegroup: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        flow = self.config.flow
        mask = torch.arange(int(num_atoms.max()), device=num_atoms.device)[None] < num_atoms[:, None]   # (B, N)
        scale = flow.cfg_scale if cfg_scale is None else cfg_scale

        def denoise(x_t: torch.Tensor, t: torch.Tensor, x_sc: torch.Tensor | None) -> torch.Tensor:
            return self.dit.forward_with_cfg(x_t, t, dataset_idx, mask, scale, x_sc, spacegroup)

        z = self.flow.sample(denoise, mask, self.config.vae.latent_dim, num_steps or flow.num_steps,
                             solver or flow.solver, self_condition=flow.self_condition_prob > 0, generator=generator)
        return z, mask

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mask: torch.Tensor, periodic: torch.Tensor) -> DecodedBatch:
        return decode_latents(self.vae, z, mask, periodic)

    @torch.no_grad()
    def generate(self, num_samples: int, dataset: str, num_steps: int | None = None, solver: str | None = None,
                 cfg_scale: float | None = None, seed: int | None = None, chunk_size: int = 128) -> DecodedBatch:
        """Generate ``num_samples`` systems of ``dataset`` (qm9, mp20, perov5, ...; "molecule" and "crystal"
        stand for qm9 and mp20) as padded tensors: sizes from that dataset's training histogram, guidance
        towards its label (see `chemgen.samples` for records).

        Samples are integrated in chunks of ``chunk_size`` systems of similar size (sorted by number of
        atoms), so that each chunk pads only to its own largest system: 1.4x (QM9) to 2x (MP-20) fewer
        token-steps than one batch padded to the largest. The output keeps the drawn order."""
        dataset, kind = resolve_dataset(dataset)
        if float(self.num_atoms_histogram[dataset_label(dataset)].sum()) == 0:
            trained = [d for d in label_order() if float(self.num_atoms_histogram[dataset_label(d)].sum()) > 0]
            raise UsageError(f"this model was not trained on {dataset!r} (it knows {', '.join(trained) or 'none'})")
        device = self.num_atoms_histogram.device
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        dataset_idx = torch.full((num_samples,), dataset_label(dataset), device=device)
        num_atoms = self.draw_num_atoms(dataset_idx, generator)
        spacegroup = self.draw_spacegroups(dataset_idx, num_atoms, generator) if kind == "crystal" else None
        order = torch.argsort(num_atoms, stable=True)
        width = int(num_atoms.max())
        z = torch.zeros(num_samples, width, self.config.vae.latent_dim, device=device)
        for chunk in order.split(chunk_size):
            z_chunk, _ = self.sample_latents(dataset_idx[chunk], num_atoms[chunk], num_steps, solver, cfg_scale, generator,
                                             None if spacegroup is None else spacegroup[chunk])
            z[chunk, : z_chunk.shape[1]] = z_chunk
        mask = torch.arange(width, device=device)[None] < num_atoms[:, None]
        return self.decode(z * self.dit.latent_scale, mask, torch.full((num_samples,), kind == "crystal", device=device))


