"""A chemist's own library of computed spectra: their candidate molecules (isomers from a database they trust,
a reaction's possible products), given once, computed once (GFN2-xTB: conformer, relaxation, vibrations), kept
beside QM9's library and searched the same way (`chemgen.elucidation.library`).

``chemgen spectra library add NAME FILE`` reads a SMILES file (one per line, an optional name after it) or any
structure file chemgen reads (SDF, XYZ), and computes the molecules that ``NAME`` does not hold yet, in shards of
`SHARD_SIZE` written atomically: a kill loses at most the shard being computed, and the next ``add`` goes on from
there. Every line that cannot become a spectrum is reported with its reason, and the others go on:

* SMILES RDKit cannot parse, or cannot embed in 3D;
* several fragments (a salt, a mixture), a charged species, an element outside the organic set xTB's spectra
  are checked for here (`ORGANIC_ELEMENTS`: no metals), more than `MAX_ATOMS` atoms;
* molecules xTB cannot relax, whose bonding changes on relaxation, or that stay at a saddle point.

A file of more than `MAX_CANDIDATES` molecules is refused before anything is computed (at a few seconds a
molecule, 20,000 are already a day of one core). The library's folder holds the shards and ``lines.csv``, one line
per input line with its status; its molecules are keyed by InChIKey, so a molecule given twice is computed once.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.errors import ChemgenError, UsageError

SHARD_SIZE = 25
MAX_CANDIDATES = 20_000
MAX_ATOMS = 100
ORGANIC_ELEMENTS = frozenset({"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I"})
LINES_FILE = "lines.csv"


class CandidateFileError(ChemgenError, ValueError):
    """A candidates file that cannot be used as a whole (missing, empty, over the limit)."""


@dataclass(frozen=True)
class Entry:
    """One input line: its number, name and SMILES, and why it cannot be computed (None: it can)."""

    line: int
    name: str
    smiles: str
    problem: str | None = None
    system: Any = None          # the 3D molecule to compute (`chemgen.atoms.AtomicSystem`)
    inchikey: str = ""


@dataclass(frozen=True)
class AddReport:
    library: Path
    read: int                   # input lines that were molecules (or tried to be)
    computed: int               # new molecules with spectra
    failed: int                 # new molecules or lines that could not be computed
    skipped: int                # already in the library
    seconds: float


def library_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<name>`` (root: `chemgen.elucidation.pooling.user_library_root`'s place), for a safe name."""
    import re

    from chemgen.paths import chemgen_home

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or ""):
        raise UsageError(f"library name {name!r}: letters, digits, '-', '_' and '.', starting with a letter or digit")
    return (Path(root) if root is not None else chemgen_home() / "libraries") / name


