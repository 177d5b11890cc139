"""Bond perception from 3D coordinates for molecules.

Two protocols, named as the scores that use them are named (`chemgen.scoring.molecules`):

``"edm"``
    EDM's distance table (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``). A pair of atoms at
    distance ``d`` is bonded with order 1, 2 or 3 when ``100 d`` (pm) is shorter than the
    tabulated single / double / triple bond length plus a margin of 10 / 5 / 3 pm; the margins
    were tuned by EDM's authors to maximise the stability of true QM9 molecules. Every pair is
    judged on its own: there is no pruning of the resulting graph.
``"rdkit"``
    RDKit's ``rdDetermineBonds`` (a port of xyz2mol, Kim & Kim 2015): `DetermineConnectivity`
    (connect-the-dots with covalent radii) then `DetermineBondOrders` for a neutral molecule
    (``charge=0``), which may place formal charges on atoms (zwitterions) but keeps the total
    charge zero. When no assignment exists it raises; `perceive_bonds` turns that into a
    `BondPerceptionError` carrying RDKit's reason, so a caller can count the molecule as
    failed and go on.

Deviations from EDM's code, none of which changes a QM9 result:

* A pair missing from the single-bond table gets order 0 (EDM raises ``KeyError`` unless
  ``check_exists=True``, which its GEOM path sets). QM9's elements H, C, N, O, F are all tabulated.
* The tables are symmetric. EDM's double-bond table lists C=S under C only, so its answer
  depends on argument order; every EDM call that can meet sulphur (GEOM) sorts the pair with
  C first, which is what the symmetric table gives.
* Distances are computed in float64 from the coordinates given; EDM's tensors are float32.
  Over all 130,831 QM9 molecules, float32 distances change no bond order (measured).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np

from chemgen.atoms import ATOMIC_NUMBERS, MAX_ATOMIC_NUMBER, AtomicSystem
from chemgen.errors import ChemgenError, UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rdkit.Chem import Mol

BondProtocol = Literal["edm", "rdkit"]
BOND_PROTOCOLS: tuple[str, ...] = ("edm", "rdkit")

# ---------------------------------------------------------------------------- EDM's tables
# Typical bond lengths in pm (EDM's sources: wiredchemist.com and chemistry-reference.com
# tables). Each unordered pair is listed once.
SINGLE_BOND_PM: MappingProxyType[tuple[str, str], int] = MappingProxyType({
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("H", "B"): 119, ("H", "Si"): 148, ("H", "P"): 144, ("H", "As"): 152, ("H", "S"): 134,
    ("H", "Cl"): 127, ("H", "Br"): 141, ("H", "I"): 161,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("C", "Si"): 185,
    ("C", "P"): 184, ("C", "S"): 182, ("C", "Cl"): 177, ("C", "Br"): 194, ("C", "I"): 214,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136, ("N", "Cl"): 175, ("N", "Br"): 214,
    ("N", "S"): 168, ("N", "I"): 222, ("N", "P"): 177,
    ("O", "O"): 148, ("O", "F"): 142, ("O", "Br"): 172, ("O", "S"): 151, ("O", "P"): 163,
    ("O", "Si"): 163, ("O", "Cl"): 164, ("O", "I"): 194,
    ("F", "F"): 142, ("F", "S"): 158, ("F", "Si"): 160, ("F", "Cl"): 166, ("F", "Br"): 178,
    ("F", "P"): 156, ("F", "I"): 187,
    ("B", "Cl"): 175,
    ("Si", "Si"): 233, ("Si", "S"): 200, ("Si", "Cl"): 202, ("Si", "Br"): 215, ("Si", "I"): 243,
    ("Cl", "Cl"): 199, ("Cl", "P"): 203, ("Cl", "S"): 207, ("Cl", "Br"): 214,
    ("S", "S"): 204, ("S", "Br"): 225, ("S", "P"): 210, ("S", "I"): 234,
    ("Br", "Br"): 228, ("Br", "P"): 222,
    ("P", "P"): 221,
    ("I", "I"): 266,
})
DOUBLE_BOND_PM: MappingProxyType[tuple[str, str], int] = MappingProxyType({
    ("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("C", "S"): 160,
    ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121, ("O", "P"): 150, ("P", "S"): 186,
})
TRIPLE_BOND_PM: MappingProxyType[tuple[str, str], int] = MappingProxyType({
    ("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110,
})
# margin1, margin2, margin3 in pm, "tuned to maximize the stability of the QM9 true samples".
MARGINS_PM: tuple[int, int, int] = (10, 5, 3)


class BondPerceptionError(ChemgenError, ValueError):
    """Bonds could not be perceived for a molecule; the message says why."""


def _threshold_matrix(table: MappingProxyType[tuple[str, str], int], margin: int) -> np.ndarray:
    """(Z+1, Z+1) matrix of ``length + margin`` in pm, -inf for pairs without an entry."""
    matrix = np.full((MAX_ATOMIC_NUMBER + 1, MAX_ATOMIC_NUMBER + 1), -np.inf)
    for (a, b), length in table.items():
        za, zb = ATOMIC_NUMBERS[a], ATOMIC_NUMBERS[b]
        matrix[za, zb] = matrix[zb, za] = length + margin
    matrix.flags.writeable = False
    return matrix


# (3, Z+1, Z+1): thresholds for order >= 1, >= 2 and 3, indexed by atomic numbers.
_EDM_THRESHOLDS_PM = np.stack([
    _threshold_matrix(table, margin)
    for table, margin in zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), MARGINS_PM)
])


def _lookup(table: MappingProxyType[tuple[str, str], int], a: str, b: str) -> int | None:
    return table.get((a, b), table.get((b, a)))


def get_bond_order(symbol1: str, symbol2: str, distance: float) -> int:
    """EDM's bond order for one pair of atoms ``distance`` Angstrom apart (0 = no bond).

    The double and triple tests are nested inside the single test, as in EDM: a pair is
    triple only if it also passes the single and double thresholds.

    Examples
    --------
    >>> get_bond_order("C", "H", 1.09), get_bond_order("C", "O", 1.21), get_bond_order("C", "N", 1.16)
    (1, 2, 3)
    >>> get_bond_order("C", "C", 1.70)
    0
    """
    distance_pm = 100 * distance  # compare in pm exactly as EDM does (not length / 100)
    single = _lookup(SINGLE_BOND_PM, symbol1, symbol2)
    if single is None or not distance_pm < single + MARGINS_PM[0]:
        return 0
    double = _lookup(DOUBLE_BOND_PM, symbol1, symbol2)
    if double is None or not distance_pm < double + MARGINS_PM[1]:
        return 1
    triple = _lookup(TRIPLE_BOND_PM, symbol1, symbol2)
    if triple is None or not distance_pm < triple + MARGINS_PM[2]:
        return 2
    return 3


def pairwise_distances(pos: np.ndarray) -> np.ndarray:
    """(N, N) Euclidean distances, summed over x, y, z in that order (as EDM's pair loop)."""
    diff = pos[:, None, :] - pos[None, :, :]  # (N, N, 3)
    return np.sqrt((diff * diff).sum(axis=-1))


def edm_bond_orders(atomic_numbers: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """EDM bond orders of every pair at once: `get_bond_order` vectorised over all pairs.

    Parameters
    ----------
    atomic_numbers : (N,) int
    pos : (N, 3) float, Angstrom

    Returns
    -------
    (N, N) int64, symmetric with a zero diagonal; entry ``[i, j]`` is 0 (no bond), 1, 2 or 3.
    Non-finite distances compare false and so give 0.
    """
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    distance_pm = 100 * pairwise_distances(np.asarray(pos, dtype=np.float64))  # (N, N)
    thresholds = _EDM_THRESHOLDS_PM[:, numbers[:, None], numbers[None, :]]  # (3, N, N)
    passes = distance_pm[None] < thresholds  # (3, N, N)
    # Nested as in EDM: order = [single] * (1 + [double] * (1 + [triple])).
    orders = passes[0] * (1 + passes[1] * (1 + passes[2].astype(np.int64)))
    np.fill_diagonal(orders, 0)
    return orders


def bonds_from_orders(orders: np.ndarray) -> np.ndarray:
    """(M, 3) rows ``(i, j, order)`` with ``i < j`` from an (N, N) symmetric order matrix."""
    i, j = np.nonzero(np.triu(orders, k=1))
    return np.stack([i, j, orders[i, j]], axis=1).astype(np.int64).reshape(-1, 3)


# ---------------------------------------------------------------------------- RDKit
def rdkit_determine_bonds(system: AtomicSystem, charge: int = 0) -> Mol:
    """An RDKit molecule with bonds from `rdDetermineBonds`, sanitized.

    Hydrogens are explicit atoms (no implicit hydrogens are added). Chirality is not
    embedded, so SMILES written from the result carry no stereo marks (as EDM's).

    Raises
    ------
    BondPerceptionError
        When RDKit finds no bond-order assignment with total charge ``charge`` (for example
        "Final molecular charge (0) does not match input (2)"), an atom has more bonds than any
        valence allows, or sanitization fails. The message is RDKit's.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    if system.pbc:
        raise BondPerceptionError("rdDetermineBonds handles molecules only; this system is periodic")
    mol = system.replace(bonds=None).to_rdkit()
    from rdkit import rdBase

    try:
        with rdBase.BlockLogs():   # the error below carries RDKit's message; its log would repeat it per molecule
            rdDetermineBonds.DetermineConnectivity(mol, charge=charge)
            rdDetermineBonds.DetermineBondOrders(mol, charge=charge, embedChiral=False)
            Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as err:  # RDKit's sanitize errors derive from ValueError
        raise BondPerceptionError(f"rdDetermineBonds: {err}") from err
    return mol


# ---------------------------------------------------------------------------- public entry
def perceive_bonds(system: AtomicSystem, protocol: BondProtocol = "edm") -> AtomicSystem:
    """The system with ``bonds`` perceived from its coordinates (existing bonds are ignored).

    Parameters
    ----------
    system : a molecule (``pbc=False``)
    protocol : ``"edm"`` (distance table) or ``"rdkit"`` (rdDetermineBonds, neutral)

    Returns
    -------
    ``system.replace(bonds=...)``. With ``"rdkit"`` aromatic bonds are stored as order 4
    (`chemgen.atoms.AROMATIC`) and any non-zero formal charges as
    ``properties["formal_charges"]`` (one integer per atom).

    Raises
    ------
    BondPerceptionError
        For a periodic system, or when ``"rdkit"`` finds no neutral assignment.
    """
    if system.pbc:
        raise BondPerceptionError("bond perception from distances is for molecules; this system is periodic")
    if protocol == "edm":
        return system.replace(bonds=bonds_from_orders(edm_bond_orders(system.atomic_numbers, system.pos)))
    if protocol == "rdkit":
        mol = rdkit_determine_bonds(system)
        properties = dict(system.properties)
        charges = [atom.GetFormalCharge() for atom in mol.GetAtoms()]
        if any(charges):
            properties["formal_charges"] = charges
        return system.replace(bonds=AtomicSystem.from_rdkit(mol).bonds, properties=properties)
    raise UsageError(f"unknown bond protocol {protocol!r}; choose from {BOND_PROTOCOLS}")


__all__ = [
    "BOND_PROTOCOLS", "BondPerceptionError", "DOUBLE_BOND_PM", "MARGINS_PM", "SINGLE_BOND_PM",
    "TRIPLE_BOND_PM", "ALLOWED_VALENCES", "IN_EDM_DECODER", "allowed_valence", "bonds_from_orders", "edm_bond_orders", "get_bond_order", "pairwise_distances",
    "perceive_bonds", "rdkit_determine_bonds",
]


# ============================================================================ valences
# EDM's ``allowed_bonds``: the valences (sums of bond orders) that make an atom stable.
ALLOWED_VALENCES: MappingProxyType[str, tuple[int, ...]] = MappingProxyType({
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,),
    "P": (3, 5), "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2), "Bi": (3, 5),
})
_MAX_VALENCE_COLUMN = 1 + max(max(v) for v in ALLOWED_VALENCES.values())
# (Z+1, max+2) bool: _ALLOWED[z, v] for v clipped to the last column, which is always False.
_ALLOWED = np.zeros((MAX_ATOMIC_NUMBER + 1, _MAX_VALENCE_COLUMN + 1), dtype=bool)
for _symbol, _valences in ALLOWED_VALENCES.items():
    _ALLOWED[ATOMIC_NUMBERS[_symbol], list(_valences)] = True
_ALLOWED.flags.writeable = False
# Elements EDM's decoder knows (has a valence rule for)
IN_EDM_DECODER = _ALLOWED.any(axis=1)


def allowed_valence(atomic_numbers: np.ndarray, valences: np.ndarray) -> np.ndarray:
    """(N,) bool: each valence is one EDM allows for its element (False for unknown elements)."""
    columns = np.clip(valences, 0, _MAX_VALENCE_COLUMN)  # larger valences land on the all-False column
    return _ALLOWED[atomic_numbers, columns] & (valences >= 0)
