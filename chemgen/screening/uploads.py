"""The team's own structures (CIF or extxyz) as candidates, screened with the rest.

Every structure of every file must be a crystal of the requested system within the record's limits; the first
one that is not fails the upload with a message naming the file, the block or frame, and the problem (a partial
occupancy, an absurd cell, a molecule, another chemical system), before anything is relaxed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from chemgen.errors import UsageError
from chemgen.screening.candidates import Candidate, SourceRun
from chemgen.screening.request import ScreeningRequest

MAX_UPLOADED = 1_000   # structures per screening, all files together


def generate(request: ScreeningRequest, paths: Sequence[str | os.PathLike]) -> SourceRun:
    """Every structure of ``paths`` as a candidate (raises `UsageError` or `chemgen.io.StructureFileError` on the
    first structure that cannot be one)."""
    from chemgen import io as structure_io

    start = time.perf_counter()
    candidates: list[Candidate] = []
    for path in map(Path, paths):
        records = structure_io.read_records(path)
        for number, record in enumerate(records, 1):
            where = f"{path.name}" + (f" structure {number}" if len(records) > 1 else "")
            if isinstance(record, Exception):
                raise UsageError(f"{where}: {record}")
            if not record.pbc:
                raise UsageError(f"{where}: a molecule (no cell), not a crystal")
            if not request.holds(record.symbols, len(record.symbols)):
                formula = record.to_pymatgen().composition.reduced_formula
                if len(record.symbols) > request.max_atoms:
                    raise UsageError(f"{where}: {len(record.symbols)} atoms per cell, over the {request.max_atoms} "
                                     "the MP-20 hull and the other sources use")
                raise UsageError(f"{where}: {formula} is not a compound of {request.system}"
                                 + (f" with formula {request.formula}" if request.formula else ""))
            candidates.append(Candidate(record.replace(material_id=f"upload-{len(candidates)}"), "upload",
                                        f"{where}" + (f" ({record.material_id})" if record.material_id else "")))
            if len(candidates) > MAX_UPLOADED:
                raise UsageError(f"more than {MAX_UPLOADED:,} uploaded structures: split them over several screenings")
    return SourceRun("upload", candidates, len(candidates), time.perf_counter() - start)
