"""MP-20's training structures as prototypes for ion substitution, each decorated with oxidation states.

The structures are those a model of chemgen trains on (`chemgen.data.crystals.source_files`: the training split,
and the validation split beside it where the full training split's coordinates are absent, the in-house
protocol), never the test split. Each gets pymatgen's likeliest integer oxidation states
(`Composition.oxi_state_guesses`, ICSD statistics); one that has none (an intermetallic) or only mixed valence
is no ionic prototype and is left out. Parsing and decorating 10,000 structures takes a minute or two, so the
result is cached under the cache folder, keyed by the CSV files' digests and the pymatgen version.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOTYPE_SPLITS = ("train", "val")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Prototype:
    """One decorated structure: its id, its species with oxidation states (``"Mn3+"``: one per element, in the
    structure's element order) and the structure (pymatgen, decorated)."""

    material_id: str
    species: tuple[str, ...]
    structure: Any

    @property
    def elements(self) -> tuple[str, ...]:
        from pymatgen.core import Species

        return tuple(Species.from_str(s).symbol for s in self.species)


def _species_label(symbol: str, state: int) -> str:
    return f"{symbol}{abs(state)}{'+' if state > 0 else '-'}"


def decorate(structure: Any, max_sites: int = 20) -> tuple[str, ...] | None:
    """``structure`` decorated in place with its likeliest integer oxidation states; the species labels, or None
    when pymatgen finds no balanced integer assignment (intermetallics, mixed valence)."""
    composition = structure.composition
    guesses = composition.oxi_state_guesses(max_sites=-max_sites)
    if not guesses:
        return None
    states = guesses[0]
    if any(float(v) != int(v) or v == 0 for v in states.values()):
        return None
    structure.add_oxidation_state_by_element({el: int(v) for el, v in states.items()})
    return tuple(_species_label(el.symbol, int(states[el.symbol])) for el in composition.elements)


def _sources(data_dir: str | os.PathLike | None) -> list[Path]:
    from chemgen.data.crystals import source_files

    return [f.path for f in source_files("mp20", data_dir) if f.source_split in PROTOTYPE_SPLITS]


def _digest(paths: Iterable[Path]) -> str:
    import hashlib
    from importlib.metadata import version

    from chemgen.scoring.hull import file_digest

    text = json.dumps([CACHE_VERSION, version("pymatgen"), [file_digest(p) for p in paths]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build(paths: list[Path], log: Any) -> list[dict[str, Any]]:
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    rows = []
    frames = [pd.read_csv(p, usecols=["material_id", "cif"]) for p in paths]
    table = pd.concat(frames, ignore_index=True)
    for number, (material_id, cif) in enumerate(table.itertuples(index=False), 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                structure = Structure.from_str(cif, fmt="cif")
            except Exception:  # noqa: BLE001 - a row pymatgen cannot read is no prototype
                continue
        if not structure.is_ordered or len(structure) > 20:
            continue
        species = decorate(structure)
        if species is None:
            continue
        rows.append({"id": str(material_id), "species": list(species),
                     "lattice": structure.lattice.matrix.round(6).tolist(),
                     "sites": [[_species_label(s.specie.symbol, int(s.specie.oxi_state)), *s.frac_coords.round(6)]
                               for s in structure]})
        if log is not None and number % 2000 == 0:
            log(f"prototypes: {number:,} of {len(table):,} structures read, {len(rows):,} ionic")
    return rows


def load_prototypes(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                    log: Any = None) -> list[Prototype]:
    """Every ionic prototype (cached after the first call; the cache is rebuilt when the CSVs change)."""
    from pymatgen.core import Lattice, Species, Structure

    from chemgen.io import atomic_write
    from chemgen.scoring.hull import default_cache_dir

    paths = _sources(data_dir)
    cache = Path(cache_dir or default_cache_dir()) / f"mp20-prototypes-{_digest(paths)}.json.gz"
    if cache.is_file():
        rows = json.loads(gzip.decompress(cache.read_bytes()))
    else:
        rows = _build(paths, log)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache, "wb") as handle:
            handle.write(gzip.compress(json.dumps(rows).encode()))
    prototypes = []
    for row in rows:
        lattice = Lattice(row["lattice"])
        species = [Species.from_str(site[0]) for site in row["sites"]]
        structure = Structure(lattice, species, [site[1:] for site in row["sites"]])
        prototypes.append(Prototype(row["id"], tuple(row["species"]), structure))
    return prototypes
