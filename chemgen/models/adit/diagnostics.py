"""What separates VAE error from DiT error: how well the VAE alone reconstructs held-out systems.

A generated molecule can be no better than the VAE's decoding of a perfect latent, so each
training run reports, on validation systems it never trained on:

- atom-type accuracy of the reconstruction;
- molecules: position RMSD unaligned (what the loss sees) and after Kabsch alignment (what
  chemistry sees), and the mean absolute error of the interatomic distances below 2 A (the bonds
  EDM's tables judge, with margins of 3-10 pm);
- crystals: the RMS Cartesian error of fractional coordinates under the minimum image, the
  relative error of the lattice lengths and the error of its angles, and (on the CPU machine)
  the StructureMatcher match rate of reconstructions to their true structures;
- the spread of the latents (posterior means) and of the posterior standard deviations;
- how robust the decoder is: reconstructions from latents perturbed by Gaussian noise of 1, 3 and
  10 % of their standard deviation (`perturbed_reconstructions`), next to
- how far the DiT is from the latents: its clean-latent prediction error at t = 0.5, 0.9 and 0.99,
  in units of the latent standard deviation (`dit_prediction_error`). A DiT error well above the
  noise the decoder tolerates means the VAE's latent space, not the DiT, limits the samples.

These need torch alone (they run on the GPU machine); EDM stability of the reconstructions is
scored on a CPU machine from the saved tensors (`score_reconstructions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chemgen.dense import DenseBatch
from chemgen.geometry import lattice_parameters
from chemgen.models.adit.vae import DecodedBatch, decode_latents, short_pairs

SHORT_DISTANCE = 2.0  # Angstrom: pairs below this are the bonds EDM's tables judge
NOISE_LEVELS = (0.01, 0.03, 0.1)  # latent noise, relative to the latent standard deviation


def kabsch_rmsd(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMSD (B,) after optimal rotation of centred ``pred`` onto centred ``true`` (Kabsch 1976); (B, N, 3) inputs."""
    m = mask[..., None].to(pred.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1)
    p = (pred - (pred * m).sum(1, keepdim=True) / n) * m
    q = (true - (true * m).sum(1, keepdim=True) / n) * m
    u, _, vt = torch.linalg.svd(p.transpose(1, 2) @ q)                  # H = P^T Q = U S V^T
    d = torch.sign(torch.det(u @ vt))                                    # no reflections
    correction = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    rotation = u @ correction @ vt                                        # P R ~ Q
    error = ((p @ rotation - q) ** 2).sum(-1) * mask
    return (error.sum(1) / mask.sum(1).clamp_min(1)).sqrt()


def short_distance_errors(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor,
                          cutoff: float = SHORT_DISTANCE) -> torch.Tensor:
    """|d_pred - d_true| (A) of every pair closer than ``cutoff`` in the true structure, flattened."""
    d_true, pairs = short_pairs(true, mask, cutoff)
    return (torch.cdist(pred, pred) - d_true).abs()[pairs > 0]


@torch.no_grad()
def reconstruct(model: Any, batch: DenseBatch) -> tuple[DecodedBatch, dict[str, torch.Tensor]]:
    """Decode the posterior means of ``batch``; returns the decoded systems and latent statistics."""
    vae = model.vae
    posterior = vae.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
    decoded = decode_latents(vae, posterior.mode() * batch.mask[..., None], batch.mask, batch.pbc)
    m = batch.mask
    return decoded, {"latent_std": posterior.mean[m].float().std(), "posterior_std": posterior.std[m].float().mean()}


