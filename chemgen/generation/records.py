"""Generated tensors -> `AtomicSystem` records (numpy only; runs where the model ran).

A sample that cannot become a record (NaN, a lattice with no volume, an unknown
element) is kept as a `Failure` with its reason, so scoring counts it as invalid
instead of silently shrinking the denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chemgen.atoms import AtomicSystem, InvalidSystemError


@dataclass(frozen=True)
class Failure:
    index: int
    reason: str


def to_systems(decoded, dataset: str) -> list[AtomicSystem | Failure]:
    """One record (or a `Failure`) per generated sample, in order."""
    types = decoded.atomic_numbers.cpu().numpy()
    mask = decoded.mask.cpu().numpy()
    pos = decoded.pos.double().cpu().numpy()
    frac = decoded.frac_coords.double().cpu().numpy()
    cell = decoded.cell.double().cpu().numpy()
    periodic = decoded.periodic.cpu().numpy()
    results: list[AtomicSystem | Failure] = []
    for i in range(len(types)):
        keep = mask[i]
        try:
            if periodic[i]:
                system = AtomicSystem.crystal(types[i][keep], frac[i][keep], cell[i], dataset=dataset)
            else:
                system = AtomicSystem.molecule(types[i][keep], pos[i][keep], dataset=dataset)
            results.append(system)
        except (InvalidSystemError, np.linalg.LinAlgError) as err:
            results.append(Failure(i, str(err)))
    return results


def split_failures(systems: list[AtomicSystem | Failure]) -> tuple[list[AtomicSystem | None], list[str | None]]:
    """Records with None in place of failures, and each failure's reason (None for records): what scoring takes."""
    return ([None if isinstance(s, Failure) else s for s in systems],
            [s.reason if isinstance(s, Failure) else None for s in systems])
