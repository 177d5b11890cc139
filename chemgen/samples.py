"""Generated samples: padded tensors, the files that keep them, and the `AtomicSystem` records they become.

A model's ``generate`` returns padded tensors (``atomic_numbers, pos, frac_coords, cell, mask, periodic``).
`save_samples` draws them in seeded batches and keeps them as a tensors-only file (``samples_<dataset>.pt``,
read back with ``weights_only=True`` by `load_samples`), so that a machine with only torch can sample and
another can score. `to_systems` turns them into records; a sample that cannot become a record (NaN, a lattice
with no volume, an unknown element) is kept as a `Failure` with its reason, so scoring counts it as invalid
instead of silently shrinking the denominator.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from chemgen.atoms import AtomicSystem, InvalidSystemError
from chemgen.errors import ChemgenError


class SamplesFileError(ChemgenError, ValueError):
    """A file that is not a chemgen samples file."""


@dataclass(frozen=True)
class Failure:
    index: int
    reason: str


def to_systems(decoded, dataset: str) -> list[AtomicSystem | Failure]:
    """One record (or a `Failure`) per generated sample, in order."""
    types = decoded.atomic_numbers.cpu().numpy()
    mask = decoded.mask.cpu().numpy()
    pos = decoded.pos.double().cpu().numpy()
    frac = decoded.frac_coords.double().cpu().numpy()
    cell = decoded.cell.double().cpu().numpy()
    periodic = decoded.periodic.cpu().numpy()
    results: list[AtomicSystem | Failure] = []
    for i in range(len(types)):
        keep = mask[i]
        try:
            if periodic[i]:
                system = AtomicSystem.crystal(types[i][keep], frac[i][keep], cell[i], dataset=dataset)
            else:
                system = AtomicSystem.molecule(types[i][keep], pos[i][keep], dataset=dataset)
            results.append(system)
        except (InvalidSystemError, np.linalg.LinAlgError) as err:
            results.append(Failure(i, str(err)))
    return results


def split_failures(systems: list[AtomicSystem | Failure]) -> tuple[list[AtomicSystem | None], list[str | None]]:
    """Records with None in place of failures, and each failure's reason (None for records): what scoring takes."""
    return ([None if isinstance(s, Failure) else s for s in systems],
            [s.reason if isinstance(s, Failure) else None for s in systems])


def load_samples(path: str | os.PathLike, limit: int | None = None) -> SimpleNamespace:
    """Padded sample tensors saved by the remote run, as the decoded batch `to_systems` reads; ``limit`` keeps
    the first samples only (batches are seeded in order, so the first n of a larger run are another run's n)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != 1 or "mask" not in payload:
        raise SamplesFileError(f"{path}: not a chemgen samples file")
    keys = ("atomic_numbers", "pos", "frac_coords", "cell", "mask", "periodic")
    return SimpleNamespace(**{k: payload[k][:limit] for k in keys})


def sampling_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """The sampling settings a samples file records (`save_samples`'s keyword arguments; none in older files)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return dict(payload.get("sampling", {})) if isinstance(payload, dict) else {}


def save_samples(model: Any, dataset: str, n: int, path: Path, batch_size: int, seed: int,
                 **sampling: Any) -> dict[str, float]:
    """Generate n samples in batches (seed + i for batch i); save padded tensors; return throughput.

    The file records the sampling settings given here (e.g. ``num_steps``), so that a run sampled with other
    settings than its config's is scored in its own evaluation context (`chemgen.training.promotion.score_run`)."""
    chunks, start = [], time.perf_counter()
    for i, first in enumerate(range(0, n, batch_size)):
        decoded = model.generate(min(batch_size, n - first), dataset, seed=seed + i, **sampling)
        chunks.append({k: getattr(decoded, k).cpu() for k in ("atomic_numbers", "pos", "frac_coords", "cell", "mask", "periodic")})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    width = max(c["mask"].shape[1] for c in chunks)

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 2 or t.shape[1] == width or t.shape[1:] == (3, 3):
            return t
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))

    merged = {k: torch.cat([pad(c[k]) for c in chunks]) for k in chunks[0]}
    tmp = path.with_name(f".{path.name}.tmp")
    settings = {k: v for k, v in sampling.items() if v is not None}
    torch.save({"format": 1, "dataset": dataset, "sampling": settings, **merged}, tmp)
    tmp.replace(path)
    return {"samples": n, "seconds": seconds, "samples_per_second": n / seconds}
