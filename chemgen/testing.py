"""Equivariance checks for chemgen's E(3) networks, built on e3nn's test utilities.

e3nn's `equivariance_error` draws random rotations (`e3nn.o3.rand_matrix`), with and without parity
(x -> -R x) and with and without a translation of the points, and compares f(g x) with g f(x) output by output.
chemgen's networks read padded batches, so `equivariance_errors` adds the two things e3nn does not know:

* the padding: positions are zeroed again at padded atoms after each transformation (a translation would
  otherwise move the padding, which the models may assume is zero), using the batch's mask argument;
* the atoms' order: a random permutation of the atom axes (per atom (B, N, ...), both axes of pairs
  (B, N, N, ...), padding included, the mask with them) must permute the outputs the same way.

Each argument and output is described by a `Field`: e3nn's irreps for how a rotation acts on its last axis
("cartesian_points" for positions, which translations move too; "1o" for vectors such as displacements,
predicted noise and centred positions; "0e" for invariants, one per channel) and how many atom axes follow the
batch axis. Rotations are applied in float64, and e3nn's Wigner matrices are built in the default dtype, so the
checks run with float64 as the default dtype (in float32 e3nn's "1o" matrix is off by ~1e-7); give float64
models and inputs where the module allows it, so that tolerances can be ~1e-10.

This module is for tests: it is the only place in chemgen that imports e3nn (the library's models are plain
torch, see `chemgen.models.gfmdiff.dtn`), so training needs torch alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from e3nn import o3
from e3nn.util.test import equivariance_error

__all__ = [
    "ATOM_INVARIANTS",
    "MASK",
    "PAIR_INVARIANTS",
    "POSITIONS",
    "SYSTEM_INVARIANTS",
    "VECTORS",
    "Field",
    "assert_equivariant",
    "equivariance_errors",
    "random_rotations",
]


@dataclass(frozen=True)
class Field:
    """How one argument or output of a padded batch transforms.

    ``irreps``: e3nn's name of the representation on the last axis ("cartesian_points", "1o", "0e": "0e" is
    expanded to one scalar per channel), or None for the padding mask (B, N) bool, which no rotation touches
    and which zeroes the "cartesian_points" arguments at padding before every call.
    ``atom_axes``: atom axes after the batch axis, permuted together: 1 per atom (B, N, ...), 2 per pair
    (B, N, N, ...), 0 per system (B, ...).
    """

    irreps: str | None
    atom_axes: int = 1

    def e3nn_irreps(self, value: torch.Tensor) -> str | o3.Irreps | None:
        if self.irreps == "0e":
            return o3.Irreps(f"{value.shape[-1]}x0e")
        return self.irreps if self.irreps in (None, "cartesian_points") else o3.Irreps(self.irreps)


POSITIONS = Field("cartesian_points")   # (B, N, 3): rotated, reflected, translated
VECTORS = Field("1o")                   # (B, N, 3): rotated, reflected, not translated
ATOM_INVARIANTS = Field("0e")           # (B, N, F)
PAIR_INVARIANTS = Field("0e", 2)        # (B, N, N, K)
SYSTEM_INVARIANTS = Field("0e", 0)      # (B, F)
MASK = Field(None)                      # (B, N) bool, True for real atoms

CASES = {(0, False): "rotation", (1, False): "rotation+parity", (0, True): "rotation+translation",
         (1, True): "rotation+parity+translation"}


@contextmanager
def _float64_and_seeded(seed: int) -> Iterator[None]:
    """float64 default dtype (e3nn's Wigner matrices) and a seeded global RNG (e3nn draws from it), both restored."""
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def random_rotations(n: int, seed: int = 0, parity: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, 3, 3) uniform random rotations (e3nn's `o3.rand_matrix`), reproducible by ``seed`` without touching
    the global RNG; ``parity`` makes every other one improper (times -1, a rotation composed with inversion)."""
    with _float64_and_seeded(seed):
        rotations = o3.rand_matrix(n, dtype=torch.float64)
    if parity:
        rotations[1::2] = -rotations[1::2]
    return rotations.to(dtype)


def _as_list(out: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _permute(value: torch.Tensor, field: Field, perm: torch.Tensor) -> torch.Tensor:
    for axis in range(1, 1 + field.atom_axes):
        value = value.index_select(axis, perm.to(value.device))
    return value


def _masked(fn: Callable, fields_in: Sequence[Field]) -> Callable:
    """fn with positions zeroed at padding first (the mask is the argument whose field is `MASK`)."""
    mask_at = next((k for k, f in enumerate(fields_in) if f == MASK), None)
    if mask_at is None:
        return fn

    def wrapped(*args: torch.Tensor):
        mask = args[mask_at]
        args = [a * mask[..., None].to(a.dtype) if f.irreps == "cartesian_points" else a
                for a, f in zip(args, fields_in)]
        return fn(*args)

    return wrapped


def equivariance_errors(fn: Callable, args: Sequence[torch.Tensor], fields_in: Sequence[Field],
                        fields_out: Sequence[Field], ntrials: int = 2, seed: int = 0,
                        permutation: bool = True) -> dict[str, float]:
    """Worst |f(g x) - g f(x)| over ``ntrials`` draws of g, by kind of g: "rotation", "rotation+parity",
    "rotation+translation", "rotation+parity+translation" (e3nn's `equivariance_error`; translation only where
    an argument is "cartesian_points") and "permutation" of the atoms (``permutation``, needs a `MASK` argument
    to know N). ``fn`` takes ``args`` positionally and returns one tensor or a sequence, described by
    ``fields_out``."""
    if len(args) != len(fields_in):
        raise ValueError(f"{len(args)} arguments but {len(fields_in)} fields_in")
    fn = _masked(fn, fields_in)
    irreps_in = [f.e3nn_irreps(a) for a, f in zip(args, fields_in)]
    with _float64_and_seeded(seed):
        outputs = _as_list(fn(*args))
        if len(outputs) != len(fields_out):
            raise ValueError(f"fn returned {len(outputs)} outputs but {len(fields_out)} fields_out were given")
        irreps_out = [f.e3nn_irreps(o) for o, f in zip(outputs, fields_out)]
        errors = equivariance_error(fn, list(args), irreps_in, irreps_out, ntrials=ntrials)
        worst = {CASES[int(parity), bool(translated)]: float(err.max()) for (parity, translated), err in errors.items()}
        if permutation:
            worst["permutation"] = _permutation_error(fn, args, fields_in, fields_out, outputs, ntrials)
    return worst


def _permutation_error(fn: Callable, args: Sequence[torch.Tensor], fields_in: Sequence[Field],
                       fields_out: Sequence[Field], outputs: Sequence[torch.Tensor], ntrials: int) -> float:
    masks = [a for a, f in zip(args, fields_in) if f == MASK]
    if not masks:
        raise ValueError("a permutation check needs the mask argument (Field MASK) to know the number of atoms")
    worst = 0.0
    for _ in range(ntrials):
        perm = torch.randperm(masks[0].shape[1])
        moved = _as_list(fn(*(_permute(a, f, perm) for a, f in zip(args, fields_in))))
        for got, out, field in zip(moved, outputs, fields_out):
            expected = _permute(out, field, perm)
            worst = max(worst, (got.detach().double() - expected.detach().double()).abs().max().item())
    return worst


def assert_equivariant(fn: Callable, args: Sequence[torch.Tensor], fields_in: Sequence[Field],
                       fields_out: Sequence[Field], tolerance: float, ntrials: int = 2, seed: int = 0,
                       permutation: bool = True) -> float:
    """`equivariance_errors`, failing when any kind of g gives an error above ``tolerance``; returns the worst."""
    __tracebackhide__ = True   # pytest: show the caller's line, not this one
    errors = equivariance_errors(fn, args, fields_in, fields_out, ntrials, seed, permutation)
    failing = {case: err for case, err in errors.items() if not err <= tolerance}   # NaN fails too
    assert not failing, (f"not equivariant within {tolerance:.1e}: "
                         + ", ".join(f"{case} {err:.2e}" for case, err in errors.items()))
    return max(errors.values())
