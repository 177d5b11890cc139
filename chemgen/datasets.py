"""The datasets chemgen knows, by name: the one registry of what each holds, its label and how it is curated.

Every place that names a dataset reads it from `DATASETS`: the command line (``chemgen data prepare NAME``), the
curation flow, the conditioning labels of ADiT (`dataset_label`, saved with every checkpoint), sampling requests
(`resolve_dataset`: a dataset, or a kind standing for its default dataset) and the crystal readers (a dataset's
`CrystalSource`: folder, columns and size limit of its CDVAE-format CSVs). Pure Python, so that a machine with
only torch imports it.

Labels are part of trained checkpoints: a label, once given, is never changed or reused.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from chemgen.errors import UsageError

Kind = Literal["molecule", "crystal"]
KINDS: tuple[Kind, ...] = ("molecule", "crystal")

CDVAE_RAW = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
DIFFCSP_RAW = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"


@dataclass(frozen=True)
class CrystalSource:
    """Where a CDVAE-format crystal set's CSVs come from and what a row may hold."""

    folder: str                      # folder name in the CDVAE layout (under the data directory)
    url: str                         # canonical source folder of the CSV files
    property_columns: tuple[str, ...]
    max_atoms: int                   # atoms per primitive cell


@dataclass(frozen=True)
class Dataset:
    """One dataset: its name on the command line, what it holds, its conditioning label and its curation."""

    name: str
    kind: Kind
    label: int                       # conditioning label, 1.. (0 is classifier-free guidance's null class)
    builder: str                     # "module:function" -> the curation recipe, called (name, data_dir, workers, limit)
    citation: str
    licence: str
    crystal: CrystalSource | None = None
    extra: dict[str, str] = field(default_factory=dict)


_CRYSTAL_BUILDER = "chemgen.data.crystals:builder"
_MP_LICENCE = "CC BY 4.0 (Materials Project data); splits MIT (CDVAE)"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mp20", "crystal", 1, _CRYSTAL_BUILDER,
            "Xie et al., Crystal Diffusion Variational Autoencoder, ICLR 2022; Jain et al., APL Materials 2013",
            _MP_LICENCE,
            CrystalSource("mp_20", f"{CDVAE_RAW}/mp_20",
                          ("formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number"), 20)),
    Dataset("qm9", "molecule", 2, "chemgen.data.qm9:builder",
            "Ramakrishnan et al., Quantum chemistry structures and properties of 134 kilo molecules, Sci. Data 2014",
            "CC0 (QM9); qm9pack MIT"),
    Dataset("mpts52", "crystal", 3, _CRYSTAL_BUILDER, "Baird & Sparks 2022; Jiao et al., DiffCSP, NeurIPS 2023",
            _MP_LICENCE,
            CrystalSource("mpts_52", f"{DIFFCSP_RAW}/mpts_52",
                          ("formation_energy_per_atom", "energy_above_hull", "year"), 52)),
    Dataset("perov5", "crystal", 4, _CRYSTAL_BUILDER,
            "Castelli et al., Energy Environ. Sci. 2012; Xie et al., ICLR 2022", "MIT (CDVAE)",
            CrystalSource("perov_5", f"{CDVAE_RAW}/perov_5", ("heat_all", "heat_ref", "dir_gap", "ind_gap"), 5)),
    Dataset("carbon24", "crystal", 5, _CRYSTAL_BUILDER,
            "Pickard, AIRSS data for carbon at 10 GPa, 2020; Xie et al., ICLR 2022", "CC BY 4.0; splits MIT (CDVAE)",
            CrystalSource("carbon_24", f"{CDVAE_RAW}/carbon_24", ("energy_per_atom",), 24)),
)}

# The dataset a bare kind stands for (requests may name either).
DEFAULT_DATASET: dict[Kind, str] = {"molecule": "qm9", "crystal": "mp20"}


def dataset(name: str) -> Dataset:
    """The registry entry of ``name``; an unknown name is a `UsageError` that lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def resolve_dataset(name: str) -> tuple[str, Kind]:
    """A dataset name, or a kind standing for its default dataset -> (dataset, kind)."""
    name = DEFAULT_DATASET.get(name, name)  # type: ignore[call-overload]
    if name not in DATASETS:
        raise UsageError(f"unknown dataset or kind {name!r} (datasets: {', '.join(DATASETS)}; "
                         f"kinds: {', '.join(DEFAULT_DATASET)})")
    return name, DATASETS[name].kind


def dataset_label(name: str) -> int:
    """The conditioning label of a dataset; 0 is the CFG null class, so an unknown name must not map to it."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset label {name!r} (known: {', '.join(DATASETS)}); "
                         "label 0 is classifier-free guidance's null class")
    return DATASETS[name].label


def label_order() -> tuple[str, ...]:
    """Dataset names by label (label = position + 1), as a checkpoint records them."""
    return tuple(sorted(DATASETS, key=lambda n: DATASETS[n].label))


def crystal_source(name: str) -> CrystalSource:
    """The CSV source of a crystal dataset."""
    source = dataset(name).crystal
    if source is None:
        raise UsageError(f"{name} is not a crystal dataset (crystal datasets: "
                         f"{', '.join(n for n, d in DATASETS.items() if d.crystal)})")
    return source


def curation_builder(name: str) -> Callable[..., Any]:
    """The function that builds ``name``'s curation recipe, ``builder(name, data_dir=, workers=, limit=)``
    (imported on demand: the readers need pandas and the chemistry stack)."""
    module, function = dataset(name).builder.split(":")
    return getattr(importlib.import_module(module), function)


def curation_recipe(name: str, **options: Any) -> Any:
    """The curation recipe (`chemgen.data.store.DatasetBuilder`) of ``name``; ``options`` are the builder's
    (``data_dir``, ``workers``, ``limit``)."""
    return curation_builder(name)(name, **options)