def check_molecule(smiles: str) -> tuple[str | None, Any]:
    """(problem or None, the RDKit molecule) for one SMILES (module docstring's rules)."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return f"SMILES {smiles!r}: RDKit cannot parse it", None
    if len(Chem.GetMolFrags(mol)) > 1:
        return "several fragments (a salt or a mixture): give one neutral molecule", mol
    charge = Chem.GetFormalCharge(mol)
    if charge:
        return f"charged ({charge:+d}): the library holds neutral molecules", mol
    others = sorted({a.GetSymbol() for a in mol.GetAtoms()} - ORGANIC_ELEMENTS)
    if others:
        return f"contains {', '.join(others)}: only {', '.join(sorted(ORGANIC_ELEMENTS))} are supported", mol
    atoms = Chem.AddHs(mol).GetNumAtoms()
    if atoms > MAX_ATOMS:
        return f"{atoms} atoms: more than the {MAX_ATOMS}-atom limit", mol
    return None, mol


def read_entries(path: Path | None = None, smiles: Sequence[str] = (), limit: int = MAX_CANDIDATES) -> list[Entry]:
    """One `Entry` per molecule of a SMILES file (or ``smiles``), or per record of a structure file; more than
    ``limit`` molecules are refused."""
    from rdkit import Chem

    from chemgen.spectra.molecules import MoleculeInputError, embed_smiles

    texts: list[tuple[int, str, str]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CandidateFileError(f"{path}: no such file")
        if path.suffix.lower() in (".smi", ".smiles", ".txt", ".csv"):
            lines = path.read_text(errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                parts = line.replace(",", " ").split()
                if not parts or parts[0].startswith("#") or parts[0].upper() == "SMILES":
                    continue
                texts.append((number, parts[1] if len(parts) > 1 else f"{path.stem}_{number}", parts[0]))
        else:
            from chemgen import io

            for number, system in enumerate(io.read(path), start=1):
                smiles_text = system.smiles or _smiles_of(system)
                texts.append((number, system.material_id or f"{path.stem}_{number}", smiles_text or ""))
    texts += [(i + 1, f"smiles_{i + 1}", s) for i, s in enumerate(smiles)]
    if not texts:
        raise CandidateFileError(f"{path or 'the command line'}: no molecules given")
    if len(texts) > limit:
        raise CandidateFileError(f"{path or 'the command line'}: {len(texts):,} molecules; at most {limit:,} per call "
                                 f"(each takes seconds of xTB): split the file")
    entries = []
    for number, name, text in texts:
        problem, mol = check_molecule(text) if text else ("no SMILES (the structure could not be read)", None)
        if problem is not None:
            entries.append(Entry(number, name, text, problem))
            continue
        try:
            system = embed_smiles(text, name)
        except MoleculeInputError as err:
            entries.append(Entry(number, name, text, str(err)))
            continue
        entries.append(Entry(number, name, Chem.MolToSmiles(mol), None, system, Chem.MolToInchiKey(mol)))
    return entries


def _smiles_of(system: Any) -> str | None:
    from rdkit import Chem

    from chemgen.bonds import BondPerceptionError, rdkit_determine_bonds

    try:
        return Chem.MolToSmiles(Chem.RemoveHs(rdkit_determine_bonds(system, charge=0)))
    except (BondPerceptionError, ValueError, RuntimeError):
        return None


def add_candidates(name: str, path: str | os.PathLike | None = None, smiles: Sequence[str] = (),
                   root: str | os.PathLike | None = None, progress: Callable[[int, int, str], None] | None = None,
                   compute: Callable[..., Any] | None = None, limit: int = MAX_CANDIDATES) -> AddReport:
    """Compute the spectra of the molecules ``name`` does not hold yet (module docstring); ``progress(done,
    total, name)`` after each molecule; a file of more than ``limit`` molecules is refused."""
    from chemgen.spectra import shards
    from chemgen.spectra.compute import SpectraFailure, SpectraSettings, compute_spectrum
    from chemgen.spectra.curation import folder_lock
    from chemgen.spectra.xtb import tblite_version

    start = time.perf_counter()
    folder = library_folder(name, root)
    entries = read_entries(Path(path) if path is not None else None, smiles, limit)
    folder.mkdir(parents=True, exist_ok=True)
    compute = compute or compute_spectrum
    settings = SpectraSettings()
    with folder_lock(folder):
        shards.remove_temporaries(folder)
        existing = shards.scan(folder)
        done_keys = set()
        for info in existing:
            import pyarrow.parquet as pq

            done_keys |= set(pq.read_table(folder / info.file, columns=["inchikey"]).column("inchikey").to_pylist())
        order = max((i.end for i in existing), default=0)
        todo, skipped, seen = [], 0, set()
        for entry in entries:
            if entry.problem is None and (entry.inchikey in done_keys or entry.inchikey in seen):
                skipped += 1
                continue
            if entry.problem is None:
                seen.add(entry.inchikey)
                todo.append(entry)
        computed = failed = 0
        for first in range(0, len(todo), SHARD_SIZE):
            rows = []
            for entry in todo[first:first + SHARD_SIZE]:
                system = entry.system
                row = {"order": order + len(rows), "qm9_index": None, "split": "user", "inchikey": entry.inchikey,
                       "smiles": entry.smiles, "atomic_numbers": system.atomic_numbers.tolist(), "positions": None,
                       "energy_eh": None, "frequencies_cm1": None, "ir_km_mol": None, "raman_a4_amu": None,
                       "num_imaginary": None, "optimisation_steps": None, "seconds": None, "failure": None}
                try:
                    result = compute(np.asarray(system.atomic_numbers), np.asarray(system.pos), settings)
                    row.update(positions=result.positions_a.ravel().tolist(), energy_eh=result.energy_eh,
                               frequencies_cm1=result.frequencies_cm1.tolist(),
                               ir_km_mol=result.ir_intensities_km_mol.tolist(),
                               raman_a4_amu=None if result.raman_activities_a4_amu is None
                               else result.raman_activities_a4_amu.tolist(),
                               num_imaginary=result.num_imaginary, optimisation_steps=result.optimisation_steps,
                               seconds=result.seconds)
                    computed += 1
                except SpectraFailure as err:
                    row["failure"] = str(err)
                    failed += 1
                rows.append(row)
                if progress:
                    progress(first + len(rows), len(todo), entry.name)
            shards.write_shard(folder, order, order + len(rows), rows,
                               {"settings": settings.as_dict(), "tblite_version": tblite_version(), "library": name,
                                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            order += len(rows)
        _write_lines(folder, entries)
    return AddReport(folder, len(entries), computed, failed + sum(e.problem is not None for e in entries), skipped,
                     time.perf_counter() - start)


def _write_lines(folder: Path, entries: Sequence[Entry]) -> None:
    """``lines.csv``: every input line of this call with its status (computed, failed with the reason, or a
    problem with the input)."""
    import pyarrow.parquet as pq

    from chemgen.io import atomic_write
    from chemgen.spectra import shards

    status: dict[str, str] = {}
    for info in shards.scan(folder):
        table = pq.read_table(folder / info.file, columns=["inchikey", "failure"]).to_pylist()
        status.update({r["inchikey"]: ("ok" if r["failure"] is None else f"failed: {r['failure']}") for r in table})
    with atomic_write(folder / LINES_FILE) as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "name", "smiles", "inchikey", "status"])
        for entry in entries:
            writer.writerow([entry.line, entry.name, entry.smiles, entry.inchikey,
                             entry.problem if entry.problem else status.get(entry.inchikey, "not computed")])


def read_lines(folder: Path) -> list[dict[str, str]]:
    path = Path(folder) / LINES_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
