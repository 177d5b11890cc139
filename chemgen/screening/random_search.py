"""Random symmetric structures (PyXtal): a space group and Wyckoff positions drawn for each requested composition.

Each try draws one of the request's compositions (`ScreeningRequest.compositions`: charge-balanced with SMACT,
at most ``max_atoms`` per cell), then a space group among those whose Wyckoff sets can hold exactly those atoms
(`pyxtal.symmetry.Group.check_compatible`), and PyXtal places the atoms on randomly chosen Wyckoff positions with
random free parameters, at a volume from the atoms' radii (``volume_factor``) and with minimum distances between
them. This is random structure search under symmetry constraints (AIRSS, Pickard & Needs 2011; PyXtal, Fredericks
et al. 2021): cheap per structure, and a baseline that relaxation turns into real minima surprisingly often.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from chemgen.errors import UsageError
from chemgen.screening.candidates import Candidate, SourceRun
from chemgen.screening.request import ScreeningRequest

VOLUME_FACTOR = 1.1      # PyXtal's default: the cell a little larger than the atoms' volume, for relaxation to shrink
TRIES_PER_CANDIDATE = 10  # a draw PyXtal cannot place (distances) is drawn again, at most this many times on average


@lru_cache(maxsize=1)
def _groups() -> tuple[Any, ...]:
    """PyXtal's space groups 2-230, built once (seconds: their Wyckoff tables)."""
    from pyxtal.symmetry import Group

    return tuple(Group(number) for number in range(2, 231))


@lru_cache(maxsize=4096)
def compatible_groups(counts: tuple[int, ...]) -> tuple[int, ...]:
    """Space groups 2-230 whose Wyckoff positions can hold ``counts`` atoms of each element in one conventional cell
    (P1 is left out: it is no symmetry constraint, and every composition fits it)."""
    return tuple(group.number for group in _groups() if group.check_compatible(list(counts))[0])


def placeable_compositions(request: ScreeningRequest) -> list[tuple[dict[str, int], tuple[int, ...]]]:
    """The request's compositions with the space groups that can hold each; raises `UsageError` when there are
    none (the system is too large for a cell of ``max_atoms``, or nothing balances)."""
    options = [(counts, compatible_groups(tuple(counts[e] for e in request.elements)))
               for counts, _ in request.compositions()]
    options = [(counts, groups) for counts, groups in options if groups]
    if not options:
        raise UsageError(f"{request.system}: no charge-balanced composition of at most {request.max_atoms} atoms "
                         "per cell fits any space group (PyXtal's Wyckoff positions); raise the atoms per cell or "
                         "give a formula")
    return options


def generate(request: ScreeningRequest, n: int, seed: int = 0, volume_factor: float = VOLUME_FACTOR,
             log: Any = None) -> SourceRun:
    """``n`` random symmetric structures of the request's compositions (fewer if PyXtal fails too often). Raises
    `UsageError` when no composition of the request fits any space group within its atoms per cell."""
    import warnings

    import numpy as np
    from pyxtal import pyxtal

    from chemgen.atoms import AtomicSystem

    start = time.perf_counter()
    options = placeable_compositions(request)
    rng = np.random.default_rng(seed)
    candidates, failures, attempts = [], [], 0
    while len(candidates) < n and attempts < TRIES_PER_CANDIDATE * n:
        attempts += 1
        counts, groups = options[int(rng.integers(len(options)))]
        group = int(groups[int(rng.integers(len(groups)))])
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, group, list(counts), [counts[e] for e in counts], factor=volume_factor,
                                    random_state=int(rng.integers(2**31)))
            if not crystal.valid:
                raise RuntimeError("no placement with the minimum distances")
            structure = crystal.to_pymatgen()
        except Exception as error:  # noqa: BLE001 - PyXtal's failures are draws to repeat, counted
            failures.append(f"space group {group}, {counts}: {type(error).__name__}: {error}"[:200])
            continue
        name = "".join(f"{e}{c}" for e, c in counts.items())
        candidates.append(Candidate(AtomicSystem.from_pymatgen(structure, material_id=f"rss-{len(candidates)}"),
                                    "random", f"{name} in space group {group} (PyXtal)",
                                    extra={"drawn_space_group": group}))
        if log is not None and len(candidates) % 50 == 0:
            log(f"random: {len(candidates)} of {n} structures ({attempts} draws)")
    return SourceRun("random", candidates, attempts, time.perf_counter() - start, failures,
                     note=f"{len(options)} compositions with compatible space groups")