@torch.no_grad()
def reconstruction_metrics(model: Any, batch: DenseBatch) -> tuple[dict[str, float], DecodedBatch]:
    """The diagnostics above for one validation batch (molecules and/or crystals)."""
    decoded, latent = reconstruct(model, batch)
    mask = batch.mask
    metrics: dict[str, float] = {k: float(v) for k, v in latent.items()}
    metrics["atom_type_accuracy"] = float((decoded.atomic_numbers == batch.atomic_numbers)[mask].float().mean())
    molecules, crystals = ~batch.pbc, batch.pbc
    if molecules.any():
        m = mask[molecules]
        pred, true = decoded.pos[molecules].float(), batch.pos[molecules].float()
        n = m.sum(1, keepdim=True)[..., None].clamp_min(1)
        centred = lambda x: (x - (x * m[..., None]).sum(1, keepdim=True) / n) * m[..., None]  # noqa: E731
        unaligned = (((centred(pred) - centred(true)) ** 2).sum(-1).sum(1) / m.sum(1)).sqrt()
        distances = short_distance_errors(pred, true, m)
        metrics.update({
            "molecules": int(molecules.sum()),
            "molecule_types_exact": float(((decoded.atomic_numbers == batch.atomic_numbers) | ~mask)[molecules]
                                          .all(1).float().mean()),
            "molecule_rmsd_unaligned": float(unaligned.mean()),
            "molecule_rmsd_kabsch": float(kabsch_rmsd(pred, true, m).mean()),
            "bond_length_mae": float(distances.mean()),
            "bond_length_within_0.02": float((distances < 0.02).float().mean()),
        })
    if crystals.any():
        c = mask[crystals]
        delta = decoded.frac_coords[crystals].float() - batch.frac_coords[crystals].float()
        delta = delta - delta.round()                                          # minimum image
        cartesian = ((delta @ batch.cell[crystals].float()) ** 2).sum(-1)      # (C, N) A^2
        lengths, angles = lattice_parameters(batch.cell[crystals].float())
        metrics.update({
            "crystals": int(crystals.sum()),
            "crystal_frac_rmsd_angstrom": float(((cartesian * c).sum(1) / c.sum(1)).sqrt().mean()),
            "crystal_length_relative_error": float(((decoded.lengths[crystals] - lengths).abs() / lengths).mean()),
            "crystal_angle_error_degrees": float((decoded.angles[crystals] - torch.rad2deg(angles)).abs().mean()),
        })
    return metrics, decoded


@torch.no_grad()
def perturbed_reconstructions(model: Any, batch: DenseBatch, levels: tuple[float, ...] = NOISE_LEVELS,
                              seed: int = 0) -> dict[str, DecodedBatch]:
    """Decodings of the posterior means plus Gaussian noise of each level x their standard deviation."""
    from chemgen.models.adit.vae import latent_std

    posterior = model.vae.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
    std = latent_std(posterior.mean.float(), batch.mask)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device)
    return {f"recon@{level:g}": decode_latents(model.vae, (posterior.mean + level * std * noise) * batch.mask[..., None],
                                               batch.mask, batch.pbc) for level in levels}


@torch.no_grad()
def dit_prediction_error(model: Any, batch: DenseBatch, times: tuple[float, ...] = (0.5, 0.9, 0.99),
                         seed: int = 0) -> dict[str, float]:
    """RMS error of the DiT's clean-latent prediction (with one self-conditioning pass, as in sampling)
    per kind and time, in units of the latent standard deviation (the DiT's latents have unit scale)."""
    from chemgen.diffusion.flow_matching import centred_gaussian
    from chemgen.models.adit.vae import latent_std

    posterior = model.vae.encode(batch.atomic_numbers, batch.pos, batch.frac_coords, batch.mask)
    mask = batch.mask
    x_1 = posterior.mean * mask[..., None] / model.dit.latent_scale
    spread = latent_std(x_1, mask)   # 1 once the scale is fitted; divides out an unfitted scale
    x_0 = centred_gaussian(tuple(x_1.shape), mask, torch.Generator().manual_seed(seed))
    spacegroup = batch.spacegroup if model.config.dit.spacegroup_conditioning else None
    out = {}
    for t_value in times:
        t = torch.full((len(x_1),), t_value, device=x_1.device)
        x_t = ((1 - t_value) * x_0 + t_value * x_1) * mask[..., None]
        x_sc = model.dit(x_t, t, batch.dataset_idx, mask, None, spacegroup)
        error = ((model.dit(x_t, t, batch.dataset_idx, mask, x_sc, spacegroup) - x_1) ** 2).sum(-1)   # (B, N)
        for kind, rows in (("molecule", ~batch.pbc), ("crystal", batch.pbc)):
            if rows.any():
                m = mask[rows]
                rms = (error[rows][m].mean() / x_1.shape[-1]).sqrt() / spread
                out[f"dit_error_{kind}@{t_value:g}"] = float(rms)
    return out


