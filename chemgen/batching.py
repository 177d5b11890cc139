"""Records to tensors: torch_geometric ``Data``/``Batch`` and padded dense tensors with masks.

A ``Batch`` (ragged, concatenated atoms with a ``batch`` vector) becomes padded tensors with
``to_dense`` (torch_geometric's ``to_dense_batch``). The padded batch itself and the dataset
labels live in the torch-only `chemgen.dense`, which the GPU training path imports instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch

from chemgen.atoms import AtomicSystem
from chemgen.data.tensors import crystal_spacegroup
from chemgen.dense import DATASET_INDEX, DenseBatch, dataset_label

__all__ = ["DATASET_INDEX", "DenseBatch", "collate", "dataset_label", "from_dense", "num_atoms_histogram",
           "to_data", "to_dense"]


def to_data(system: AtomicSystem) -> Data:
    """One system as a torch_geometric ``Data`` (float32 coordinates)."""
    return Data(
        atomic_numbers=torch.tensor(system.atomic_numbers, dtype=torch.long),   # (N,)
        pos=torch.tensor(system.pos, dtype=torch.float32),                      # (N, 3)
        frac_coords=torch.tensor(system.frac_coords, dtype=torch.float32),      # (N, 3)
        cell=torch.tensor(system.cell, dtype=torch.float32).unsqueeze(0),       # (1, 3, 3)
        pbc=torch.tensor([system.pbc]),                                            # (1,)
        dataset_idx=torch.tensor([dataset_label(system.dataset)]),                # (1,)
        num_atoms=torch.tensor([system.num_atoms]),                                # (1,)
        spacegroup=torch.tensor([crystal_spacegroup(system)]),                    # (1,) 0 = none
        num_nodes=system.num_atoms,
    )


def collate(systems: Sequence[AtomicSystem]) -> Batch:
    """A list of systems as one ``Batch``; per-system fields stack along dim 0."""
    return Batch.from_data_list([to_data(s) for s in systems])


def to_dense(batch: Batch, max_atoms: int | None = None) -> DenseBatch:
    """Pad a ``Batch`` to (B, N, ...) tensors with a mask."""
    types, mask = to_dense_batch(batch.atomic_numbers, batch.batch, fill_value=0, max_num_nodes=max_atoms)
    pos, _ = to_dense_batch(batch.pos, batch.batch, max_num_nodes=max_atoms)
    frac, _ = to_dense_batch(batch.frac_coords, batch.batch, max_num_nodes=max_atoms)
    spacegroup = getattr(batch, "spacegroup", None)
    if spacegroup is None:
        spacegroup = torch.zeros_like(batch.num_atoms)
    return DenseBatch(types, pos, frac, mask, batch.cell, batch.pbc, batch.dataset_idx, batch.num_atoms, spacegroup)


def from_dense(dense: DenseBatch, datasets: Sequence[str] | None = None) -> list[AtomicSystem]:
    """Padded tensors back to records (e.g. generated samples); padding is dropped by the mask."""
    index_to_name = {v: k for k, v in DATASET_INDEX.items()}
    systems = []
    for b in range(dense.mask.shape[0]):
        keep = dense.mask[b].cpu().numpy()
        numbers = dense.atomic_numbers[b].cpu().numpy()[keep]
        name = datasets[b] if datasets else index_to_name.get(int(dense.dataset_idx[b]), "")
        if bool(dense.pbc[b]):
            systems.append(AtomicSystem.crystal(numbers, dense.frac_coords[b].cpu().double().numpy()[keep],
                                                dense.cell[b].cpu().double().numpy(), dataset=name))
        else:
            systems.append(AtomicSystem.molecule(numbers, dense.pos[b].cpu().double().numpy()[keep], dataset=name))
    return systems


def num_atoms_histogram(systems: Sequence[AtomicSystem], max_atoms: int | None = None) -> np.ndarray:
    """Counts of systems by number of atoms (index = N), the distribution samplers draw N from."""
    counts = np.bincount([s.num_atoms for s in systems])
    if max_atoms is not None:
        counts = np.pad(counts, (0, max(0, max_atoms + 1 - counts.size)))[: max_atoms + 1]
    return counts
