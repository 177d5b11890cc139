"""Molecule scores as EDM computes them, beside RDKit's bonds and a relaxed-molecule protocol.

Protocols (every score key starts with its protocol, e.g. ``"edm/atom_stability"``):

``edm``
    EDM (Hoogeboom et al. 2022; ``qm9/analyze.py``, ``qm9/rdkit_functions.py``). Bonds come from
    the distance table (`chemgen.bonds.edm_bond_orders`). An atom is *stable* when the sum of
    its bond orders is one of its allowed valences (`ALLOWED_VALENCES`); *atom stability* is
    stable atoms / all atoms and *molecule stability* the fraction of molecules whose atoms are
    all stable. For validity the same bonds build an RDKit molecule whose atoms may take
    implicit hydrogens (EDM's ``build_molecule``): a molecule is *valid* when
    ``Chem.SanitizeMol`` succeeds, and the canonical SMILES of its largest fragment is kept
    (disconnected molecules still count as valid). *Uniqueness* = distinct valid SMILES /
    valid; *novelty* = distinct valid SMILES absent from the training SMILES / distinct valid
    SMILES, where training SMILES are whole-molecule SMILES rebuilt the same way from training
    coordinates (EDM's ``compute_qm9_smiles``).
``rdkit``
    Bonds from RDKit's ``rdDetermineBonds`` for a neutral molecule
    (`chemgen.bonds.rdkit_determine_bonds`, formal charges allowed as long as they sum to zero),
    judged by RDKit's own valence rules rather than EDM's table: no implicit hydrogens are
    added, and an atom is stable when sanitization accepts its valence for its formal charge
    and leaves it no unpaired electron. So divalent and hexavalent S, N+ with four bonds or O-
    with one are stable here (EDM's table allows S only with valence 4 and no charges). A
    molecule for which RDKit finds no neutral bond assignment is invalid and all its atoms are
    unstable. Validity, uniqueness and novelty are defined as under ``edm``.
``edm_mmff``
    The ``edm`` protocol on relaxed coordinates: each molecule is first relaxed with MMFF94
    (UFF where MMFF94 has no parameters) on the bonds EDM's tables perceive, widened where noise
    broke them (`chemgen.scoring.relax_molecules`, whose docstring explains the choice), then
    scored exactly as ``edm`` scores. Relaxation only moves atoms. A molecule that cannot be
    relaxed is scored on its raw coordinates, and ``edm_mmff/relaxed`` is the fraction that
    was relaxed; per molecule, ``relaxations`` say how or why not. This is what a user who
    wants usable molecules runs; ``edm`` is what the literature compares, and the two are never
    mixed. Novelty is checked against the ``edm`` training SMILES: training molecules are DFT
    minima and are read as they are, not relaxed.

Besides EDM's novelty, ``<protocol>/novelty_over_valid`` divides the same novel count by the
number of valid molecules, the denominator ADiT uses (``novel_rate``); ADiT's own validity
(OpenBabel bonds via PDB) is not reproduced here.

A bad input never stops a batch: a record that cannot be read as a molecule (non-finite
coordinates, atomic numbers outside 1..118, a crystal), an element outside EDM's atom decoder,
or an RDKit failure makes that molecule invalid, with the reason kept in ``failures``.
Deliberate deviations from EDM's code: non-finite coordinates are invalid (EDM would leave
every atom unbonded and sanitize it), and elements outside EDM's decoder are invalid under
``edm`` (EDM raises ``KeyError``). A single atom is scored exactly as EDM does: unstable (it
has no bonds) but valid if it sanitizes (a lone C becomes methane via implicit hydrogens).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from rdkit import Chem, rdBase

from chemgen.atoms import (
    MAX_ATOMIC_NUMBER,
    SYMBOLS,
    AtomicSystem,
    InvalidSystemError,
)
from chemgen.bonds import (
    ALLOWED_VALENCES,
    IN_EDM_DECODER,
    BondPerceptionError,
    allowed_valence,
    edm_bond_orders,
    rdkit_determine_bonds,
)
from chemgen.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from chemgen.scoring.relax_molecules import Relaxation

MOLECULE_PROTOCOLS: tuple[str, ...] = ("edm", "rdkit", "edm_mmff")
RELAXED_PROTOCOLS: tuple[str, ...] = ("edm_mmff",)
# What scoring runs unless told otherwise: the raw protocols (relaxing costs ~10 ms a molecule).
DEFAULT_PROTOCOLS: tuple[str, ...] = ("edm", "rdkit")
# Each protocol's novelty reference: a relaxed protocol reads training molecules as its raw one does.
REFERENCE_PROTOCOL: MappingProxyType[str, str] = MappingProxyType({"edm": "edm", "rdkit": "rdkit", "edm_mmff": "edm"})

_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


# ============================================================================ one molecule
@dataclass(frozen=True, eq=False)
class MoleculeOutcome:
    """One molecule scored under one protocol.

    Attributes
    ----------
    atomic_numbers : (N,) int
    valences : (N,) int, sum of bond orders per atom; -1 where bonds could not be perceived
    atom_stable : (N,) bool
    mol : the sanitized RDKit molecule (whole, all fragments), None when invalid
    failure : why the molecule is invalid, None when valid
    relaxation : how the molecule was relaxed before scoring (``edm_mmff``); None for the raw
        protocols and for unreadable input
    """

    atomic_numbers: np.ndarray
    valences: np.ndarray
    atom_stable: np.ndarray
    mol: Chem.Mol | None
    failure: str | None
    relaxation: Relaxation | None = None

    @property
    def valid(self) -> bool:
        return self.mol is not None

    def smiles(self, largest_fragment: bool = True) -> str | None:
        """Canonical SMILES (hydrogens stay explicit atoms); of the largest fragment by default."""
        if self.mol is None:
            return None
        return largest_fragment_smiles(self.mol) if largest_fragment else Chem.MolToSmiles(self.mol)


def _failed(atomic_numbers: np.ndarray, failure: str) -> MoleculeOutcome:
    n = atomic_numbers.size
    return MoleculeOutcome(atomic_numbers, np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool), None, failure)


def build_edm_molecule(atomic_numbers: np.ndarray, orders: np.ndarray) -> Chem.Mol:
    """EDM's ``build_molecule``: atoms that may take implicit H and the distance-table bonds.

    Not sanitized. Bonds are added in EDM's order (``i`` ascending, then ``j < i``).
    """
    mol = Chem.RWMol()
    for z in atomic_numbers:
        mol.AddAtom(Chem.Atom(int(z)))  # implicit hydrogens allowed, as in EDM
    for i, j in zip(*np.nonzero(np.tril(orders, k=-1))):
        mol.AddBond(int(i), int(j), _BOND_TYPES[int(orders[i, j])])
    return mol


def _sanitized(mol: Chem.Mol) -> tuple[Chem.Mol | None, str | None]:
    try:
        Chem.SanitizeMol(mol)
    except ValueError as err:  # AtomValenceException, KekulizeException, ... derive from ValueError
        return None, f"SanitizeMol: {err}"
    return mol, None


def largest_fragment_smiles(mol: Chem.Mol) -> str:
    """Canonical SMILES of the fragment with most atoms (the first such, as EDM's ``max``)."""
    fragments = Chem.GetMolFrags(mol, asMols=True)
    return Chem.MolToSmiles(max(fragments, default=mol, key=lambda m: m.GetNumAtoms()))


def score_edm(system: AtomicSystem) -> MoleculeOutcome:
    """One molecule under the ``edm`` protocol."""
    numbers = system.atomic_numbers
    unknown = sorted({SYMBOLS[z] for z in numbers[~IN_EDM_DECODER[numbers]]})
    if unknown:
        return _failed(numbers, f"elements {unknown} are outside EDM's atom decoder")
    orders = edm_bond_orders(numbers, system.pos)  # (N, N)
    valences = orders.sum(axis=1)
    mol, failure = _sanitized(build_edm_molecule(numbers, orders))
    return MoleculeOutcome(numbers, valences, allowed_valence(numbers, valences), mol, failure)


def rdkit_stable_atoms(mol: Chem.Mol) -> np.ndarray:
    """(N,) bool: RDKit's valence rules on a sanitized molecule without implicit hydrogens.

    Sanitization has already refused any valence above what RDKit allows for an atom's element
    and formal charge; what it accepts but leaves short (S with three bonds, C with three) it
    marks with unpaired electrons, so a stable atom is one with none.
    """
    return np.array([atom.GetNumRadicalElectrons() == 0 for atom in mol.GetAtoms()], dtype=bool)


def score_rdkit(system: AtomicSystem) -> MoleculeOutcome:
    """One molecule under the ``rdkit`` protocol (rdDetermineBonds, neutral; RDKit's valences)."""
    numbers = system.atomic_numbers
    try:
        mol = rdkit_determine_bonds(system, charge=0)
    except BondPerceptionError as err:
        return _failed(numbers, str(err))
    valences = np.array([atom.GetTotalValence() for atom in mol.GetAtoms()], dtype=np.int64)
    return MoleculeOutcome(numbers, valences, rdkit_stable_atoms(mol), mol, None)


def score_edm_mmff(system: AtomicSystem) -> MoleculeOutcome:
    """One molecule under the ``edm_mmff`` protocol: relaxed, then scored as ``edm`` scores."""
    from chemgen.scoring.relax_molecules import (
        relax_molecule,  # imports this module: import here
    )

    relaxed, relaxation = relax_molecule(system)
    return replace(score_edm(relaxed), relaxation=relaxation)


_SCORERS = {"edm": score_edm, "rdkit": score_rdkit, "edm_mmff": score_edm_mmff}


def _as_molecule(item: Any) -> AtomicSystem:
    """A record, or a raw ``(atomic_numbers, pos)`` pair, as a non-periodic `AtomicSystem`."""
    if isinstance(item, AtomicSystem):
        if item.pbc:
            raise InvalidSystemError("a periodic system is not a molecule")
        return item
    numbers, pos = item
    return AtomicSystem.molecule(numbers, pos)


def _readable_numbers(item: Any) -> np.ndarray:
    """Atomic numbers of a rejected item so that its atoms still count; 0 where unreadable."""
    if isinstance(item, AtomicSystem):
        return item.atomic_numbers
    try:
        numbers = np.asarray(item[0], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, IndexError, KeyError):
        return np.zeros(0, dtype=np.int64)
    ok = np.isfinite(numbers) & (numbers >= 1) & (numbers <= MAX_ATOMIC_NUMBER) & (numbers == np.round(numbers))
    return np.where(ok, numbers, 0).astype(np.int64)


def score_one(item: AtomicSystem | tuple[Any, Any], protocol: str) -> MoleculeOutcome:
    """One item (a record or an ``(atomic_numbers, pos)`` pair) under one protocol.

    Never raises for a bad molecule: non-finite coordinates, bad atomic numbers, a crystal or
    anything else unreadable give an invalid outcome whose ``failure`` says why.
    """
    check_protocols((protocol,))
    try:
        system = _as_molecule(item)
    except (InvalidSystemError, ValueError, TypeError) as err:  # InvalidSystemError says which array is bad
        return _failed(_readable_numbers(item), f"unreadable: {type(err).__name__}: {err}")
    return _SCORERS[protocol](system)


# ============================================================================ a batch
def uniqueness(valid_smiles: Sequence[str]) -> float:
    """EDM: distinct valid SMILES / valid molecules (0.0 when none is valid, as EDM)."""
    return len(set(valid_smiles)) / len(valid_smiles) if valid_smiles else 0.0


def novel_smiles(valid_smiles: Iterable[str], reference: Collection[str]) -> set[str]:
    """Distinct valid SMILES absent from the reference (training) SMILES."""
    return {s for s in set(valid_smiles) if s not in reference}


@dataclass(frozen=True, eq=False)
class ProtocolScores:
    """Per-molecule results of a batch under one protocol.

    Attributes
    ----------
    protocol : ``"edm"``, ``"rdkit"`` or ``"edm_mmff"``
    num_atoms, num_stable_atoms : (M,) int
    valid : (M,) bool
    smiles : (M,) largest-fragment canonical SMILES, None for invalid molecules
    failures : (M,) why each molecule is invalid, None for valid ones
    atom_numbers, atom_valences, atom_stable, atom_molecule : (A,) every atom of the batch,
        concatenated; valence -1 where bonds could not be perceived
    reference : the training SMILES novelty is measured against, None if not given
    relaxations : (M,) how each molecule was relaxed (None where the input was unreadable);
        None for protocols that do not relax
    """

    protocol: str
    num_atoms: np.ndarray
    num_stable_atoms: np.ndarray
    valid: np.ndarray
    smiles: tuple[str | None, ...]
    failures: tuple[str | None, ...]
    atom_numbers: np.ndarray
    atom_valences: np.ndarray
    atom_stable: np.ndarray
    atom_molecule: np.ndarray
    reference: frozenset[str] | None = None
    relaxations: tuple[Relaxation | None, ...] | None = None

    @classmethod
    def from_outcomes(cls, protocol: str, outcomes: Iterable[MoleculeOutcome],
                      reference: Collection[str] | None = None) -> ProtocolScores:
        """Collect outcomes one by one, so that no RDKit molecule outlives its SMILES."""
        num_atoms, valid, smiles, failures, relaxations = [], [], [], [], []
        atom_numbers, atom_valences, atom_stable = [], [], []
        for o in outcomes:
            num_atoms.append(o.atomic_numbers.size)
            valid.append(o.valid)
            smiles.append(o.smiles())
            failures.append(o.failure)
            relaxations.append(o.relaxation)
            atom_numbers.append(o.atomic_numbers)
            atom_valences.append(o.valences)
            atom_stable.append(o.atom_stable)
        sizes = np.array(num_atoms, dtype=np.int64)
        stable = np.concatenate(atom_stable).astype(bool) if atom_stable else np.zeros(0, bool)
        molecule = np.repeat(np.arange(sizes.size), sizes)
        return cls(
            protocol=protocol,
            num_atoms=sizes,
            num_stable_atoms=np.bincount(molecule, weights=stable, minlength=sizes.size).astype(np.int64),
            valid=np.array(valid, dtype=bool),
            smiles=tuple(smiles),
            failures=tuple(failures),
            atom_numbers=np.concatenate(atom_numbers).astype(np.int64) if atom_numbers else np.zeros(0, np.int64),
            atom_valences=np.concatenate(atom_valences).astype(np.int64) if atom_valences else np.zeros(0, np.int64),
            atom_stable=stable,
            atom_molecule=molecule,
            reference=frozenset(reference) if reference is not None else None,
            relaxations=tuple(relaxations) if protocol in RELAXED_PROTOCOLS else None,
        )

    @property
    def num_molecules(self) -> int:
        return int(self.valid.size)

    @property
    def molecule_stable(self) -> np.ndarray:
        """(M,) bool: every atom stable (a molecule with no readable atoms is not)."""
        return (self.num_stable_atoms == self.num_atoms) & (self.num_atoms > 0)

    @property
    def relaxed(self) -> np.ndarray:
        """(M,) bool: relaxed before scoring (all False for protocols that do not relax)."""
        return np.array([r is not None and r.relaxed for r in self.relaxations or [None] * self.num_molecules],
                        dtype=bool)

    @property
    def valid_smiles(self) -> list[str]:
        return [s for s, ok in zip(self.smiles, self.valid) if ok and s is not None]

    @property
    def novel(self) -> np.ndarray | None:
        """(M,) bool: valid with a SMILES absent from the reference; None without a reference."""
        if self.reference is None:
            return None
        return np.array([ok and s not in self.reference for s, ok in zip(self.smiles, self.valid)], dtype=bool)

    def metrics(self) -> dict[str, float]:
        """Batch scores as fractions in [0, 1], keys prefixed with the protocol."""
        valid_smiles = self.valid_smiles
        num_valid, num_unique = len(valid_smiles), len(set(valid_smiles))
        m = self.num_molecules
        total_atoms = int(self.num_atoms.sum())
        scores = {
            "num_molecules": float(m),
            "atom_stability": float(self.num_stable_atoms.sum()) / total_atoms if total_atoms else 0.0,
            "molecule_stability": float(self.molecule_stable.mean()),
            "validity": num_valid / m,
            "uniqueness": uniqueness(valid_smiles),
            "valid_and_unique": num_unique / m,  # = validity x uniqueness
        }
        if self.reference is not None:
            num_novel = len(novel_smiles(valid_smiles, self.reference))
            scores["novelty"] = num_novel / num_unique if num_unique else 0.0  # EDM
            scores["novelty_over_valid"] = num_novel / num_valid if num_valid else 0.0  # ADiT's denominator
        if self.relaxations is not None:
            scores["relaxed"] = float(self.relaxed.mean())
        return {f"{self.protocol}/{key}": value for key, value in scores.items()}


@dataclass(frozen=True, eq=False)
class MoleculeScores:
    """Scores of a batch under one or more protocols; ``scores["edm"]`` gives one protocol."""

    by_protocol: Mapping[str, ProtocolScores]

    def __getitem__(self, protocol: str) -> ProtocolScores:
        return self.by_protocol[protocol]

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.by_protocol)

    def as_dict(self) -> dict[str, float]:
        """All batch scores, e.g. ``{"edm/atom_stability": 0.99, "rdkit/validity": 0.95, ...}``."""
        return {key: value for p in self.by_protocol.values() for key, value in p.metrics().items()}

    def to_frame(self) -> pd.DataFrame:
        """One row per molecule: ``<protocol>/num_atoms``, ``/molecule_stable``, ``/valid``, ..."""
        import pandas as pd  # only this export needs pandas

        columns: dict[str, Any] = {}
        for name, p in self.by_protocol.items():
            columns[f"{name}/num_atoms"] = p.num_atoms
            columns[f"{name}/num_stable_atoms"] = p.num_stable_atoms
            columns[f"{name}/molecule_stable"] = p.molecule_stable
            columns[f"{name}/valid"] = p.valid
            columns[f"{name}/smiles"] = list(p.smiles)
            if p.novel is not None:
                columns[f"{name}/novel"] = p.novel
            columns[f"{name}/failure"] = list(p.failures)
            if p.relaxations is not None:
                columns[f"{name}/relaxation"] = [r.describe() if r is not None else "not relaxed: unreadable input"
                                                 for r in p.relaxations]
                columns[f"{name}/displacement"] = [r.displacement if r is not None else np.nan for r in p.relaxations]
        return pd.DataFrame(columns)


