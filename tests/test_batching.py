"""The one batching layer: records -> `TensorPack` (torch-only, compact) -> padded `DenseBatch` -> records."""

from types import SimpleNamespace

import pytest
import torch

from chemgen.data.tensors import TensorPack
from chemgen.dense import DATASET_INDEX
from chemgen.generation.records import to_systems


def test_dense_batch_shapes_and_masks(qm9_systems, mp20_systems):
    systems = [*qm9_systems[:3], *mp20_systems[:2]]
    dense = TensorPack.from_systems(systems).dense(torch.arange(5))
    n_max = max(s.num_atoms for s in systems)
    assert dense.atomic_numbers.shape == (5, n_max)
    assert dense.pos.shape == dense.frac_coords.shape == (5, n_max, 3)
    assert dense.cell.shape == (5, 3, 3)
    assert dense.mask.sum(1).tolist() == [s.num_atoms for s in systems]
    assert torch.all(dense.atomic_numbers[~dense.mask] == 0)  # padding carries no atom type
    assert dense.pbc.tolist() == [False] * 3 + [True] * 2
    assert dense.dataset_idx.tolist() == [DATASET_INDEX["qm9"]] * 3 + [DATASET_INDEX["mp20"]] * 2


def test_dense_round_trip_to_records(qm9_systems, mp20_systems):
    systems = [*qm9_systems[:3], *mp20_systems[:2]]
    dense = TensorPack.from_systems(systems).dense(torch.arange(5))
    padded = SimpleNamespace(**{k: getattr(dense, k) for k in ("atomic_numbers", "pos", "frac_coords", "cell", "mask")},
                             periodic=dense.pbc)
    back = [*to_systems(SimpleNamespace(**{k: v[:3] for k, v in vars(padded).items()}), "qm9"),
            *to_systems(SimpleNamespace(**{k: v[3:] for k, v in vars(padded).items()}), "mp20")]
    for a, b in zip(systems, back):
        assert b.dataset == a.dataset
        if a.pbc:
            assert b.allclose(a, atol=1e-4)  # float32 tensors
        else:  # molecules are stored centred
            assert b.allclose(a.replace(pos=a.pos - a.pos.mean(0)), atol=1e-3)


def test_num_atoms_histogram(qm9_systems):
    counts = TensorPack.from_systems(qm9_systems).num_atoms_histogram(DATASET_INDEX["qm9"], 29)
    assert counts.shape == (30,) and counts.sum() == len(qm9_systems)


def test_unknown_dataset_label_raises_instead_of_training_as_the_null_class(qm9_systems):
    stranger = qm9_systems[0].replace(dataset="user")
    with pytest.raises(ValueError, match="unknown dataset label 'user'"):
        TensorPack.from_systems([qm9_systems[1], stranger])
    assert TensorPack.from_systems(qm9_systems[:2]).dataset_idx.tolist() == [2, 2]


def test_requests_name_a_dataset_or_a_kind():
    from chemgen.dense import resolve_dataset

    assert resolve_dataset("molecule") == ("qm9", "molecule") and resolve_dataset("crystal") == ("mp20", "crystal")
    assert resolve_dataset("perov5") == ("perov5", "crystal") and resolve_dataset("qm9") == ("qm9", "molecule")
    with pytest.raises(ValueError, match="unknown dataset or kind 'protein'"):
        resolve_dataset("protein")
