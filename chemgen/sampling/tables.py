"""Generated structures as table rows: identifiers (formula, SMILES, InChIKey) and file texts (CIF, extended XYZ).

One row per record or `chemgen.samples.Failure`; the CSV of ``chemgen sample`` and the registry pyfunc's answer
share these columns.
"""

from __future__ import annotations

import io
from typing import Any


def structure_rows(systems: list, kind: str) -> list[dict[str, Any]]:
    """Identifiers and file texts for generated records (and `Failure`s)."""
    from rdkit import rdBase

    with rdBase.BlockLogs():  # failed sanitisations are expected for generated molecules
        return [structure_row(i, system, kind) for i, system in enumerate(systems)]


def structure_row(index: int, system: Any, kind: str) -> dict[str, Any]:
    from ase.io import write as ase_write
    from rdkit import Chem

    from chemgen.samples import Failure
    from chemgen.scoring.molecules import score_edm

    row: dict[str, Any] = {"sample": index, "kind": kind, "formula": "", "num_atoms": 0, "smiles": "",
                           "inchikey": "", "cif": "", "xyz": "", "failure": ""}
    if isinstance(system, Failure):
        row["failure"] = system.reason
        return row
    row.update(formula=system.formula, num_atoms=system.num_atoms)
    buffer = io.StringIO()
    ase_write(buffer, system.to_ase(), format="extxyz")
    row["xyz"] = buffer.getvalue()
    if kind == "molecule":
        smiles = score_edm(system).smiles()
        if smiles:
            row["smiles"] = smiles
            mol = Chem.MolFromSmiles(smiles)
            row["inchikey"] = Chem.MolToInchiKey(mol) if mol is not None else ""
    else:
        from pymatgen.io.cif import CifWriter

        row["cif"] = str(CifWriter(system.to_pymatgen()))
    return row
