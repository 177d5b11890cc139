"""DiffSpectra on real molecules of the spectra store: both stages learn under the shared loop, checkpoints
round-trip, conditional sampling is seeded and follows the spectra, elucidate returns the atom counts asked
for, the model's denoiser and its pretraining 3D encoder are E(3)-equivariant, configs and refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from chemgen.config import ConfigError, from_dict
from chemgen.models.specs import load_config
from chemgen.data.tensors import TensorPack
from chemgen.diffusion.vp import GraphState, project
from chemgen.errors import UsageError
from chemgen.models import specs
from chemgen.models.protocol import Generator, ModelSpec
from chemgen.training.resident import ResidentBatches
from chemgen.training.loop import EMA, WSDSchedule, fit
from chemgen.models.diffspectra.config import PRESETS, DiffSpectraConfig, preset
from chemgen.models.diffspectra.data import batch_bonds, spectra_pack
from chemgen.models.diffspectra.graphs import MolGraphs
from chemgen.models.diffspectra.encoder import MoleculeEncoder
from chemgen.models.diffspectra.model import DiffSpectra
from chemgen.testing import (
    ATOM_INVARIANTS,
    MASK,
    PAIR_INVARIANTS,
    POSITIONS,
    SYSTEM_INVARIANTS,
    VECTORS,
    assert_equivariant,
)

STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
TINY = preset("tiny")


@pytest.fixture(scope="module")
def pack() -> TensorPack:
    """The first 64 molecules of the store's train split (59 of them have perceivable graphs)."""
    return spectra_pack(STORE, split="train", limit=64)[0]


@pytest.fixture(scope="module")
def held(pack) -> object:
    return pack.dense(torch.arange(len(pack)))


def train_stage(model: DiffSpectra, name: str, pack: TensorPack, steps: int, trained: tuple[str, ...] = ()):
    """``steps`` steps of one stage through the shared loop (EMA copied in at the end, as train_stages does)."""
    stage = model.training_stage(name, pack, trained)
    ema = EMA(stage.ema_module, stage.ema_decay) if stage.ema_module is not None else None
    data = ResidentBatches(pack, "cpu", tokens_per_batch=256)
    result = fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(3e-3, 5, 0.2), max_steps=steps, ema=ema,
                 log_every=10, log=lambda _: None)
    if ema is not None:
        ema.copy_to(stage.ema_module)
    model.eval()
    return result


@pytest.fixture(scope="module")
def pretrained(pack, held):
    """A tiny DiffSpectra after 40 pretraining steps, with the monitor before and after."""
    torch.manual_seed(0)
    model = DiffSpectra(TINY)
    before = model.stage_monitor("specformer", held)
    dmt_before = {k: v.clone() for k, v in model.dmt.state_dict().items()}
    train_stage(model, "specformer", pack, 40)
    return model, before, model.stage_monitor("specformer", held), dmt_before


@pytest.fixture(scope="module")
def trained(pretrained, pack, held):
    """The pretrained tiny model after 40 denoiser steps (a copy: the pretraining fixture stays as it was)."""
    source = pretrained[0]
    model = DiffSpectra(TINY)
    model.load_checkpoint_groups(source.checkpoint_groups())
    specformer_before = {k: v.clone() for k, v in model.specformer.state_dict().items()}
    before = model.stage_monitor("denoiser", held)
    train_stage(model, "denoiser", pack, 40, trained=("specformer",))
    return model, before, model.stage_monitor("denoiser", held), specformer_before


