"""SpecFormer on real xTB spectra: the reference geometry (139 patches per IR/Raman spectrum), one model for any
set of modalities (an absent spectrum cannot move the embedding), masked-patch pretraining that learns, InfoNCE,
config validation; and the spectra store as tensors (shapes, broadening equal to `broaden`, band areas, splits).

Networks are tiny (d_model 16, 1 layer) but keep the real patch/stride geometry."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from torch import nn

from chemgen.config import ConfigError, from_dict
from chemgen.errors import UsageError
from chemgen.models.diffspectra.specformer import (
    UNIT_SCALE,
    MaskedBatchNorm,
    SpecFormer,
    SpecFormerConfig,
    drop_modalities,
    info_nce,
    mask_patches,
    transform_spectra,
)
from chemgen.models.diffspectra.spectra_tensors import (
    broaden_packed,
    load_spectra_tensors,
)
from chemgen.spectra import broadening
from chemgen.spectra.shards import SpectraStoreError, read_table

torch.set_num_threads(1)


def tiny(**changes) -> SpecFormerConfig:
    base = {"d_model": 16, "n_layers": 1, "n_heads": 4, "d_ff": 32, "output_dim": 32, "modality_dropout": 0.0}
    return SpecFormerConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def train16():
    """The first 16 good molecules of the train split, broadened."""
    return load_spectra_tensors(split="train", limit=16)


@pytest.fixture(scope="module")
def spectra(train16) -> dict[str, torch.Tensor]:
    return {k: v[:6] for k, v in train16.spectra().items()}


# ---------------------------------------------------------------------------- geometry and shapes
def test_reference_geometry_gives_139_tokens_per_ir_and_raman_spectrum(spectra):
    config = SpecFormerConfig()
    assert config.num_patches == (139, 139) and config.num_tokens == 278
    assert config.num_masked == (14, 14)  # MolSpectra: 139 - int(139 * 0.9)
    assert SpecFormerConfig.for_modalities("uv", "ir", "raman").num_patches == (69, 139, 139)

    model = SpecFormer(tiny()).eval()
    x, present = model.prepare(spectra, None)
    patches = model.patchify(x)
    assert [tuple(p.shape) for p in patches] == [(6, 139, 50), (6, 139, 50)]
    # patch t covers points [25 t, 25 t + 50): the last one ends at 3,500, the grid's last index
    torch.testing.assert_close(patches[0][:, 138], x[0][:, 3450:3500])
    h, c = model.encode(patches, present)
    assert h.shape == (6, 278, 16) and c.shape == (6, 32)


def test_output_shape_for_ir_and_raman_ir_only_and_raman_only(spectra):
    model = SpecFormer(tiny()).eval()
    both = model(spectra)
    ir_only = model({"ir": spectra["ir"]})
    raman_only = model([None, spectra["raman"]])
    for out in (both, ir_only, raman_only):
        assert out.shape == (6, 32) and torch.isfinite(out).all()
    # three different conditions, not one
    assert not torch.allclose(both, ir_only, atol=1e-3) and not torch.allclose(ir_only, raman_only, atol=1e-3)
    full = SpecFormer(SpecFormerConfig()).eval()
    assert full(spectra).shape == (6, 256)


def test_input_transform_is_log10_of_scaled_spectrum():
    x = torch.tensor([0.0, 1.0, 10.0, -3.0])
    torch.testing.assert_close(transform_spectra(x, UNIT_SCALE),
                               torch.log10(1 + UNIT_SCALE * torch.tensor([0.0, 1.0, 10.0, 0.0])))
    assert SpecFormerConfig().input_scale == pytest.approx((100 / math.log(10),) * 2)


# ---------------------------------------------------------------------------- missing modalities
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_absent_modality_values_do_not_change_the_embedding(spectra, mode):
    torch.manual_seed(0)
    model = SpecFormer(tiny())
    model.train(mode == "train")
    present = torch.tensor([[True, True], [True, False], [False, True], [True, False], [False, True], [True, True]])
    base = model(spectra, present)
    perturbed = {k: v.clone() for k, v in spectra.items()}
    perturbed["raman"][present[:, 1].logical_not()] = torch.rand(2, 3501) * 1e3
    perturbed["ir"][present[:, 0].logical_not()] = float("nan")
    again = model(perturbed, present)
    assert torch.equal(base, again)
    # a present spectrum does move it
    moved = {k: v.clone() for k, v in spectra.items()}
    moved["raman"][0] = moved["raman"][0].flip(0)
    assert not torch.allclose(model(moved, present)[0], base[0], atol=1e-4)


@pytest.mark.parametrize("kept", ["ir", "raman"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_spectrum_through_the_joint_model_is_the_single_modality_model(spectra, kept, mode):
    """Rows with one spectrum get what the reference's one-modality SpecFormer, with the matching weights,
    gives them: absent tokens are out of attention, out of the BatchNorm statistics and out of the head."""
    torch.manual_seed(0)
    joint = SpecFormer(tiny())
    i = ("ir", "raman").index(kept)
    single = SpecFormer(tiny(modalities=(kept,), lengths=(3501,), patch_len=(50,), stride=(25,),
                             input_scale=(UNIT_SCALE,)))
    d = 16 * 139
    with torch.no_grad():
        single.W_P[0].load_state_dict(joint.W_P[i].state_dict())
        single.W_pos[0].copy_(joint.W_pos[i])
        single.layers.load_state_dict(joint.layers.state_dict())
        single.head.weight.copy_(joint.head.weight[:, i * d:(i + 1) * d])
        single.head.bias.copy_(joint.head.bias)
        single.out_norm.load_state_dict(joint.out_norm.state_dict())
    joint.train(mode == "train")
    single.train(mode == "train")
    out = joint({kept: spectra[kept]})
    torch.testing.assert_close(out, single({kept: spectra[kept]}), atol=1e-5, rtol=1e-5)
    norms = [(a, b) for a, b in zip(joint.layers.modules(), single.layers.modules(), strict=True)
             if isinstance(a, MaskedBatchNorm)]
    assert len(norms) == 2
    for a, b in norms:
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)


def test_rows_are_independent_in_eval_mode(spectra):
    model = SpecFormer(tiny()).eval()
    present = torch.tensor([[True, False], [True, True], [False, True], [True, True], [True, False], [True, True]])
    batch = model(spectra, present)
    alone = model({"ir": spectra["ir"][:1]})
    torch.testing.assert_close(batch[:1], alone)


def test_a_row_without_spectra_gets_one_finite_null_embedding(spectra):
    model = SpecFormer(tiny()).eval()
    present = torch.tensor([[False, False], [True, True], [False, False]])
    x = {k: v[:3] for k, v in spectra.items()}
    out = model(x, present)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[2])
    null = model.out_norm(model.head.bias)  # LayerNorm of the head's bias
    torch.testing.assert_close(out[0], null)


def test_masked_batchnorm_is_batchnorm_when_every_token_is_real():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 8) * 3 + 1
    ours, ref = MaskedBatchNorm(8).train(), nn.BatchNorm1d(8).train()
    torch.testing.assert_close(ours(x, torch.ones(5, 7, dtype=torch.bool)), ref(x.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    # with a mask, the statistics are the real tokens' alone
    mask = torch.rand(5, 7) > 0.4
    fresh = MaskedBatchNorm(8, affine=True).train()
    out = fresh(x, mask)
    torch.testing.assert_close(out[mask].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[mask].var(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_modality_dropout_hides_spectra_but_never_all():
    g = torch.Generator().manual_seed(0)
    present = torch.ones(20000, 2, dtype=torch.bool)
    present[:2000, 1] = False
    kept = drop_modalities(present, 0.3, g)
    assert not (kept & ~present).any()                    # never invents a spectrum
    assert kept.any(1).all()                              # every row keeps one
    both = kept[2000:].all(1).float().mean().item()
    assert both == pytest.approx(0.49, abs=0.02)          # 0.7^2
    assert kept[2000:, 0].logical_xor(kept[2000:, 1]).float().mean().item() == pytest.approx(0.51, abs=0.02)
    assert kept[:2000, 0].all()                           # the only spectrum of a row is kept
    empty = ~drop_modalities(present, 0.3, g, keep_one=False).any(1)
    assert empty[2000:].float().mean().item() == pytest.approx(0.09, abs=0.015)
    assert torch.equal(drop_modalities(present, 0.0, g), present)


def test_training_mode_applies_modality_dropout(spectra):
    model = SpecFormer(tiny(modality_dropout=0.5)).train()
    a = model(spectra, generator=torch.Generator().manual_seed(1))
    b = model(spectra, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)
    model.eval()  # and never at inference
    torch.testing.assert_close(model(spectra, generator=torch.Generator().manual_seed(1)),
                               model(spectra, generator=torch.Generator().manual_seed(2)))


def test_bad_inputs_are_refused(spectra):
    model = SpecFormer(tiny())
    with pytest.raises(UsageError, match="3501"):
        model({"ir": spectra["ir"][:, :3000]})
    with pytest.raises(UsageError, match="not given"):
        model({"ir": spectra["ir"]}, torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(UsageError, match="uv"):
        model({"uv": torch.zeros(6, 701)})


# ---------------------------------------------------------------------------- pretraining
def test_mask_patches_hides_k_patches_of_each_present_spectrum():
    patches = torch.rand(5, 139, 50) + 1
    present = torch.tensor([True, True, False, True, True])
    masked, hidden = mask_patches(patches, 14, present, torch.Generator().manual_seed(0))
    assert hidden.sum(1).tolist() == [14, 14, 0, 14, 14]
    assert (masked[hidden] == 0).all()
    assert torch.equal(masked[~hidden], patches[~hidden])
    assert not torch.equal(hidden[0], hidden[1])          # drawn per spectrum


def test_masked_reconstruction_loss_falls_on_real_spectra(train16):
    torch.manual_seed(0)
    model = SpecFormer(tiny())
    x = train16.spectra()

    def probe() -> float:  # the same masks before and after training
        return model.masked_reconstruction(x, generator=torch.Generator().manual_seed(1)).loss.item()

    model.eval()
    with torch.no_grad():
        before = probe()
        # the best constant guess of a masked patch: the variance of the transformed spectra, per modality
        patches = model.patchify(model.prepare(x, None)[0])
        constant = sum(p.var().item() for p in patches)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(60):
        result = model.masked_reconstruction(x, generator=g)
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
    assert result.embedding.shape == (16, 32)
    model.eval()
    with torch.no_grad():
        after = probe()
    assert after < 0.5 * before
    assert after < 0.75 * constant


def test_reconstruction_only_scores_present_spectra(spectra):
    model = SpecFormer(tiny()).eval()
    present = torch.tensor([[True, False]] * 6)
    noisy = {"ir": spectra["ir"], "raman": torch.rand(6, 3501) * 50}
    a = model.masked_reconstruction(spectra, present, torch.Generator().manual_seed(0)).loss
    b = model.masked_reconstruction(noisy, present, torch.Generator().manual_seed(0)).loss
    assert torch.equal(a, b) and a > 0
    both = model.masked_reconstruction(spectra, None, torch.Generator().manual_seed(0)).loss
    assert both > a  # the Raman term is added when Raman is there


# ---------------------------------------------------------------------------- InfoNCE
def test_info_nce_prefers_aligned_pairs_and_is_log_b_when_uninformative():
    g = torch.Generator().manual_seed(0)
    mol = torch.randn(16, 32, generator=g)
    spec = mol + 0.1 * torch.randn(16, 32, generator=g)
    aligned = info_nce(spec, mol, 0.07)
    shuffled = info_nce(spec[torch.randperm(16, generator=g)], mol, 0.07)
    assert aligned < 0.1 and shuffled > 1.0
    same = torch.randn(1, 32, generator=g).expand(16, 32)
    assert info_nce(same, same).item() == pytest.approx(math.log(16), abs=1e-5)
    zero = torch.zeros(16, 32)
    assert info_nce(zero, torch.randn(16, 32, generator=g), symmetric=True).item() == pytest.approx(math.log(16), abs=1e-5)


def test_info_nce_is_molspectras_one_sided_loss():
    g = torch.Generator().manual_seed(1)
    mol, spec, tau = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), 0.07
    sim = torch.nn.functional.cosine_similarity(mol[:, None], spec[None], dim=-1) / tau
    reference = (-sim.diagonal() + sim.logsumexp(-1)).mean()          # ctr_loss_fn of torchmdnet/module.py
    torch.testing.assert_close(info_nce(spec, mol, tau), reference)
    other = (-sim.diagonal() + sim.logsumexp(0)).mean()
    torch.testing.assert_close(info_nce(spec, mol, tau, symmetric=True), (reference + other) / 2)
    with pytest.raises(UsageError):
        info_nce(spec, mol[:, :4])


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, match", [
    ({"d_model": 30, "n_heads": 4}, "divisible"),
    ({"modalities": ("ir", "nmr")}, "modalities"),
    ({"modalities": ("ir", "ir")}, "modalities"),
    ({"patch_len": (50,)}, "one value per modality"),
    ({"patch_len": (5000, 50)}, "exceeds"),
    ({"stride": (0, 25)}, "positive"),
    ({"input_scale": (0.0, 1.0)}, "input_scale"),
    ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"mask_ratio": 0.999}, "masks 139 of 139"),
    ({"modality_dropout": 1.0}, "modality_dropout"),
    ({"temperature": 0.0}, "temperature"),
    ({"n_layers": 0}, "n_layers"),
])
def test_bad_config_raises_config_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        SpecFormerConfig(**changes)


def test_config_loads_from_a_yaml_mapping():
    config = from_dict(SpecFormerConfig, {"modalities": ["raman"], "lengths": [3501], "patch_len": [50],
                                          "stride": [25], "input_scale": [1], "d_model": 32})
    assert config.modalities == ("raman",) and config.input_scale == (1.0,) and config.num_patches == (139,)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SpecFormerConfig, {"d_modle": 32})


# ---------------------------------------------------------------------------- the spectra store as tensors
def test_spectra_tensors_of_a_train_slice(train16):
    t = train16
    assert len(t) == 16 and t.ir.shape == t.raman.shape == (16, 3501) and t.ir.dtype == torch.float32
    assert torch.isfinite(t.ir).all() and torch.isfinite(t.raman).all()
    assert (t.ir >= 0).all() and (t.raman >= 0).all() and (t.ir.amax(1) > 0).all()
    assert set(t.split) == {"train"} and len(set(t.qm9_index.tolist())) == 16
    assert all(t.smiles) and all(len(k) == 27 for k in t.inchikey)
    assert (t.order.diff() > 0).all()
    assert int(t.num_atoms.sum()) == len(t.atomic_numbers) == len(t.pos)
    assert set(t.atomic_numbers.tolist()) <= {1, 6, 7, 8, 9}
    torch.testing.assert_close(t.grid_cm1[[0, -1]], torch.tensor([500.0, 4000.0], dtype=torch.float64))
    assert len(t.content_hash) == 64
    pack = t.molecules()
    assert len(pack) == 16
    dense = pack.dense(torch.arange(4))
    assert dense.mask.sum(1).tolist() == t.num_atoms[:4].tolist()
    torch.testing.assert_close(pack.pos[: t.num_atoms[0]].mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def sticks(tensors) -> list[dict]:
    """The stored stick spectra of the molecules in ``tensors``, row for row."""
    from chemgen.spectra.curation import default_folder

    table = read_table(default_folder(), ["order", "frequencies_cm1", "ir_km_mol", "raman_a4_amu"], only_ok=True)
    table = table.filter(pc.is_in(table.column("order"), pa.array(tensors.order.tolist(), pa.int32())))
    by_order = {r["order"]: r for r in table.to_pylist()}
    return [by_order[o] for o in tensors.order.tolist()]


def test_spectra_tensors_equal_reference_broadening(train16):
    for i, row in enumerate(sticks(train16)):
        for kind, column in (("ir", "ir_km_mol"), ("raman", "raman_a4_amu")):
            expected = broadening.broaden(row["frequencies_cm1"], row[column], kind)
            got = getattr(train16, kind)[i].double().numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_ir_band_area_is_the_stick_intensity_inside_the_grid(train16):
    gamma = broadening.FWHM_CM1 / 2
    for i, row in enumerate(sticks(train16)):
        f = np.asarray(row["frequencies_cm1"]) * broadening.XTB_TO_B3LYP_SCALE
        a = np.asarray(row["ir_km_mol"])
        keep = f > 0
        # the part of each Lorentzian between the grid's cell edges 499.5 and 4000.5 cm^-1
        inside = (np.arctan((4000.5 - f[keep]) / gamma) - np.arctan((499.5 - f[keep]) / gamma)) / np.pi
        area = float(train16.ir[i].double().sum())        # 1 cm^-1 steps
        assert area == pytest.approx(float((a[keep] * inside).sum()), rel=2e-3)
        assert area <= a[keep].sum()                       # tails outside the grid are lost
        assert area >= 0.9 * a[keep & (f > 550)].sum()


def test_broaden_packed_handles_imaginary_modes_and_gaussians():
    f = np.array([-30.0, 1000.0, 1500.0, 3000.0, 800.0])
    w = np.array([5.0, 10.0, 0.0, 20.0, 7.0])
    offsets = np.array([0, 4, 4, 5])  # the middle molecule has no modes
    for shape in ("lorentzian", "gaussian"):
        (out,) = broaden_packed(f, offsets, [w], shape=shape)
        assert out.shape == (3, 3501)
        np.testing.assert_allclose(out[0].numpy(), broadening.broaden(f[:4], w[:4], shape=shape), rtol=1e-4,
                                   atol=1e-7)
        assert (out[1] == 0).all()
        np.testing.assert_allclose(out[2].numpy(), broadening.broaden(f[4:], w[4:], shape=shape), rtol=1e-4,
                                   atol=1e-7)


def test_split_filter_and_limit():
    test = load_spectra_tensors(split="test", limit=5)
    assert len(test) == 5 and set(test.split) == {"test"}
    with pytest.raises(UsageError, match="split"):
        load_spectra_tensors(split="validation")


def test_missing_or_empty_store_names_the_folder(tmp_path):
    with pytest.raises(SpectraStoreError, match=re.escape(str(tmp_path / "nowhere"))):
        load_spectra_tensors(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpectraStoreError, match=re.escape(str(tmp_path / "empty")) + ": no good molecules"):
        load_spectra_tensors(tmp_path / "empty")
