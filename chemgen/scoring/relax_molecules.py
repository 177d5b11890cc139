"""Force-field relaxation of generated molecules for the ``edm_mmff`` protocol.

A sampler's coordinates carry noise of a few hundredths to a tenth of an Angstrom. EDM's
distance table judges bond orders with margins of 3-10 pm, so that noise alone makes most
molecules "unstable" even when the sampler meant a perfectly good molecule. A user who wants
usable molecules relaxes them first; `relax_molecule` does that with MMFF94 (UFF where MMFF94
has no parameters) and `chemgen.scoring.molecules` then scores the relaxed geometry with EDM's
unchanged protocol, under its own name ``edm_mmff``. The raw ``edm`` protocol stays what the
literature compares.

Which bonds the force field holds
---------------------------------
A force field needs a bond graph with orders and, for MMFF94, atom types; the generated
coordinates give only positions. The graph comes from EDM's tables, in two steps:

1. **EDM's own bonds** (`chemgen.bonds.edm_bond_orders`) when they already make a molecule:
   every atom has a valence EDM allows and RDKit sanitizes the graph with the hydrogens that
   are there (no implicit ones). The force field then keeps exactly what EDM perceives.
2. Otherwise (noise has pushed a bond past a threshold) **widened EDM connectivity**: a pair is
   a candidate bond when its distance is below 1.3 x its single-bond length in EDM's table
   (the same 1.3 tolerance RDKit's connect-the-dots puts on covalent radii, instead of EDM's
   +10 pm), and candidates are accepted shortest-relative-to-table-length first while neither
   atom exceeds the largest valence EDM allows for its element. Bond orders then come from
   RDKit's ``DetermineBondOrders`` (xyz2mol) for a neutral molecule, formal charges allowed;
   a graph that leaves an unpaired electron is refused.

Why widen: EDM's orders cannot serve as they are once noise is present (a C-C single bond
stretched or squeezed by 0.1 A reads as no bond or a double bond), and its +10 pm connectivity
breaks too: on real QM9 molecules with 0.10 / 0.16 A of RMS noise it loses 13 / 27 % of the
bonds to hydrogen, and 84 / 99 % of molecules change connectivity. A force field on that graph
holds radicals and cannot restore the molecule: relaxing on EDM's strict connectivity gave 15 %
molecule stability at 0.10 A (300 molecules), the widened graph 88 % (the table is in
docs/guides/scoring.md). On clean QM9 geometries the widened graph is EDM's connectivity for every molecule EDM
calls stable (2,000 checked). The graph is a function of the generated coordinates alone, the
same rule for every input; nothing looks at a reference molecule.

What relaxation may do
----------------------
It only moves atoms: the relaxed system has the same atoms, in the same order, with the same
elements; nothing is added (hydrogens are never made implicit or added) or removed. The force
field's graph is discarded after the minimisation: the score comes from EDM's tables on the
new coordinates, so a graph that was wrong shows up as an unstable or invalid molecule.

When relaxation fails
---------------------
(elements outside EDM's tables, no closed-shell bond orders, no MMFF94 or UFF parameters, an
RDKit error, non-finite coordinates after minimisation) the molecule keeps its raw coordinates
and is scored on them, with the reason kept in `Relaxation.failure`. Counting it unstable
instead would make a molecule that EDM already calls stable unstable under ``edm_mmff`` only
because a force field could not type it; scoring the raw geometry means a failed relaxation
never changes a molecule's score in either direction, and the ``relaxed`` fraction says how
many molecules the protocol actually relaxed. The choice does not flatter the numbers: of 500
noisy QM9 molecules at each noise level, 1-9 were not relaxed and none of them was stable on
its raw coordinates.

Relaxation has a cost of its own: on clean DFT geometries of QM9 it lowers EDM molecule
stability from 94 to 88 %, since MMFF94 stretches strained ring C-O and C-N bonds past EDM's
thresholds and evens out the bond alternation of heteroaromatic rings.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, rdDetermineBonds

from chemgen.atoms import ATOMIC_NUMBERS, MAX_ATOMIC_NUMBER, SYMBOLS, AtomicSystem
from chemgen.bonds import (
    ALLOWED_VALENCES,
    SINGLE_BOND_PM,
    allowed_valence,
    bonds_from_orders,
    edm_bond_orders,
    pairwise_distances,
)
from chemgen.errors import ChemgenError

MAX_ITERATIONS = 500  # MMFF94 / UFF minimiser steps: QM9-sized molecules converge in far fewer
CONNECTIVITY_FACTOR = 1.3  # widened bond test: distance < 1.3 x EDM's single-bond length
BOND_ORDER_MAX_ITERATIONS = 10_000  # cap on DetermineBondOrders' search, so no input can hang it

# (Z+1, Z+1) EDM single-bond lengths in pm, NaN for pairs EDM cannot bond.
_SINGLE_PM = np.full((MAX_ATOMIC_NUMBER + 1, MAX_ATOMIC_NUMBER + 1), np.nan)
for (_a, _b), _length in SINGLE_BOND_PM.items():
    _SINGLE_PM[ATOMIC_NUMBERS[_a], ATOMIC_NUMBERS[_b]] = _SINGLE_PM[ATOMIC_NUMBERS[_b], ATOMIC_NUMBERS[_a]] = _length
_SINGLE_PM.flags.writeable = False
# (Z+1,) the largest valence EDM allows per element: at most this many neighbours; 0 = not in EDM's tables.
_MAX_NEIGHBOURS = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=np.int64)
for _symbol, _valences in ALLOWED_VALENCES.items():
    _MAX_NEIGHBOURS[ATOMIC_NUMBERS[_symbol]] = max(_valences)
_MAX_NEIGHBOURS.flags.writeable = False

FORCE_FIELDS = MappingProxyType({"mmff": "MMFF94", "uff": "UFF"})
GRAPHS = MappingProxyType({"edm": "EDM's bonds", "widened": "widened EDM connectivity"})


class RelaxationError(ChemgenError, RuntimeError):
    """A molecule could not be relaxed; the message says why."""


@dataclass(frozen=True)
class Relaxation:
    """How one molecule was relaxed (or why it was not).

    Attributes
    ----------
    force_field : ``"mmff"`` or ``"uff"``; None when the molecule was not relaxed
    graph : ``"edm"`` (EDM's own bonds) or ``"widened"`` (widened EDM connectivity with
        RDKit's bond orders); None when no graph was built
    converged : the minimiser converged within ``max_iterations`` (False when not relaxed)
    displacement : RMSD between the raw and relaxed coordinates after optimal superposition,
        Angstrom (0.0 when not relaxed): how much the shape changed, not where it drifted
    failure : why the molecule was not relaxed, None when it was
    """

    force_field: str | None
    graph: str | None
    converged: bool
    displacement: float
    failure: str | None

    @classmethod
    def failed(cls, reason: str, graph: str | None = None) -> Relaxation:
        return cls(force_field=None, graph=graph, converged=False, displacement=0.0, failure=reason)

    @property
    def relaxed(self) -> bool:
        return self.force_field is not None

    def describe(self) -> str:
        """One line for a per-sample table, e.g. ``"MMFF94 on EDM's bonds"``."""
        if not self.relaxed:
            return f"not relaxed (raw geometry scored): {self.failure}"
        text = f"{FORCE_FIELDS[self.force_field]} on {GRAPHS[self.graph]}"
        return text if self.converged else f"{text}, not converged"


# ============================================================================ the graph
def widened_connectivity(atomic_numbers: np.ndarray, pos: np.ndarray,
                         factor: float = CONNECTIVITY_FACTOR) -> np.ndarray:
    """(N, N) int64 adjacency (1 = bonded) from EDM's single-bond lengths with a wider tolerance.

    A pair is a candidate when ``distance < factor x length`` (EDM's single-bond table); the
    candidates closest to their table length are accepted first, skipping any that would give
    an atom more neighbours than EDM's largest valence for its element. The cap is what keeps a
    squeezed non-bonded neighbour from stealing a hydrogen's only bond.
    """
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    length_pm = _SINGLE_PM[numbers[:, None], numbers[None, :]]  # (N, N), NaN where EDM has no bond
    with np.errstate(invalid="ignore"):
        ratio = 100 * pairwise_distances(np.asarray(pos, dtype=np.float64)) / length_pm  # (N, N)
        candidate = np.triu(ratio < factor, k=1)  # NaN compares False
    i, j = np.nonzero(candidate)
    adjacency = np.zeros((numbers.size, numbers.size), dtype=np.int64)
    degree = np.zeros(numbers.size, dtype=np.int64)
    cap = _MAX_NEIGHBOURS[numbers]
    for k in np.argsort(ratio[i, j], kind="stable"):
        a, b = i[k], j[k]
        if degree[a] < cap[a] and degree[b] < cap[b]:
            adjacency[a, b] = adjacency[b, a] = 1
            degree[a] += 1
            degree[b] += 1
    return adjacency


def _with_bonds(system: AtomicSystem, orders: np.ndarray) -> Chem.Mol:
    """An RDKit molecule of exactly the system's atoms (no implicit hydrogens) with these bonds."""
    return system.replace(bonds=bonds_from_orders(orders)).to_rdkit(sanitize=False)


def _edm_bond_molecule(system: AtomicSystem) -> Chem.Mol | None:
    """Step 1: EDM's bonds and orders when every atom has an allowed valence and RDKit agrees."""
    orders = edm_bond_orders(system.atomic_numbers, system.pos)  # (N, N)
    if not allowed_valence(system.atomic_numbers, orders.sum(axis=1)).all():
        return None
    mol = _with_bonds(system, orders)
    try:
        Chem.SanitizeMol(mol)
    except ValueError:
        return None
    return mol


def _widened_molecule(system: AtomicSystem) -> Chem.Mol:
    """Step 2: widened EDM connectivity, bond orders and formal charges from RDKit (neutral)."""
    mol = _with_bonds(system, widened_connectivity(system.atomic_numbers, system.pos))
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=0, allowChargedFragments=True, embedChiral=False,
                                             maxIterations=BOND_ORDER_MAX_ITERATIONS)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as err:  # sanitize errors and MaxFindBondOrdersItersExceeded
        raise RelaxationError(f"no bond orders on widened EDM connectivity: {err}") from err
    radicals = [a.GetIdx() for a in mol.GetAtoms() if a.GetNumRadicalElectrons()]
    if radicals:
        raise RelaxationError(f"widened EDM connectivity leaves unpaired electrons on atoms {radicals}")
    return mol


def force_field_graph(system: AtomicSystem) -> tuple[Chem.Mol, str]:
    """The sanitized RDKit molecule a force field relaxes, and which graph it holds.

    Returns
    -------
    ``(mol, "edm")`` or ``(mol, "widened")``; ``mol`` has exactly the system's atoms.

    Raises
    ------
    RelaxationError
        For elements outside EDM's tables, or when the widened graph has no closed-shell
        neutral bond orders.
    """
    unknown = sorted({SYMBOLS[z] for z in system.atomic_numbers if _MAX_NEIGHBOURS[z] == 0})
    if unknown:
        raise RelaxationError(f"elements {unknown} are outside EDM's tables")
    mol = _edm_bond_molecule(system)
    if mol is not None:
        return mol, "edm"
    return _widened_molecule(system), "widened"


# ============================================================================ the minimisation
def _minimize(mol: Chem.Mol, max_iterations: int) -> tuple[str, bool]:
    """Minimise ``mol``'s conformer in place with MMFF94, or UFF where MMFF94 lacks parameters."""
    if AllChem.MMFFHasAllMoleculeParams(mol):
        status = AllChem.MMFFOptimizeMolecule(mol, mmffVariant="MMFF94", maxIters=max_iterations)
        force_field = "mmff"
    elif AllChem.UFFHasAllMoleculeParams(mol):
        status = AllChem.UFFOptimizeMolecule(mol, maxIters=max_iterations)
        force_field = "uff"
    else:
        raise RelaxationError("neither MMFF94 nor UFF has parameters for this molecule")
    if status == -1:
        raise RelaxationError(f"{FORCE_FIELDS[force_field]} could not be set up")
    return force_field, status == 0


def relax_molecule(system: AtomicSystem, max_iterations: int = MAX_ITERATIONS) -> tuple[AtomicSystem, Relaxation]:
    """Relax one molecule; never raises for a molecule that cannot be relaxed.

    Parameters
    ----------
    system : a molecule; any bonds it carries (e.g. from an SDF file) are ignored, since the
        protocol perceives bonds from coordinates as EDM does
    max_iterations : minimiser steps at most, so that one molecule cannot hang a batch

    Returns
    -------
    ``(relaxed, relaxation)``: ``relaxed`` is ``system`` with new coordinates (same atoms, same
    order) or ``system`` itself when relaxation failed; ``relaxation`` says how, or why not.
    """
    graph = None
    try:
        with rdBase.BlockLogs():  # MMFF's typing warnings; the reason is kept instead
            mol, graph = force_field_graph(system)
            force_field, converged = _minimize(mol, max_iterations)
    except RelaxationError as err:
        return system, Relaxation.failed(str(err), graph)
    except (ValueError, RuntimeError) as err:  # an RDKit error we did not foresee
        return system, Relaxation.failed(f"RDKit: {type(err).__name__}: {err}", graph)
    pos = mol.GetConformer().GetPositions()  # (N, 3)
    if mol.GetNumAtoms() != system.num_atoms or pos.shape != system.pos.shape:  # never expected
        raise AssertionError("relaxation changed the number of atoms")
    if not np.isfinite(pos).all():
        return system, Relaxation.failed(f"{FORCE_FIELDS[force_field]} gave non-finite coordinates", graph)
    return system.replace(pos=pos), Relaxation(force_field, graph, converged, aligned_rmsd(pos, system.pos), None)


def aligned_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of two (N, 3) coordinate sets of the same atoms after the best rotation and
    translation (Kabsch); reflections are not allowed."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, singular, vt = np.linalg.svd(a.T @ b)  # (3, 3), (3,), (3, 3)
    if np.linalg.det(u @ vt) < 0:  # the best orthogonal map is a reflection: take the best rotation
        singular[-1] = -singular[-1]
    squared = ((a * a).sum() + (b * b).sum() - 2 * singular.sum()) / len(a)
    return float(np.sqrt(max(squared, 0.0)))


__all__ = [
    "BOND_ORDER_MAX_ITERATIONS", "CONNECTIVITY_FACTOR", "MAX_ITERATIONS", "Relaxation", "RelaxationError",
    "aligned_rmsd", "force_field_graph", "relax_molecule", "widened_connectivity",
]