def save_reconstructions(path: str | Path, batch: DenseBatch, decoded: DecodedBatch,
                         perturbed: dict[str, DecodedBatch] | None = None) -> Path:
    """True and reconstructed systems as plain tensors (``torch.load(weights_only=True)`` reads them);
    ``perturbed`` adds the decodings of noisy latents under their names (``recon@0.01``)."""
    path = Path(path)
    fields = ("atomic_numbers", "pos", "frac_coords", "cell", "mask")
    payload: dict[str, Any] = {"format": 1, "periodic": batch.pbc.cpu()}
    payload.update({f"true_{k}": getattr(batch, k).cpu() for k in fields})
    for name, decoded_batch in {"recon": decoded, **(perturbed or {})}.items():
        payload.update({f"{name}_{k}": getattr(decoded_batch, k).cpu() for k in fields})
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def edm_stability(atomic_numbers: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """EDM atom and molecule stability and validity of padded molecules (CPU machine: needs RDKit)."""
    from chemgen.atoms import AtomicSystem
    from chemgen.scoring.molecules import score_molecules

    systems = [AtomicSystem.molecule(atomic_numbers[b][mask[b]].cpu().numpy(), pos[b][mask[b]].double().cpu().numpy())
               for b in range(len(mask))]
    edm = score_molecules(systems, protocols=("edm",))["edm"].metrics()
    return {f"edm_{key}": edm[f"edm/{key}"] for key in ("atom_stability", "molecule_stability", "validity")}


def crystal_match_rate(data: dict[str, torch.Tensor], which: str = "recon") -> dict[str, float]:
    """Share of reconstructed crystals that pymatgen's StructureMatcher (CDVAE's tolerances) matches to
    their true structure, and the mean normalised RMS displacement of the matches: the CSP "match
    rate" of the VAE alone (CPU machine: needs pymatgen)."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from chemgen.scoring.crystal_novelty import CDVAE_RECONSTRUCTION

    matcher = CDVAE_RECONSTRUCTION.matcher()
    matched, rms = 0, []
    rows = torch.nonzero(data["periodic"]).flatten().tolist()
    for b in rows:
        structures = []
        for name in ("true", which):
            keep = data[f"{name}_mask"][b]
            structures.append(Structure(Lattice(data[f"{name}_cell"][b].double().numpy()),
                                        data[f"{name}_atomic_numbers"][b][keep].tolist(),
                                        data[f"{name}_frac_coords"][b][keep].double().numpy()))
        try:
            result = matcher.get_rms_dist(structures[0], structures[1])
        except (ValueError, np.linalg.LinAlgError):
            result = None
        if result is not None:
            matched += 1
            rms.append(result[0])
    return {f"{which}_crystal_match_rate": matched / len(rows) if rows else 0.0,
            f"{which}_crystal_match_rms": float(np.mean(rms)) if rms else float("nan")}


def score_reconstructions(path: str | Path) -> dict[str, float]:
    """EDM stability of saved molecule reconstructions (clean and perturbed), beside that of the true molecules,
    and the match rate of clean crystal reconstructions."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, float] = crystal_match_rate(data) if data["periodic"].any() else {}
    molecules = ~data["periodic"]
    if not molecules.any():
        return out
    names = sorted({k.removesuffix("_atomic_numbers") for k in data if k.endswith("_atomic_numbers")},
                   key=lambda n: (n != "true", n != "recon", n))  # true, recon, recon@0.01, ...
    for which in names:
        scores = edm_stability(data[f"{which}_atomic_numbers"][molecules], data[f"{which}_pos"][molecules],
                               data[f"{which}_mask"][molecules])
        out.update({f"{which}_{k}": v for k, v in scores.items()})
    return out


def score_run_reconstructions(run_dir: str | Path) -> dict[str, float]:
    """``reconstruction/...`` scores of a run folder's ``reconstructions.pt`` (none if the run skipped the VAE)."""
    path = Path(run_dir) / "reconstructions.pt"
    return {f"reconstruction/{k}": v for k, v in score_reconstructions(path).items()} if path.is_file() else {}