def check_protocols(protocols: Sequence[str]) -> None:
    """Raise ValueError unless ``protocols`` is a non-empty sequence of known protocol names."""
    unknown = [p for p in protocols if p not in MOLECULE_PROTOCOLS]
    if unknown or not protocols:
        raise UsageError(f"protocols must be a non-empty subset of {MOLECULE_PROTOCOLS}, got {tuple(protocols)}")


def score_molecules(systems: Sequence[AtomicSystem | tuple[Any, Any]],
                    reference_smiles: Mapping[str, Collection[str]] | None = None,
                    protocols: Sequence[str] = DEFAULT_PROTOCOLS) -> MoleculeScores:
    """Score a batch of generated molecules under each protocol.

    Parameters
    ----------
    systems : records, or raw ``(atomic_numbers, pos)`` pairs straight from a sampler (pairs
        with NaN coordinates or bad atomic numbers are scored invalid, not raised)
    reference_smiles : training SMILES per protocol, from `reference_smiles`; novelty is
        reported only for protocols present here (``edm_mmff`` also takes the ``edm`` set)
    protocols : any of ``("edm", "rdkit", "edm_mmff")``; ``edm_mmff`` relaxes every molecule
        first (about 10 ms each)

    Returns
    -------
    `MoleculeScores`; ``.as_dict()`` gives e.g. ``"edm/atom_stability"``, ``"edm/novelty"``.
    """
    check_protocols(protocols)
    if isinstance(reference_smiles, (set, frozenset, list, tuple)):
        raise TypeError("reference_smiles maps each protocol to its SMILES: use reference_smiles(train_systems)")
    if len(systems) == 0:
        raise UsageError("no molecules to score")
    by_protocol = {}
    with rdBase.BlockLogs():  # RDKit logs every sanitization failure; the reasons are kept instead
        for protocol in protocols:
            outcomes = (score_one(item, protocol) for item in systems)
            reference = _reference_for(protocol, reference_smiles)
            by_protocol[protocol] = ProtocolScores.from_outcomes(protocol, outcomes, reference)
    return MoleculeScores(by_protocol)


