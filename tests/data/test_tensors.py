"""The one batching layer: records -> `TensorPack` (torch-only, compact) -> padded `DenseBatch` -> records."""

from types import SimpleNamespace

import pytest
import torch

from chemgen.data.tensors import TensorPack
from chemgen.datasets import dataset_label
from chemgen.samples import to_systems


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
    assert dense.dataset_idx.tolist() == [dataset_label("qm9")] * 3 + [dataset_label("mp20")] * 2


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
    counts = TensorPack.from_systems(qm9_systems).num_atoms_histogram(dataset_label("qm9"), 29)
    assert counts.shape == (30,) and counts.sum() == len(qm9_systems)


def test_unknown_dataset_label_raises_instead_of_training_as_the_null_class(qm9_systems):
    stranger = qm9_systems[0].replace(dataset="user")
    with pytest.raises(ValueError, match="unknown dataset label 'user'"):
        TensorPack.from_systems([qm9_systems[1], stranger])
    assert TensorPack.from_systems(qm9_systems[:2]).dataset_idx.tolist() == [2, 2]


def test_requests_name_a_dataset_or_a_kind():
    from chemgen.datasets import resolve_dataset

    assert resolve_dataset("molecule") == ("qm9", "molecule") and resolve_dataset("crystal") == ("mp20", "crystal")
    assert resolve_dataset("perov5") == ("perov5", "crystal") and resolve_dataset("qm9") == ("qm9", "molecule")
    with pytest.raises(ValueError, match="unknown dataset or kind 'protein'"):
        resolve_dataset("protein")


def test_a_models_extras_travel_with_their_systems(qm9_systems, mp20_systems, tmp_path):
    """Per-atom and per-system extras (DiffSpectra's charges, bonds, spectra) follow every operation the
    shared layer does: subset, concat, dense padding, save/load, resident buckets and their draws."""
    from chemgen.data.tensors import PackError
    from chemgen.errors import UsageError
    from chemgen.training.resident import ResidentBatches

    systems = [*qm9_systems[:12], *mp20_systems[:3]]
    base = TensorPack.from_systems(systems)
    pack = base.with_extras(atom__z_copy=base.atomic_numbers.clone(),
                            atom__neighbours=torch.arange(base.atomic_numbers.numel() * 4).view(-1, 4),
                            system__label=torch.arange(len(base), dtype=torch.float32)[:, None].repeat(1, 81))
    assert sorted(pack.extras) == ["atom/neighbours", "atom/z_copy", "system/label"]

    def consistent(batch, labels):
        assert torch.equal(batch.extras["atom/z_copy"], batch.atomic_numbers)   # rows and padding line up
        assert torch.equal(batch.extras["system/label"][:, 0], torch.as_tensor(labels, dtype=torch.float32))
        assert (batch.extras["atom/neighbours"][~batch.mask] == 0).all()

    index = torch.tensor([13, 2, 7])
    consistent(pack.dense(index), index)
    part = pack.subset(index)
    consistent(part.dense(torch.arange(3)), index)
    both = TensorPack.concat([part, pack.subset(torch.tensor([0]))])
    consistent(both.dense(torch.arange(4)), [13, 2, 7, 0])
    with pytest.raises(ValueError, match="different extras"):
        TensorPack.concat([part, base.subset(torch.tensor([0]))])

    for compress in (False, True):
        loaded = TensorPack.load(pack.save(tmp_path / f"p{compress}.pt", compress=compress))
        assert all(torch.equal(loaded.extras[k], v) for k, v in pack.extras.items())

    batch = pack.dense(index).select(torch.tensor([2, 0])).crop_atoms(20).pad_atoms(32)
    assert batch.mask.shape[1] == batch.extras["atom/neighbours"].shape[1] == 32
    consistent(batch, [7, 13])
    resident = ResidentBatches(pack, "cpu", tokens_per_batch=64, edges=(12,), multiple_of=1)
    for _ in range(5):
        drawn = resident.sample()
        assert torch.equal(drawn.extras["atom/z_copy"], drawn.atomic_numbers)
        label = drawn.extras["system/label"][:, 0].long()
        assert torch.equal(pack.num_atoms[label], drawn.num_atoms)   # each row's extras are its own system's

    with pytest.raises(UsageError, match="atom/<name> or system/<name>"):
        base.with_extras(bonds=torch.zeros(len(base)))
    with pytest.raises(ValueError, match="expected 15 rows"):
        base.with_extras(system__label=torch.zeros(4))
    torch.save({**torch.load(tmp_path / "pFalse.pt", weights_only=True), "extras": {"bonds": torch.zeros(15)}},
               tmp_path / "bad.pt")
    with pytest.raises(PackError, match="bad.pt: .*atom/<name> or system/<name>"):
        TensorPack.load(tmp_path / "bad.pt")
