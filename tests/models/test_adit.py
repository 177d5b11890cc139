"""ADiT: shapes and masks, a VAE that overfits real data, a DiT that learns, reproducible sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from chemgen.models.adit.config import ADiTConfig, DiTConfig, FlowConfig, VAEConfig
from chemgen.config import TrainConfig
from chemgen.models.specs import load_config
from chemgen.data.tensors import TensorPack
from chemgen.geometry import cell_from_parameters, lattice_parameters, random_rotation
from chemgen.models.adit import ADiT
from chemgen.samples import Failure, to_systems
from chemgen.models.adit.vae import AllAtomVAE


@pytest.fixture(scope="module")
def pack(qm9_systems, mp20_systems) -> TensorPack:
    return TensorPack.from_systems([*qm9_systems[:8], *mp20_systems[:8]])


def small_config(**vae_changes) -> ADiTConfig:
    vae = VAEConfig(d_model=64, num_heads=4, dim_feedforward=128, encoder_layers=2, decoder_layers=2, latent_dim=8,
                    **vae_changes)
    dit = DiTConfig(d_model=64, num_heads=4, num_layers=2)
    train = TrainConfig(tokens_per_batch=256, lr=8e-4, max_steps=20, val_every_steps=10,
                        ema_decay=0.9)
    return ADiTConfig(name="test", vae=vae, dit=dit, flow=FlowConfig(num_steps=8), vae_train=train, dit_train=train)


def test_pack_round_trip_and_dense_masks(pack, tmp_path):
    back = TensorPack.load(pack.save(tmp_path / "p.pt"))
    for name in ("atomic_numbers", "frac_coords", "num_atoms", "cell", "pbc", "dataset_idx", "spacegroup"):
        assert torch.equal(getattr(back, name), getattr(pack, name)), name
    assert torch.all(pack.spacegroup[pack.pbc] >= 1) and torch.all(pack.spacegroup[~pack.pbc] == 0)  # MP-20 records
    molecule = ~pack.atom_is_periodic()  # int16 steps of 1/2048 A; crystals recomputed as frac @ cell
    assert (back.pos[molecule] - pack.pos[molecule]).abs().max() <= 0.5 / 2048 + 1e-7
    assert torch.allclose(back.pos[~molecule], pack.pos[~molecule], atol=1e-4)
    dense = pack.dense(torch.arange(len(pack)))
    assert dense.mask.sum().item() == pack.atomic_numbers.numel()
    assert torch.all(dense.atomic_numbers[~dense.mask] == 0)
    assert torch.all(dense.frac_coords[~dense.pbc] == 0)


def test_pack_keeps_float32_for_far_flung_molecules_and_reads_format_1(pack, tmp_path):
    import dataclasses

    far = dataclasses.replace(pack, pos=pack.pos * 20.0)  # molecules beyond the int16 range
    back = TensorPack.load(far.save(tmp_path / "far.pt"))
    molecule = ~pack.atom_is_periodic()
    assert torch.equal(back.pos[molecule], far.pos[molecule])
    old = {f.name: getattr(pack, f.name) for f in dataclasses.fields(pack)}
    old["atomic_numbers"] = pack.atomic_numbers.to(torch.uint8)
    old["frac_coords"] = pack.frac_coords[~molecule]
    torch.save({"format": 1, **old}, tmp_path / "v1.pt")
    assert torch.equal(TensorPack.load(tmp_path / "v1.pt").pos, pack.pos)


def test_compressed_packs_read_back_the_same(pack, tmp_path):
    plain = TensorPack.load(pack.save(tmp_path / "p.pt"))
    small = TensorPack.load(pack.save(tmp_path / "c.pt", compress=True))
    assert (tmp_path / "c.pt").stat().st_size < (tmp_path / "p.pt").stat().st_size
    for name in ("atomic_numbers", "pos", "frac_coords", "num_atoms", "cell", "pbc", "dataset_idx", "spacegroup"):
        assert torch.equal(getattr(small, name), getattr(plain, name)), name
    (tmp_path / "bad.pt").write_bytes(b"\xfd7zXZ\x00" + b"not xz at all")
    with pytest.raises(ValueError, match="corrupt compressed tensor pack"):
        TensorPack.load(tmp_path / "bad.pt")


def test_pack_refuses_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a chemgen tensor pack"):
        TensorPack.load(tmp_path / "x.pt")


def test_vae_shapes_and_padding_does_not_leak(pack):
    torch.manual_seed(0)
    vae = AllAtomVAE(small_config().vae).eval()
    dense = pack.dense(torch.arange(len(pack)))
    out, posterior = vae(dense, sample_posterior=False)
    b, n = dense.mask.shape
    assert out.atom_type_logits.shape == (b, n, 100) and out.pos_nm.shape == (b, n, 3)
    assert out.lengths_scaled.shape == (b, 3) and posterior.mean.shape == (b, n, 8)
    # Garbage in padded slots must not change any real token's output.
    noisy = dataclasses.replace(dense, pos=dense.pos + 50.0 * (~dense.mask)[..., None],
                                atomic_numbers=dense.atomic_numbers + 7 * (~dense.mask))
    out2, _ = vae(noisy, sample_posterior=False)
    assert torch.allclose(out.atom_type_logits[dense.mask], out2.atom_type_logits[dense.mask], atol=1e-5)
    assert torch.allclose(out.lengths_scaled, out2.lengths_scaled, atol=1e-5)


def test_geometry_helpers():
    r = random_rotation(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(64, dtype=torch.float64))
    lengths = torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64)
    angles = torch.deg2rad(torch.tensor([[80.0, 95.0, 110.0]], dtype=torch.float64))
    cell = cell_from_parameters(lengths, angles)
    back_lengths, back_angles = lattice_parameters(cell)
    assert torch.allclose(back_lengths, lengths) and torch.allclose(back_angles, angles)
    from pymatgen.core import Lattice  # same orientation convention as pymatgen

    reference = Lattice.from_parameters(3, 4, 5, 80, 95, 110).matrix
    np.testing.assert_allclose(cell[0].numpy(), reference, atol=1e-10)


@pytest.fixture(scope="module")
def overfit_vae(pack):
    """A VAE trained to memorise 16 real systems (8 QM9, 8 MP-20), no augmentation.

    ADiT's loss measures positions in nm and its weights balance a long run, so gradients on
    0.1 A errors are tiny; the weights are raised to make memorisation fast enough for a unit test.
    """
    torch.manual_seed(0)
    config = small_config(corrupt_fraction=0.0, augment_rotation=False, augment_translation=False,
                          kl_weight=1e-6, weight_pos=1000.0, weight_frac_coords=1000.0, weight_lengths=10.0,
                          weight_angles=100.0, weight_atom_types=10.0)
    vae = AllAtomVAE(config.vae)
    dense = pack.dense(torch.arange(len(pack)))
    steps = 800
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in range(steps):
        loss = vae.loss(dense, train=True)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return vae.eval(), dense, losses


def _centred(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x - (x * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]


def test_vae_overfits_a_tiny_real_set(overfit_vae):
    """Atom types exact; every molecule and every crystal within 0.1 A RMSD (crystals: minimum image)."""
    vae, dense, losses = overfit_vae
    assert losses[-1] < 0.05 * losses[0]
    with torch.no_grad():
        out, _ = vae(dense, sample_posterior=False)
    mask, molecules, crystals = dense.mask, ~dense.pbc, dense.pbc
    assert torch.equal(out.atom_type_logits.argmax(-1)[mask], dense.atomic_numbers[mask])
    m = mask[molecules]
    error = (_centred(out.pos_nm[molecules] * 10, m) - _centred(dense.pos[molecules], m)).norm(dim=-1)
    rmsd = ((error**2 * m).sum(1) / m.sum(1)).sqrt()
    assert rmsd.max() < 0.1, f"worst molecule RMSD {rmsd.max():.3f} A"
    delta = out.frac_coords[crystals] - dense.frac_coords[crystals]
    delta = delta - delta.round()                                   # minimum image
    cartesian = (delta @ dense.cell[crystals]).norm(dim=-1)         # (C, N) Angstrom
    c = mask[crystals]
    rmsd = ((cartesian**2 * c).sum(1) / c.sum(1)).sqrt()
    assert rmsd.max() < 0.1, f"worst crystal RMSD {rmsd.max():.3f} A"


def test_crystals_decode_to_valid_lattices(overfit_vae):
    """Decoded crystals are records with positive volume and lattices close to the truth."""
    vae, dense, _ = overfit_vae
    model = ADiT(small_config())
    model.vae = vae
    with torch.no_grad():
        posterior = vae.encode(dense.atomic_numbers, dense.pos, dense.frac_coords, dense.mask)
        decoded = model.decode(posterior.mode(), dense.mask, dense.pbc)
    systems = to_systems(decoded, "mp20")
    lengths, angles = lattice_parameters(dense.cell)
    for i, system in enumerate(systems):
        if not dense.pbc[i]:
            continue
        assert not isinstance(system, Failure) and system.volume > 0
        np.testing.assert_allclose(system.lattice_parameters[:3], lengths[i].numpy(), rtol=0.05)
        np.testing.assert_allclose(system.lattice_parameters[3:], torch.rad2deg(angles[i]).numpy(), atol=3.0)
        frac = decoded.frac_coords[i][decoded.mask[i]]
        assert torch.all((frac >= 0) & (frac < 1))


def test_dit_loss_falls_and_sampling_is_reproducible(pack):
    torch.manual_seed(0)
    model = ADiT(small_config())
    model.freeze_vae()
    dense = pack.dense(torch.arange(len(pack)))
    optimizer = torch.optim.Adam(model.dit.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        model.dit.train()
        loss = model.dit_loss(dense)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])

    model.num_atoms_histogram[1] = pack.num_atoms_histogram(1, 64).float()
    model.num_atoms_histogram[2] = pack.num_atoms_histogram(2, 64).float()
    model.eval()
    a = model.generate(6, "crystal", seed=3)
    b = model.generate(6, "crystal", seed=3)
    c = model.generate(6, "crystal", seed=4)
    assert torch.equal(a.atomic_numbers, b.atomic_numbers) and torch.equal(a.frac_coords, b.frac_coords)
    assert not torch.equal(a.frac_coords, c.frac_coords)
    sizes = a.mask.sum(1)
    assert set(sizes.tolist()) <= set(pack.num_atoms[pack.pbc].tolist())  # N drawn from the training histogram
    heun = model.generate(6, "molecule", seed=3, solver="heun", num_steps=5)
    assert heun.mask.shape[0] == 6 and not heun.periodic.any()
    # size-sorted chunks keep the drawn sizes and their order; padding beyond a system stays empty
    chunked = model.generate(6, "molecule", seed=3, solver="heun", num_steps=5, chunk_size=2)
    assert torch.equal(chunked.mask, heun.mask)
    assert torch.all(chunked.atomic_numbers[~chunked.mask] == 0) and torch.all(chunked.atomic_numbers[chunked.mask] > 0)


def test_degenerate_lattices_become_failures_not_exceptions():
    from chemgen.models.adit.vae import DecodedBatch

    mask = torch.ones(1, 2, dtype=torch.bool)
    decoded = DecodedBatch(torch.tensor([[6, 6]]), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 3, 3),
                           torch.zeros(1, 3), torch.zeros(1, 3), mask, torch.tensor([True]))
    [result] = to_systems(decoded, "mp20")
    assert isinstance(result, Failure) and "cell lengths" in result.reason


def test_both_stages_train_through_the_shared_trainer_and_log_diagnostics(pack, tmp_path):
    """The shared trainer (Lightning under `fit`) trains ADiT's stages in order; each stage's monitor measures
    held-out systems: reconstruction errors and EDM stability of reconstructed molecules, then the DiT's error."""
    from chemgen.training.stages import train_stages

    logged: list[dict[str, float]] = []
    config = small_config()
    config = dataclasses.replace(config, vae_train=dataclasses.replace(config.vae_train, val_every_steps=5),
                                 dit_train=dataclasses.replace(config.dit_train, val_every_steps=5))
    model, report = train_stages("adit", config, pack, pack, tmp_path, steps={"vae": 10, "dit": 10},
                                 tokens_per_batch=256, device="cpu", log=lambda line: None, logger=_recording_logger(logged))
    assert report["vae"]["steps"] == 10 and report["dit"]["steps"] == 10
    names = {k for m in logged for k in m}
    assert {"vae/diag/molecule_rmsd_kabsch", "vae/diag/recon_edm_atom_stability", "dit/diag/dit_error_molecule@0.99",
            "vae/train/loss", "dit/train/loss"} <= names
    assert model.num_atoms_histogram[2].sum() == 8  # 8 QM9 molecules in the pack
    assert len(to_systems(model.generate(3, "molecule", seed=0), "qm9")) == 3