def _reference_for(protocol: str, references: Mapping[str, Collection[str]] | None) -> Collection[str] | None:
    """A protocol's own reference set, else the one its training molecules are read with."""
    if references is None:
        return None
    found = references.get(protocol)
    return found if found is not None else references.get(REFERENCE_PROTOCOL[protocol])


def reference_smiles(systems: Iterable[AtomicSystem],
                     protocols: Sequence[str] = DEFAULT_PROTOCOLS) -> dict[str, frozenset[str]]:
    """Training SMILES per protocol, rebuilt from coordinates as EDM's ``compute_qm9_smiles``:
    whole-molecule canonical SMILES (not the largest fragment) of each molecule that is valid
    under the protocol; invalid training molecules are left out. ``edm_mmff`` gets the ``edm``
    set (`REFERENCE_PROTOCOL`): training geometries are DFT minima, read without relaxing."""
    check_protocols(protocols)
    readers = sorted({REFERENCE_PROTOCOL[p] for p in protocols})
    found: dict[str, set[str]] = {r: set() for r in readers}
    with rdBase.BlockLogs():
        for system in systems:
            for reader in readers:
                smiles = score_one(system, reader).smiles(largest_fragment=False)
                if smiles is not None:
                    found[reader].add(smiles)
    return {p: frozenset(found[REFERENCE_PROTOCOL[p]]) for p in protocols}


