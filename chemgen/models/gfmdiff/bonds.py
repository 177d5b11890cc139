"""EDM's bond rule in torch, on the tables of `chemgen.bonds` (the one copy of the numbers).

GFMDiff diffuses each atom's valence as a node feature and its GFLoss asks whether two atoms are close
enough to bond; both read the bond lengths (pm) and margins (10 / 5 / 3 pm) of EDM's ``bond_analyze.py``.
"""

from __future__ import annotations

import torch

from chemgen.atoms import ATOMIC_NUMBERS, MAX_ATOMIC_NUMBER
from chemgen.bonds import DOUBLE_BOND_PM, MARGINS_PM, SINGLE_BOND_PM, TRIPLE_BOND_PM

QM9_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)  # H, C, N, O, F: the one-hot order of EDM and GFMDiff


def edm_thresholds_pm() -> torch.Tensor:
    """(3, Z+1, Z+1) float64: ``length + margin`` (pm) for bond order >= 1, >= 2 and 3, -inf where untabulated."""
    out = torch.full((3, MAX_ATOMIC_NUMBER + 1, MAX_ATOMIC_NUMBER + 1), -torch.inf, dtype=torch.float64)
    for k, (table, margin) in enumerate(zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), MARGINS_PM)):
        for (a, b), length in table.items():
            za, zb = ATOMIC_NUMBERS[a], ATOMIC_NUMBERS[b]
            out[k, za, zb] = out[k, zb, za] = length + margin
    return out


def pair_distances(pos: torch.Tensor) -> torch.Tensor:
    """(B, N, N) Euclidean distances from differences (not cdist's matrix-product shortcut, which loses digits)."""
    return (pos[:, :, None] - pos[:, None]).norm(dim=-1)


def edm_bond_orders(atomic_numbers: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                    thresholds_pm: torch.Tensor) -> torch.Tensor:
    """(B, N, N) long: EDM's order of every pair of real atoms (0 none, 1, 2, 3), as `chemgen.bonds.edm_bond_orders`.

    The tests are nested as in EDM: order = [single] (1 + [double] (1 + [triple])).
    """
    distance_pm = 100 * pair_distances(pos.to(thresholds_pm.dtype))                      # (B, N, N)
    z = atomic_numbers
    passes = distance_pm[:, None] < thresholds_pm[:, z[:, :, None], z[:, None, :]].transpose(0, 1)  # (B, 3, N, N)
    orders = passes[:, 0] * (1 + passes[:, 1] * (1 + passes[:, 2].long()))
    n = mask.shape[1]
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)
    return orders * pair


def edm_valence(atomic_numbers: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                thresholds_pm: torch.Tensor) -> torch.Tensor:
    """(B, N) long: each atom's sum of EDM bond orders over all other atoms (its valence under EDM's rule).

    GFMDiff's diffused "degree" is RDKit's ``GetTotalValence`` of the QM9 SDF molecule, i.e. this same sum of
    bond orders, taken there from the file's bonds; chemgen's records carry no bonds, so it is perceived from
    the clean positions, which gives the SDF valence for about 99 % of QM9 atoms (EDM's atom stability of the data).
    """
    return edm_bond_orders(atomic_numbers, pos, mask, thresholds_pm).sum(-1)


def bond_cutoffs_angstrom(elements: tuple[int, ...] = QM9_ELEMENTS) -> torch.Tensor:
    """(K, K) float64 over ``elements``: the longest distance (A) at which EDM's rule bonds the pair at any
    order, i.e. max_k (length_k + margin_k) / 100; -inf for pairs that never bond (GFLoss's ``is_bond`` test)."""
    z = torch.tensor(elements)
    return edm_thresholds_pm()[:, z[:, None], z[None, :]].amax(0) / 100