def _recording_logger(logged: list[dict[str, float]]):
    """A Lightning logger that keeps what it is given (as the MLflow logger would receive it)."""
    from lightning.pytorch.loggers import Logger

    class Recording(Logger):
        name, version = "recording", 0

        def log_metrics(self, metrics, step=None):
            logged.append(dict(metrics))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return Recording()


def test_spacegroup_conditioning_trains_draws_observed_groups_and_loads_older_checkpoints(pack):
    """With space-group conditioning the DiT sees MP-20's labels in training; generation draws a crystal's
    group from training crystals of its size; a checkpoint made without the table loads (new table)."""
    plain = small_config()
    config = dataclasses.replace(plain, dit=dataclasses.replace(plain.dit, spacegroup_conditioning=True))
    torch.manual_seed(0)
    model = ADiT(config)
    model.set_histograms(pack)
    model.train()
    model.freeze_vae()
    dense = pack.dense(torch.arange(len(pack)))
    optimizer = torch.optim.Adam(model.dit.parameters(), lr=1e-2)
    for _ in range(3):  # past adaLN-Zero's start, where no conditioning has a gradient yet
        optimizer.zero_grad()
        model.dit_loss(dense)["loss"].backward()
        optimizer.step()
    optimizer.zero_grad()
    model.dit_loss(dense)["loss"].backward()
    assert model.dit.spacegroup_embedder.table.weight.grad.abs().sum() > 0  # the labels reach the DiT
    model.eval()
    crystals = pack.dataset_idx == 1
    seen = set(zip(pack.num_atoms[crystals].tolist(), pack.spacegroup[crystals].tolist()))
    sizes = model.draw_num_atoms(torch.ones(64, dtype=torch.long), torch.Generator().manual_seed(0))
    groups = model.draw_spacegroups(torch.ones(64, dtype=torch.long), sizes, torch.Generator().manual_seed(0))
    assert set(zip(sizes.tolist(), groups.tolist())) <= seen
    assert model.generate(3, "mp20", num_steps=3, seed=0).mask.shape[0] == 3
    old = ADiT(plain)
    again = ADiT(config)
    again.load_checkpoint_groups({"vae": old.vae.state_dict(), "dit": old.dit.state_dict()})
    assert again.dit.spacegroup_embedder is not None