# ============================================================================ plots
def plot_molecule_scores(scores: MoleculeScores, out_dir: str | Path) -> list[Path]:
    """Save PNG plots per protocol; returns their paths.

    ``<protocol>_valence_by_element.png``: per element, how many atoms have each valence, with
    the allowed valences in green. ``<protocol>_num_atoms.png``: molecule sizes of all, stable
    and valid molecules. ``<protocol>_stability.png``: fraction of stable atoms per molecule, and
    molecule stability and validity by molecule size.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for protocol, p in scores.by_protocol.items():
        paths.append(_plot_valences(p, out / f"{protocol}_valence_by_element.png"))
        paths.append(_plot_sizes(p, out / f"{protocol}_num_atoms.png"))
        paths.append(_plot_stability(p, out / f"{protocol}_stability.png"))
    return paths


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    # The object-oriented Figure API renders with Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _plot_valences(p: ProtocolScores, path: Path) -> Path:
    """Stable and unstable atoms side by side per valence: under ``rdkit`` the same valence can be
    either (N with four bonds is stable only as N+), so colour by the protocol's verdict."""
    perceived = p.atom_valences >= 0
    elements = sorted(set(p.atom_numbers[perceived].tolist())) or [1]
    fig, axes = _figure(ncols=len(elements), width=3.2)
    for ax, z in zip(axes, elements):
        of_element = perceived & (p.atom_numbers == z)
        values = np.unique(p.atom_valences[of_element])
        for offset, verdict, colour in ((-0.2, True, "tab:green"), (0.2, False, "tab:red")):
            chosen = p.atom_valences[of_element & (p.atom_stable == verdict)]
            ax.bar(values + offset, [np.count_nonzero(chosen == v) for v in values], width=0.4, color=colour)
        ax.set_yscale("log")
        top = max(int(values.max(initial=0)), *ALLOWED_VALENCES.get(SYMBOLS[z], (0,)))
        ax.set_xlim(-0.5, top + 0.5)
        ax.set_xticks(range(top + 1))
        if p.protocol in ("edm", "edm_mmff"):
            allowed_text = " or ".join(map(str, ALLOWED_VALENCES.get(SYMBOLS[z], ()))) or "none"
            ax.set_title(f"{SYMBOLS[z]} (allowed: {allowed_text})")
        else:
            ax.set_title(SYMBOLS[z])
        ax.set_xlabel("valence (sum of bond orders)")
    axes[0].set_ylabel("atoms")
    fig.suptitle(f"{p.protocol}: valence by element (green = stable, red = unstable atoms)")
    fig.savefig(path, dpi=100)
    return path


