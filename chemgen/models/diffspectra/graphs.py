"""RDKit molecules <-> the dense graph tensors DiffSpectra's diffusion runs on.

A molecule with explicit hydrogens and a 3D conformer becomes

    pos         (N, 3)  Angstrom, as in the conformer
    atom_types  (N,)    index into ATOM_ELEMENTS = (H, C, N, O, F), QM9's vocabulary in the reference's order
    charges     (N,)    index into FORMAL_CHARGES = (-1, 0, +1)
    bonds       (N, N)  index into BOND_ORDERS = (none, single, double, triple), symmetric, 0 on the diagonal

and a batch pads these to the largest N with a mask (`MolGraphs`). Bonds are Kekulé: aromatic rings are
kekulized first, as the reference's QM9S data has them (it reads gdb9.sdf unsanitised, where every bond is
single, double or triple, and sets ``include_aromatic = False``, ``bond_types = 4``: no aromatic class).
Charges in QM9 are N+, N-, C+, C-, O- (the reference's ``atom_fc_num``), so three classes cover them.

Back from tensors, `graph_to_mol` writes atoms with their formal charges, the bonds of the upper triangle and
the conformer, and sanitises; it returns None when RDKit rejects the graph. Hydrogens are taken as given
(``SetNoImplicit``), as chemgen's records do, so an under-bonded atom is a radical, not an atom RDKit quietly
completes. The reference's conversion (``evaluation/stability.py``) differs in two ways, both available here
by argument: RDKit may add implicit hydrogens (``implicit_hydrogens=True``), and a charge is kept only where
the training set has that element with that charge (``allowed_charges``, e.g. `QM9_CHARGED_ATOMS`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from chemgen.errors import ChemgenError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rdkit.Chem import Mol

ATOM_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)      # H, C, N, O, F (the reference's atom_encoder order)
FORMAL_CHARGES: tuple[int, ...] = (-1, 0, 1)
BOND_ORDERS: tuple[int, ...] = (0, 1, 2, 3)           # class 0 is "no bond"
QM9_CHARGED_ATOMS: frozenset[tuple[int, int]] = frozenset({(7, 1), (7, -1), (6, 1), (6, -1), (8, -1)})


class GraphEncodingError(ChemgenError, ValueError):
    """A molecule outside the vocabulary (element, charge, bond type) or without explicit H / a conformer."""


@dataclass(frozen=True)
class MolGraphs:
    """B molecules padded to N atoms; class indices are 0 at padding (and bonds on the diagonal)."""

    pos: torch.Tensor          # (B, N, 3) float, Angstrom
    atom_types: torch.Tensor   # (B, N) long
    charges: torch.Tensor      # (B, N) long
    bonds: torch.Tensor        # (B, N, N) long
    mask: torch.Tensor         # (B, N) bool

    @property
    def num_atoms(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def node_classes(self) -> dict[str, torch.Tensor]:
        """The node blocks by the names the diffusion uses (`chemgen.diffusion.vp.CategoricalBlock`)."""
        return {"atom_types": self.atom_types, "charges": self.charges}


# ---------------------------------------------------------------------------- RDKit -> tensors
def mol_to_tensors(mol: Mol, conf_id: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pos (N, 3) float64, atom_types (N,), charges (N,), bonds (N, N)) of one molecule, Kekulé bonds."""
    from rdkit import Chem

    if mol.GetNumConformers() == 0:
        raise GraphEncodingError("the molecule has no conformer (3D coordinates are needed)")
    mol = Chem.Mol(mol)
    mol.UpdatePropertyCache(strict=False)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception as err:
        raise GraphEncodingError(f"cannot kekulize {Chem.MolToSmiles(mol)}: {err}") from err
    n = mol.GetNumAtoms()
    atom_types, charges = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for atom in mol.GetAtoms():
        z, charge, i = atom.GetAtomicNum(), atom.GetFormalCharge(), atom.GetIdx()
        if z not in ATOM_ELEMENTS:
            raise GraphEncodingError(f"element {atom.GetSymbol()} (atom {i}) is not one of H, C, N, O, F")
        if charge not in FORMAL_CHARGES:
            raise GraphEncodingError(f"formal charge {charge:+d} on atom {i} is outside {FORMAL_CHARGES}")
        if z != 1 and atom.GetTotalNumHs() > 0:
            raise GraphEncodingError(f"atom {i} ({atom.GetSymbol()}) has implicit hydrogens: "
                                     f"use Chem.AddHs(mol, addCoords=True) first")
        atom_types[i], charges[i] = ATOM_ELEMENTS.index(z), FORMAL_CHARGES.index(charge)
    order_of = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    bonds = np.zeros((n, n), dtype=np.int64)
    for bond in mol.GetBonds():
        if bond.GetBondType() not in order_of:
            raise GraphEncodingError(f"bond type {bond.GetBondType()} is not single, double or triple")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = BOND_ORDERS.index(order_of[bond.GetBondType()])
    return mol.GetConformer(conf_id).GetPositions(), atom_types, charges, bonds


