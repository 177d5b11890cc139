"""Padded batches: torch only, so a GPU machine without the chemistry stack imports them.

`DenseBatch` is what every model's loss takes: B systems padded to N atoms with a mask.
`chemgen.data.tensors.TensorPack` (built from records: the one batching layer)
and `chemgen.training.resident` build them from tensor packs. Dataset labels are `chemgen.datasets`'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from chemgen.errors import UsageError

# Fields of a DenseBatch with an atom axis (dim 1); the others are per system.
PER_ATOM_FIELDS = ("atomic_numbers", "pos", "frac_coords", "mask")
# A model's own tensors travel in ``extras`` under "atom/<name>" (an atom axis: (A, ...) in a pack,
# (B, N, ...) in a batch, zero at padding) or "system/<name>" ((S, ...) in a pack, (B, ...) in a batch).
EXTRA_KINDS = ("atom", "system")


def extra_kind(name: str) -> str:
    """"atom" or "system", from an extra's name; anything else is refused."""
    kind = name.split("/", 1)[0]
    if kind not in EXTRA_KINDS or "/" not in name:
        raise UsageError(f"extra tensor {name!r} must be named atom/<name> or system/<name>")
    return kind


@dataclass(frozen=True)
class DenseBatch:
    """Padded tensors of a batch of B systems with at most N atoms each, and a model's own ``extras``
    (spectra, bonds, charges: see `EXTRA_KINDS`)."""

    atomic_numbers: torch.Tensor  # (B, N) long, 0 at padding
    pos: torch.Tensor             # (B, N, 3)
    frac_coords: torch.Tensor     # (B, N, 3)
    mask: torch.Tensor            # (B, N) bool, True for real atoms
    cell: torch.Tensor            # (B, 3, 3)
    pbc: torch.Tensor             # (B,) bool
    dataset_idx: torch.Tensor     # (B,) long
    num_atoms: torch.Tensor       # (B,) long
    spacegroup: torch.Tensor      # (B,) long, 1-230 for crystals with a known space group, else 0
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def _apply(self, per_atom: Callable[[torch.Tensor], torch.Tensor],
               per_system: Callable[[torch.Tensor], torch.Tensor]) -> DenseBatch:
        values = {k: (per_atom if k in PER_ATOM_FIELDS else per_system)(getattr(self, k))
                  for k in PER_ATOM_FIELDS + ("cell", "pbc", "dataset_idx", "num_atoms", "spacegroup")}
        extras = {k: (per_atom if extra_kind(k) == "atom" else per_system)(v) for k, v in self.extras.items()}
        return DenseBatch(**values, extras=extras)

    def to(self, device: torch.device | str) -> DenseBatch:
        return self._apply(lambda t: t.to(device), lambda t: t.to(device))

    def select(self, rows: torch.Tensor) -> DenseBatch:
        """The systems at ``rows`` (indices or a boolean mask), on the batch's device."""
        rows = rows.to(self.mask.device)
        return self._apply(lambda t: t[rows], lambda t: t[rows])

    def crop_atoms(self, width: int) -> DenseBatch:
        """Keep the first ``width`` atom slots (after `select` of systems that fit)."""
        return self._apply(lambda t: t[:, :width], lambda t: t)

    def pad_atoms(self, size: int) -> DenseBatch:
        """Pad the atom axis with zeros to ``size`` slots (a fixed bucket width)."""
        extra = size - self.mask.shape[1]
        if extra <= 0:
            return self

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, extra))

        return self._apply(pad, lambda t: t)
