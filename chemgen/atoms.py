"""One record for every atomic system: molecules and crystals alike.

`AtomicSystem` is chemgen's lingua franca (../shared/DESIGN.md). It is a frozen
dataclass of numpy arrays; change it with `.replace(**fields)`. Molecules carry a
zero cell and zero fractional coordinates with ``pbc=False``; crystals carry both
Cartesian and fractional coordinates, kept consistent at construction.

Adaptors to RDKit, pymatgen and ASE live here, imported lazily so that code which
only needs the record (the GPU training path) does not pull in the chemistry stack.
File formats go through `chemgen.io` (a registry of readers and writers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from chemgen.errors import ChemgenError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ase import Atoms
    from pymatgen.core import Molecule, Structure
    from rdkit.Chem import Mol

# Periodic table symbols, index = atomic number (0 is a placeholder).
SYMBOLS: tuple[str, ...] = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge",
    "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd",
    "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd",
    "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm",
    "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn",
    "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
)
ATOMIC_NUMBERS: dict[str, int] = {s: z for z, s in enumerate(SYMBOLS) if z > 0}
MAX_ATOMIC_NUMBER = len(SYMBOLS) - 1

# Bond orders as stored in `AtomicSystem.bonds[:, 2]`; 4 marks an aromatic bond (1.5).
AROMATIC = 4

# Physical limits on what a record accepts (docs/guides/structures.md, "What a record accepts"). They are far wider than
# any dataset chemgen serves (QM9 <= 29 atoms, MP-20 <= 20, MPTS-52 <= 52; Materials Project cells are
# below 100 A) and narrow enough that distance matrices, neighbour searches and structure matching stay
# within seconds and memory: their cost grows with the atom count squared, with the cell's extent over
# the search radius (a 1e4 A cell needs gigabytes) and with the search radius over the cell's thinnest
# plane spacing (a flat cell has millions of periodic images in reach).
MAX_ATOMS = 1_000
MAX_COORDINATE = 1e4          # |x|, |y|, |z| in Angstrom
MAX_FRACTIONAL = 1e2          # |fractional coordinate|
MIN_CELL_LENGTH, MAX_CELL_LENGTH = 0.1, 1e3   # Angstrom
MIN_PLANE_SPACING = 0.1       # Angstrom, the thinnest a cell may be across any pair of its faces


class InvalidSystemError(ChemgenError, ValueError):
    """An atomic system whose arrays are inconsistent or non-finite."""


def _as_array(value: Any, dtype: Any, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise InvalidSystemError(f"{name} must have shape (N, {', '.join(map(str, shape_tail))}) "
                                 f"but has shape {array.shape}")
    array = array.copy()
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class AtomicSystem:
    """A molecule or a crystal.

    Attributes
    ----------
    atomic_numbers : (N,) int64
    pos : (N, 3) float64, Cartesian coordinates in Angstrom
    cell : (3, 3) float64, lattice vectors as rows in Angstrom (zeros for molecules)
    frac_coords : (N, 3) float64, fractional coordinates (zeros for molecules)
    pbc : periodic in all three directions (crystals) or not at all (molecules)
    dataset : label of the source dataset ("qm9", "mp20", ...), used for conditioning
    bonds : optional (M, 3) int64 rows ``(i, j, order)`` with i < j; order 1, 2, 3 or 4 (aromatic)
    smiles, material_id : optional identifiers
    properties : scalar or list-valued properties (JSON-compatible)
    """

    atomic_numbers: np.ndarray
    pos: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    frac_coords: np.ndarray | None = None
    pbc: bool = False
    dataset: str = ""
    bonds: np.ndarray | None = None
    smiles: str | None = None
    material_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        numbers = np.asarray(self.atomic_numbers)
        if numbers.ndim != 1:
            raise InvalidSystemError(f"atomic_numbers must be 1-D, got shape {numbers.shape}")
        if numbers.size == 0:
            raise InvalidSystemError("an atomic system needs at least one atom")
        if np.issubdtype(numbers.dtype, np.floating) and not np.all(numbers == np.round(numbers)):
            raise InvalidSystemError("atomic_numbers must be integers")
        numbers = _as_array(numbers, np.int64, (), "atomic_numbers")
        if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
            raise InvalidSystemError(
                f"atomic numbers must lie in 1..{MAX_ATOMIC_NUMBER}, got {numbers.min()}..{numbers.max()}")
        object.__setattr__(self, "atomic_numbers", numbers)
        n = numbers.size

        pos = _as_array(self.pos, np.float64, (3,), "pos")
        cell = np.asarray(self.cell, dtype=np.float64)
        if cell.shape != (3, 3):
            raise InvalidSystemError(f"cell must have shape (3, 3) but has shape {cell.shape}")
        cell = cell.copy()
        cell.flags.writeable = False
        if n > MAX_ATOMS:
            raise InvalidSystemError(f"{n} atoms, over the limit of {MAX_ATOMS} atoms per system")
        for name, array in (("pos", pos), ("cell", cell)):
            if not np.all(np.isfinite(array)):
                raise InvalidSystemError(f"{name} contains NaN or infinite values")
        frac = self.frac_coords
        if self.pbc:
            _check_cell(cell)
            if frac is None:  # derive fractional from Cartesian coordinates
                frac = np.linalg.solve(cell.T, pos.T).T
        elif frac is None:
            frac = np.zeros((n, 3))
        frac = _as_array(frac, np.float64, (3,), "frac_coords")
        if not np.all(np.isfinite(frac)):
            raise InvalidSystemError("frac_coords contains NaN or infinite values")
        if pos.size and np.abs(pos).max() > MAX_COORDINATE:
            raise InvalidSystemError(f"a coordinate of {np.abs(pos).max():.3g} A is beyond the limit of "
                                     f"{MAX_COORDINATE:g} A")
        if frac.size and np.abs(frac).max() > MAX_FRACTIONAL:
            raise InvalidSystemError(f"a fractional coordinate of {np.abs(frac).max():.3g} is beyond the limit of "
                                     f"{MAX_FRACTIONAL:g}")
        if pos.shape[0] != n or frac.shape[0] != n:
            raise InvalidSystemError(
                f"{n} atomic numbers but {pos.shape[0]} positions and {frac.shape[0]} fractional coordinates")
        object.__setattr__(self, "pos", pos)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "frac_coords", frac)
        object.__setattr__(self, "pbc", bool(self.pbc))

        if self.bonds is not None:
            bonds = _as_array(np.asarray(self.bonds).reshape(-1, 3), np.int64, (3,), "bonds")
            if bonds.size and (bonds[:, :2].min() < 0 or bonds[:, :2].max() >= n):
                raise InvalidSystemError(f"bond indices must lie in 0..{n - 1}")
            object.__setattr__(self, "bonds", bonds)
        object.__setattr__(self, "properties", dict(self.properties))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def molecule(cls, atomic_numbers: Any, pos: Any, **fields: Any) -> AtomicSystem:
        """A non-periodic system from atomic numbers and Cartesian positions (Angstrom)."""
        return cls(atomic_numbers=atomic_numbers, pos=pos, pbc=False, **fields)

    @classmethod
    def crystal(cls, atomic_numbers: Any, frac_coords: Any, cell: Any, **fields: Any) -> AtomicSystem:
        """A periodic system from fractional coordinates and lattice vectors (rows, Angstrom)."""
        frac = np.asarray(frac_coords, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64)
        return cls(atomic_numbers=atomic_numbers, pos=frac @ cell, cell=cell, frac_coords=frac,
                   pbc=True, **fields)

    def replace(self, **changes: Any) -> AtomicSystem:
        """A copy with some fields changed (the record is immutable).

        Changing ``pos`` or ``cell`` of a crystal without ``frac_coords`` recomputes them.
        """
        if self.pbc and ("pos" in changes or "cell" in changes) and "frac_coords" not in changes:
            changes["frac_coords"] = None
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived values
    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.size)

    @property
    def symbols(self) -> list[str]:
        return [SYMBOLS[z] for z in self.atomic_numbers]

    @property
    def formula(self) -> str:
        """Hill-ordered formula (C first, then H, then alphabetical), e.g. ``C2H6O``."""
        counts: dict[str, int] = {}
        for s in self.symbols:
            counts[s] = counts.get(s, 0) + 1
        order = sorted(counts, key=lambda s: (s != "C", s != "H", s)) if "C" in counts else sorted(counts)
        return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)

    @property
    def lattice_parameters(self) -> np.ndarray:
        """``(a, b, c, alpha, beta, gamma)`` in Angstrom and degrees (zeros for molecules)."""
        if not self.pbc:
            return np.zeros(6)
        lengths = np.linalg.norm(self.cell, axis=1)
        a, b, c = self.cell

        def angle(u: np.ndarray, v: np.ndarray) -> float:
            cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
            return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))

        return np.array([*lengths, angle(b, c), angle(a, c), angle(a, b)])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.pbc else 0.0

    def __repr__(self) -> str:
        kind = "crystal" if self.pbc else "molecule"
        ident = self.material_id or self.smiles or ""
        return f"AtomicSystem({kind} {self.formula}, {self.num_atoms} atoms, dataset={self.dataset!r}{', ' + ident if ident else ''})"

    def allclose(self, other: AtomicSystem, atol: float = 1e-6) -> bool:
        """Same species in the same order, same coordinates and lattice within ``atol`` (Angstrom)."""
        return (
            self.pbc == other.pbc
            and np.array_equal(self.atomic_numbers, other.atomic_numbers)
            and np.allclose(self.pos, other.pos, atol=atol, rtol=0)
            and np.allclose(self.cell, other.cell, atol=atol, rtol=0)
        )

    # ------------------------------------------------------------------ pymatgen
    def to_pymatgen(self) -> Structure | Molecule:
        """A pymatgen `Structure` for crystals, a `Molecule` for molecules."""
        from pymatgen.core import Lattice, Molecule, Structure

        if self.pbc:
            return Structure(Lattice(self.cell), self.symbols, self.frac_coords, coords_are_cartesian=False,
                             properties=_pmg_properties(self))
        return Molecule(self.symbols, self.pos, properties=_pmg_properties(self))

    @classmethod
    def from_pymatgen(cls, obj: Structure | Molecule, **fields: Any) -> AtomicSystem:
        """From a pymatgen `Structure` or `Molecule` (ordered sites only)."""
        from pymatgen.core import Structure

        if not obj.is_ordered:
            raise InvalidSystemError("disordered (partial occupancy) structures are not supported")
        numbers = [site.specie.Z for site in obj]
        if isinstance(obj, Structure):
            return cls.crystal(numbers, obj.frac_coords, obj.lattice.matrix, **fields)
        return cls.molecule(numbers, obj.cart_coords, **fields)

    # ------------------------------------------------------------------ ASE
    def to_ase(self) -> Atoms:
        from ase import Atoms

        atoms = Atoms(numbers=self.atomic_numbers, positions=self.pos,
                      cell=self.cell if self.pbc else None, pbc=self.pbc)
        # empty strings are left out: extxyz writes them as ``key=``, which reads back as part of the next key
        info = {k: v for k, v in self.properties.items() if _is_scalar(v) and v != ""}
        if self.dataset:
            info["dataset"] = self.dataset
        if self.smiles:
            info["smiles"] = self.smiles
        if self.material_id:
            info["material_id"] = self.material_id
        atoms.info.update(info)
        return atoms

    @classmethod
    def from_ase(cls, atoms: Atoms, **fields: Any) -> AtomicSystem:
        pbc = np.asarray(atoms.pbc)
        if pbc.any() and not pbc.all():
            raise InvalidSystemError(f"mixed periodicity {pbc.tolist()} is not supported (all or none)")
        info = dict(atoms.info)
        defaults: dict[str, Any] = {
            "dataset": str(info.pop("dataset", "")),
            "smiles": info.pop("smiles", None),
            "material_id": info.pop("material_id", None),
            "properties": {k: v for k, v in info.items() if _is_scalar(v)},
        }
        defaults.update(fields)
        if pbc.all():  # fractional coordinates are derived after the cell is checked (a singular one cannot invert)
            return cls(atomic_numbers=atoms.numbers, pos=atoms.positions, cell=np.asarray(atoms.cell), pbc=True,
                       **defaults)
        return cls.molecule(atoms.numbers, atoms.positions, **defaults)

    # ------------------------------------------------------------------ RDKit
    def to_rdkit(self, sanitize: bool = False) -> Mol:
        """An RDKit molecule with one conformer; bonds from ``self.bonds`` when present."""
        from rdkit import Chem
        from rdkit.Geometry import Point3D

        if self.pbc:
            raise InvalidSystemError("RDKit molecules are non-periodic; this system is a crystal")
        rw = Chem.RWMol()
        for z in self.atomic_numbers:
            atom = Chem.Atom(int(z))
            atom.SetNoImplicit(True)  # hydrogens are explicit atoms in 3D records
            rw.AddAtom(atom)
        bond_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE,
                      AROMATIC: Chem.BondType.AROMATIC}
        for i, j, order in (self.bonds if self.bonds is not None else []):
            rw.AddBond(int(i), int(j), bond_types[int(order)])
        conformer = Chem.Conformer(self.num_atoms)
        for k, (x, y, z) in enumerate(self.pos):
            conformer.SetAtomPosition(k, Point3D(float(x), float(y), float(z)))
        mol = rw.GetMol()
        mol.AddConformer(conformer, assignId=True)
        if self.smiles:
            mol.SetProp("smiles", self.smiles)
        if sanitize:
            Chem.SanitizeMol(mol)
        return mol

    @classmethod
    def from_rdkit(cls, mol: Mol, conf_id: int = -1, **fields: Any) -> AtomicSystem:
        """From an RDKit molecule with a 3D conformer (hydrogens must be explicit atoms)."""
        from rdkit import Chem

        if mol.GetNumConformers() == 0:
            raise InvalidSystemError("the RDKit molecule has no conformer (no 3D coordinates)")
        numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
        pos = mol.GetConformer(conf_id).GetPositions()
        orders = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
                  Chem.BondType.AROMATIC: AROMATIC}
        bonds = []
        for bond in mol.GetBonds():
            if bond.GetBondType() not in orders:
                raise InvalidSystemError(f"unsupported RDKit bond type {bond.GetBondType()}")
            i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
            bonds.append((i, j, orders[bond.GetBondType()]))
        defaults: dict[str, Any] = {"bonds": np.array(bonds, dtype=np.int64).reshape(-1, 3)}
        if mol.HasProp("smiles"):
            defaults["smiles"] = mol.GetProp("smiles")
        if mol.HasProp("_Name") and mol.GetProp("_Name"):
            defaults.setdefault("properties", {})["name"] = mol.GetProp("_Name")
        defaults.update(fields)
        return cls.molecule(numbers, pos, **defaults)


def _check_cell(cell: np.ndarray) -> None:
    """A periodic cell within the physical limits: lengths, handedness, thickness."""
    lengths = np.linalg.norm(cell, axis=1)
    if lengths.min() < MIN_CELL_LENGTH or lengths.max() > MAX_CELL_LENGTH:
        shown = ", ".join(f"{x:.4g}" for x in lengths)
        raise InvalidSystemError(f"cell lengths ({shown}) A lie outside {MIN_CELL_LENGTH:g}..{MAX_CELL_LENGTH:g} A")
    volume = float(np.linalg.det(cell))
    if volume <= 0:
        raise InvalidSystemError("a periodic system needs a right-handed cell of non-zero volume "
                                 f"(its lattice vectors give a volume of {volume:.4g} A^3)")
    # spacing between the planes spanned by each pair of lattice vectors: volume / face area
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    spacing = volume / areas.max()
    if spacing < MIN_PLANE_SPACING:
        raise InvalidSystemError(f"the cell is {spacing:.3g} A thin across its faces (at least {MIN_PLANE_SPACING:g} A): "
                                 "its lattice vectors are nearly coplanar")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, np.integer, np.floating))


def _pmg_properties(system: AtomicSystem) -> dict[str, Any]:
    props = {k: v for k, v in system.properties.items() if _is_scalar(v)}
    if system.material_id:
        props["material_id"] = system.material_id
    if system.dataset:
        props["dataset"] = system.dataset
    return props