# ---------------------------------------------------------------------------- configs
def test_presets_sizes_yaml_round_trip_and_load_config(monkeypatch, tmp_path):
    counts = {}
    for name in PRESETS:
        config = preset(name)
        model = DiffSpectra(config)
        counts[name] = {part: sum(p.numel() for p in getattr(model, part).parameters())
                        for part in ("specformer", "dmt", "encoder")}
        plain = json.loads(json.dumps(config.to_dict()))          # what a YAML file gives: lists, ints
        assert from_dict(DiffSpectraConfig, plain) == config
    assert counts == {"tiny": {"specformer": 81_220, "dmt": 131_802, "encoder": 4_577},
                      "cpu": {"specformer": 1_171_620, "dmt": 3_704_792, "encoder": 146_945},
                      "gpu": {"specformer": 9_569_252, "dmt": 27_788_924, "encoder": 4_913_409}}
    gpu = preset("gpu")
    assert gpu == DiffSpectraConfig(name="diffspectra-gpu", specformer_train=gpu.specformer_train,
                                    denoiser_train=gpu.denoiser_train)   # the papers' sizes are the defaults
    assert (gpu.denoiser_train.lr, gpu.specformer_train.lr, gpu.denoiser_train.ema_decay) == (2e-4, 4e-4, 0.999)
    assert gpu.diffusion.num_steps == 1000 and gpu.pretrain.position_noise == 0.04
    # once registered, the shared loader reads the same files into the same dataclass
    monkeypatch.setitem(specs.MODELS, "diffspectra", ModelSpec(
        "diffspectra", "chemgen.models.diffspectra.model:DiffSpectra",
        "chemgen.models.diffspectra.config:DiffSpectraConfig", "chemgen-diffspectra", "diffspectra-cpu", ("qm9",)))
    assert load_config("tiny", "diffspectra") == TINY
    assert isinstance(specs.generator_class("diffspectra")(TINY), Generator)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndmt:\n  cond_dim: 32\n")
    with pytest.raises(ConfigError, match="cond_dim 32 must equal specformer.output_dim 256"):
        load_config(bad, "diffspectra")


def test_config_validation():
    with pytest.raises(ConfigError, match="cond_dim"):
        dataclasses.replace(TINY, dmt=dataclasses.replace(TINY.dmt, cond_dim=8))
    with pytest.raises(ConfigError, match="chemgen's spectra are"):
        dataclasses.replace(TINY, specformer=dataclasses.replace(
            TINY.specformer, modalities=("uv", "ir"), lengths=(701, 3501), patch_len=(20, 50), stride=(10, 25),
            input_scale=(1.0, 1.0)))
    with pytest.raises(ConfigError, match="lengths must be 3501"):
        dataclasses.replace(TINY, specformer=dataclasses.replace(TINY.specformer, lengths=(3000, 3501)))
    with pytest.raises(ConfigError, match="graph vocabulary"):
        dataclasses.replace(TINY, dmt=dataclasses.replace(TINY.dmt, num_charges=1))
    with pytest.raises(ConfigError, match="pretraining weights"):
        from_dict(DiffSpectraConfig, {"pretrain": {"reconstruct_weight": 0, "contrastive_weight": 0,
                                                   "denoising_weight": 0}})
    with pytest.raises(ConfigError, match="encoder.width"):
        from_dict(DiffSpectraConfig, {"encoder": {"width": 30, "n_heads": 8}})
    # an IR-only model is a valid config and reads the IR sticks only
    ir = dataclasses.replace(TINY, specformer=dataclasses.replace(
        TINY.specformer, modalities=("ir",), lengths=(3501,), patch_len=(50,), stride=(25,), input_scale=(43.4,)))
    assert DiffSpectra(ir).specformer.config.num_tokens == 139


# ---------------------------------------------------------------------------- training
def test_pretraining_stage_learns_all_three_tasks(pretrained):
    model, before, after, dmt_before = pretrained
    assert after["loss"] < 0.8 * before["loss"]
    for key in ("reconstruct", "contrastive", "denoising"):
        assert after[key] < before[key], key
    assert all(torch.equal(v, model.dmt.state_dict()[k]) for k, v in dmt_before.items())   # the DMT waits
    assert int(model.num_atoms_histogram.sum()) == 59


def test_denoiser_stage_learns_and_trains_specformer_jointly(trained, pretrained):
    model, before, after, specformer_before = trained
    for t in ("0.1", "0.5", "0.9"):
        assert after[f"loss_t{t}"] < 0.8 * before[f"loss_t{t}"], t
    state = model.specformer.state_dict()
    assert not torch.equal(state["head.weight"], specformer_before["head.weight"])          # trained jointly
    assert all(torch.equal(state[k], v) for k, v in specformer_before.items() if k.startswith("reconstruct_heads"))
    stage = model.training_stage("denoiser", water_pack())
    model.eval()
    names = {id(p) for p in stage.parameters}
    assert not any(id(p) in names for p in model.encoder.parameters())
    assert not any(id(p) in names for p in model.specformer.reconstruct_heads.parameters())
    assert stage.ema_decay == 0.9 and {id(p) for p in stage.ema_module.parameters()} >= names
    assert int(model.num_atoms_histogram.sum()) == 59   # a continued model keeps its histogram


