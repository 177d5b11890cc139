"""The GPU-speed training path: resident size buckets, the WSD schedule, the EMA, the loop, and a run
of `chemgen.training.standalone` that writes a lineage which loads and samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chemgen.data.tensors import TensorPack
from chemgen.datasets import dataset_label
from chemgen import lineage
from chemgen.training.resident import ResidentBatches
from chemgen.training.loop import EMA, WSDSchedule, ema_decay_at, fit
from chemgen.geometry import det_3x3, inverse_3x3, random_rotation
from chemgen.models.adit.diagnostics import kabsch_rmsd, short_distance_errors
from chemgen.models.adit.vae import AllAtomVAE, short_distance_error
from chemgen.testing import random_rotations

from tests.models.test_adit import small_config


@pytest.fixture(scope="module")
def pack(qm9_systems, mp20_systems) -> TensorPack:
    return TensorPack.from_systems([*qm9_systems[:24], *mp20_systems[:24]])


def test_buckets_hold_every_system_once_padded_to_their_size(pack):
    data = ResidentBatches(pack, "cpu", tokens_per_batch=256, edges=(12, 20))
    assert sum(len(b.batch.mask) for b in data.buckets) == len(pack)
    assert sum(int(b.batch.mask.sum()) for b in data.buckets) == pack.atomic_numbers.numel()
    lower = 0
    for bucket in data.buckets:
        sizes = bucket.batch.num_atoms
        assert bucket.batch.mask.shape[1] == bucket.size and bool((sizes > lower).all() and (sizes <= bucket.size).all())
        assert bucket.batch_size % 8 == 0 and bucket.batch_size * bucket.size <= max(256, 8 * bucket.size)
        lower = bucket.size
    batch = data.sample()
    assert torch.equal(batch.mask.sum(1), batch.num_atoms)
    assert torch.all(batch.atomic_numbers[~batch.mask] == 0)


def test_oversampling_repeats_a_dataset_in_the_draw(pack):
    plain = ResidentBatches(pack, "cpu", tokens_per_batch=256)
    mixed = ResidentBatches(pack, "cpu", tokens_per_batch=256, oversample={"mp20": 3})
    crystals = lambda d: sum(int(b.batch.pbc[b.draw].sum()) for b in d.buckets)  # noqa: E731
    assert crystals(mixed) == 3 * crystals(plain)
    with pytest.raises(ValueError, match="unknown dataset label"):
        ResidentBatches(pack, "cpu", oversample={"mp-20": 3})
    torch.manual_seed(0)
    drawn = torch.cat([mixed.sample().dataset_idx for _ in range(300)])
    share = (drawn == dataset_label("mp20")).float().mean().item()
    assert 0.6 < share < 0.9  # 24 x 3 crystals against 24 molecules: 75 % of draws


def test_wsd_schedule_warms_up_holds_and_decays():
    s = WSDSchedule(1e-3, warmup_steps=10, decay_fraction=0.2)
    assert s.lr(0, 0.0) == pytest.approx(1e-4) and s.lr(9, 0.01) == pytest.approx(1e-3)
    assert s.lr(500, 0.5) == pytest.approx(1e-3) and s.lr(500, 0.79) == pytest.approx(1e-3)
    assert s.lr(900, 0.9) == pytest.approx(5e-4) and s.lr(1000, 1.0) == pytest.approx(0.0)
    assert WSDSchedule(1e-3, 10, 0.2, final_fraction=0.1).lr(1000, 1.0) == pytest.approx(1e-4)


def test_ema_warms_up_then_averages_at_its_decay():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = EMA(layer, decay=0.999)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for _ in range(1000):
        ema.update()
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    # with the warm-up the initial weights keep a share of about 1e-21 after 1,000 updates;
    # a plain 0.999 average would keep 0.999^1000 = 37 % of them
    assert torch.all(target.weight > 0.99)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10_000, 0.999) == 0.999


def test_fit_trains_a_vae_on_resident_batches(pack):
    torch.manual_seed(0)
    vae = AllAtomVAE(small_config(weight_distance=10.0).vae)
    data = ResidentBatches(pack, "cpu", tokens_per_batch=512)
    result = fit(lambda b: vae.loss(b, train=True), vae.parameters(), data, schedule=WSDSchedule(2e-3, 20, 0.2),
                 max_steps=150, compile=False, log_every=25, log=lambda _: None)
    assert result.steps == 150 and result.systems > 150 * 8
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < 0.5 * first, result.losses


def test_fit_stops_at_a_deadline_already_passed(pack):
    import time

    vae = AllAtomVAE(small_config().vae)
    result = fit(lambda b: vae.loss(b), vae.parameters(), ResidentBatches(pack, "cpu", tokens_per_batch=256),
                 schedule=WSDSchedule(1e-3), minutes=10, compile=False, stop_at=time.perf_counter() - 1)
    assert result.steps == 0


def test_fit_refuses_to_run_without_a_budget(pack):
    vae = AllAtomVAE(small_config().vae)
    with pytest.raises(ValueError, match="budget"):
        fit(lambda b: vae.loss(b), vae.parameters(), ResidentBatches(pack, "cpu"), schedule=WSDSchedule(1e-3))


def test_closed_form_3x3_inverse_and_quaternion_rotations():
    m = torch.randn(64, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inverse_3x3(m), torch.linalg.inv(m)) and torch.allclose(det_3x3(m), torch.det(m))
    r = random_rotation(256, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(256, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(256, dtype=torch.float64))
    # Haar measure: the mean rotation is zero and E[trace] = 0 (trace = 1 + 2 cos(angle))
    big = random_rotation(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert big.mean(0).abs().max() < 0.03
    assert abs(big.diagonal(dim1=1, dim2=2).sum(-1).mean().item()) < 0.05


def test_kabsch_rmsd_ignores_rotation_and_distance_errors_ignore_both(qm9_systems):
    dense = TensorPack.from_systems(qm9_systems[:6]).dense(torch.arange(6))
    pos, mask = dense.pos.double(), dense.mask
    rotated = pos @ random_rotations(6, seed=2).transpose(1, 2)
    moved = (rotated + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)) * mask[..., None]
    assert kabsch_rmsd(moved, pos, mask).max() < 1e-6
    assert short_distance_errors(moved, pos, mask).max() < 1e-6
    jitter = pos + 0.05 * torch.randn_like(pos, dtype=torch.float64) * mask[..., None]
    assert 0.03 < kabsch_rmsd(jitter, pos, mask).mean() < 0.12
    weight = mask.double()
    assert short_distance_error(moved, pos, weight, 2.0) < 1e-10
    assert short_distance_error(jitter, pos, weight, 2.0) > 1e-4


def test_remote_trains_writes_a_lineage_that_loads_and_samples(pack, tmp_path):
    """The GPU command end to end on CPU: packs in; lineage, reconstructions and samples out; nothing imported
    that the GPU machine lacks (it has torch and Lightning, not the chemistry or data stack)."""
    packs = tmp_path / "packs"
    pack.save(packs / "train.pt")
    pack.save(packs / "val.pt")
    config = Path(__file__).parents[2] / "chemgen" / "configs" / "adit-tiny.yaml"
    out = tmp_path / "out"
    out.mkdir()
    # as on the GPU machine: the chemistry and data stack cannot be imported (None in sys.modules raises ImportError)
    script = ("import sys, runpy; sys.argv = sys.argv[1:];"
              "sys.modules.update(dict.fromkeys(('torch_geometric', 'pandas', 'pyarrow', 'rdkit', 'pymatgen', 'mlflow',"
              " 'prefect')));"
              "runpy.run_module('chemgen.training.standalone', run_name='__main__')")
    args = [sys.executable, "-c", script, "remote", "--packs", str(packs), "--out", str(out), "--config", str(config),
            "--model", "adit", "--minutes", "vae=5,dit=0.05", "--deadline-minutes", "1.0", "--samples", "6", "--sample-batch", "3", "--steps", "4",
            "--tokens-per-batch", "256", "--data", "qm9@abc,mp20@def"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["vae"]["steps"] > 0 and report["dit"]["steps"] > 0
    assert report["vae"]["seconds"] < 20  # 5 minutes asked, cut to the deadline less the reserve and the DiT
    assert 0 <= report["vae_diagnostics"]["atom_type_accuracy"] <= 1
    assert report["dit"]["latent_scale"] > 0
    assert {"dit_error_molecule@0.99", "dit_error_crystal@0.5"} <= set(report["dit_diagnostics"])
    from chemgen.models.adit.diagnostics import score_reconstructions

    robustness = score_reconstructions(out / "reconstructions.pt")
    assert {"true_edm_atom_stability", "recon_edm_atom_stability", "recon@0.1_edm_atom_stability"} <= set(robustness)
    checkpoint = lineage.load(out / "lineage")
    assert checkpoint.steps == {"vae": report["vae"]["steps"], "dit": report["dit"]["steps"]}
    assert checkpoint.manifest["data"] == ["qm9@abc", "mp20@def"]
    assert len(lineage.runs(out / "lineage")) == 1
    samples = torch.load(out / "samples_qm9.pt", weights_only=True)
    assert samples["mask"].shape[0] == 6 and not samples["periodic"].any()
    # a second run continues the lineage: steps add up and the log grows
    again = tmp_path / "again"
    again.mkdir()
    args[args.index("--out") + 1] = str(again)
    done = subprocess.run(args + ["--init", str(out / "lineage")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    second = lineage.load(again / "lineage")
    assert second.steps["vae"] > checkpoint.steps["vae"] and len(lineage.runs(again / "lineage")) == 2


def test_latent_scale_brings_the_dits_targets_to_unit_variance(pack):
    """A VAE whose latents are spread wide (here x 5) hands the DiT unit-variance targets after the fit,
    and generation multiplies the scale back before decoding; old checkpoints load with scale 1."""
    from chemgen.models.adit import ADiT

    torch.manual_seed(0)
    model = ADiT(small_config())
    with torch.no_grad():
        model.vae.quant_conv.weight[:8] *= 5.0  # the mean half of (mean, logvar)
    dense = pack.dense(torch.arange(len(pack)))
    model.eval()
    before = model.dit_loss(dense)["latent_std"].item()
    scale = model.fit_latent_scale(dense)
    after = model.dit_loss(dense)["latent_std"].item()
    assert scale > 1 and abs(after - 1.0) < 0.1 and before > 2 * after
    state = {k: v for k, v in model.dit.state_dict().items() if k != "latent_scale"}
    fresh = ADiT(small_config())
    fresh.dit.load_state_dict(state)
    assert float(fresh.dit.latent_scale) == 1.0


def test_remote_refuses_unknown_stages_and_models(tmp_path):
    from chemgen.models.specs import generator_class
    from chemgen.training.standalone import per_stage

    assert per_stage("vae=2.5,dit=4", ("vae", "dit"), "minutes", every_stage=True) == {"vae": 2.5, "dit": 4.0}
    assert per_stage("dit=1e-3", ("vae", "dit"), "lr", every_stage=False) == {"dit": 1e-3}
    with pytest.raises(SystemExit, match="STAGE=NUMBER"):
        per_stage("decoder=3", ("vae", "dit"), "minutes", every_stage=True)
    with pytest.raises(SystemExit, match="missing dit"):
        per_stage("vae=3", ("vae", "dit"), "minutes", every_stage=True)
    with pytest.raises(KeyError, match="unknown model"):
        generator_class("gfmdiff-not-yet")


def test_an_interrupted_run_resumes_after_its_finished_stages(pack, tmp_path):
    """A run folder whose VAE stage finished and whose DiT stage was cut: the rerun keeps the VAE's weights
    and steps, trains only the DiT, and the lineage lists both stages as completed."""
    from chemgen.training.stages import train_stages

    config = small_config()
    out = tmp_path / "run"
    model, report = train_stages("adit", config, pack, pack, out, steps={"vae": 3, "dit": 0}, tokens_per_batch=256,
                                 device="cpu", log=lambda line: None)
    first = lineage.load(out / "lineage")
    assert first.manifest["completed_stages"] == ["vae", "dit"] and first.steps == {"vae": 3, "dit": 0}
    manifest = lineage.read_manifest(out / "lineage")
    # pretend the DiT stage never finished: the rerun must skip the VAE and train the DiT
    lineage.save(out / "lineage", first.groups, {**{k: v for k, v in manifest.items() if k not in
                                                    ("format", "dtype", "parameters", "saved_utc", "shards",
                                                     "content_hash")}, "completed_stages": ["vae"]})
    model, report = train_stages("adit", config, pack, pack, out, steps={"vae": 50, "dit": 4}, tokens_per_batch=256,
                                 device="cpu", log=lambda line: None)
    again = lineage.load(out / "lineage")
    assert again.steps == {"vae": 3, "dit": 4} and report["dit"]["steps"] == 4
    assert report["vae"]["steps"] == 3 and report["resumed_after"] == ["vae"]  # the first run's VAE, carried over
    assert all(torch.equal(again.groups["vae"][k], first.groups["vae"][k]) for k in first.groups["vae"])
    assert not all(torch.equal(again.groups["dit"][k], first.groups["dit"][k]) for k in first.groups["dit"])


def test_fit_resumes_from_its_checkpoint_exactly_where_it_stopped(pack, tmp_path):
    from chemgen.models.adit import ADiT

    torch.manual_seed(0)
    model = ADiT(small_config())
    model.vae.train()
    data = ResidentBatches(pack, "cpu", tokens_per_batch=256)
    loss = lambda batch: model.vae.loss(batch, train=True)  # noqa: E731
    first = fit(loss, model.vae.parameters(), data, schedule=WSDSchedule(1e-3, 2, 0.0), max_steps=4, model=model,
                checkpoint_dir=tmp_path / "ckpt", checkpoint_minutes=0.0, log_every=2, log=lambda line: None)
    assert first.steps == 4 and (tmp_path / "ckpt" / "last.ckpt").is_file()
    resumed = fit(loss, model.vae.parameters(), data, schedule=WSDSchedule(1e-3, 2, 0.0), max_steps=6, model=model,
                  checkpoint_dir=tmp_path / "ckpt", log_every=2, log=lambda line: None)
    assert resumed.steps == 6 and resumed.systems > first.systems  # 2 more steps, counters carried over