def mols_to_graphs(mols: Sequence[Mol], dtype: torch.dtype = torch.float32) -> MolGraphs:
    """A padded batch of molecules (`mol_to_tensors` of each)."""
    if not mols:
        raise GraphEncodingError("no molecules to batch")
    parts = [mol_to_tensors(mol) for mol in mols]
    b, n = len(parts), max(len(p[1]) for p in parts)
    pos = torch.zeros(b, n, 3, dtype=dtype)
    atom_types = torch.zeros(b, n, dtype=torch.long)
    charges = torch.zeros(b, n, dtype=torch.long)
    bonds = torch.zeros(b, n, n, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for k, (p, a, c, e) in enumerate(parts):
        m = len(a)
        pos[k, :m] = torch.from_numpy(p).to(dtype)
        atom_types[k, :m], charges[k, :m] = torch.from_numpy(a), torch.from_numpy(c)
        bonds[k, :m, :m] = torch.from_numpy(e)
        mask[k, :m] = True
    return MolGraphs(pos, atom_types, charges, bonds, mask)


# ---------------------------------------------------------------------------- tensors -> RDKit
def graph_to_mol(pos: torch.Tensor | np.ndarray, atom_types: torch.Tensor | np.ndarray,
                 charges: torch.Tensor | np.ndarray, bonds: torch.Tensor | np.ndarray,
                 implicit_hydrogens: bool = False,
                 allowed_charges: Collection[tuple[int, int]] | None = None) -> Mol | None:
    """One molecule (unpadded tensors, class indices) as a sanitised RDKit Mol with its conformer, or None.

    ``allowed_charges`` ((atomic number, charge) pairs): other charges are dropped to 0, as the reference
    keeps only the charged atoms seen in training; None keeps every charge.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    pos, atom_types, charges, bonds = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                                       for v in (pos, atom_types, charges, bonds))
    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    rw = Chem.RWMol()
    for a, c in zip(atom_types.tolist(), charges.tolist()):
        z, charge = ATOM_ELEMENTS[a], FORMAL_CHARGES[c]
        atom = Chem.Atom(z)
        if charge and (allowed_charges is None or (z, charge) in allowed_charges):
            atom.SetFormalCharge(charge)
        atom.SetNoImplicit(not implicit_hydrogens)
        rw.AddAtom(atom)
    i_idx, j_idx = np.nonzero(np.triu(bonds, k=1))
    for i, j in zip(i_idx.tolist(), j_idx.tolist()):
        rw.AddBond(i, j, bond_type[BOND_ORDERS[int(bonds[i, j])]])
    conformer = Chem.Conformer(len(atom_types))
    for k, (x, y, z) in enumerate(pos.tolist()):
        conformer.SetAtomPosition(k, Point3D(x, y, z))
    mol = rw.GetMol()
    mol.AddConformer(conformer, assignId=True)
    from rdkit import rdBase

    try:
        with rdBase.BlockLogs():   # a generated graph RDKit rejects is answered with None, not printed
            Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - any sanitisation failure means "not a valid molecule"
        return None
    return mol


def graphs_to_mols(graphs: MolGraphs, **kwargs) -> list[Mol | None]:
    """`graph_to_mol` of each molecule of a padded batch."""
    out = []
    for k in range(len(graphs.mask)):
        n = int(graphs.mask[k].sum())
        out.append(graph_to_mol(graphs.pos[k, :n], graphs.atom_types[k, :n], graphs.charges[k, :n],
                                graphs.bonds[k, :n, :n], **kwargs))
    return out


__all__ = [
    "ATOM_ELEMENTS",
    "BOND_ORDERS",
    "FORMAL_CHARGES",
    "QM9_CHARGED_ATOMS",
    "GraphEncodingError",
    "MolGraphs",
    "graph_to_mol",
    "graphs_to_mols",
    "mol_to_tensors",
    "mols_to_graphs",
]