def water_pack() -> TensorPack:
    """A minimal pack with the spectra extras (one water-like molecule) for stage set-up checks."""
    z = torch.tensor([8, 1, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    bonds = torch.zeros(3, 29, dtype=torch.int8)
    bonds[0, 1] = bonds[1, 0] = bonds[0, 2] = bonds[2, 0] = 1
    sticks = torch.zeros(1, 81)
    sticks[0, :3] = torch.tensor([1600.0, 3650.0, 3750.0])
    pack = TensorPack(atomic_numbers=z, pos=pos, frac_coords=torch.zeros(3, 3), num_atoms=torch.tensor([3]),
                      cell=torch.zeros(1, 3, 3), pbc=torch.zeros(1, dtype=torch.bool),
                      dataset_idx=torch.tensor([2]))
    return pack.with_extras(atom__charge=torch.ones(3, dtype=torch.int8), atom__bonds=bonds,
                            system__frequencies=sticks, system__ir=sticks / 100, system__raman=sticks / 100,
                            system__qm9_index=torch.tensor([3]))


def test_stage_diagnostics_are_held_out_losses(trained, pack, tmp_path):
    model = trained[0]
    denoiser = model.stage_diagnostics("denoiser", pack, tmp_path, per_kind=24, chunk_size=12)
    assert set(denoiser) == {"val_loss", "val_pos_mse", "val_node_mse", "val_edge_mse", "val_loss_shuffled_spectra"}
    assert denoiser == model.stage_diagnostics("denoiser", pack, tmp_path, per_kind=24, chunk_size=12)   # fixed noise
    assert all(v > 0 for v in denoiser.values())
    specformer = model.stage_diagnostics("specformer", pack, tmp_path, per_kind=40)
    assert 0 <= specformer["val_retrieval_top1"] <= 1 and specformer["val_loss"] > 0
    empty = TensorPack(atomic_numbers=torch.zeros(0, dtype=torch.long), pos=torch.zeros(0, 3),
                       frac_coords=torch.zeros(0, 3), num_atoms=torch.zeros(0, dtype=torch.long),
                       cell=torch.zeros(0, 3, 3), pbc=torch.zeros(0, dtype=torch.bool),
                       dataset_idx=torch.zeros(0, dtype=torch.long))
    assert model.stage_diagnostics("denoiser", empty, tmp_path) == {}
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_groups_round_trip_and_are_strict(trained, held):
    model = trained[0].eval()
    groups = model.checkpoint_groups()
    assert set(groups) == {"specformer", "dmt", "encoder", "num_atoms_histogram"}
    torch.manual_seed(123)
    copy = DiffSpectra(TINY)
    copy.load_checkpoint_groups(groups)
    copy.eval()
    batch = first_molecules(held, 6)
    spectra, present = model.spectra_of(batch)
    cond = model.condition(spectra, present)
    assert torch.equal(cond, copy.condition(spectra, present))
    z0 = model.clean_state(batch)
    eps = model.diffusion.noise(batch.mask, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.4, dtype=torch.float64)
    z_t = model.diffusion.q_sample(z0, t, eps)
    lam = model.diffusion.schedule.log_snr(t).float()
    for a, b in zip(vars(model.denoise(z_t, lam, batch.mask, cond)).values(),
                    vars(copy.denoise(z_t, lam, batch.mask, cond)).values()):
        assert torch.equal(a, b)
    types = model.atom_types(batch)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder(types, batch.pos, batch.mask),
                                                 copy.encoder(types, batch.pos, batch.mask)))
    assert torch.equal(copy.num_atoms_histogram, model.num_atoms_histogram)
    assert torch.equal(model.sample_graphs(spectra, None, 2, batch.num_atoms, num_steps=3, seed=5).pos,
                       copy.sample_graphs(spectra, None, 2, batch.num_atoms, num_steps=3, seed=5).pos)

    with pytest.raises(RuntimeError, match="checkpoint groups"):
        copy.load_checkpoint_groups({k: v for k, v in groups.items() if k != "encoder"})
    with pytest.raises(RuntimeError):   # another architecture
        DiffSpectra(preset("cpu")).load_checkpoint_groups(groups)


def first_molecules(held, n: int):
    """The first n molecules of a padded batch, cropped to their own width."""
    return held.select(torch.arange(n)).crop_atoms(int(held.mask[:n].sum(-1).max()))


