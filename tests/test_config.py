"""Config files: every field one accepts is read by the code that trains and samples with it, settings that retired
are refused with their successor's name, and configs saved by older chemgen versions still load.

The read check instruments the config dataclasses and runs each model through what a user runs (load the config,
curate-free packs, every training stage for a few steps with the config's own budgets, its diagnostics, sampling)
with every optional feature switched on once. Reads by generic machinery (``dataclasses.asdict``/``replace``,
validation in ``__post_init__``, logging of the whole config) do not count: they would read every field.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from chemgen.config import ConfigError, DataConfig, TrainConfig, from_dict, upgrade_config_dict
from chemgen.data.tensors import TensorPack
from chemgen.models.specs import config_type, load_config
from chemgen.training.packs import training_packs

STORE = Path(__file__).resolve().parents[1] / "datasets" / "spectra" / "qm9-xtb"
# generic machinery: a read from these functions is not a use of the field
NOT_A_USE = {"__post_init__", "to_dict", "flat_params", "walk", "from_dict", "_coerce", "upgrade_config_dict",
             "__repr__", "__eq__", "__hash__"}


def config_classes(root: type) -> set[type]:
    """Every dataclass a model config is made of."""
    found = {root}
    for f in dataclasses.fields(root):
        hint = root.__dataclass_fields__[f.name].type
        for candidate in (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,):
            if dataclasses.is_dataclass(candidate) and not isinstance(candidate, type):
                found |= config_classes(type(candidate))
        del hint
    return found


@contextmanager
def recorded_reads(classes: set[type]):
    """Yield a set that fills with (class name, field) for every field read outside the generic machinery."""
    reads: set[tuple[str, str]] = set()
    originals = {cls: cls.__getattribute__ for cls in classes}
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}

        def recording(self, name, _names=names, _cls=cls, _original=originals[cls]):
            value = _original(self, name)
            if name in _names:
                caller = sys._getframe(1).f_code
                if not caller.co_filename.endswith("dataclasses.py") and caller.co_name not in NOT_A_USE:
                    reads.add((_cls.__name__, name))
            return value

        cls.__getattribute__ = recording
    try:
        yield reads
    finally:
        for cls, original in originals.items():
            cls.__getattribute__ = original


def all_fields(classes: set[type]) -> set[tuple[str, str]]:
    return {(cls.__name__, f.name) for cls in classes for f in dataclasses.fields(cls)}


def with_options(config, **sections):
    """``config`` with fields of its sections changed: ``vae={"weight_distance": 1.0}``."""
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **changes)
                                          for name, changes in sections.items()})


def exercise(model_name: str, config, train: TensorPack, out: Path, sample: bool = True) -> None:
    """What a user's run reads: the model built from the config, every stage trained for its config's budget
    (2 steps here) with diagnostics, then samples."""
    from chemgen.models.specs import generator_class
    from chemgen.training.stages import train_stages

    stages = generator_class(model_name).stage_names
    config = dataclasses.replace(config, **{f"{s}_train": dataclasses.replace(config.stage_config(s), max_steps=2,
                                                                              val_every_steps=1) for s in stages})
    model, _ = train_stages(model_name, config, train, train, out, log=lambda line: None)
    if sample:
        for dataset in model.config.data.datasets:
            model.generate(2, dataset, seed=0)


@pytest.fixture(scope="module")
def curated_store(tmp_path_factory, mp20_slice_dir) -> tuple[Path, dict[str, str]]:
    """Slices of QM9 and MP-20 curated into a store of their own: the data section is read where packs are made."""
    from chemgen.data.store import curate
    from chemgen.datasets import curation_recipe

    store = tmp_path_factory.mktemp("store")
    versions = {"qm9": curate(curation_recipe("qm9", limit=40), root=store, progress=False).version,
                "mp20": curate(curation_recipe("mp20", data_dir=mp20_slice_dir), root=store, progress=False).version}
    return store, versions


@pytest.fixture(scope="module")
def molecules_and_crystals(qm9_systems, mp20_systems) -> TensorPack:
    return TensorPack.from_systems([*qm9_systems[:12], *mp20_systems[:8]])


def test_every_adit_config_field_is_read(molecules_and_crystals, curated_store, tmp_path):
    classes = config_classes(config_type("adit"))
    tiny = load_config("tiny", "adit")
    with recorded_reads(classes) as reads:
        exercise("adit", tiny, molecules_and_crystals, tmp_path / "plain")
        options = with_options(tiny, vae={"weight_distance": 1.0, "latent_noise": 0.05},
                               dit={"repa_weight": 0.5, "spacegroup_conditioning": True}, flow={"solver": "heun"})
        exercise("adit", options, molecules_and_crystals, tmp_path / "options")
        training_packs(tiny.data, *curated_store)
    assert all_fields(classes) - reads == set()


def test_every_gfmdiff_config_field_is_read(qm9_systems, curated_store, tmp_path):
    classes = config_classes(config_type("gfmdiff"))
    tiny = load_config("tiny", "gfmdiff")
    with recorded_reads(classes) as reads:
        exercise("gfmdiff", tiny, TensorPack.from_systems(qm9_systems[:16]), tmp_path / "plain")
        exercise("gfmdiff", with_options(tiny, diffusion={"gfloss": False}), TensorPack.from_systems(qm9_systems[:16]),
                 tmp_path / "nogfloss", sample=False)
        training_packs(tiny.data, *curated_store)
    assert all_fields(classes) - reads == set()


def test_every_diffspectra_config_field_is_read(tmp_path):
    from chemgen.models.diffspectra.data import spectra_pack
    from chemgen.models.diffspectra.model import DiffSpectra

    classes = config_classes(config_type("diffspectra"))
    tiny = load_config("tiny", "diffspectra")
    pack = spectra_pack(STORE, split="train", limit=16)[0]
    with recorded_reads(classes) as reads:
        exercise("diffspectra", tiny, pack, tmp_path / "run", sample=False)
        model = DiffSpectra(with_options(tiny, diffusion={"num_steps": 2})).eval()   # the config's sampling steps
        batch = pack.dense(torch.arange(2))
        spectra, present = model.spectra_of(batch)
        model.sample_graphs(spectra, present, 1, batch.num_atoms, seed=0)
        training_packs(tiny.data, model="diffspectra")
    assert all_fields(classes) - reads == set()


def test_the_check_catches_a_field_nobody_reads():
    """The instrumentation must be able to fail: a field read only by generic machinery is reported unread."""

    @dataclasses.dataclass(frozen=True)
    class Settings:
        used: int = 1
        unused: int = 2

        def __post_init__(self):
            assert self.unused >= 0   # validation is not a use

    with recorded_reads({Settings}) as reads:
        settings = Settings()
        dataclasses.asdict(settings)
        _ = settings.used
    assert all_fields({Settings}) - reads == {("Settings", "unused")}


def test_retired_keys_are_refused_with_their_successor(tmp_path):
    bad = tmp_path / "old.yaml"
    bad.write_text("name: old\nvae_train:\n  batch_size: 32\n")
    with pytest.raises(ConfigError, match=r"old.yaml.vae_train: retired key\(s\): batch_size \(now tokens_per_batch"):
        load_config(bad, "adit")
    bad.write_text("name: old\nvae_train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"old.yaml.vae_train.lr: expected float, got 'fast'"):
        load_config(bad, "adit")
    bad.write_text("name: old\nvae_train:\n  learning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        load_config(bad, "adit")


def test_configs_saved_by_older_versions_still_load():
    """A lineage manifest keeps the config its model was trained with; the shipped ones predate the data section
    and token batches, and read as the settings they trained with."""
    import json

    for folder in sorted((Path(__file__).resolve().parents[1] / "models" / "weights").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        config = from_dict(config_type(manifest["model"]), upgrade_config_dict(manifest["config"]),
                           where=str(folder))
        assert config.name == manifest["config"]["name"]
        assert isinstance(config.data, DataConfig)
        old_first = next(v for k, v in manifest["config"].items() if k.endswith("_train"))
        if "batch_size" in old_first:
            first = next(v for v in vars(config).values() if isinstance(v, TrainConfig))
            assert first.tokens_per_batch == 16 * old_first["batch_size"]
        if "datasets" in old_first:
            assert config.data.datasets == tuple(old_first["datasets"])
