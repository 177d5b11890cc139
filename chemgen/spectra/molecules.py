"""`chemgen spectra compute`: xTB IR and Raman spectra of a user's own molecules, as files.

Input: SDF, XYZ / extended XYZ (through `chemgen.io`), or SMILES (a ``.smi`` file, one per line with an
optional name, or ``--smiles``), which RDKit embeds in 3D (ETKDG, seeded; MMFF pre-relaxation).
Output per molecule, in ``--out``: ``<name>.ir.jdx`` and ``<name>.raman.jdx`` (JCAMP-DX on the model grid,
frequencies scaled to B3LYP as the dataset is), ``<name>.png`` (IR up, Raman mirrored), ``<name>.xyz``
(the relaxed xTB geometry), plus ``spectra.csv`` with one line per molecule (status, or the failure).
A molecule that fails is reported and the others go on.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path


from chemgen.atoms import AtomicSystem
from chemgen.errors import ChemgenError
from chemgen.spectra import broadening, files
from chemgen.spectra.compute import SpectraFailure, SpectraSettings, compute_spectrum

MAX_ATOMS = 200   # xTB Hessians grow as N^2 gradients: beyond this, minutes per molecule


class MoleculeInputError(ChemgenError, ValueError):
    """A molecule given for spectra that cannot be used: a SMILES RDKit cannot parse or embed, a periodic
    structure, or more atoms than the limit."""


@dataclass(frozen=True)
class ComputedFiles:
    name: str
    smiles: str
    status: str                 # "ok" or the failure reason
    files: tuple[Path, ...] = ()


def embed_smiles(smiles: str, name: str | None = None, seed: int = 0) -> AtomicSystem:
    """A 3D molecule from SMILES: hydrogens added, ETKDG embedding, MMFF relaxation when MMFF knows it."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MoleculeInputError(f"SMILES {smiles!r}: RDKit cannot parse it")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise MoleculeInputError(f"SMILES {smiles!r}: RDKit could not embed a 3D geometry")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    positions = mol.GetConformer().GetPositions()
    return AtomicSystem.molecule([a.GetAtomicNum() for a in mol.GetAtoms()], positions, dataset="user",
                                 smiles=smiles, material_id=name,
                                 properties={"charge": Chem.GetFormalCharge(mol)})


def read_smiles_file(path: Path) -> list[AtomicSystem]:
    systems = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[0].upper() == "SMILES":
            continue
        try:
            systems.append(embed_smiles(parts[0], parts[1] if len(parts) > 1 else f"{path.stem}_{number}"))
        except ValueError as err:
            raise files.SpectrumFileError(f"{path}: line {number}: {err}") from None
    if not systems:
        raise files.SpectrumFileError(f"{path}: no SMILES found")
    return systems


def read_molecules(paths: list[Path], smiles: list[str] = ()) -> list[AtomicSystem]:
    from chemgen import io

    systems: list[AtomicSystem] = []
    for path in paths:
        if path.suffix.lower() in (".smi", ".smiles"):
            systems.extend(read_smiles_file(path))
        else:
            read = io.read(path)
            systems.extend(s if s.material_id else s.replace(material_id=f"{path.stem}_{i}" if len(read) > 1
                                                            else path.stem) for i, s in enumerate(read))
    for i, text in enumerate(smiles):
        systems.append(embed_smiles(text, f"smiles_{i}"))
    for system in systems:
        if system.pbc:
            raise MoleculeInputError(f"{system.material_id}: periodic structures have no molecular spectra here")
        if system.num_atoms > MAX_ATOMS:
            raise MoleculeInputError(f"{system.material_id}: {system.num_atoms} atoms is more than the "
                                     f"{MAX_ATOMS}-atom limit")
    return systems


def safe_name(text: str, taken: set[str]) -> str:
    """A file name from a molecule name: letters, digits, ``-_.`` only, unique in this run."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "molecule"
    name = name[:80]
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _charge(system: AtomicSystem) -> int:
    if "charge" in system.properties:
        return int(system.properties["charge"])
    if system.smiles:
        from rdkit import Chem

        mol = Chem.MolFromSmiles(system.smiles)
        if mol is not None:
            return Chem.GetFormalCharge(mol)
    return 0


def write_spectra(systems: list[AtomicSystem], out: Path, settings: SpectraSettings = SpectraSettings(),
                  fwhm: float = broadening.FWHM_CM1, progress: bool = True) -> list[ComputedFiles]:
    """Compute, broaden and write every molecule's spectra; failures are listed, never raised."""
    from rich.progress import track

    from chemgen import io
    from chemgen.spectra.plots import plot_ir_raman

    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    results = []
    for system in track(systems, description="xTB spectra", disable=not progress):
        name = safe_name(system.material_id or system.smiles or "molecule", taken)
        try:
            spectra = compute_spectrum(system.atomic_numbers, system.pos, settings, charge=_charge(system))
        except SpectraFailure as err:
            results.append(ComputedFiles(name, system.smiles or "", f"failed: {err}"))
            continue
        grid = broadening.GRID_CM1
        f = spectra.frequencies_cm1
        ir = broadening.broaden(f, spectra.ir_intensities_km_mol, "ir", fwhm=fwhm)
        raman = broadening.broaden(f, spectra.raman_activities_a4_amu, "raman", fwhm=fwhm)
        meta = {"$method": f"GFN2-xTB harmonic (tblite), frequencies x {broadening.XTB_TO_B3LYP_SCALE}",
                "$line shape": f"lorentzian FWHM {fwhm:g} cm-1"}
        if system.smiles:
            meta["$smiles"] = system.smiles
        written = [
            files.write_jcamp(out / f"{name}.ir.jdx", files.Spectrum(grid, ir, "ir", "intensity", title=name, meta=meta),
                              y_units="KM/MOL PER CM-1"),
            files.write_jcamp(out / f"{name}.raman.jdx",
                              files.Spectrum(grid, raman, "raman", "intensity", title=name, meta=meta),
                              y_units="A^4/AMU PER CM-1"),
            plot_ir_raman(out / f"{name}.png", f"{name}  {system.smiles or ''}  (GFN2-xTB)", grid, ir, raman,
                          f * broadening.XTB_TO_B3LYP_SCALE, spectra.ir_intensities_km_mol,
                          spectra.raman_activities_a4_amu),
        ]
        relaxed = system.replace(pos=spectra.positions_a, bonds=None)
        io.write(out / f"{name}.xyz", [relaxed])
        written.append(out / f"{name}.xyz")
        results.append(ComputedFiles(name, system.smiles or "", "ok", tuple(written)))
    from chemgen.io import atomic_write

    with atomic_write(out / "spectra.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "smiles", "status", "files"])
        for r in results:
            writer.writerow([r.name, r.smiles, r.status, " ".join(p.name for p in r.files)])
    return results