# ---------------------------------------------------------------------------- sampling
def test_conditional_sampling_is_seeded_and_follows_the_spectra(trained, held):
    model = trained[0]
    batch = first_molecules(held, 2)
    spectra, _ = model.spectra_of(batch)
    sizes = batch.num_atoms
    first = model.sample_graphs(spectra, None, 3, sizes, num_steps=5, seed=0)
    again = model.sample_graphs(spectra, None, 3, sizes, num_steps=5, seed=0)
    other = model.sample_graphs(spectra, None, 3, sizes, num_steps=5, seed=1)
    assert all(torch.equal(getattr(first, f), getattr(again, f)) for f in ("pos", "atom_types", "charges", "bonds"))
    assert not torch.equal(first.pos, other.pos)
    assert first.num_atoms.tolist() == sizes.repeat_interleave(3).tolist()
    # the same seed and sizes with the two queries' spectra swapped: the noise is the same, the samples are not
    swapped = {k: v.flip(0) for k, v in spectra.items()}
    same_size = torch.full((2,), int(sizes.min()))
    a = model.sample_graphs(spectra, None, 1, same_size, num_steps=5, seed=0)
    b = model.sample_graphs(swapped, None, 1, same_size, num_steps=5, seed=0)
    assert not torch.allclose(a.pos, b.pos)


