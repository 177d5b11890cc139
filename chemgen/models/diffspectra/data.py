"""DiffSpectra's training data: the spectra store's molecules as a `TensorPack` with their graphs and sticks.

Each good molecule of the spectra store (`chemgen.spectra.shards`: QM9 molecules relaxed with GFN2-xTB, with
their harmonic IR and Raman stick spectra) becomes one system of a pack whose model-specific tensors travel
as extras (`chemgen.dense.EXTRA_KINDS`), so the shared trainer, resident buckets and GPU packs carry them:

    atom/charge        (A,)             formal-charge class, index into `graphs.FORMAL_CHARGES`
    atom/bonds         (A, MAX_ATOMS)   bond-order class of each atom to every slot of its molecule
                                        (`graphs.BOND_ORDERS`, Kekulé); a batch crops it to (B, N, N)
    system/frequencies (S, MAX_MODES)   harmonic frequencies, cm^-1, unscaled; 0 pads (and drops imaginary ones)
    system/ir          (S, MAX_MODES)   IR intensities, km/mol
    system/raman       (S, MAX_MODES)   Raman activities, A^4/amu
    system/qm9_index   (S,)             the molecule's GDB index (identity for evaluation)

Spectra stay sticks in the pack (31,000 molecules x 2 x 3,501 grid points would be 870 MB; the sticks are
30 MB) and are broadened on the device by `broaden_sticks`, the torch twin of
`chemgen.spectra.broadening.broaden` (same grid, Lorentzian FWHM 15 cm^-1, xTB -> B3LYP scale).

The graph is perceived from the xTB geometry (RDKit's ``DetermineBonds``, total charge 0: QM9's
zwitterions come out with their formal charges) and kept only when its InChIKey (stereo block aside, see
`skeleton_key`) is the one the store records for QM9's own structure: the diffusion then learns graphs that
are the QM9 molecule (InChI is tautomer-aware for mobile hydrogens), and a molecule whose bonds cannot be
assigned is left out: about 4 % of the store, strained polycycles whose xTB geometry puts atoms of a small
ring within covalent range of each other (five-valent carbons), counted in the `PackReport`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from chemgen.spectra.broadening import FWHM_CM1, GRID_CM1, XTB_TO_B3LYP_SCALE

MAX_ATOMS = 29                 # QM9's largest molecule
MAX_MODES = 3 * MAX_ATOMS - 6  # harmonic modes of the largest non-linear molecule


@dataclass
class PackReport:
    """What became of the store's good molecules: kept, or left out and why (counts by reason)."""

    kept: int = 0
    left_out: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.left_out.most_common())
        return f"{self.kept} molecules kept" + (f"; left out: {reasons}" if reasons else "")


def skeleton_key(inchikey: str) -> str:
    """An InChIKey without its stereo block: connectivity (first 14 characters) and protonation (last). The
    store keeps QM9's stereo-free InChI; a graph perceived in 3D carries the conformer's stereocentres."""
    return f"{inchikey[:14]}-{inchikey[-1:]}"


def perceive_graph(numbers: np.ndarray, positions: np.ndarray):
    """An RDKit molecule of the atoms with bonds and formal charges perceived from the geometry (neutral):
    `chemgen.bonds.rdkit_determine_bonds`, the scoring's ``rdkit`` protocol; raises its BondPerceptionError."""
    from chemgen.atoms import AtomicSystem
    from chemgen.bonds import rdkit_determine_bonds

    return rdkit_determine_bonds(AtomicSystem.molecule(np.asarray(numbers), np.asarray(positions, dtype=float)))