def _plot_sizes(p: ProtocolScores, path: Path) -> Path:
    fig, (ax,) = _figure()
    bins = np.arange(0, max(int(p.num_atoms.max(initial=0)), 1) + 2) - 0.5
    ax.hist(p.num_atoms, bins=bins, label="all", color="lightgray")
    ax.hist(p.num_atoms[p.valid], bins=bins, label="valid", histtype="step", linewidth=1.5)
    ax.hist(p.num_atoms[p.molecule_stable], bins=bins, label="stable", histtype="step", linewidth=1.5)
    ax.set_xlabel("number of atoms")
    ax.set_ylabel("molecules")
    ax.legend()
    ax.set_title(f"{p.protocol}: molecule sizes")
    fig.savefig(path, dpi=100)
    return path


def _plot_stability(p: ProtocolScores, path: Path) -> Path:
    fig, (left, right) = _figure(ncols=2)
    fraction = p.num_stable_atoms / np.maximum(p.num_atoms, 1)
    left.hist(fraction, bins=np.linspace(0, 1, 21))
    left.set_yscale("log")
    left.set_xlabel("fraction of stable atoms in a molecule")
    left.set_ylabel("molecules")
    sizes = np.unique(p.num_atoms)
    right.plot(sizes, [p.molecule_stable[p.num_atoms == n].mean() for n in sizes], "o-", label="molecule stable")
    right.plot(sizes, [p.valid[p.num_atoms == n].mean() for n in sizes], "s-", label="valid")
    right.set_xlabel("number of atoms")
    right.set_ylabel("fraction of molecules")
    right.set_ylim(-0.02, 1.02)
    right.legend()
    fig.suptitle(f"{p.protocol}: stability")
    fig.savefig(path, dpi=100)
    return path

