"""DiffSpectra end to end: molecules from their IR and Raman spectra, SpecFormer + DMT + joint VP diffusion.

A molecule of the spectra pack (`chemgen.models.diffspectra.data.spectra_pack`) is its graph and geometry,
z_0 = (x, h, e) (`chemgen.diffusion.vp`: positions, one-hot atom types and formal charges, bond types), and its
spectra s = (IR, Raman), broadened from the pack's sticks on the device at every step. Two stages train it:

``specformer`` (MolSpectra's pretraining of the spectral encoder). With SpecFormer f, the 3D encoder g
(`chemgen.models.diffspectra.encoder`) and position noise x~ = x + sigma eps, sigma = 0.04 A:

    L_pre = w_r L_mask(f; s) + w_c InfoNCE(f(s_masked), g_mol(Z, x~)) + w_d E ||g_eps(Z, x~) - eps||^2

(masked-patch reconstruction of 10 % of each spectrum's patches; InfoNCE at tau = 0.07 between the masked
spectra's embedding and the perturbed molecule's, each molecule picking its spectra among the batch's;
coordinate denoising; weights 1 / 1 / 1). The 3D encoder exists for this stage only.

``denoiser`` (DiffSpectra). The condition c = f(s, present) (modality dropout in training) is added to the
DMT's time embedding, and JointVP's data-prediction loss trains the DMT and SpecFormer together, with an EMA
(0.999) over both. SpecFormer starts from whatever the model holds: the pretraining stage's weights when it
ran, random ones when it was given no budget (the with / without pretraining ablation).

Generation is conditional only: `elucidate` samples ``num_samples`` molecules per query spectrum with
ancestral sampling over the VP schedule (1,000 steps by default) and decodes them to RDKit molecules. The
number of atoms of each sample is the query's own when given (from a molecular formula); otherwise it is
drawn from the training set's histogram. The reference does the former only: its evaluation samples every
test spectrum with the test molecule's true atom count (``sampling.py``, ``get_cond_sampling_eval_fn``), and
it has no unconditional sampler, so the protocol's `generate` refuses and points to `elucidate`.

Reference code read: DiffSpectra ``configs/diffspectra_qm9s.py``, ``run_lib.py`` (``diffspectra_train``,
``diffspectra_evaluate``), ``sampling.py``, ``models/dmt.py`` (SpecFormer inside the DMT, the optional
``pretrained_specformer_path``), ``datasets/build_dataset.py``; MolSpectra ``torchmdnet/module.py``,
``torchmdnet/models/model.py``, ``torchmdnet/data.py``, ``scripts/train.py``,
``scripts/2-qm9-qm9sp-pretrain.sh``, ``examples/ET-QM9-QM9SP-PT.yaml``.

Deviations, and why:

* SpecFormer runs once per training step and its embedding is passed to both passes of self-conditioning,
  and once per query at sampling; the reference calls it inside every DMT forward (twice per
  self-conditioned step, once per sampling step). The result is the same (SpecFormer has no dropout at the
  reference's settings, and is deterministic in eval mode) except that its BatchNorm statistics are updated
  once per step rather than twice.
* Both stages train on the same training split. The reference's released code trains the diffusion on the
  "second half" of QM9S's training split (the pretraining checkpoint coming from MolSpectra's own run);
  chemgen keeps one split, whose validation and test molecules neither stage sees (DiffSpectra issue #2
  asks about exactly this).
* No rotation / translation augmentation (the reference's collate rotates and shifts molecules for its DMT):
  the DMT is exactly E(3)-equivariant, the noise isotropic and the positions re-centred, so a rotated or
  shifted molecule has the same loss distribution and the augmentation changes nothing but the random draws.
* Modality dropout (SpecFormer's, 0.3 per present spectrum) also acts in pretraining, so SpecFormer learns to
  embed IR alone and Raman alone as well as both; MolSpectra pretrains on complete spectra.
* The 3D encoder is chemgen's invariant transformer, trained from scratch, not MolSpectra's equivariant
  transformer pretrained on PCQM4Mv2 (see its module).
* The molecules are chemgen's spectra store's (GFN2-xTB geometries and spectra of QM9), not QM9S's (B3LYP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from chemgen.data.tensors import TensorPack
from chemgen.dense import DenseBatch
from chemgen.diffusion.vp import CategoricalBlock, GraphState, JointVP, VPLossTerms
from chemgen.errors import UsageError
from chemgen.models.protocol import TrainingStage
from chemgen.models.diffspectra.config import DiffSpectraConfig
from chemgen.models.diffspectra.data import MAX_ATOMS, batch_bonds, broaden_sticks
from chemgen.models.diffspectra.dmt import DMT
from chemgen.models.diffspectra.encoder import MoleculeEncoder
from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS, BOND_ORDERS, FORMAL_CHARGES, MolGraphs
from chemgen.models.diffspectra.specformer import SpecFormer, info_nce
from chemgen.spectra.broadening import GRID_CM1

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rdkit.Chem import Mol

MONITOR_T = (0.1, 0.5, 0.9)
DIAGNOSTIC_T = tuple(round(0.05 + 0.1 * k, 2) for k in range(10))   # 0.05, 0.15, ..., 0.95
CONTRAST_CHUNK = 64   # molecules per InfoNCE / retrieval batch in diagnostics (chance top-1: 1/64)
CHECKPOINT_GROUPS = ("specformer", "dmt", "encoder", "num_atoms_histogram")


class DiffSpectra(nn.Module):
    """DiffSpectra as a `chemgen.models.protocol.Generator`: stages "specformer" then "denoiser"."""

    stage_names = ("specformer", "denoiser")

    def __init__(self, config: DiffSpectraConfig):
        super().__init__()
        self.config = config
        self.specformer = SpecFormer(config.specformer)
        self.dmt = DMT(config.dmt)
        self.encoder = MoleculeEncoder(config.encoder, len(ATOM_ELEMENTS), config.specformer.output_dim)
        self.diffusion = JointVP(config.diffusion, (CategoricalBlock("atom_types", len(ATOM_ELEMENTS), config.atom_type_norm),
                                                    CategoricalBlock("charges", len(FORMAL_CHARGES), config.charge_norm)),
                                 len(BOND_ORDERS))
        # integer counts: lineages store floats as bf16, which would round counts above 256
        self.register_buffer("num_atoms_histogram", torch.zeros(MAX_ATOMS + 1, dtype=torch.long))
        # constants rebuilt from code, not saved; on the model's device, so no step copies them from the host
        elements = torch.tensor(ATOM_ELEMENTS)
        type_index = torch.full((int(elements.max()) + 1,), -1, dtype=torch.long)
        type_index[elements] = torch.arange(len(elements))
        self.register_buffer("type_index", type_index, persistent=False)
        self.register_buffer("grid", torch.as_tensor(GRID_CM1, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ data -> tensors
    def atom_types(self, batch: DenseBatch) -> torch.Tensor:
        """(B, N) index into ATOM_ELEMENTS (0 at padding)."""
        z = batch.atomic_numbers.clamp(0, len(self.type_index) - 1)
        return self.type_index[z].clamp_min(0) * batch.mask

    def clean_state(self, batch: DenseBatch) -> GraphState:
        """z_0 of a batch of the spectra pack: centred positions, one-hot types and charges, bond types."""
        nodes = {"atom_types": self.atom_types(batch), "charges": batch.extras["atom/charge"].long()}
        dtype = next(self.dmt.parameters()).dtype
        return self.diffusion.normalize(batch.pos.to(dtype), nodes, batch_bonds(batch.extras, batch.mask), batch.mask)

    def spectra_of(self, batch: DenseBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch's broadened spectra {modality: (B, 3501)} (SpecFormer's modalities) and present (B, M)."""
        names = self.config.specformer.modalities
        # float32 whatever the model's dtype: SpecFormer casts the raw spectra to its own
        frequencies, grid = batch.extras["system/frequencies"].float(), self.grid.float()
        spectra = {m: broaden_sticks(frequencies, batch.extras[f"system/{m}"].float(), grid) for m in names}
        present = torch.ones(len(batch.mask), len(names), dtype=torch.bool, device=batch.mask.device)
        return spectra, present

    # ------------------------------------------------------------------ stage "specformer": MolSpectra
    def pretraining_terms(self, batch: DenseBatch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The three pretraining losses (scalars) and their weighted sum; ``generator`` (on the batch's device)
        fixes the masks, the modality dropout and the position noise."""
        cfg = self.config.pretrain
        spectra, present = self.spectra_of(batch)
        masked = self.specformer.masked_reconstruction(spectra, present, generator)
        mask = batch.mask
        # the parameters' dtype, not autocast's: bf16 positions would round by more than sigma = 0.04 A
        m = mask[..., None].to(next(self.encoder.parameters()).dtype)
        pos = batch.pos.to(m.dtype)
        eps = torch.randn(pos.shape, generator=generator, device=pos.device, dtype=pos.dtype) * m
        mol, eps_hat = self.encoder(self.atom_types(batch), pos + cfg.position_noise * eps, mask)
        contrastive = info_nce(masked.embedding, mol, self.config.specformer.temperature)
        denoising = ((eps_hat - eps) ** 2 * m).sum() / (3 * m.sum()).clamp_min(1)
        loss = (cfg.reconstruct_weight * masked.loss + cfg.contrastive_weight * contrastive
                + cfg.denoising_weight * denoising)
        return {"loss": loss, "reconstruct": masked.loss, "contrastive": contrastive, "denoising": denoising,
                "molecule_embedding": mol}

    def pretraining_loss(self, batch: DenseBatch) -> dict[str, torch.Tensor]:
        terms = self.pretraining_terms(batch)
        return {"loss": terms["loss"], **{k: terms[k].detach() for k in ("reconstruct", "contrastive", "denoising")}}

    # ------------------------------------------------------------------ stage "denoiser": DiffSpectra
    def condition(self, spectra: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None) -> torch.Tensor:
        """The DMT's condition: SpecFormer's embedding (B, C) of raw spectra (modality dropout in training)."""
        return self.specformer(spectra, present)

    def denoise(self, z_t: GraphState, noise_level: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None,
                self_cond: GraphState | None = None) -> GraphState:
        """x0_hat = DMT(z_t, lambda, mask, c, self-conditioning): the model's denoiser (`JointDenoiser`)."""
        return self.dmt(z_t, noise_level, mask, cond, self_cond)

    def denoiser_terms(self, batch: DenseBatch, cond: torch.Tensor | None = None, t: torch.Tensor | None = None,
                       eps: GraphState | None = None, self_condition: bool | None = None) -> VPLossTerms:
        """JointVP's per-molecule loss; the condition is the batch's own spectra unless ``cond`` is given."""
        if cond is None:
            cond = self.condition(*self.spectra_of(batch))
        return self.diffusion.loss(self.dmt, self.clean_state(batch), batch.mask, cond, t, eps, self_condition)

    def denoiser_loss(self, batch: DenseBatch) -> dict[str, torch.Tensor]:
        """The stage's loss (mean over molecules of the weighted JointVP loss) and, logged beside it, the
        unweighted squared errors of positions, node features and edges (sums over atoms / pairs)."""
        terms = self.denoiser_terms(batch)
        return {"loss": terms.loss.mean(), "pos_mse": terms.pos.mean(), "node_mse": terms.nodes.mean(),
                "edge_mse": terms.edges.mean()}

    # ------------------------------------------------------------------ the generator protocol
    def training_stage(self, name: str, train: TensorPack, trained: tuple[str, ...] = ()) -> TrainingStage:
        """The stage's loss and parameters. Whether SpecFormer was pretrained is not decided here: the denoiser
        stage trains whatever SpecFormer the model holds, and the lineage's step counts say which it was."""
        if name not in self.stage_names:
            raise KeyError(f"DiffSpectra has stages {self.stage_names}, not {name!r}")
        self.check_pack(train)
        self.set_histogram(train, keep_existing=True)
        self.train()
        if name == "specformer":
            cfg = self.config.specformer_train
            return TrainingStage("specformer", self.pretraining_loss,
                                 [*self.specformer.parameters(), *self.encoder.parameters()], cfg.weight_decay,
                                 cfg.grad_clip, info={"pretrain": dataclasses.asdict(self.config.pretrain)})
        cfg = self.config.denoiser_train
        # SpecFormer's reconstruction heads serve pretraining only
        specformer = [p for n, p in self.specformer.named_parameters() if not n.startswith("reconstruct_heads.")]
        return TrainingStage("denoiser", self.denoiser_loss, [*specformer, *self.dmt.parameters()],
                             cfg.weight_decay, cfg.grad_clip, ema_module=nn.ModuleList([self.specformer, self.dmt]),
                             ema_decay=cfg.ema_decay)

    def check_pack(self, pack: TensorPack) -> None:
        """A pack DiffSpectra can train on: molecules of H, C, N, O, F with the spectra pack's extras."""
        needed = {"atom/charge", "atom/bonds", "system/frequencies",
                  *(f"system/{m}" for m in self.config.specformer.modalities)}
        missing = sorted(needed - set(pack.extras))
        if missing:
            raise UsageError(f"DiffSpectra trains on the spectra pack (chemgen.models.diffspectra.data.spectra_pack); "
                             f"this pack lacks {missing}")
        if bool(pack.pbc.any()):
            raise UsageError("DiffSpectra generates molecules: the training pack holds crystals")
        known = torch.isin(pack.atomic_numbers, torch.tensor(ATOM_ELEMENTS))
        if not bool(known.all()):
            other = sorted(set(pack.atomic_numbers[~known].tolist()))
            raise UsageError(f"DiffSpectra's atom types are H, C, N, O, F; the training pack has elements {other}")
        if int(pack.num_atoms.max()) > MAX_ATOMS:
            raise UsageError(f"DiffSpectra's graphs hold at most {MAX_ATOMS} atoms; the pack has "
                             f"{int(pack.num_atoms.max())}")

    def set_histogram(self, train: TensorPack, keep_existing: bool = False) -> None:
        """The training molecules' sizes that generation draws from when a query has no atom count; a continued
        lineage keeps its own."""
        if keep_existing and int(self.num_atoms_histogram.sum()) > 0:
            return
        counts = torch.bincount(train.num_atoms, minlength=MAX_ATOMS + 1)[: MAX_ATOMS + 1]
        self.num_atoms_histogram.copy_(counts)

    @torch.no_grad()
    def stage_monitor(self, name: str, batch: DenseBatch) -> dict[str, float]:
        """Held-out measurements with fixed randomness and live weights. specformer: the three pretraining
        losses and spectrum -> molecule retrieval top-1 within the batch; denoiser: the loss at t = 0.1, 0.5,
        0.9 with fixed noise, and at t = 0.5 with the batch's spectra shuffled (what conditioning buys)."""
        training = self.training
        self.eval()
        try:
            if name == "specformer":
                generator = torch.Generator(device=batch.mask.device).manual_seed(0)
                terms = self.pretraining_terms(batch, generator)
                metrics = {k: float(terms[k]) for k in ("loss", "reconstruct", "contrastive", "denoising")}
                metrics["retrieval_top1"] = self._retrieval_top1(batch, terms["molecule_embedding"])
                return metrics
            eps = self.diffusion.noise(batch.mask, next(self.dmt.parameters()).dtype, torch.Generator().manual_seed(0))
            cond = self.condition(*self.spectra_of(batch))
            metrics = {}
            for t in MONITOR_T:
                t_vec = torch.full((len(batch.mask),), t, dtype=torch.float64)
                metrics[f"loss_t{t:g}"] = float(self.denoiser_terms(batch, cond, t_vec, eps, False).loss.mean())
            shuffled = cond.roll(1, dims=0)
            t_vec = torch.full((len(batch.mask),), 0.5, dtype=torch.float64)
            metrics["loss_t0.5_shuffled_spectra"] = float(self.denoiser_terms(batch, shuffled, t_vec, eps, False).loss.mean())
            return metrics
        finally:
            self.train(training)

    def _retrieval_top1(self, batch: DenseBatch, molecule_embedding: torch.Tensor) -> float:
        """Fraction of molecules whose own (unmasked) spectra are the most similar of the batch's."""
        spec = self.condition(*self.spectra_of(batch))
        similarity = F.normalize(molecule_embedding, dim=-1) @ F.normalize(spec, dim=-1).T
        hits = similarity.argmax(-1) == torch.arange(len(similarity), device=similarity.device)
        return float(hits.float().mean())

    @torch.no_grad()
    def stage_diagnostics(self, name: str, val: TensorPack, out_dir: Path, per_kind: int | None = None,
                          chunk_size: int = 128) -> dict[str, Any]:
        """Held-out losses on up to ``per_kind`` validation molecules (GPU 1,000, CPU 128), fixed randomness.

        specformer: the pretraining losses and retrieval top-1 in chunks of 64 molecules (InfoNCE's value
        depends on the batch: log 64 = 4.16 is chance). denoiser: the loss and its three squared errors
        averaged over 10 fixed times t = 0.05 ... 0.95 with fixed noise, without self-conditioning, and the
        same loss with each molecule conditioned on another molecule's spectra (``val_loss_shuffled_spectra``:
        higher than ``val_loss`` when the spectra inform the denoiser)."""
        self.eval()
        if len(val) == 0:
            return {}
        device = self.num_atoms_histogram.device
        per_kind = per_kind or (1000 if device.type == "cuda" else 128)
        batch = val.held_out(per_kind, seed=0).to(device)
        by_size = torch.argsort(batch.mask.sum(-1).cpu(), stable=True)   # chunks of similar size pad little
        if name == "specformer":
            generator = torch.Generator(device=device).manual_seed(0)
            totals = dict.fromkeys(("val_loss", "val_reconstruct", "val_contrastive", "val_denoising",
                                    "val_retrieval_top1"), 0.0)
            chunks = [c for c in torch.randperm(len(by_size), generator=torch.Generator().manual_seed(0)
                                                ).split(CONTRAST_CHUNK) if len(c) > 1]
            for chunk in chunks:   # random chunks: molecules of one size would make retrieval harder than it is
                part = self._part(batch, chunk)
                terms = self.pretraining_terms(part, generator)
                for key in ("loss", "reconstruct", "contrastive", "denoising"):
                    totals[f"val_{key}"] += float(terms[key]) * len(chunk)
                totals["val_retrieval_top1"] += self._retrieval_top1(part, terms["molecule_embedding"]) * len(chunk)
            count = sum(len(c) for c in chunks)
            return {k: v / max(count, 1) for k, v in totals.items()}
        generator = torch.Generator().manual_seed(0)
        dtype = next(self.dmt.parameters()).dtype
        totals = dict.fromkeys(("val_loss", "val_pos_mse", "val_node_mse", "val_edge_mse", "val_loss_shuffled_spectra"),
                               0.0)
        count = 0
        for chunk in by_size.split(chunk_size):
            part = self._part(batch, chunk)
            cond = self.condition(*self.spectra_of(part))
            for t in DIAGNOSTIC_T:
                eps = self.diffusion.noise(part.mask, dtype, generator)
                t_vec = torch.full((len(chunk),), t, dtype=torch.float64)
                terms = self.denoiser_terms(part, cond, t_vec, eps, False)
                for key, value in (("val_loss", terms.loss), ("val_pos_mse", terms.pos), ("val_node_mse", terms.nodes),
                                   ("val_edge_mse", terms.edges)):
                    totals[key] += float(value.sum())
                if len(chunk) > 1:
                    shuffled = self.denoiser_terms(part, cond.roll(1, dims=0), t_vec, eps, False)
                    totals["val_loss_shuffled_spectra"] += float(shuffled.loss.sum())
                else:   # a lone molecule has no other spectra to take: its own loss stands in
                    totals["val_loss_shuffled_spectra"] += float(terms.loss.sum())
                count += len(chunk)
        return {k: v / count for k, v in totals.items()}

    @staticmethod
    def _part(batch: DenseBatch, rows: torch.Tensor) -> DenseBatch:
        rows = rows.to(batch.mask.device)
        width = int(batch.mask[rows].sum(-1).max())
        return batch.select(rows).crop_atoms(width)

    def checkpoint_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"specformer": self.specformer.state_dict(), "dmt": self.dmt.state_dict(),
                "encoder": self.encoder.state_dict(), "num_atoms_histogram": {"counts": self.num_atoms_histogram}}

    def load_checkpoint_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        if set(groups) != set(CHECKPOINT_GROUPS):
            raise RuntimeError(f"DiffSpectra's checkpoint groups are {list(CHECKPOINT_GROUPS)}, got {sorted(groups)}")
        self.specformer.load_state_dict(groups["specformer"])
        self.dmt.load_state_dict(groups["dmt"])
        self.encoder.load_state_dict(groups["encoder"])
        counts = groups["num_atoms_histogram"]
        if set(counts) != {"counts"} or counts["counts"].shape != self.num_atoms_histogram.shape:
            raise RuntimeError(f"num_atoms_histogram must be {{'counts': ({MAX_ATOMS + 1},)}}, got "
                               f"{ {k: tuple(v.shape) for k, v in counts.items()} }")
        self.num_atoms_histogram.copy_(counts["counts"].round().long())

    # ------------------------------------------------------------------ generation
    def draw_num_atoms(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        hist = self.num_atoms_histogram.float().cpu()
        if float(hist.sum()) == 0:
            raise UsageError("no number-of-atoms histogram: this DiffSpectra has not been trained; give num_atoms")
        return torch.multinomial(hist, num_samples, replacement=True, generator=generator)

    @torch.no_grad()
    def sample_graphs(self, spectra: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None,
                      num_samples: int = 1, num_atoms: torch.Tensor | None = None, num_steps: int | None = None,
                      seed: int | None = None, chunk_size: int = 128, temperature: float = 1.0,
                      noise_on_device: bool = False) -> MolGraphs:
        """``num_samples`` graphs per query as one padded `MolGraphs` on the CPU, query-major (query q's samples
        are rows q * num_samples ...); see `elucidate` for the arguments. ``noise_on_device`` draws the seeded
        noise with a generator on the model's device instead of the CPU: reproducible on that kind of device
        only, but without a host-to-device copy of every step's noise (benchmarks on a GPU)."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise UsageError(f"num_samples must be a positive integer, got {num_samples!r}")
        if chunk_size < 1:
            raise UsageError(f"chunk_size must be positive, got {chunk_size}")
        self.eval()
        device = self.num_atoms_histogram.device
        dtype = next(self.dmt.parameters()).dtype
        spectra = {k: (None if v is None else torch.as_tensor(v).to(device)) for k, v in spectra.items()}
        present = None if present is None else torch.as_tensor(present).to(device)
        queries = next((len(v) for v in spectra.values() if v is not None),
                       len(present) if present is not None else 0)
        if queries == 0:
            raise UsageError("no queries: give spectra {modality: (Q, 3501)} with Q >= 1")
        cond = torch.cat([self.condition({k: (None if v is None else v[rows]) for k, v in spectra.items()},
                                         None if present is None else present[rows])
                          for rows in torch.arange(queries, device=device).split(chunk_size)])   # (Q, C)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if num_atoms is None:
            sizes = self.draw_num_atoms(queries * num_samples, generator)
        else:
            num_atoms = torch.as_tensor(num_atoms).cpu()
            if num_atoms.shape != (queries,) or num_atoms.is_floating_point() or num_atoms.dtype == torch.bool:
                raise UsageError(f"num_atoms must be ({queries},) integers, one per query, got "
                                 f"{tuple(num_atoms.shape)} {num_atoms.dtype}")
            if bool((num_atoms < 1).any()) or bool((num_atoms > MAX_ATOMS).any()):
                raise UsageError(f"num_atoms must be in 1..{MAX_ATOMS} (QM9's sizes, what DiffSpectra learnt), "
                                 f"got {num_atoms.tolist()}")
            sizes = num_atoms.long().repeat_interleave(num_samples)
        noise = generator
        if noise_on_device and seed is not None and device.type != "cpu":
            noise = torch.Generator(device=device).manual_seed(seed)
        query = torch.arange(queries).repeat_interleave(num_samples)
        total, width = len(sizes), int(sizes.max())
        pos = torch.zeros(total, width, 3)
        types = torch.zeros(total, width, dtype=torch.long)
        charges = torch.zeros(total, width, dtype=torch.long)
        bonds = torch.zeros(total, width, width, dtype=torch.long)
        for chunk in torch.argsort(sizes, stable=True).split(chunk_size):   # pad each chunk to its own size
            n = int(sizes[chunk].max())
            mask = (torch.arange(n)[None] < sizes[chunk, None]).to(device)
            z0 = self.diffusion.sample(self.denoise, mask, cond[query[chunk].to(device)], num_steps, noise,
                                       temperature, dtype)
            x, nodes, e = self.diffusion.decode(z0, mask)
            pos[chunk, :n] = x.float().cpu()
            types[chunk, :n] = nodes["atom_types"].cpu()
            charges[chunk, :n] = nodes["charges"].cpu()
            bonds[chunk, :n, :n] = e.cpu()
        mask = torch.arange(width)[None] < sizes[:, None]
        return MolGraphs(pos, types, charges, bonds, mask)

    def elucidate(self, spectra: Mapping[str, torch.Tensor | None], present: torch.Tensor | None = None,
                  num_samples: int = 1, num_atoms: torch.Tensor | None = None, num_steps: int | None = None,
                  seed: int | None = None, chunk_size: int = 128, temperature: float = 1.0) -> list[list[Mol | None]]:
        """Candidate molecules for Q query spectra: Q lists of ``num_samples`` RDKit molecules (None where the
        sampled graph is not a valid molecule), each with explicit hydrogens and its sampled 3D conformer.

        ``spectra``: {modality: (Q, 3501) raw spectrum on the 500-4,000 cm^-1 grid} for SpecFormer's modalities
        (a missing key is an absent modality); ``present`` (Q, M) bool marks the spectra each query has (default:
        the modalities given). ``num_atoms`` (Q,) long: each query's atom count, e.g. from its molecular formula
        (the reference's protocol uses the true count); None draws each sample's count from the training
        histogram. ``num_steps`` ancestral steps (default the config's, 1,000 as the reference), ``seed`` makes
        the samples reproducible on any device (the noise is drawn on the CPU), ``chunk_size`` samples run
        together, ``temperature`` scales the sampler's noise (the reference's ``sampling_temperature``, 1).
        """
        from chemgen.models.diffspectra.graphs import graphs_to_mols   # RDKit: imported only when decoding

        graphs = self.sample_graphs(spectra, present, num_samples, num_atoms, num_steps, seed, chunk_size, temperature)
        mols = graphs_to_mols(graphs)
        return [mols[q * num_samples:(q + 1) * num_samples] for q in range(len(mols) // num_samples)]

    def generate(self, num_samples: int, kind: str = "qm9", num_steps: int | None = None, solver: str | None = None,
                 cfg_scale: float | None = None, seed: int | None = None) -> Any:
        """Refused: DiffSpectra samples molecules for given spectra, and the reference has no unconditional
        sampler (it always conditions on a test molecule's spectra). Use `elucidate`."""
        raise UsageError("DiffSpectra generates molecules for given spectra, not unconditionally: call "
                         "elucidate(spectra={'ir': (Q, 3501), 'raman': (Q, 3501)}, num_samples=..., num_atoms=...)")


__all__ = ["DiffSpectra"]