def spectra_pack(folder: str | Path | None = None, split: str | None = None, limit: int | None = None):
    """(TensorPack, PackReport) of the store's good molecules of ``split`` (all splits when None), in the
    store's order; ``limit`` reads the first molecules only. Needs RDKit (a CPU-side step: GPU machines
    get the saved pack)."""
    from rdkit import Chem

    from chemgen.bonds import BondPerceptionError
    from chemgen.data.tensors import TensorPack
    from chemgen.datasets import dataset_label
    from chemgen.models.diffspectra.graphs import GraphEncodingError, mol_to_tensors
    from chemgen.models.diffspectra.spectra_tensors import read_store
    from chemgen.spectra.shards import SpectraStoreError

    columns = ["qm9_index", "split", "inchikey", "atomic_numbers", "positions", "frequencies_cm1", "ir_km_mol",
               "raman_a4_amu"]
    folder, table = read_store(folder, columns, split, limit)
    report = PackReport()
    numbers, positions, charges, bonds, sticks, index = [], [], [], [], [], []
    for row in table.to_pylist():
        z = np.asarray(row["atomic_numbers"], dtype=np.int64)
        xyz = np.asarray(row["positions"], dtype=np.float64).reshape(-1, 3)
        try:
            mol = perceive_graph(z, xyz)
        except BondPerceptionError:
            report.left_out["bonds not perceived"] += 1
            continue
        if skeleton_key(Chem.MolToInchiKey(mol)) != skeleton_key(row["inchikey"]):
            report.left_out["perceived graph is not QM9's molecule"] += 1
            continue
        try:
            _, _, charge, bond = mol_to_tensors(mol)
        except GraphEncodingError:
            report.left_out["outside the vocabulary"] += 1
            continue
        frequencies = np.asarray(row["frequencies_cm1"], dtype=np.float32)
        real = frequencies > 0   # imaginary modes are stored as negative frequencies
        row_sticks = np.zeros((3, MAX_MODES), dtype=np.float32)
        for k, name in enumerate(("frequencies_cm1", "ir_km_mol", "raman_a4_amu")):
            values = np.asarray(row[name], dtype=np.float32)[real]
            row_sticks[k, : len(values)] = values
        padded_bonds = np.zeros((len(z), MAX_ATOMS), dtype=np.int8)
        padded_bonds[:, : len(z)] = bond
        numbers.append(z)
        positions.append(xyz)
        charges.append(charge.astype(np.int8))
        bonds.append(padded_bonds)
        sticks.append(row_sticks)
        index.append(row["qm9_index"])
        report.kept += 1
    if not numbers:
        raise SpectraStoreError(f"{folder}: no usable molecules ({report.summary()})")
    sizes = torch.tensor([len(z) for z in numbers])
    pos = torch.from_numpy(np.concatenate(positions)).float()
    molecule = torch.repeat_interleave(torch.arange(len(numbers)), sizes)
    centre = torch.zeros(len(numbers), 3).index_add_(0, molecule, pos) / sizes[:, None]
    sticks_t = torch.from_numpy(np.stack(sticks))
    pack = TensorPack(atomic_numbers=torch.from_numpy(np.concatenate(numbers)), pos=pos - centre[molecule],
                      frac_coords=torch.zeros_like(pos), num_atoms=sizes, cell=torch.zeros(len(numbers), 3, 3),
                      pbc=torch.zeros(len(numbers), dtype=torch.bool),
                      dataset_idx=torch.full((len(numbers),), dataset_label("qm9"), dtype=torch.long))
    pack = pack.with_extras(atom__charge=torch.from_numpy(np.concatenate(charges)),
                            atom__bonds=torch.from_numpy(np.concatenate(bonds)),
                            system__frequencies=sticks_t[:, 0], system__ir=sticks_t[:, 1],
                            system__raman=sticks_t[:, 2], system__qm9_index=torch.tensor(index))
    return pack, report


def broaden_sticks(frequencies: torch.Tensor, intensities: torch.Tensor, grid: torch.Tensor | None = None,
                   fwhm: float = FWHM_CM1, scale: float = XTB_TO_B3LYP_SCALE) -> torch.Tensor:
    """(B, G) spectra from (B, K) sticks: area-normalised Lorentzians of ``fwhm`` at the scaled frequencies,
    as `chemgen.spectra.broadening.broaden`; sticks at frequency <= 0 (padding) contribute nothing."""
    if grid is None:
        grid = torch.as_tensor(GRID_CM1, dtype=torch.float32, device=frequencies.device)
    gamma = fwhm / 2
    centres = frequencies * scale
    offset = grid[None, None, :] - centres[..., None]                          # (B, K, G)
    lines = (gamma / math.pi) / (offset.square() + gamma**2)
    weights = torch.where(frequencies > 0, intensities, torch.zeros_like(intensities))
    return torch.einsum("bk,bkg->bg", weights, lines)


def batch_spectra(extras: dict[str, torch.Tensor], grid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{"ir": (B, G), "raman": (B, G)} of a dense batch's stick extras."""
    return {name: broaden_sticks(extras["system/frequencies"], extras[f"system/{name}"], grid)
            for name in ("ir", "raman")}


def batch_bonds(extras: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """(B, N, N) long bond classes of a dense batch (its atom/bonds rows cropped to the batch's width)."""
    n = mask.shape[1]
    bonds = extras["atom/bonds"][:, :, :n].long()
    return bonds * (mask[:, :, None] & mask[:, None, :])
