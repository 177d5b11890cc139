import json

import numpy as np
import pytest

from chemgen.data import BUILDERS
from chemgen.data.store import DatasetBuilder, StoreError, curate, list_datasets, load, read_manifest, verify


def builder_of(systems, name="toy", fail_after=None):
    def records():
        for i, s in enumerate(systems):
            if fail_after is not None and i == fail_after:
                raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
            yield ("train" if i % 3 else "test"), "toy.csv", i, f"id{i}", s

    return records


def make_builder(tmp_path, systems, content="v1", fail_after=None):
    source = tmp_path / "toy.csv"
    source.write_text(content)
    return DatasetBuilder(name="toy", source_files=[source], parameters={"p": 1},
                          records=builder_of(systems, fail_after=fail_after), total=len(systems))


def test_store_round_trip_is_exact(tmp_path, store, qm9_systems, mp20_systems):
    systems = [*qm9_systems[:10], *mp20_systems[:10]]
    curate(make_builder(tmp_path, systems), root=store, progress=False)
    back = load("toy", root=store)
    by_id = {s.material_id: s for s in systems}
    assert len(back) == len(systems)
    for b in back:
        a = by_id[b.material_id]
        assert b.allclose(a, atol=1e-12) and b.dataset == a.dataset and b.smiles == a.smiles
        np.testing.assert_array_equal(b.frac_coords, a.frac_coords)
        assert {k: v for k, v in b.properties.items() if k != "split"} == a.properties


def test_unchanged_input_is_a_no_op_and_changed_input_is_a_new_version(tmp_path, store, qm9_systems):
    first = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False)
    again = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False)
    assert again.reused and again.version == first.version
    assert again.manifest["created_utc"] == first.manifest["created_utc"]
    changed = curate(make_builder(tmp_path, qm9_systems[:6], content="v2"), root=store, progress=False)
    assert not changed.reused and changed.version != first.version
    assert list_datasets(store)["toy"] == sorted([first.version, changed.version])
    assert read_manifest("toy", root=store)["version"] == changed.version  # LATEST follows the newest


def test_interrupted_curation_leaves_no_half_written_version(tmp_path, store, qm9_systems):
    done = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False)
    with pytest.raises(KeyboardInterrupt):
        curate(make_builder(tmp_path, qm9_systems[:6], content="v2", fail_after=3), root=store, progress=False)
    folder = store / "toy"
    assert sorted(p.name for p in folder.iterdir()) == sorted([done.version, "LATEST"])
    assert read_manifest("toy", root=store)["version"] == done.version


def test_manifest_records_counts_splits_and_hashes(tmp_path, store, qm9_systems):
    result = curate(make_builder(tmp_path, qm9_systems[:9]), root=store, progress=False)
    m = json.loads((result.path / "manifest.json").read_text())
    assert m["splits"] == {"train": 6, "valid": 0, "test": 3}
    assert len(m["source"]["files"][0]["sha256"]) == 64 and len(m["content_hash"]) == 64
    assert sum(m["num_atoms_histogram"].values()) == 9
    assert m["element_histogram"]["H"] == sum(int((s.atomic_numbers == 1).sum()) for s in qm9_systems[:9])


def test_verify_detects_a_tampered_shard(tmp_path, store, qm9_systems):
    result = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False)
    assert verify("toy", root=store) == []
    shard = result.path / result.manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    assert "content hash differs" in verify("toy", root=store)[0]


def test_loading_an_uncurated_dataset_says_what_to_run(store):
    with pytest.raises(StoreError, match="chemgen data prepare qm9"):
        load("qm9", root=store)


def test_qm9_slice_keeps_edm_split_labels(store):
    result = curate(BUILDERS["qm9"](limit=300), root=store, progress=False)
    assert result.manifest["counts"]["curated"] == 300
    systems = load("qm9", version=result.version, root=store)
    from chemgen.data.qm9 import edm_split

    # The slice is the first 300 rows in GDB order, so a row's position is its rank by gdb_index.
    ordered = sorted(systems, key=lambda s: s.properties["gdb_index"])
    train = set(edm_split()["train"][edm_split()["train"] < 300].tolist())
    assert {i for i, s in enumerate(ordered) if s.properties["split"] == "train"} == train


def test_a_slice_never_moves_latest(store):
    from chemgen.data import BUILDERS
    from chemgen.data.store import StoreError, curate, load, read_manifest

    small = curate(BUILDERS["qm9"](limit=30), root=store, progress=False)
    assert small.sliced and not (store / "qm9" / "LATEST").exists()
    with pytest.raises(StoreError, match="name one as qm9@VERSION"):
        read_manifest("qm9", root=store)
    assert len(load("qm9", version=small.version, root=store)) == 30
    again = curate(BUILDERS["qm9"](limit=30), root=store, progress=False)
    assert again.reused and not (store / "qm9" / "LATEST").exists()
