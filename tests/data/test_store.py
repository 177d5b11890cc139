import json
import time

import numpy as np
import pytest

from chemgen.datasets import curation_recipe
from chemgen.data.store import (
    DatasetBuilder,
    StoreError,
    curate,
    list_datasets,
    load,
    read_manifest,
    verify,
)


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
    assert sorted(p.name for p in folder.iterdir()) == sorted([done.version, "LATEST", ".lock"])
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
    result = curate(curation_recipe("qm9", limit=300), root=store, progress=False)
    assert result.manifest["counts"]["curated"] == 300
    systems = load("qm9", version=result.version, root=store)
    from chemgen.data.qm9 import edm_split

    # The slice is the first 300 rows in GDB order, so a row's position is its rank by gdb_index.
    ordered = sorted(systems, key=lambda s: s.properties["gdb_index"])
    train = set(edm_split()["train"][edm_split()["train"] < 300].tolist())
    assert {i for i, s in enumerate(ordered) if s.properties["split"] == "train"} == train


def test_a_slice_never_moves_latest(store):
    from chemgen.datasets import curation_recipe
    from chemgen.data.store import StoreError, curate, load, read_manifest

    small = curate(curation_recipe("qm9", limit=30), root=store, progress=False)
    assert small.sliced and not (store / "qm9" / "LATEST").exists()
    with pytest.raises(StoreError, match="name one as qm9@VERSION"):
        read_manifest("qm9", root=store)
    assert len(load("qm9", version=small.version, root=store)) == 30
    again = curate(curation_recipe("qm9", limit=30), root=store, progress=False)
    assert again.reused and not (store / "qm9" / "LATEST").exists()


# ---------------------------------------------------------------------------- names, versions, damaged copies
@pytest.mark.parametrize("name, version", [
    ("../../x", "v1"), ("../x", "v1"), ("a/b", None), ("..", None), (".", None), ("", None), ("toy", "../toy"),
    ("toy", "v1"), ("toy", "/etc"), ("toy", "abc/../def0123456"),
])
def test_names_and_versions_that_are_paths_are_refused(tmp_path, store, qm9_systems, name, version):
    curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False)
    outside = store.parent / "x" / "v1"
    outside.mkdir(parents=True)
    (outside / "manifest.json").write_text(json.dumps({"name": "x"}))
    for call in (read_manifest, verify, load):
        with pytest.raises(StoreError, match="is not a (dataset name|version)"):
            call(name, version=version, root=store)


def test_dataset_references_are_checked(store):
    from chemgen.data.store import InvalidNameError, parse_dataset_ref

    assert parse_dataset_ref("qm9@6b0eb599c00e") == ("qm9", "6b0eb599c00e")
    for ref in ("../x@6b0eb599c00e", "qm9@../../y", "qm9@", "@abc"):
        with pytest.raises(InvalidNameError):  # a StoreError, and a ValueError as before
            parse_dataset_ref(ref)


def test_a_builder_with_a_path_for_a_name_writes_nothing(tmp_path, store, qm9_systems):
    builder = make_builder(tmp_path, qm9_systems[:3])
    builder.name = "../escaped"
    with pytest.raises(StoreError, match="not a dataset name"):
        curate(builder, root=store, progress=False)
    assert not (store.parent / "escaped").exists() and not store.exists()


def test_a_corrupt_latest_or_manifest_cannot_point_outside_the_version(tmp_path, store, qm9_systems):
    result = curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False)
    (store / "toy" / "LATEST").write_text("../../etc\n")
    with pytest.raises(StoreError, match="LATEST: corrupt"):
        load("toy", root=store)
    manifest = json.loads((result.path / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../../../outside.parquet"
    (result.path / "manifest.json").write_text(json.dumps(manifest))
    for call in (verify, load):
        with pytest.raises(StoreError, match="corrupt manifest"):
            call("toy", version=result.version, root=store)


def test_a_missing_shard_is_a_store_error_naming_it(tmp_path, store, qm9_systems):
    result = curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False)
    shard = result.path / result.manifest["shards"][0]["file"]
    shard.unlink()
    with pytest.raises(StoreError, match=f"{shard.name}: unreadable shard"):
        load("toy", root=store)


@pytest.mark.parametrize("damage", ["delete a shard", "tamper a shard", "delete the manifest", "half delete"])
def test_a_damaged_version_is_curated_again_not_reused(tmp_path, store, qm9_systems, capfd, damage):
    first = curate(make_builder(tmp_path, qm9_systems[:9]), root=store, progress=False)
    shard = first.path / first.manifest["shards"][0]["file"]
    if damage == "delete a shard":
        shard.unlink()
    elif damage == "tamper a shard":
        shard.write_bytes(shard.read_bytes()[:-4] + b"0000")
    elif damage == "delete the manifest":
        (first.path / "manifest.json").unlink()
    else:  # what a kill in the middle of `rm -r` leaves
        for path in sorted(first.path.iterdir())[1:]:
            path.unlink()
    again = curate(make_builder(tmp_path, qm9_systems[:9]), root=store, progress=False)
    assert not again.reused and again.version == first.version
    assert "the stored copy is damaged" in capfd.readouterr().err
    assert verify("toy", root=store) == [] and len(load("toy", root=store)) == 9
    assert sorted(p.name for p in (store / "toy").iterdir()) == sorted([".lock", "LATEST", first.version])


def test_force_replaces_the_version_and_leaves_nothing_behind(tmp_path, store, qm9_systems):
    first = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False)
    marker = first.path / "marker"
    marker.write_text("only in the old copy")
    again = curate(make_builder(tmp_path, qm9_systems[:6]), root=store, progress=False, force=True)
    assert not again.reused and not marker.exists()
    assert sorted(p.name for p in (store / "toy").iterdir()) == sorted([".lock", "LATEST", first.version])
    assert verify("toy", root=store) == []


def test_a_second_curation_gives_up_after_the_timeout_naming_the_lock_and_its_holder(tmp_path, store, qm9_systems):
    import os

    from chemgen.data.store import dataset_lock

    with dataset_lock(store / "toy"):
        start = time.monotonic()
        with pytest.raises(StoreError, match=rf"toy/\.lock: held by pid {os.getpid()} .* for over 0.5 s"):
            curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False, lock_timeout=0.5)
        assert time.monotonic() - start < 5
    assert curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False, lock_timeout=0.5).version


def test_leftovers_of_killed_runs_are_removed_under_the_lock(tmp_path, store, qm9_systems):
    first = curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False)
    stale = [store / "toy" / f".tmp-{first.version}-999999", store / "toy" / f".trash-{first.version}-999998"]
    for folder in stale:
        folder.mkdir()
        (folder / "train-00000.parquet").write_bytes(b"partial")
    assert list_datasets(store)["toy"] == [first.version]  # never read as versions
    assert curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False).reused
    assert not any(folder.exists() for folder in stale)


def test_data_info_refuses_a_path_for_a_name(tmp_path, store, qm9_systems):
    from typer.testing import CliRunner

    from chemgen.cli.app import app

    curate(make_builder(tmp_path, qm9_systems[:3]), root=store, progress=False)
    result = CliRunner().invoke(app, ["data", "info", "../../x", "--version", "v1", "--store", str(store)])
    assert result.exit_code == 1 and "is not a dataset name" in result.output