def test_a_model_with_another_label_order_is_refused():
    """The dataset labels live in the config (and so in every export): a model trained with another order
    would generate the wrong datasets, so it must not load."""
    config = load_config("tiny")
    assert config.dit.datasets[:2] == ("mp20", "qm9")
    swapped = dataclasses.replace(config, dit=dataclasses.replace(config.dit, datasets=("qm9", "mp20", *config.dit.datasets[2:])))
    with pytest.raises(ValueError, match="wrong datasets"):
        ADiT(swapped)


def test_shipped_configs_load_and_unknown_keys_are_rejected(tmp_path):
    for name in ("tiny", "cpu", "gpu-quick", "dit-s", "dit-b"):
        config = load_config(name)
        assert config.vae.latent_dim in (4, 8)
    assert load_config("dit-b").dit.d_model == 768 and load_config("dit-s").dit.d_model == 384
    bad = tmp_path / "bad.yaml"
    bad.write_text("vae:\n  d_modle: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml.vae: unknown key\(s\) \['d_modle'\]"):
        load_config(bad)
    bad.write_text("flow:\n  num_steps: many\n")
    with pytest.raises(ValueError, match="expected int"):
        load_config(bad)


def test_repa_aligns_middle_dit_states_with_the_frozen_encoder_and_is_optional_in_checkpoints(pack):
    """REPA's term: -cos(projected DiT states after block repa_depth, the frozen encoder's states), added with its
    weight; it trains the projector; lineages load with it turned on or off."""
    plain = small_config()
    config = dataclasses.replace(plain, dit=dataclasses.replace(plain.dit, repa_weight=0.5, repa_depth=1))
    torch.manual_seed(0)
    model = ADiT(config)
    model.train()
    model.freeze_vae()
    batch = pack.dense(torch.arange(16))
    out = model.dit_loss(batch)
    assert -1.0 <= float(out["repa_alignment"]) <= 1.0
    out["loss"].backward()
    assert model.dit.repa_projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())  # the encoder is the frozen target
    without = ADiT(plain)
    without.load_checkpoint_groups(model.checkpoint_groups())           # a REPA lineage, REPA off: projector dropped
    assert "repa_alignment" not in without.dit_loss(batch)
    model.load_checkpoint_groups(ADiT(plain).checkpoint_groups())      # a plain lineage, REPA on: a fresh projector


def test_continued_training_keeps_the_lineages_size_histograms(qm9_systems, mp20_systems):
    """Fine-tuning on a slice must not change the sizes a model draws: rows a lineage has are kept, new ones filled."""
    torch.manual_seed(0)
    model = ADiT(small_config())
    model.training_stage("dit", TensorPack.from_systems(qm9_systems[:20]))
    before = model.num_atoms_histogram.clone()
    model.training_stage("dit", TensorPack.from_systems([*qm9_systems[20:24], *mp20_systems[:6]]))
    from chemgen.datasets import dataset_label

    qm9, mp20 = dataset_label("qm9"), dataset_label("mp20")
    assert torch.equal(model.num_atoms_histogram[qm9], before[qm9]) and model.num_atoms_histogram[qm9].sum() == 20
    assert model.num_atoms_histogram[mp20].sum() == 6   # a dataset the lineage had not seen: filled from the data
