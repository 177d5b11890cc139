"""Padded batches and dataset labels: torch only, so a GPU machine without the chemistry stack imports them.

`DenseBatch` is what every model's loss takes: B systems padded to N atoms with a mask.
`chemgen.data.tensors.TensorPack` (built from records: the one batching layer)
and `chemgen.generation.resident` build them from tensor packs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chemgen.errors import UsageError

# Dataset labels as integers for conditioning; 0 is reserved for "no label" (CFG's null class).
DATASET_INDEX: dict[str, int] = {"mp20": 1, "qm9": 2, "mpts52": 3, "perov5": 4, "carbon24": 5}


# What each dataset holds, and the dataset a bare kind means (requests may name either).
DATASET_KIND: dict[str, str] = {"qm9": "molecule", "mp20": "crystal", "mpts52": "crystal", "perov5": "crystal",
                                "carbon24": "crystal"}
DEFAULT_DATASET: dict[str, str] = {"molecule": "qm9", "crystal": "mp20"}


def resolve_dataset(name: str) -> tuple[str, str]:
    """A dataset name, or a kind standing for its default dataset -> (dataset, kind)."""
    dataset = DEFAULT_DATASET.get(name, name)
    if dataset not in DATASET_KIND:
        raise UsageError(f"unknown dataset or kind {name!r} (datasets: {', '.join(DATASET_KIND)}; "
                         f"kinds: {', '.join(DEFAULT_DATASET)})")
    return dataset, DATASET_KIND[dataset]


def dataset_label(name: str) -> int:
    """The conditioning label of a dataset; 0 is the CFG null class, so an unknown name must not map to it."""
    try:
        return DATASET_INDEX[name]
    except KeyError:
        raise UsageError(f"unknown dataset label {name!r} (known: {', '.join(DATASET_INDEX)}); "
                         "label 0 is classifier-free guidance's null class") from None


@dataclass(frozen=True)
class DenseBatch:
    """Padded tensors of a batch of B systems with at most N atoms each."""

    atomic_numbers: torch.Tensor  # (B, N) long, 0 at padding
    pos: torch.Tensor             # (B, N, 3)
    frac_coords: torch.Tensor     # (B, N, 3)
    mask: torch.Tensor            # (B, N) bool, True for real atoms
    cell: torch.Tensor            # (B, 3, 3)
    pbc: torch.Tensor             # (B,) bool
    dataset_idx: torch.Tensor     # (B,) long
    num_atoms: torch.Tensor       # (B,) long
    spacegroup: torch.Tensor      # (B,) long, 1-230 for crystals with a known space group, else 0

    def to(self, device: torch.device | str) -> DenseBatch:
        return DenseBatch(**{k: v.to(device) for k, v in vars(self).items()})
