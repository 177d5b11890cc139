"""Curated systems as one flat pack of tensors, for fast training on CPU or GPU.

A `TensorPack` concatenates the atoms of many systems (like a PyG batch of the whole
dataset) and saves as a plain dict of tensors, which ``torch.load(weights_only=True)``
reads without unpickling code. Packs are built on a CPU machine from the curated store
and carried to GPU machines that lack the chemistry stack.
"""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from chemgen.atoms import AtomicSystem
from chemgen.dense import DenseBatch, extra_kind
from chemgen.datasets import dataset_label
from chemgen.errors import ChemgenError

XZ_MAGIC = b"\xfd7zXZ\x00"
PACK_FORMAT = 3  # 1: float32 positions of every atom; 2: compact (see `TensorPack.save`); 3: + space groups
POS_STEPS_PER_ANGSTROM = 2048
POS_RANGE = 32767 / POS_STEPS_PER_ANGSTROM  # ~16 A


class PackError(ChemgenError, ValueError):
    """A file that is not a readable chemgen tensor pack; the message names it."""


@dataclass(frozen=True)
class TensorPack:
    atomic_numbers: torch.Tensor  # (A,) long, all atoms of all systems
    pos: torch.Tensor             # (A, 3) float32, Angstrom; molecules centred at their mean
    frac_coords: torch.Tensor     # (A, 3) float32, zeros for molecules
    num_atoms: torch.Tensor       # (S,) long
    cell: torch.Tensor            # (S, 3, 3) float32, zeros for molecules
    pbc: torch.Tensor             # (S,) bool
    dataset_idx: torch.Tensor     # (S,) long, `chemgen.datasets.dataset_label`
    spacegroup: torch.Tensor | None = None  # (S,) long, international number of crystals (0: none or unknown)
    # A model's own tensors, "atom/<name>" (A, ...) or "system/<name>" (S, ...): `chemgen.dense.EXTRA_KINDS`
    extras: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.spacegroup is None:
            object.__setattr__(self, "spacegroup", torch.zeros(len(self.num_atoms), dtype=torch.long))
        object.__setattr__(self, "extras", dict(self.extras or {}))
        object.__setattr__(self, "offsets", torch.cat([torch.zeros(1, dtype=torch.long), self.num_atoms.cumsum(0)]))
        if int(self.offsets[-1]) != self.atomic_numbers.numel():
            raise ValueError(f"pack is inconsistent: num_atoms sums to {int(self.offsets[-1])} "
                             f"but there are {self.atomic_numbers.numel()} atoms")
        for name, tensor in self.extras.items():
            rows = self.atomic_numbers.numel() if extra_kind(name) == "atom" else len(self.num_atoms)
            if tensor.dim() == 0 or tensor.shape[0] != rows:
                raise ValueError(f"pack is inconsistent: extra {name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {rows} rows")

    def with_extras(self, **extras: torch.Tensor) -> TensorPack:
        """The same systems with more of a model's own tensors (names as ``atom__charge`` -> "atom/charge")."""
        named = {k.replace("__", "/", 1): v for k, v in extras.items()}
        return TensorPack(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"},
                          extras={**self.extras, **named})

    def __len__(self) -> int:
        return int(self.num_atoms.numel())

    @classmethod
    def from_systems(cls, systems: Sequence[AtomicSystem]) -> TensorPack:
        if not systems:
            raise ValueError("cannot pack an empty list of systems")
        pos = []
        for s in systems:
            p = torch.tensor(s.pos, dtype=torch.float32)
            pos.append(p if s.pbc else p - p.mean(0, keepdim=True))  # molecules: centre of geometry at 0
        return cls(
            atomic_numbers=torch.cat([torch.tensor(s.atomic_numbers) for s in systems]),
            pos=torch.cat(pos),
            frac_coords=torch.cat([torch.tensor(s.frac_coords, dtype=torch.float32) for s in systems]),
            num_atoms=torch.tensor([s.num_atoms for s in systems]),
            cell=torch.stack([torch.tensor(s.cell, dtype=torch.float32) for s in systems]),
            pbc=torch.tensor([s.pbc for s in systems]),
            dataset_idx=torch.tensor([dataset_label(s.dataset) for s in systems]),
            spacegroup=torch.tensor([crystal_spacegroup(s) for s in systems], dtype=torch.long),
        )

    @classmethod
    def concat(cls, packs: Sequence[TensorPack]) -> TensorPack:
        names = {frozenset(p.extras) for p in packs}
        if len(names) > 1:
            raise ValueError(f"cannot concatenate packs with different extras: {sorted(map(sorted, names))}")
        extras = {k: torch.cat([p.extras[k] for p in packs]) for k in packs[0].extras}
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in packs]) for f in fields(cls) if f.name != "extras"},
                   extras=extras)

    def subset(self, index: torch.Tensor) -> TensorPack:
        index = torch.as_tensor(index, dtype=torch.long)
        atoms = torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in index.tolist()]
                          + [torch.zeros(0, dtype=torch.long)])   # an empty index gives an empty pack
        extras = {k: v[atoms] if extra_kind(k) == "atom" else v[index] for k, v in self.extras.items()}
        return TensorPack(self.atomic_numbers[atoms], self.pos[atoms], self.frac_coords[atoms],
                          self.num_atoms[index], self.cell[index], self.pbc[index], self.dataset_idx[index],
                          self.spacegroup[index], extras)

    def dense(self, index: torch.Tensor | Sequence[int]) -> DenseBatch:
        """Padded tensors of the systems at ``index``: (B, N_max, ...) with a mask."""
        index = torch.as_tensor(index, dtype=torch.long)
        counts = self.num_atoms[index]
        n_max = int(counts.max())
        slot = torch.arange(n_max)
        mask = slot[None, :] < counts[:, None]                                      # (B, N)
        atom = (self.offsets[index][:, None] + slot[None, :]).clamp(max=self.atomic_numbers.numel() - 1)
        types = torch.where(mask, self.atomic_numbers[atom], torch.zeros_like(atom))
        pos = self.pos[atom] * mask[..., None]
        frac = self.frac_coords[atom] * mask[..., None]

        def padded(t: torch.Tensor) -> torch.Tensor:   # an atom extra, zero at padding
            values = t[atom]
            return values * mask.view(*mask.shape, *(1,) * (values.dim() - 2)).to(values.dtype)

        extras = {k: padded(v) if extra_kind(k) == "atom" else v[index] for k, v in self.extras.items()}
        return DenseBatch(types, pos, frac, mask, self.cell[index], self.pbc[index], self.dataset_idx[index], counts,
                          self.spacegroup[index], extras)

    def held_out(self, per_kind: int, seed: int = 0) -> DenseBatch:
        """Up to ``per_kind`` molecules and ``per_kind`` crystals, drawn at random (fixed by ``seed``), padded:
        the diagnostics batch of a validation pack."""
        return self.dense(self.held_out_index(per_kind, seed))

    def held_out_index(self, per_kind: int, seed: int = 0) -> torch.Tensor:
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return torch.cat([order[~self.pbc[order]][:per_kind], order[self.pbc[order]][:per_kind]])

    def save(self, path: str | os.PathLike, compress: bool = False) -> Path:
        """Write the pack compactly (it travels to GPU machines inside a 64 MiB working tree).

        Element numbers, sizes and labels fit in a byte or two; only crystals store cells and float32
        fractional coordinates (their Cartesian
        positions are frac @ cell, recomputed on load); molecules' centred positions are stored as
        int16 multiples of 1/2048 A (range +-16 A, rounding error at most 0.00025 A, two orders below
        what a VAE reconstructs), falling back to float32 for any pack with a molecule beyond that range.
        ``compress`` xz-compresses the file (packs that travel); `load` reads either.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        periodic = self.atom_is_periodic()
        payload = {"atomic_numbers": self.atomic_numbers.to(torch.uint8), "num_atoms": self.num_atoms.to(torch.int16),
                   "pbc": self.pbc, "dataset_idx": self.dataset_idx.to(torch.uint8),
                   "spacegroup": self.spacegroup.to(torch.uint8),
                   "cell": self.cell[self.pbc],                     # molecules' cells are zero
                   "frac_coords": self.frac_coords[periodic]}       # molecules' fractional coordinates too
        if self.extras:
            payload["extras"] = dict(self.extras)
        molecule_pos = self.pos[~periodic]
        if molecule_pos.numel() == 0 or molecule_pos.abs().max() < POS_RANGE:
            payload["molecule_pos_q"] = torch.round(molecule_pos * POS_STEPS_PER_ANGSTROM).to(torch.int16)
        else:
            payload["molecule_pos"] = molecule_pos
        if compress:  # xz: about 30 % smaller, seconds to write, under a second to read
            buffer = io.BytesIO()
            torch.save({"format": PACK_FORMAT, **payload}, buffer)
            tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
        else:
            torch.save({"format": PACK_FORMAT, **payload}, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TensorPack:
        with open(path, "rb") as handle:
            compressed = handle.read(len(XZ_MAGIC)) == XZ_MAGIC
        if compressed:
            try:
                source: Any = io.BytesIO(lzma.decompress(Path(path).read_bytes()))
            except lzma.LZMAError as err:
                raise PackError(f"{path}: corrupt compressed tensor pack ({err})") from err
        else:
            source = path
        payload = torch.load(source, map_location="cpu", weights_only=True)  # tensors only, no code
        if not isinstance(payload, dict) or payload.get("format") not in (1, 2, PACK_FORMAT):
            raise PackError(f"{path}: not a chemgen tensor pack (format {PACK_FORMAT})")
        positions = ("pos",) if payload["format"] == 1 else ()  # 2 and 3 store them compactly
        missing = [name for name in ("atomic_numbers", "frac_coords", "num_atoms", "cell", "pbc", "dataset_idx",
                                     *positions) if name not in payload]
        if payload["format"] > 1 and not ({"molecule_pos_q", "molecule_pos"} & set(payload)):
            missing.append("molecule_pos")
        if missing:
            raise PackError(f"{path}: tensor pack lacks {missing}")
        values: dict[str, Any] = {name: payload[name].long() for name in ("num_atoms", "dataset_idx", "atomic_numbers")}
        extras = payload.get("extras", {})
        if not isinstance(extras, dict) or not all(isinstance(v, torch.Tensor) for v in extras.values()):
            raise PackError(f"{path}: the pack's extras are not a dict of tensors")
        values["extras"] = extras
        values["pbc"] = payload["pbc"]
        if "spacegroup" in payload:  # packs written before space groups were kept have none
            values["spacegroup"] = payload["spacegroup"].long()
        values["cell"] = payload["cell"]
        if payload["format"] > 1:
            values["cell"] = torch.zeros(len(values["pbc"]), 3, 3, dtype=torch.float32)
            values["cell"][values["pbc"]] = payload["cell"]
        periodic_atoms = torch.repeat_interleave(values["pbc"], values["num_atoms"])
        frac = torch.zeros(len(periodic_atoms), 3, dtype=torch.float32)
        frac[periodic_atoms] = payload["frac_coords"]
        values["frac_coords"] = frac
        if payload["format"] == 1:
            values["pos"] = payload["pos"]
        else:
            pos = torch.zeros(len(periodic_atoms), 3, dtype=torch.float32)
            if "molecule_pos_q" in payload:
                pos[~periodic_atoms] = payload["molecule_pos_q"].float() / POS_STEPS_PER_ANGSTROM
            else:
                pos[~periodic_atoms] = payload["molecule_pos"]
            cells = torch.repeat_interleave(values["cell"], values["num_atoms"], dim=0)        # (A, 3, 3)
            pos[periodic_atoms] = (frac[periodic_atoms, None, :] @ cells[periodic_atoms]).squeeze(1)
            values["pos"] = pos
        try:
            return cls(**values)
        except ValueError as err:   # extras named or shaped wrongly
            raise PackError(f"{path}: {err}") from None

    def atom_is_periodic(self) -> torch.Tensor:
        return torch.repeat_interleave(self.pbc, self.num_atoms)

    def spacegroup_histogram(self, dataset_idx: int, max_atoms: int) -> torch.Tensor:
        """Counts of one dataset's systems by (number of atoms, space group): (max_atoms + 1, 231)."""
        rows = self.dataset_idx == dataset_idx
        keep = self.num_atoms[rows] <= max_atoms
        flat = self.num_atoms[rows][keep] * 231 + self.spacegroup[rows][keep]
        return torch.bincount(flat, minlength=(max_atoms + 1) * 231)[: (max_atoms + 1) * 231].view(max_atoms + 1, 231)

    def num_atoms_histogram(self, dataset_idx: int, max_atoms: int) -> torch.Tensor:
        """Counts of systems of one dataset by size (index = number of atoms)."""
        sizes = self.num_atoms[self.dataset_idx == dataset_idx]
        return torch.bincount(sizes, minlength=max_atoms + 1)[: max_atoms + 1]


def crystal_spacegroup(system: AtomicSystem) -> int:
    """The international space-group number a crystal's record carries (MP-20: ``spacegroup.number``), else 0."""
    value = system.properties.get("spacegroup.number") if system.pbc else None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return number if 1 <= number <= 230 else 0


def pack_from_store(name: str, split: str, limit: int | None = None, root: str | os.PathLike | None = None,
                    version: str | None = None) -> TensorPack:
    """A curated split (LATEST, or ``version``) as a tensor pack (needs pyarrow; run on a CPU machine)."""
    from chemgen.data.store import load

    return TensorPack.from_systems(load(name, split, version=version, limit=limit, root=root))
