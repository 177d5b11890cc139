"""chemgen's computed spectra as tensors for DiffSpectra: IR and Raman on the 3,501-point grid, with the molecules.

The committed store (``datasets/spectra/qm9-xtb``, `chemgen.spectra.shards`) holds stick spectra: harmonic
frequencies, IR intensities (km/mol) and Raman activities (A^4/amu) per QM9 molecule, plus its relaxed xTB
geometry. `load_spectra_tensors` reads the good rows (``failure`` null) of one split and broadens both kinds
onto DiffSpectra's grid (500-4,000 cm^-1, 1 cm^-1 steps) exactly as `chemgen.spectra.broadening.broaden`
does: area-normalised Lorentzians (FWHM 15 cm^-1) times the stick intensity, frequencies scaled by the
xTB -> B3LYP factor, imaginary modes dropped. So a band's area is its stick's intensity (less the Lorentzian
tails outside the grid) and the values are in km/mol per cm^-1 (IR) and A^4/amu per cm^-1 (Raman); the
SpecFormer applies its own unit scale and log10(x + 1) (`chemgen.models.diffspectra.specformer`).

Why not `broaden_many`: it loops over molecules and broadens each kind separately, about 100 s for the whole
store on one core. Here the line shapes of a block of molecules are computed once for both kinds (they share
frequencies) and contracted with both intensity vectors in one batched matmul; molecules are sorted by mode
count so a block pads little. The result equals `broaden` to float32 precision (a test checks it), and the
whole store (34,776 molecules) loads in about 10 s on one core (1.2 s of it reading the shards), so nothing
is cached on disk.

Molecules are kept in the store's computation order (EDM's split order) and carry what a join with QM9 or the
molecule tensors needs: ``qm9_index`` (GDB index), ``order``, ``split``, ``smiles``, ``inchikey``, and the
atoms as one flat pack (``atomic_numbers``, ``pos``, ``num_atoms``) like `chemgen.data.tensors.TensorPack`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from chemgen.errors import UsageError
from chemgen.spectra import broadening
from chemgen.spectra.shards import SpectraStoreError, read_table

SPLITS = ("train", "valid", "test")
KINDS = ("ir", "raman")
COLUMNS = ["order", "qm9_index", "split", "inchikey", "smiles", "atomic_numbers", "positions",
           "frequencies_cm1", "ir_km_mol", "raman_a4_amu"]
BLOCK_BYTES = 4 * 2**20   # line shapes per batched matmul (measured: 1-4 MiB fastest, 64 MiB 2.5x slower)


# ---------------------------------------------------------------------------- broadening, vectorised
def broaden_packed(frequencies: np.ndarray, offsets: np.ndarray, intensities: Sequence[np.ndarray],
                   fwhm: float = broadening.FWHM_CM1, shape: str = "lorentzian", scale: float | None = None,
                   grid: np.ndarray = broadening.GRID_CM1) -> list[torch.Tensor]:
    """Broaden M molecules' stick spectra, several intensity kinds at once, onto ``grid``.

    ``frequencies`` (K,) are every molecule's modes one after the other (cm^-1, unscaled, imaginary as
    negative), molecule m owning ``frequencies[offsets[m]:offsets[m + 1]]``; ``offsets`` (M + 1,);
    ``intensities`` one (K,) array per kind. Returns one (M, len(grid)) float32 tensor per kind, equal to
    ``broadening.broaden(f_m, w_m, fwhm=fwhm, shape=shape, scale=scale, grid=grid)`` for every molecule.
    """
    if shape not in broadening.LINE_SHAPES:
        raise UsageError(f"unknown line shape {shape!r} (known: {', '.join(broadening.LINE_SHAPES)})")
    frequencies = np.asarray(frequencies, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    weights = np.stack([np.asarray(w, dtype=np.float64) for w in intensities])                 # (C, K)
    if weights.shape[1] != frequencies.size or offsets[-1] != frequencies.size:
        raise ValueError(f"{frequencies.size} frequencies, {weights.shape[1]} intensities, offsets end at {offsets[-1]}")
    m, kinds, g = len(offsets) - 1, len(weights), len(grid)

    keep = frequencies > 0                                                                      # imaginary modes dropped
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    counts = kept_before[offsets[1:]] - kept_before[offsets[:-1]]                               # (M,) real modes
    molecule = np.repeat(np.arange(m), counts)
    slot = np.arange(int(counts.sum())) - np.repeat(kept_before[offsets[:-1]], counts)
    width = max(int(counts.max(initial=0)), 1)
    # Padded (M, width) centres and (M, C, width) weights; a padding slot has weight 0 and adds nothing.
    centres = np.zeros((m, width), dtype=np.float32)
    centres[molecule, slot] = frequencies[keep] * (broadening.XTB_TO_B3LYP_SCALE if scale is None else scale)
    padded = np.zeros((m, kinds, width), dtype=np.float32)
    padded[molecule, :, slot] = weights[:, keep].T
    # Fold the line shape's constant factor into the weights: the block work is then sub, square, add, 1/x.
    if shape == "lorentzian":
        gamma = fwhm / 2
        padded *= gamma / np.pi
    else:
        sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
        padded /= sigma * np.sqrt(2 * np.pi)

    grid_t = torch.as_tensor(np.asarray(grid, dtype=np.float32))
    centres_t, padded_t = torch.from_numpy(centres), torch.from_numpy(padded)
    out = torch.zeros(kinds, m, g)
    by_count = np.argsort(counts, kind="stable")  # blocks of alike mode counts pad little
    rows = max(1, BLOCK_BYTES // (4 * g * width))
    for start in range(0, m, rows):
        index = torch.from_numpy(by_count[start:start + rows])
        k = max(int(counts[index[-1]]), 1)                                                      # sorted: the last is widest
        lines = grid_t - centres_t[index, :k, None]                                              # (b, k, G) offsets
        if shape == "lorentzian":
            lines.square_().add_(gamma * gamma).reciprocal_()                                    # 1 / (x^2 + gamma^2)
        else:
            lines.div_(sigma).square_().mul_(-0.5).exp_()
        out[:, index] = torch.bmm(padded_t[index, :, :k], lines).transpose(0, 1)                # (C, b, G)
    return list(out)


# ---------------------------------------------------------------------------- the dataset as tensors
@dataclass(frozen=True)
class SpectraTensors:
    """M molecules with their broadened IR and Raman spectra, in the store's computation order.

    ``ir`` and ``raman`` are (M, 3501) float32 on ``grid_cm1`` (3501,); ``qm9_index`` and ``order`` (M,) long;
    ``split``, ``smiles``, ``inchikey`` M strings; the atoms are flat: ``atomic_numbers`` (A,) long, ``pos``
    (A, 3) float32 (relaxed GFN2-xTB geometry, Angstrom, as stored: not centred), ``num_atoms`` (M,) long.
    ``content_hash`` is the store manifest's (empty when the folder has no manifest).
    """

    ir: torch.Tensor
    raman: torch.Tensor
    qm9_index: torch.Tensor
    order: torch.Tensor
    split: tuple[str, ...]
    smiles: tuple[str, ...]
    inchikey: tuple[str, ...]
    atomic_numbers: torch.Tensor
    pos: torch.Tensor
    num_atoms: torch.Tensor
    grid_cm1: torch.Tensor
    content_hash: str = ""

    def __post_init__(self) -> None:
        m = len(self.qm9_index)
        lengths = {len(self.ir), len(self.raman), len(self.order), len(self.split), len(self.smiles),
                   len(self.inchikey), len(self.num_atoms)}
        atoms = {int(self.num_atoms.sum()), len(self.atomic_numbers), len(self.pos)}
        if lengths != {m} or len(atoms) != 1:
            raise ValueError(f"inconsistent spectra tensors: {m} molecules, row counts {sorted(lengths)}, "
                             f"{int(self.num_atoms.sum())} atoms by num_atoms, {len(self.atomic_numbers)} listed")

    def __len__(self) -> int:
        return len(self.qm9_index)

    @property
    def offsets(self) -> torch.Tensor:
        """(M + 1,) start of each molecule's atoms in ``atomic_numbers`` / ``pos``."""
        return torch.cat([torch.zeros(1, dtype=torch.long), self.num_atoms.cumsum(0)])

    def spectra(self, index: torch.Tensor | Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """``{"ir": (B, 3501), "raman": (B, 3501)}`` of the molecules at ``index`` (all when None): the
        SpecFormer's input (both modalities present for every molecule of this store)."""
        if index is None:
            return {"ir": self.ir, "raman": self.raman}
        index = torch.as_tensor(index, dtype=torch.long)
        return {"ir": self.ir[index], "raman": self.raman[index]}

    def molecules(self):
        """The molecules as a `chemgen.data.tensors.TensorPack` (QM9 label, centred positions), row for row, so
        ``pack.dense(index)`` pads the same molecules whose spectra ``spectra(index)`` returns."""
        from chemgen.data.tensors import TensorPack
        from chemgen.datasets import dataset_label

        m = len(self)
        molecule = torch.repeat_interleave(torch.arange(m), self.num_atoms)
        centre = torch.zeros(m, 3).index_add_(0, molecule, self.pos) / self.num_atoms.clamp(min=1)[:, None]
        return TensorPack(atomic_numbers=self.atomic_numbers, pos=self.pos - centre[molecule],
                          frac_coords=torch.zeros_like(self.pos), num_atoms=self.num_atoms,
                          cell=torch.zeros(m, 3, 3), pbc=torch.zeros(m, dtype=torch.bool),
                          dataset_idx=torch.full((m,), dataset_label("qm9"), dtype=torch.long))


def _flat(column: pa.ChunkedArray, name: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets) numpy arrays, whatever its chunking or slicing."""
    array = column.combine_chunks()
    if array.null_count:
        raise SpectraStoreError(f"{folder}: {array.null_count} good rows without {name}")
    lengths = array.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    return array.flatten().to_numpy(zero_copy_only=False), np.concatenate([[0], np.cumsum(lengths)])


def _content_hash(folder: Path) -> str:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("content_hash", "")
    except (OSError, json.JSONDecodeError):
        return ""


def read_store(folder: str | Path | None, columns: list[str], split: str | None = None,
               limit: int | None = None) -> tuple[Path, pa.Table]:
    """(folder, table) of the good molecules of ``split`` (None: every split, in computation order), the first
    ``limit`` only; the folder defaults to `chemgen.spectra.curation.default_folder`. Raises `SpectraStoreError`
    naming the folder when it is missing or holds no good molecule, `UsageError` for a bad split or limit."""
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    if folder is None:
        from chemgen.spectra.curation import default_folder

        folder = default_folder()
    folder = Path(folder)
    if not folder.is_dir():
        raise SpectraStoreError(f"{folder}: no spectra store here (expected shard-*.parquet files and manifest.json)")
    table = read_table(folder, columns, only_ok=True)
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        what = f"no good molecules of split {split!r}" if split else "no good molecules"
        raise SpectraStoreError(f"{folder}: {what} (is the store empty? `chemgen data info qm9-spectra`)")
    return folder, table


def load_spectra_tensors(folder: str | Path | None = None, split: str | None = None, limit: int | None = None,
                         fwhm: float = broadening.FWHM_CM1, scale: float | None = None) -> SpectraTensors:
    """The good molecules of the store at ``folder`` (default: `chemgen.spectra.curation.default_folder`) as tensors.

    ``split``: "train", "valid" or "test" (None: every split, in computation order); ``limit``: the first
    ``limit`` molecules after that filter. ``fwhm`` and ``scale`` as `chemgen.spectra.broadening.broaden`.
    Raises `SpectraStoreError` naming the folder when it is missing or holds no good molecule.
    """
    folder, table = read_store(folder, COLUMNS, split, limit)
    frequencies, offsets = _flat(table.column("frequencies_cm1"), "frequencies", folder)
    ir, ir_offsets = _flat(table.column("ir_km_mol"), "IR intensities", folder)
    raman, raman_offsets = _flat(table.column("raman_a4_amu"), "Raman activities", folder)
    if not (np.array_equal(offsets, ir_offsets) and np.array_equal(offsets, raman_offsets)):
        raise SpectraStoreError(f"{folder}: a molecule has different numbers of frequencies and intensities")
    ir_grid, raman_grid = broaden_packed(frequencies, offsets, [ir, raman], fwhm=fwhm, scale=scale)

    numbers, atom_offsets = _flat(table.column("atomic_numbers"), "atomic numbers", folder)
    positions, position_offsets = _flat(table.column("positions"), "positions", folder)
    if not np.array_equal(position_offsets, 3 * atom_offsets):
        raise SpectraStoreError(f"{folder}: a molecule's positions are not 3 per atom")
    return SpectraTensors(
        ir=ir_grid, raman=raman_grid,
        qm9_index=torch.from_numpy(table.column("qm9_index").to_numpy().astype(np.int64)),
        order=torch.from_numpy(table.column("order").to_numpy().astype(np.int64)),
        split=tuple(table.column("split").to_pylist()),
        smiles=tuple(table.column("smiles").to_pylist()),
        inchikey=tuple(table.column("inchikey").to_pylist()),
        atomic_numbers=torch.from_numpy(numbers.astype(np.int64)),
        pos=torch.from_numpy(positions.astype(np.float32).reshape(-1, 3)),
        num_atoms=torch.from_numpy(np.diff(atom_offsets)),
        grid_cm1=torch.from_numpy(np.asarray(broadening.GRID_CM1, dtype=np.float64)),
        content_hash=_content_hash(folder),
    )
