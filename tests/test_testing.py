"""`chemgen.testing.assert_equivariant` must be able to fail: functions that break one symmetry each (rotation,
parity, translation, the atoms' order) are caught exactly there, and an equivariant one passes at float64
rounding."""

from __future__ import annotations

import pytest
import torch

from chemgen.testing import (
    ATOM_INVARIANTS,
    MASK,
    PAIR_INVARIANTS,
    POSITIONS,
    SYSTEM_INVARIANTS,
    VECTORS,
    assert_equivariant,
    equivariance_errors,
    random_rotations,
)

FIELDS_IN = (POSITIONS, ATOM_INVARIANTS, MASK)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two point clouds of 5 and 3 atoms padded to 5, off-centre, with 2 invariant channels per atom."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    pos = (torch.randn(2, 5, 3, generator=g, dtype=torch.float64) + 2.0) * mask[..., None]
    h = torch.randn(2, 5, 2, generator=g, dtype=torch.float64) * mask[..., None]
    return pos, h, mask


def centred(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(pos.dtype)
    return (pos - (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)) * m


def equivariant(pos, h, mask):
    """Centred positions scaled by an invariant (vectors), distances (pair invariants), a pooled invariant."""
    x = centred(pos, mask)
    radius = x.norm(dim=-1, keepdim=True)
    distances = torch.cdist(pos, pos)[..., None] * (mask[:, :, None] & mask[:, None, :])[..., None]
    return x * (1 + h[..., :1]), radius + h, distances, (radius * mask[..., None]).sum(1)


EQUIVARIANT_OUT = (VECTORS, ATOM_INVARIANTS, PAIR_INVARIANTS, SYSTEM_INVARIANTS)


def reads_a_coordinate(pos, h, mask):
    """An "invariant" that is the x coordinate of the centred positions: any rotation changes it."""
    return centred(pos, mask)[..., :1] + h


def chiral(pos, h, mask):
    """A pseudoscalar, det(sum_i r_i x_i, sum_i r_i^2 x_i, sum_i r_i^3 x_i) of the centred positions x (r = |x|):
    blind to rotations and to the atoms' order, its sign flips under parity."""
    x = centred(pos, mask)
    r = x.norm(dim=-1, keepdim=True)
    volume = torch.linalg.det(torch.stack([(r ** k * x).sum(1) for k in (1, 2, 3)], dim=1))   # (B,)
    return volume[:, None, None] * mask[..., None] + h


def not_centred(pos, h, mask):
    """Positions returned as vectors: right under rotations, wrong under translations."""
    return pos * (1 + h[..., :1])


def reads_the_order(pos, h, mask):
    """An invariant that depends on an atom's slot, not on the atom."""
    return h + torch.arange(h.shape[1], dtype=h.dtype)[None, :, None] * mask[..., None]


@pytest.mark.parametrize(("fn", "field_out", "broken"), [
    (reads_a_coordinate, ATOM_INVARIANTS, {"rotation", "rotation+parity", "rotation+translation",
                                           "rotation+parity+translation"}),
    (chiral, ATOM_INVARIANTS, {"rotation+parity", "rotation+parity+translation"}),
    (not_centred, VECTORS, {"rotation+translation", "rotation+parity+translation"}),
    (reads_the_order, ATOM_INVARIANTS, {"permutation"}),
])
def test_a_planted_break_is_caught_exactly_where_it_is(batch, fn, field_out, broken):
    errors = equivariance_errors(fn, batch, FIELDS_IN, (field_out,))
    assert {case for case, err in errors.items() if err > 1e-6} == broken
    assert max(err for case, err in errors.items() if case not in broken) < 1e-12
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(fn, batch, FIELDS_IN, (field_out,), tolerance=1e-10)


def test_an_equivariant_function_passes_at_float64_rounding(batch):
    worst = assert_equivariant(equivariant, batch, FIELDS_IN, EQUIVARIANT_OUT, tolerance=1e-12, ntrials=3)
    assert 0 <= worst < 1e-12
    errors = equivariance_errors(equivariant, batch, FIELDS_IN, EQUIVARIANT_OUT)
    assert set(errors) == {"rotation", "rotation+parity", "rotation+translation", "rotation+parity+translation",
                           "permutation"}


def test_translated_padding_is_zeroed_before_the_call(batch):
    """A translation moves every row, padding included; the function must see zeros there again."""
    def padding_must_be_zero(pos, h, mask):
        assert torch.all(pos[~mask] == 0)
        return centred(pos, mask)

    assert_equivariant(padding_must_be_zero, batch, FIELDS_IN, (VECTORS,), tolerance=1e-12)


def test_rotations_are_seeded_orthogonal_and_improper_on_request():
    r = random_rotations(64, seed=3)
    assert torch.equal(r, random_rotations(64, seed=3)) and not torch.equal(r, random_rotations(64, seed=4))
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(64, dtype=torch.float64), atol=1e-12)
    improper = random_rotations(64, seed=3, parity=True)
    assert torch.allclose(torch.linalg.det(improper), torch.tensor([1.0, -1.0] * 32, dtype=torch.float64), atol=1e-12)
    before = torch.random.get_rng_state()
    random_rotations(2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)   # the global RNG is left as it was