def test_the_spectra_change_the_denoisers_output_for_the_same_state(trained, held):
    model = trained[0].eval()
    batch = first_molecules(held, 2)
    spectra, present = model.spectra_of(batch)
    cond = model.condition(spectra, present)
    assert not torch.allclose(cond[0], cond[1])
    z0 = model.clean_state(batch.select(torch.tensor([0, 0])))
    eps = model.diffusion.noise(batch.mask[:1], generator=torch.Generator().manual_seed(0)).map(
        lambda v: v.repeat(2, *([1] * (v.dim() - 1))))                                       # one state, twice
    t = torch.full((2,), 0.5, dtype=torch.float64)
    z_t = model.diffusion.q_sample(z0, t, eps)
    lam = model.diffusion.schedule.log_snr(t).float()
    out = model.denoise(z_t, lam, batch.mask[[0, 0]], cond)          # row 0: its own spectra; row 1: another's
    assert (out.nodes[0] - out.nodes[1]).abs().max() > 1e-4
    assert (out.pos[0] - out.pos[1]).abs().max() > 1e-6
    same = model.denoise(z_t, lam, batch.mask[[0, 0]], cond[[0, 0]])
    # two rows of one batch may take different kernel paths (vector width, blocking): equal within float32 rounding,
    # far below the difference the spectra make above
    torch.testing.assert_close(same.nodes[0], same.nodes[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(same.pos[0], same.pos[1], rtol=1e-5, atol=1e-6)
    # an absent modality is a different condition (one model for IR + Raman, IR only, Raman only)
    ir_only = model.condition(spectra, torch.tensor([[True, False], [True, False]]))
    assert not torch.allclose(ir_only, cond)


def test_elucidate_returns_candidates_with_the_requested_atom_counts(trained, held, monkeypatch):
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    model = trained[0]
    batch = first_molecules(held, 2)
    spectra, _ = model.spectra_of(batch)
    sizes = batch.num_atoms
    candidates = model.elucidate(spectra, num_samples=4, num_atoms=sizes, num_steps=8, seed=0)
    assert [len(c) for c in candidates] == [4, 4]
    for q, group in enumerate(candidates):   # an undertrained model's graphs are mostly invalid (None)
        for mol in group:
            assert mol is None or (mol.GetNumAtoms() == int(sizes[q]) and mol.GetNumConformers() == 1)
    # without atom counts, the sizes come from the training histogram
    drawn = model.sample_graphs(spectra, None, 8, None, num_steps=2, seed=0).num_atoms
    assert bool((model.num_atoms_histogram[drawn] > 0).all())
    # IR only, marked absent Raman: still Q lists
    ir_only = model.elucidate({"ir": spectra["ir"]}, num_samples=2, num_atoms=sizes, num_steps=2, seed=0)
    assert [len(c) for c in ir_only] == [2, 2]

    # decoding and grouping, with the sampler standing in for a perfect one: each query's own molecule, 3 times
    n = batch.mask.shape[1]
    rows = torch.arange(2).repeat_interleave(3)
    truth = MolGraphs(batch.pos[rows], model.atom_types(batch)[rows], batch.extras["atom/charge"].long()[rows],
                      batch_bonds(batch.extras, batch.mask)[rows, :n, :n], batch.mask[rows])
    monkeypatch.setattr(model, "sample_graphs", lambda *args, **kwargs: truth)
    perfect = model.elucidate(spectra, num_samples=3, num_atoms=sizes)
    for q, group in enumerate(perfect):
        smiles = {Chem.MolToSmiles(Chem.RemoveHs(mol)) for mol in group}
        assert len(smiles) == 1 and all(mol.GetNumAtoms() == int(sizes[q]) for mol in group)
    assert Chem.MolToSmiles(Chem.RemoveHs(perfect[0][0])) != Chem.MolToSmiles(Chem.RemoveHs(perfect[1][0]))


def test_requests_diffspectra_refuses(trained, held, pack):
    model = trained[0]
    spectra, _ = model.spectra_of(first_molecules(held, 2))
    with pytest.raises(UsageError, match="elucidate"):
        model.generate(4, "qm9")
    with pytest.raises(UsageError, match="num_atoms must be"):
        model.sample_graphs(spectra, None, 1, torch.tensor([5]))
    with pytest.raises(UsageError, match="1..29"):
        model.sample_graphs(spectra, None, 1, torch.tensor([5, 40]))
    with pytest.raises(UsageError, match="num_samples"):
        model.elucidate(spectra, num_samples=0)
    with pytest.raises(UsageError, match="SpecFormer for"):
        model.elucidate({"uv": spectra["ir"]}, num_samples=1)
    with pytest.raises(UsageError, match="has not been trained"):
        DiffSpectra(TINY).sample_graphs(spectra, None, 1, None)
    with pytest.raises(KeyError):
        model.training_stage("vae", pack)
    bare = TensorPack(**{f.name: getattr(pack, f.name) for f in dataclasses.fields(pack) if f.name != "extras"})
    with pytest.raises(UsageError, match="spectra pack"):
        model.training_stage("denoiser", bare)


# ---------------------------------------------------------------------------- symmetry
def test_the_models_denoiser_is_e3_equivariant_in_float64(held):
    config = dataclasses.replace(TINY, dmt=dataclasses.replace(TINY.dmt, coord_scale_init=0.5))   # atoms really move
    torch.manual_seed(0)
    model = DiffSpectra(config).double().eval()
    batch = first_molecules(held, 3)
    mask = batch.mask
    spectra, present = model.spectra_of(batch)
    cond = model.condition({k: v.double() for k, v in spectra.items()}, present)
    g = torch.Generator().manual_seed(1)
    z0 = model.clean_state(batch)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    z_t = model.diffusion.q_sample(z0, t, model.diffusion.noise(mask, torch.float64, g))
    lam = model.diffusion.schedule.log_snr(t)
    self_cond = project(model.denoise(z_t, lam, mask, cond), mask)
    out = model.denoise(z_t, lam, mask, cond, self_cond)
    assert (out.pos - z_t.pos).abs().max() > 0.1

    def denoise(pos, nodes, edges, mask, sc_pos, sc_nodes, sc_edges):
        x0 = model.denoise(GraphState(pos, nodes, edges), lam, mask, cond, GraphState(sc_pos, sc_nodes, sc_edges))
        return x0.pos, x0.nodes, x0.edges

    states = (POSITIONS, ATOM_INVARIANTS, PAIR_INVARIANTS)
    args = (z_t.pos, z_t.nodes, z_t.edges, mask, self_cond.pos, self_cond.nodes, self_cond.edges)
    assert_equivariant(denoise, args, (*states, MASK, *states), (VECTORS, ATOM_INVARIANTS, PAIR_INVARIANTS),
                       tolerance=1e-10)


def test_the_pretraining_encoder_is_invariant_and_its_noise_head_equivariant(held):
    torch.manual_seed(0)
    encoder = MoleculeEncoder(dataclasses.replace(TINY.encoder, n_layers=2), 5, 16).double().eval()
    batch = first_molecules(held, 3)
    mask = batch.mask
    types = DiffSpectra(TINY).atom_types(batch)
    pos = batch.pos.double()
    embedding, eps_hat = encoder(types, pos, mask)
    assert eps_hat.abs().max() > 1e-3 and torch.all(eps_hat[~mask] == 0)

    def encode(pos, types, mask):
        return encoder(types[..., 0], pos, mask)

    assert_equivariant(encode, (pos, types[..., None], mask), (POSITIONS, ATOM_INVARIANTS, MASK),
                       (SYSTEM_INVARIANTS, VECTORS), tolerance=1e-10)
    # padding is invisible: the first molecule alone gives the same embedding
    n = int(mask[0].sum())
    alone, noise_alone = encoder(types[:1, :n], pos[:1, :n], mask[:1, :n])
    assert (alone - embedding[:1]).abs().max() < 1e-10
    assert (noise_alone - eps_hat[:1, :n]).abs().max() < 1e-10
