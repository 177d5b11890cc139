"""Dense padding or torch-geometric graphs for the equivariant networks: the same maths, timed and weighed.

chemgen's E(3)-equivariant networks batch molecules as dense padded tensors (`chemgen.dense.DenseBatch`: B
molecules padded to N atoms, a mask). This bench writes each network's forward a second time over a
torch-geometric batch (`torch_geometric.data.Batch` of one fully connected `Data` graph per molecule; message
passing with `torch_geometric.utils.scatter` / `softmax` / `to_dense_batch`, pure torch), reusing the dense
module's own weights. It checks that every path gives the dense module's outputs and parameter gradients on
6 real QM9 molecules in float64 (tiny configs, position updates scaled up so that the geometry path counts;
relative difference <= 1e-12), then times a training step (forward +
backward of sum(out^2)) and weighs its peak memory.

Paths:

* ``dense``: the library's module as it is.
* ``pyg``: the graph form. Pairs are the ordered pairs of a molecule's atoms (i != j for the DTN and the DMT;
  self loops kept for the encoder, as its dense form keeps them).
* ``pyg-cutoff`` (encoder): the neighbour embedding and the attention layers only on pairs within the 5 A
  cutoff (the same numbers: phi(r) = 0 beyond it zeroes their terms and gradients), the noise head, which has
  no cutoff, on all pairs.
* ``dense-ew`` (DMT, encoder): the dense module with its attention's two 3-operand einsums (q_i k_j g_ij and
  a_ij v_j g_ij) written as broadcast products in the (B, N, N, H, C) layout, which the graph form uses too;
  torch.einsum contracts them through permuted copies. Not in the library: measured to size a change.

Networks, built from the shipped configs (`chemgen.models.specs.load_config`) as the models build them:

* ``dtn``: GFMDiff's Dual-Track Transformer (`chemgen.models.gfmdiff.dtn`, 7 node features). The graph form
  does all of it, the triplet track included: triplets (i, j, k) are the pairs of edges (i, j), (i, k) sharing
  the atom i, k == j included, as the dense triplet mask keeps them (a DimeNet-style ``triplet_index`` of edge
  ids, shifted by PyG's collation); the triplet attention projects its angle keys and values per triplet,
  gathers over triplets and takes its softmax per edge. One part is evaluated on `to_dense_batch` blocks and read out at the edges: Low2High,
  o_ij = sum_x L_ix (W R_j)_ox, a bilinear form of the two endpoints whose edge-wise form gathers (E, d, d),
  d times the dense form's memory.
* ``dmt``: DiffSpectra's Diffusion Molecule Transformer (`chemgen.models.diffspectra.dmt`), self-conditioned
  (its adjacency heads read the estimate's bonds and close pairs); bond channels live on the edges and are
  symmetrised through ``edge_reverse`` (the id of (j, i)).
* ``encoder``: DiffSpectra's 3D pretraining encoder (`chemgen.models.diffspectra.encoder`).

Cases. QM9 molecules are real ones (`chemgen.data.qm9`), at the batch sizes the trainer draws on a CPU (512
padded atoms: `chemgen.training.resident`): ``qm9``, 32 drawn at random and padded to the largest, as
`TensorPack.dense` pads; ``qm9-b20`` and ``qm9-b29``, the trainer's size buckets (12, 20], (20, 29], padded
to 20 and 29 (76 % and 21 % of QM9); ``qm9-n18``, 24 molecules of 18 atoms, no padding at all (what the two
layouts cost per real pair). ``50``, ``100``, ``180``: synthetic molecules, one of n atoms and the others
uniform in [0.7 n, n), atoms grown one by one 1.1-1.6 A from an earlier atom and >= 1.0 A from all (organic
densities, QM9's element frequencies). Cost does not depend on geometry except through the encoder's cutoff
graph, for which these blobs stand in for large organic molecules. The DTN runs its cpu size up to 50 atoms
and its tiny size at 100 and 180 (its N^3 triplet track); it is skipped where B N^3 > ``--max-dense-triplets``.

Columns: ms per forward + backward (median over ``--repeats`` rounds that alternate the paths, after one
warm-up step each), the step's peak memory above what was allocated before it (CPU: peak RSS, reset through
/proc/self/clear_refs, with glibc's mmap threshold pinned at 64 KiB so that freed tensors leave the RSS at
once; CUDA: the allocator's peak), the batch's own tensors (padded inputs, or the PyG batch with its index
tensors), and collation per batch (dense: indexing a resident padded bucket, as `ResidentBatches` draws; PyG:
`Batch.from_data_list`).

Results, 2026-12-07: a 2-core AMD EPYC CPU shared with a background training job and other developers' work
(load average 2.7 at the start, 3.0 at the end), torch 2.13 CPU, 1 thread (OMP_NUM_THREADS=1,
torch.set_num_threads(1)), float32, 347 s in all:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_graph_batching.py

    | network | cfg  | case       | atoms         | batch | path       | ms f+b    | peak MB  | input MB | coll. ms |
    |---|---|---|---|---|---|---|---|---|---|
    | dtn     | cpu  | qm9        | 11-25 -> 25   |    32 | dense      |    5509.7 |   1313.3 |     0.03 |     0.06 |
    | dtn     | cpu  | qm9        | 11-25 -> 25   |    32 | pyg        |    3993.5 |    988.7 |     2.94 |     4.39 |
    | dtn     | cpu  | qm9-b20    | 13-20 -> 20   |    24 | dense      |    2424.7 |    549.5 |     0.02 |     0.05 |
    | dtn     | cpu  | qm9-b20    | 13-20 -> 20   |    24 | pyg        |    2534.3 |    611.1 |     1.82 |     2.47 |
    | dtn     | cpu  | qm9-b29    | 21-25 -> 29   |    16 | dense      |    4209.4 |    969.6 |     0.02 |     0.04 |
    | dtn     | cpu  | qm9-b29    | 21-25 -> 29   |    16 | pyg        |    3323.0 |    791.9 |     2.44 |     2.63 |
    | dtn     | cpu  | qm9-n18    | 18-18 -> 18   |    24 | dense      |    1972.2 |    419.2 |     0.02 |     0.05 |
    | dtn     | cpu  | qm9-n18    | 18-18 -> 18   |    24 | pyg        |    2884.9 |    679.8 |     2.04 |     2.28 |
    | dtn     | cpu  | 50         | 35-50 -> 50   |     4 | dense      |    4496.1 |   1066.3 |     0.01 |     0.05 |
    | dtn     | cpu  | 50         | 35-50 -> 50   |     4 | pyg        |    5731.0 |   1507.4 |     4.97 |     7.59 |
    | dtn     | tiny | 100        | 79-100 -> 100 |     2 | dense      |    6263.0 |   1897.5 |     0.01 |     0.08 |
    | dtn     | tiny | 100        | 79-100 -> 100 |     2 | pyg        |    8831.8 |   2690.4 |    22.54 |    34.14 |
    | dtn     | tiny | 180        | skipped: B N^3 = 11,664,000 triplet slots > --max-dense-triplets 4,000,000 |
    | dmt     | cpu  | qm9        | 11-25 -> 25   |    32 | dense      |    2700.5 |    724.4 |     0.69 |     0.57 |
    | dmt     | cpu  | qm9        | 11-25 -> 25   |    32 | dense-ew   |    2331.1 |    647.0 |     0.69 |     0.57 |
    | dmt     | cpu  | qm9        | 11-25 -> 25   |    32 | pyg        |    1496.2 |    423.4 |     0.59 |     2.11 |
    | dmt     | cpu  | qm9-b20    | 13-20 -> 20   |    24 | dense      |    1311.1 |    341.5 |     0.35 |     0.13 |
    | dmt     | cpu  | qm9-b20    | 13-20 -> 20   |    24 | dense-ew   |    1091.2 |    303.9 |     0.35 |     0.13 |
    | dmt     | cpu  | qm9-b20    | 13-20 -> 20   |    24 | pyg        |     981.9 |    278.4 |     0.40 |     1.41 |
    | dmt     | cpu  | qm9-b29    | 21-25 -> 29   |    16 | dense      |    1738.1 |    477.8 |     0.46 |     0.28 |
    | dmt     | cpu  | qm9-b29    | 21-25 -> 29   |    16 | dense-ew   |    1534.4 |    426.2 |     0.46 |     0.28 |
    | dmt     | cpu  | qm9-b29    | 21-25 -> 29   |    16 | pyg        |    1046.2 |    299.7 |     0.42 |     1.29 |
    | dmt     | cpu  | qm9-n18    | 18-18 -> 18   |    24 | dense      |    1080.3 |    275.1 |     0.29 |     0.12 |
    | dmt     | cpu  | qm9-n18    | 18-18 -> 18   |    24 | dense-ew   |     950.0 |    244.3 |     0.29 |     0.12 |
    | dmt     | cpu  | qm9-n18    | 18-18 -> 18   |    24 | pyg        |    1097.8 |    306.0 |     0.43 |     1.40 |
    | dmt     | cpu  | 50         | 35-50 -> 50   |     4 | dense      |    1355.7 |    344.3 |     0.32 |     0.12 |
    | dmt     | cpu  | 50         | 35-50 -> 50   |     4 | dense-ew   |    1187.1 |    305.7 |     0.32 |     0.12 |
    | dmt     | cpu  | 50         | 35-50 -> 50   |     4 | pyg        |    1112.7 |    296.5 |     0.41 |     0.81 |
    | dmt     | cpu  | 100        | 79-100 -> 100 |     2 | dense      |    2592.9 |    701.4 |     0.63 |     0.51 |
    | dmt     | cpu  | 100        | 79-100 -> 100 |     2 | dense-ew   |    2263.8 |    624.6 |     0.63 |     0.51 |
    | dmt     | cpu  | 100        | 79-100 -> 100 |     2 | pyg        |    2242.4 |    658.9 |     0.87 |     1.50 |
    | dmt     | cpu  | 180        | 135-180 -> 180 |     2 | dense      |    8087.2 |   2301.3 |     2.01 |     1.45 |
    | dmt     | cpu  | 180        | 135-180 -> 180 |     2 | dense-ew   |    7007.1 |   2049.7 |     2.01 |     1.45 |
    | dmt     | cpu  | 180        | 135-180 -> 180 |     2 | pyg        |    6722.2 |   2092.9 |     2.72 |     3.41 |
    | encoder | cpu  | qm9        | 11-25 -> 25   |    32 | dense      |     608.5 |    124.1 |     0.02 |     0.03 |
    | encoder | cpu  | qm9        | 11-25 -> 25   |    32 | dense-ew   |     458.5 |    124.3 |     0.02 |     0.03 |
    | encoder | cpu  | qm9        | 11-25 -> 25   |    32 | pyg        |     309.2 |     88.5 |     0.18 |     0.90 |
    | encoder | cpu  | qm9        | 11-25 -> 25   |    32 | pyg-cutoff |     295.7 |     82.0 |     0.18 |     0.90 |
    | encoder | cpu  | qm9-b20    | 13-20 -> 20   |    24 | dense      |     352.2 |     54.2 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-b20    | 13-20 -> 20   |    24 | dense-ew   |     270.2 |     54.6 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-b20    | 13-20 -> 20   |    24 | pyg        |     238.6 |     56.7 |     0.12 |     0.80 |
    | encoder | cpu  | qm9-b20    | 13-20 -> 20   |    24 | pyg-cutoff |     234.7 |     52.6 |     0.12 |     0.80 |
    | encoder | cpu  | qm9-b29    | 21-25 -> 29   |    16 | dense      |     432.8 |     79.0 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-b29    | 21-25 -> 29   |    16 | dense-ew   |     347.4 |     79.3 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-b29    | 21-25 -> 29   |    16 | pyg        |     247.7 |     60.6 |     0.13 |     0.74 |
    | encoder | cpu  | qm9-b29    | 21-25 -> 29   |    16 | pyg-cutoff |     230.9 |     55.7 |     0.13 |     0.74 |
    | encoder | cpu  | qm9-n18    | 18-18 -> 18   |    24 | dense      |     307.7 |     43.7 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-n18    | 18-18 -> 18   |    24 | dense-ew   |     230.0 |     43.7 |     0.01 |     0.03 |
    | encoder | cpu  | qm9-n18    | 18-18 -> 18   |    24 | pyg        |     248.1 |     64.0 |     0.13 |     0.83 |
    | encoder | cpu  | qm9-n18    | 18-18 -> 18   |    24 | pyg-cutoff |     247.4 |     58.8 |     0.13 |     0.83 |
    | encoder | cpu  | 50         | 35-50 -> 50   |     4 | dense      |     343.6 |     58.6 |     0.00 |     0.03 |
    | encoder | cpu  | 50         | 35-50 -> 50   |     4 | dense-ew   |     256.6 |     59.8 |     0.00 |     0.03 |
    | encoder | cpu  | 50         | 35-50 -> 50   |     4 | pyg        |     248.6 |     60.3 |     0.12 |     0.53 |
    | encoder | cpu  | 50         | 35-50 -> 50   |     4 | pyg-cutoff |     220.3 |     47.1 |     0.12 |     0.53 |
    | encoder | cpu  | 100        | 79-100 -> 100 |     2 | dense      |     593.1 |    119.6 |     0.00 |     0.03 |
    | encoder | cpu  | 100        | 79-100 -> 100 |     2 | dense-ew   |     454.7 |    119.6 |     0.00 |     0.03 |
    | encoder | cpu  | 100        | 79-100 -> 100 |     2 | pyg        |     436.4 |    134.6 |     0.25 |     0.46 |
    | encoder | cpu  | 100        | 79-100 -> 100 |     2 | pyg-cutoff |     309.5 |     87.7 |     0.25 |     0.46 |
    | encoder | cpu  | 180        | 135-180 -> 180 |     2 | dense      |    1708.6 |    393.2 |     0.01 |     0.03 |
    | encoder | cpu  | 180        | 135-180 -> 180 |     2 | dense-ew   |    1217.0 |    394.0 |     0.01 |     0.03 |
    | encoder | cpu  | 180        | 135-180 -> 180 |     2 | pyg        |    1119.7 |    434.5 |     0.78 |     0.60 |
    | encoder | cpu  | 180        | 135-180 -> 180 |     2 | pyg-cutoff |     641.4 |    217.7 |     0.78 |     0.60 |

Every path matched the dense module in the float64 check (worst relative difference of outputs and gradients
7e-16 DTN, 1e-16 DMT, 3e-16 encoder). Timings on this machine move by up to 2x with its load; the paths of a
case alternate, so their ratios are steadier than the absolute numbers.

What the numbers say:

* Per real pair and triplet (qm9-n18, no padding) dense is the better layout for every network: the DTN's
  graph form is 1.46x slower and 1.6x heavier (its triplet gathers, (T, d) floats each and 16 bytes of index
  per triplet, outweigh dense einsums), the DMT's ties with dense (1098 vs 1080 ms) and the encoder's is 1.24x
  faster than dense but 1.46x heavier; dense-ew beats both graph forms (DMT 950 vs 1098 ms, encoder 230 vs
  248 ms) with 20-30 % less memory.
* The graph form wins where the dense batch is padded, by about the padded share of pairs (triplets for the
  DTN): in the trainer's (20, 29] bucket DTN 1.27x, DMT 1.66x, encoder 1.75x faster and all lighter; in the
  (12, 20] bucket (76 % of QM9) DTN 1.05x slower, DMT 1.34x and encoder 1.47x faster; on random draws 1.4x,
  1.8x, 2.0x faster.
* 50-180 atoms: the DTN's dense form is 1.3-1.4x faster and 1.4x lighter (at 180 atoms neither fits this
  machine: scaled from the 100-atom row, one molecule takes ~5.5 GB dense and ~11 GB as a graph, tiny size);
  the DMT's graph form is 1.2x faster than dense and 1.0-1.07x faster than dense-ew, at equal memory; the
  encoder's cutoff graph is 2.7x faster and 1.8x lighter at 180 atoms, a size nothing is trained at.
* Collation: `Batch.from_data_list` takes 0.5-34 ms per batch on the host; indexing a resident padded bucket
  takes at most 1.5 ms and stays on the device.

Decision: dense padding stays the default, and the graph forms live only in this bench. Their win at QM9
sizes is the padding of the trainer's coarse buckets (edges 12, 20, 29: over QM9, dense computes 1.53x the real
pairs i != j and 1.97x the real triplets), which finer bucket edges remove without a second code path: edges
(12, 14, 16, 17, 18, 19, 20, 21, 23, 25, 29) leave 1.08x / 1.14x (1.02x for the encoder's pairs with self
loops), close to qm9-n18, where dense (DTN) and dense-ew (DMT, encoder) are faster and lighter than the graph
forms. A graph layout would also need the diffusion losses and samplers (dense `GraphState`, EDM's masked
tensors) to convert at the network's boundary, and host-side collation on every step. Not measured: a GPU
(none was lent to this task); run the same command with ``--device cuda`` there before revisiting.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter, softmax, to_dense_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chemgen.diffusion.vp import GraphState, pair_mask_of
from chemgen.models.diffspectra.dmt import DMT, NO_ADJACENCY_LOGIT, modulate
from chemgen.models.diffspectra.encoder import MoleculeEncoder, cosine_cutoff
from chemgen.models.gfmdiff.dtn import DualTrackTransformer, linear_of_concat
from chemgen.models.specs import load_config

QM9_ELEMENTS = (1, 6, 7, 8, 9)
QM9_FREQUENCIES = (0.51, 0.35, 0.056, 0.078, 0.002)   # H, C, N, O, F share of QM9's atoms
# case -> (smallest, largest) QM9 molecule and the padded width (None: the batch's largest), or a synthetic size
QM9_CASES = {"qm9": ((1, 29), None), "qm9-b20": ((13, 20), 20), "qm9-b29": ((21, 29), 29), "qm9-n18": ((18, 18), 18)}
# the configs' batch_size for the random draw; in the buckets, what the trainer's 512 CPU tokens give
QM9_BATCHES = {"qm9": 32, "qm9-b20": 24, "qm9-b29": 16, "qm9-n18": 24}
CASES = (*QM9_CASES, "50", "100", "180")
NETWORKS = ("dtn", "dmt", "encoder")


# ============================================================================ molecules
@dataclass(frozen=True)
class Molecule:
    atomic_numbers: torch.Tensor   # (n,) long
    pos: torch.Tensor              # (n, 3) float64, centred


def qm9_molecules(count: int, seed: int, sizes: tuple[int, int] = (1, 29)) -> list[Molecule]:
    """``count`` real QM9 molecules with ``sizes[0] <= n <= sizes[1]`` atoms, drawn at random."""
    from chemgen.data.qm9 import read_qm9_frame, row_to_system

    frame = read_qm9_frame()
    frame = frame[frame.N_atoms.between(*sizes)].sample(n=count, random_state=seed)
    out = []
    for row in frame.itertuples(index=False):
        system = row_to_system(row)
        pos = torch.tensor(system.pos, dtype=torch.float64)
        out.append(Molecule(torch.tensor(system.atomic_numbers), pos - pos.mean(0)))
    return out


def synthetic_molecules(count: int, largest: int, seed: int) -> list[Molecule]:
    """One molecule of n atoms, the others uniform in [0.7 n, n); each atom placed 1.1-1.6 A from a random
    earlier one and >= 1.0 A from all."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(round(0.7 * largest), largest, (count,), generator=g)
    sizes[0] = largest                                         # the batch pads to n, the others are smaller
    out = []
    for n in sizes.tolist():
        pos = torch.zeros(1, 3, dtype=torch.float64)
        while len(pos) < n:
            anchor = pos[torch.randint(len(pos), (1,), generator=g)]
            step = torch.randn(1, 3, generator=g, dtype=torch.float64)
            candidate = anchor + step / step.norm() * (1.1 + 0.5 * torch.rand(1, generator=g, dtype=torch.float64))
            if torch.cdist(candidate, pos).min() >= 1.0:
                pos = torch.cat([pos, candidate])
        types = torch.multinomial(torch.tensor(QM9_FREQUENCIES), n, replacement=True, generator=g)
        out.append(Molecule(torch.tensor(QM9_ELEMENTS)[types], pos - pos.mean(0)))
    return out


def padded(molecules: Sequence[Molecule], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """atomic numbers (B, N), positions (B, N, 3) float64 and the mask (B, N) of the molecules, padded to
    ``width`` atoms (a size bucket's edge) or to the largest."""
    b, n = len(molecules), max(width or 0, max(len(m.atomic_numbers) for m in molecules))
    z = torch.zeros(b, n, dtype=torch.long)
    pos = torch.zeros(b, n, 3, dtype=torch.float64)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for k, m in enumerate(molecules):
        size = len(m.atomic_numbers)
        z[k, :size], pos[k, :size], mask[k, :size] = m.atomic_numbers, m.pos, True
    return z, pos, mask


# ============================================================================ graphs
class MoleculeGraph(Data):
    """One fully connected molecule. ``triplet_index`` and ``edge_reverse`` hold edge ids, so collation shifts
    them by the edges before them (PyG shifts ``*index`` keys by the atoms by default)."""

    def __inc__(self, key, value, *args, **kwargs):
        if key in ("triplet_index", "edge_reverse"):
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)


@dataclass(frozen=True)
class Pairs:
    """The ordered pairs of one molecule of n atoms, grouped by the first atom i: edge (i, j) is a PyG edge
    from source j to target i, so messages to i are ``scatter(..., i)``."""

    i: torch.Tensor    # (E,) target
    j: torch.Tensor    # (E,) source

    @classmethod
    def full(cls, n: int, self_loops: bool) -> Pairs:
        i = torch.arange(n).repeat_interleave(n)
        j = torch.arange(n).repeat(n)
        keep = torch.ones_like(i, dtype=torch.bool) if self_loops else i != j
        return cls(i[keep], j[keep])

    @property
    def edge_index(self) -> torch.Tensor:
        return torch.stack([self.j, self.i])

    def reverse(self, n: int) -> torch.Tensor:
        """(E,) the id of edge (j, i) for each edge (i, j)."""
        ids = torch.full((n, n), -1, dtype=torch.long)
        ids[self.i, self.j] = torch.arange(len(self.i))
        return ids[self.j, self.i]

    def triplets(self, n: int) -> torch.Tensor:
        """(2, T) edge ids (e_ij, e_ik) of every pair of edges sharing i; needs no self loops (i-major order)."""
        ids = torch.arange(len(self.i)).view(n, n - 1)
        e_ij = ids[:, :, None].expand(n, n - 1, n - 1).reshape(-1)
        e_ik = ids[:, None, :].expand(n, n - 1, n - 1).reshape(-1)
        return torch.stack([e_ij, e_ik])


def graph_batch(mask: torch.Tensor, per_atom: dict[str, torch.Tensor], per_pair: dict[str, torch.Tensor],
                self_loops: bool, triplets: bool = False, reverse: bool = False) -> list[MoleculeGraph]:
    """One `MoleculeGraph` per padded row: per-atom tensors (B, N, ...) cut to the molecule, per-pair tensors
    (B, N, N, ...) read at the edges."""
    graphs = []
    for b, n in enumerate(mask.sum(1).tolist()):
        pairs = Pairs.full(n, self_loops)
        fields = {k: v[b, :n] for k, v in per_atom.items()}
        fields.update({k: v[b, pairs.i, pairs.j] for k, v in per_pair.items()})
        if triplets:
            fields["triplet_index"] = pairs.triplets(n)
        if reverse:
            fields["edge_reverse"] = pairs.reverse(n)
        graphs.append(MoleculeGraph(edge_index=pairs.edge_index, num_nodes=n, **fields))
    return graphs


def atoms_of(dense: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (A, ...) the real atoms in batch order."""
    return dense[mask]


def edges_of(dense: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B, N, N, ...) -> (E, ...) at the batch's edges (i, j)."""
    j, i = batch.edge_index
    local = torch.arange(batch.num_nodes, device=batch.ptr.device) - batch.ptr[batch.batch]
    return dense[batch.batch[i], local[i], local[j]]


# ============================================================================ the DTN over a graph batch
def dtn_graph(dtn: DualTrackTransformer, x: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
    """`DualTrackTransformer.forward` over a PyG batch: x (A, 3 + F) = [positions, features], t (B,) -> (A, 3 + F)."""
    j, i = batch.edge_index
    e_ij, e_ik = batch.triplet_index
    graph, num_graphs = batch.batch, batch.num_graphs
    pos_in, h = x[:, :3], x[:, 3:]
    a = F.relu(dtn.atom_embedding(torch.cat([h, t.to(x.dtype)[graph, None]], dim=-1)))            # (A, d)
    r2, diff, unit = edge_geometry(pos_in, i, j)
    p = fuse_graph(dtn, a, dtn.distance_embedding(r2), i, j)                                        # (E, d)
    tri = F.relu(dtn.angle_embedding(triplet_angles_graph(unit, e_ij, e_ik)))                       # (T, d/2)
    pos = pos_in
    for n, block in enumerate(dtn.blocks):
        a = a + dtn_atom_attention(block.atom_attention, a, p, i, j)
        a = a + block.atom_ffn(a)
        p = block.pair_norm(p + low2high_graph(block.low2high, a, batch, i, j))
        p = p + dtn_triplet_attention(block.triplet_attention, p, tri, e_ij, e_ik)
        p = p + block.pair_ffn(p)
        pos = dtn_position_update(block.position_update, a, p, pos, diff, i, j)
        if n + 1 < len(dtn.blocks):
            r2, diff, unit = edge_geometry(pos, i, j)
            angles = dtn.angle_embedding(triplet_angles_graph(unit, e_ij, e_ik))
            tri = F.relu(linear_of_concat(dtn.triplet_refresh, angles, tri))
            p = F.relu(linear_of_concat(dtn.pair_refresh, dtn.distance_embedding(r2), p))
            p = fuse_graph(dtn, a, p, i, j)
    velocity = pos - pos_in
    velocity = velocity - scatter(velocity, graph, 0, num_graphs, "mean")[graph]
    h_out = dtn.atom_out(a)[:, : dtn.node_features]
    return torch.cat([velocity, h_out.to(velocity.dtype)], dim=-1)


def edge_geometry(pos: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """r2_ij, EGNN's (x_i - x_j) / (|x_i - x_j| + 1) and the triplet track's (x_i - x_j) / (|x_i - x_j| + 1e-5)."""
    diff = pos[i] - pos[j]                                                                         # (E, 3)
    norm = diff.norm(dim=-1, keepdim=True)
    return (diff ** 2).sum(-1), diff / (norm + 1), diff / (norm + 1e-5)


def triplet_angles_graph(unit: torch.Tensor, e_ij: torch.Tensor, e_ik: torch.Tensor) -> torch.Tensor:
    cos = (unit[e_ij] * unit[e_ik]).sum(-1)                                                       # (T,)
    return torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))


def fuse_graph(dtn: DualTrackTransformer, a: torch.Tensor, p: torch.Tensor, i: torch.Tensor,
               j: torch.Tensor) -> torch.Tensor:
    w_j, w_i, w_p = dtn.pair_fuse.weight.split(a.shape[-1], dim=1)
    return F.linear(a, w_j)[j] + F.linear(a, w_i)[i] + F.linear(p, w_p, dtn.pair_fuse.bias)


def dtn_atom_attention(att: nn.Module, a: torch.Tensor, p: torch.Tensor, i: torch.Tensor,
                       j: torch.Tensor) -> torch.Tensor:
    n, e = a.shape[0], p.shape[0]
    a, p = att.atom_norm(a), att.pair_norm(p)
    q = att.q(a).view(n, att.h, att.dh) / math.sqrt(att.dh)
    k, v = att.k(a).view(n, att.h, att.dh), att.v(a).view(n, att.h, att.dh)
    k_p, v_p = att.k_pair(p).view(e, att.h, att.dh), att.v_pair(p).view(e, att.h, att.dh)
    attn = softmax((q[i] * (k[j] + k_p)).sum(-1), i, num_nodes=n)                                 # (E, h)
    values = att.v_add(v[i] + v[j] + v_p)                                                        # (E, h, dh)
    return scatter(attn[..., None] * values, i, 0, n).reshape(n, -1)


def low2high_graph(low: nn.Module, a: torch.Tensor, batch: Batch, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Low2High on `to_dense_batch` blocks, read out at the edges (edge-wise it would gather (E, d, d))."""
    a = low.norm(a)
    left, right = a * low.left(a), a * low.right(a)
    d = a.shape[-1]
    right_w = torch.einsum("oxy,ny->nox", low.proj.weight.view(-1, d, d), right)                 # (A, d_out, d)
    left_d, _ = to_dense_batch(left, batch.batch, batch_size=batch.num_graphs)                  # (B, N, d)
    right_d, _ = to_dense_batch(right_w, batch.batch, batch_size=batch.num_graphs)              # (B, N, d_out, d)
    blocks = torch.einsum("bix,bjox->bijo", left_d, right_d)                                      # (B, N, N, d_out)
    local = torch.arange(a.shape[0], device=a.device) - batch.ptr[batch.batch]
    return blocks[batch.batch[i], local[i], local[j]] + low.proj.bias


def dtn_triplet_attention(att: nn.Module, p: torch.Tensor, tri: torch.Tensor, e_ij: torch.Tensor,
                          e_ik: torch.Tensor) -> torch.Tensor:
    """Keys k_ik + W_ka t_ijk and values v_ik + W_va t_ijk projected per triplet, (T, d) each: cheaper here
    than the dense module's factorised form, whose per-head contraction of t_ijk is (T, h, d/2)."""
    e, t = p.shape[0], tri.shape[0]
    p = att.norm(p)
    q = att.q(p).view(e, att.h, att.dh) / math.sqrt(att.dh)
    k, v = att.k(p).view(e, att.h, att.dh), att.v(p).view(e, att.h, att.dh)
    keys = k[e_ik] + att.k_angle(tri).view(t, att.h, att.dh)                                    # (T, h, dh)
    attn = softmax((q[e_ij] * keys).sum(-1), e_ij, num_nodes=e)                                   # (T, h)
    values = v[e_ik] + att.v_angle(tri).view(t, att.h, att.dh)
    out = scatter(attn[..., None] * values, e_ij, 0, e)                                           # (E, h, dh)
    return att.out(out.reshape(e, -1)) * torch.sigmoid(att.gate(p))


def dtn_position_update(update: nn.Module, a: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, diff: torch.Tensor,
                        i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    first = update.phi[0]
    w_i, w_j, w_e = first.weight.split([a.shape[-1], a.shape[-1], 3], dim=1)
    hidden = F.linear(a, w_i)[i] + F.linear(a, w_j)[j] + F.linear(update.pair_read(p), w_e, first.bias)
    weight = torch.tanh(update.phi[1:](hidden)) * update.coord_range                              # (E, 1)
    return pos + scatter(diff * weight.to(pos.dtype), i, 0, pos.shape[0])


# ============================================================================ the DMT over a graph batch
def dmt_graph(dmt: DMT, z_t: GraphState, lam: torch.Tensor, cond: torch.Tensor, sc: GraphState,
              batch: Batch) -> GraphState:
    """`DMT.forward` (self-conditioned) over a PyG batch: pos (A, 3), nodes (A, F), edges (E, K) in and out."""
    j, i = batch.edge_index
    graph, num_graphs = batch.batch, batch.num_graphs
    edge_graph = graph[i]
    c = dmt.conditioning(lam.to(z_t.pos.dtype), cond)                                             # (B, 4 nf)
    r2 = ((sc.pos[i] - sc.pos[j]) ** 2).sum(-1)
    sc_dist = gaussian_basis_graph(dmt.distance, r2, c, edge_graph)
    adjacency = torch.stack([sc.edges[:, 0] <= 0, r2 <= dmt.config.spatial_cutoff_sq], dim=-1)     # (E, 2)
    a = dmt.node_emb(torch.cat([z_t.nodes, sc.nodes], dim=-1))                                      # (A, nf)
    p = dmt.edge_emb(torch.cat([z_t.edges, sc.edges, sc_dist], dim=-1))                             # (E, nf / 4)
    pos = z_t.pos
    node_reads, edge_reads = [a], [p]
    for block, node_read, edge_read in zip(dmt.blocks, dmt.node_readouts, dmt.edge_readouts):
        a, p, pos = dmt_block(block, a, p, pos, c, adjacency, i, j, graph, edge_graph)
        pos = pos - scatter(pos, graph, 0, num_graphs, "mean")[graph]
        node_reads.append(node_read(a))
        edge_reads.append(edge_read(p))
    nodes = dmt.node_head(torch.cat(node_reads, dim=-1))
    edges = dmt.edge_head(torch.cat(edge_reads, dim=-1))
    edges = 0.5 * (edges + edges[batch.edge_reverse])
    return GraphState(pos - scatter(pos, graph, 0, num_graphs, "mean")[graph], nodes, edges)


def gaussian_basis_graph(basis: nn.Module, r2: torch.Tensor, c: torch.Tensor, edge_graph: torch.Tensor) -> torch.Tensor:
    scale, shift = basis.time_mlp(c).chunk(2, dim=-1)                                              # (B, 1) each
    x = r2 * (1 + scale[edge_graph, 0]) + shift[edge_graph, 0]                                     # (E,)
    std = basis.stds.abs() + 1e-5
    gauss = torch.exp(-0.5 * ((x[:, None] - basis.means) / std) ** 2) / (math.sqrt(2 * math.pi) * std)
    return torch.cat([x[:, None], gauss], dim=-1)


def dmt_block(block: nn.Module, a: torch.Tensor, p: torch.Tensor, pos: torch.Tensor, c: torch.Tensor,
              adjacency: torch.Tensor, i: torch.Tensor, j: torch.Tensor, graph: torch.Tensor,
              edge_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a_in, p_in = a, p
    d = gaussian_basis_graph(block.distance, ((pos[i] - pos[j]) ** 2).sum(-1), c, edge_graph)      # (E, nf / 4)
    p = block.edge_in(torch.cat([d, p], dim=-1))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        v[graph] for v in block.adaLN_node(c).chunk(6, dim=-1))
    e_shift_msa, e_scale_msa, e_gate_msa, e_shift_mlp, e_scale_mlp, e_gate_mlp = (
        v[edge_graph] for v in block.adaLN_edge(c).chunk(6, dim=-1))
    a = modulate(block.norm1_node(a), shift_msa, scale_msa)
    p = modulate(block.norm1_edge(p), e_shift_msa, e_scale_msa)
    message = dmt_attention(block.attention, a, p, adjacency, i, j)                                # (A, nf)
    pair_message = block.node_to_edge(message[i] + message[j])                                     # (E, nf / 4)
    a = modulate(block.norm2_node(a_in + gate_msa * message), shift_mlp, scale_mlp)
    a = a + gate_mlp * block.ffn_node(a)
    p = modulate(block.norm2_edge(p_in + e_gate_msa * pair_message), e_shift_mlp, e_scale_mlp)
    p = p + e_gate_mlp * block.ffn_edge(p)
    return a, p, dmt_position_update(block.position_update, a, p, d, pos, c, adjacency, i, j, edge_graph)


def dmt_attention(att: nn.Module, a: torch.Tensor, p: torch.Tensor, adjacency: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> torch.Tensor:
    n, e = a.shape[0], p.shape[0]
    q = att.q(a).view(n, att.sub_heads, att.sub_channels)
    k = att.k(a).view(n, att.sub_heads, att.sub_channels)
    gate = torch.tanh(att.edge_key(p)).view(e, att.sub_heads, att.sub_channels)
    learned = (q[i] * k[j] * gate).sum(-1) / math.sqrt(att.channels)                              # (E, S)
    fixed = torch.where(adjacency, torch.ones((), dtype=a.dtype, device=a.device),
                        torch.full((), NO_ADJACENCY_LOGIT, dtype=a.dtype, device=a.device))
    attn = softmax(torch.cat([fixed, learned], dim=-1), i, num_nodes=n)                          # (E, H)
    v = att.v(a).view(n, att.heads, att.channels)
    v_gate = torch.tanh(att.edge_value(p)).view(e, att.heads, att.channels)
    return scatter(attn[..., None] * v[j] * v_gate, i, 0, n).reshape(n, -1)


def dmt_position_update(update: nn.Module, a: torch.Tensor, p: torch.Tensor, d: torch.Tensor, pos: torch.Tensor,
                        c: torch.Tensor, adjacency: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                        edge_graph: torch.Tensor) -> torch.Tensor:
    nf = a.shape[-1]
    w_i, w_j, w_pd = update.input_lin.weight.split([nf, nf, update.input_lin.in_features - 2 * nf], dim=1)
    x = F.linear(a, w_i)[i] + F.linear(a, w_j)[j] + F.linear(torch.cat([p, d], dim=-1), w_pd, update.input_lin.bias)
    shift, scale = update.time_mlp(c).chunk(2, dim=-1)
    x = modulate(update.norm(x), shift[edge_graph], scale[edge_graph])
    heads = torch.tanh(update.coord_mlp(x))                                                        # (E, 3)
    weight = (heads * torch.cat([torch.ones_like(adjacency[:, :1]), adjacency], dim=-1).to(heads.dtype)).mean(-1)
    diff = pos[i] - pos[j]
    unit = diff / torch.sqrt((diff ** 2).sum(-1, keepdim=True).clamp_min(1e-16)) * update.coord_scale
    return pos + scatter(unit * weight[:, None], i, 0, pos.shape[0])


# ============================================================================ the 3D encoder over a graph batch
def encoder_graph(encoder: MoleculeEncoder, types: torch.Tensor, pos: torch.Tensor, batch: Batch,
                  cutoff_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`MoleculeEncoder.forward` over a PyG batch with self loops: (embedding (B, D), eps_hat (A, 3)).
    ``cutoff_graph``: the neighbour embedding and the layers see only the pairs within the cutoff."""
    j, i = batch.edge_index
    graph, num_graphs, num_atoms = batch.batch, batch.num_graphs, pos.shape[0]
    cutoff = encoder.config.cutoff
    diff = pos[i] - pos[j]
    r = torch.sqrt((diff ** 2).sum(-1).clamp_min(1e-12))                                           # (E,)
    rbf = encoder.rbf(r)
    weight = cosine_cutoff(r, cutoff)
    near = torch.nonzero(r < cutoff).squeeze(1) if cutoff_graph else slice(None)
    li, lj, lrbf, lweight = i[near], j[near], rbf[near], weight[near]
    off = (li != lj).to(pos.dtype)
    neighbour_weight = encoder.neighbour_filter(lrbf) * (lweight * off)[:, None]
    neighbours = scatter(neighbour_weight * encoder.neighbour_embedding(types)[lj], li, 0, num_atoms)
    h = encoder.combine(torch.cat([encoder.embedding(types), neighbours], dim=-1))
    for layer in encoder.layers:
        h = encoder_layer(layer, h, lrbf, lweight, li, lj)
    h = encoder.out_norm(h)
    embedding = scatter(encoder.project(h), graph, 0, num_graphs)                                  # (B, out_dim)
    pairs = torch.nonzero(i != j).squeeze(1)                             # the noise head: all pairs i != j
    io, jo = i[pairs], j[pairs]
    d = h.shape[-1]
    w_i, w_j, w_e = encoder.noise_pair.weight.split([d, d, rbf.shape[-1]], dim=1)
    pair = F.linear(h, w_i)[io] + F.linear(h, w_j)[jo] + F.linear(rbf[pairs], w_e, encoder.noise_pair.bias)
    w = encoder.noise_out(pair)                                                                    # (E', 1)
    eps_hat = scatter(w * diff[pairs] / r[pairs, None], io, 0, num_atoms)
    return embedding, eps_hat


def encoder_layer(layer: nn.Module, h: torch.Tensor, rbf: torch.Tensor, weight: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> torch.Tensor:
    n, e, heads = h.shape[0], rbf.shape[0], layer.heads
    c = h.shape[-1] // heads
    u = layer.norm_attn(h)
    q, k, v = (lin(u).view(n, heads, c) for lin in (layer.q, layer.k, layer.v))
    dk = F.silu(layer.key_filter(rbf)).view(e, heads, c)
    dv = F.silu(layer.value_filter(rbf)).view(e, heads, c)
    attn = F.silu((q[i] * k[j] * dk).sum(-1)) * weight[:, None]                                    # (E, H)
    h = h + layer.out(scatter(attn[..., None] * v[j] * dv, i, 0, n).reshape(n, -1))
    return h + layer.ffn(layer.norm_ffn(h))


# ============================================================================ dense, with the triple products unfused
def mixed_attention_elementwise(att: nn.Module, a: torch.Tensor, p: torch.Tensor, adjacency: torch.Tensor,
                                pair_mask: torch.Tensor) -> torch.Tensor:
    """`MixedAttention.forward` with q_i k_j g_ij and attn_ij v_j g_ij as broadcast products in the pair layout
    (B, N, N, H, C) instead of 3-operand einsums (which contract through permuted copies)."""
    b, n, _ = a.shape
    q = att.q(a).view(b, n, att.sub_heads, att.sub_channels)
    k = att.k(a).view(b, n, att.sub_heads, att.sub_channels)
    gate = torch.tanh(att.edge_key(p)).view(b, n, n, att.sub_heads, att.sub_channels)
    learned = (q[:, :, None] * k[:, None] * gate).sum(-1) / math.sqrt(att.channels)            # (B, N, N, S)
    fixed = torch.where(adjacency, torch.ones((), dtype=a.dtype, device=a.device),
                        torch.full((), NO_ADJACENCY_LOGIT, dtype=a.dtype, device=a.device)).permute(0, 2, 3, 1)
    logits = torch.cat([fixed, learned], dim=-1).masked_fill(~pair_mask[..., None], torch.finfo(a.dtype).min)
    attn = torch.softmax(logits, dim=2) * pair_mask[..., None].to(a.dtype)                     # (B, N, N, H)
    v = att.v(a).view(b, n, att.heads, att.channels)
    v_gate = torch.tanh(att.edge_value(p)).view(b, n, n, att.heads, att.channels)
    return (attn[..., None] * v[:, None] * v_gate).sum(2).reshape(b, n, -1)


def distance_attention_elementwise(layer: nn.Module, h: torch.Tensor, rbf: torch.Tensor,
                                   weight: torch.Tensor) -> torch.Tensor:
    """`DistanceAttention.forward` with the same broadcast products in place of its 3-operand einsums."""
    b, n, d = h.shape
    c = d // layer.heads
    u = layer.norm_attn(h)
    q, k, v = (lin(u).view(b, n, layer.heads, c) for lin in (layer.q, layer.k, layer.v))
    dk = F.silu(layer.key_filter(rbf)).view(b, n, n, layer.heads, c)
    dv = F.silu(layer.value_filter(rbf)).view(b, n, n, layer.heads, c)
    attn = F.silu((q[:, :, None] * k[:, None] * dk).sum(-1)) * weight[..., None]              # (B, N, N, H)
    h = h + layer.out((attn[..., None] * v[:, None] * dv).sum(2).reshape(b, n, d))
    return h + layer.ffn(layer.norm_ffn(h))


@contextmanager
def elementwise_attention(net: nn.Module) -> Iterator[None]:
    """The network's attention modules run their elementwise form while inside (instance attributes, removed after)."""
    forms = {"MixedAttention": mixed_attention_elementwise, "DistanceAttention": distance_attention_elementwise}
    patched = [m for m in net.modules() if type(m).__name__ in forms]
    for module in patched:
        module.forward = types.MethodType(forms[type(module).__name__], module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


# ============================================================================ the three networks, every way
Outputs = tuple[torch.Tensor, ...]


@dataclass
class Prepared:
    """One network on one batch: each path's call and how its outputs map to the graph layout (atoms (A, ...),
    edges (E, ...), systems (B, ...)) for comparison; the inputs each layout reads."""

    paths: dict[str, tuple[Callable[[], Outputs], Callable[[Outputs], Outputs]]]
    dense_inputs: tuple[torch.Tensor, ...]
    graph_batch: Batch
    graph_list: list[MoleculeGraph]


def build_network(name: str, config: str) -> nn.Module:
    if name == "dtn":
        from chemgen.models.gfmdiff import GFMDiff

        return GFMDiff(load_config(config, "gfmdiff")).dynamics
    diffspectra = load_config(config, "diffspectra")
    if name == "dmt":
        return DMT(diffspectra.dmt)
    return MoleculeEncoder(diffspectra.encoder, len(QM9_ELEMENTS), diffspectra.specformer.output_dim)


def symmetric_pairs(b: int, n: int, k: int, mask: torch.Tensor, g: torch.Generator, dtype) -> torch.Tensor:
    x = torch.randn(b, n, n, k, generator=g, dtype=dtype)
    return 0.5 * (x + x.transpose(1, 2)) * pair_mask_of(mask)[..., None].to(dtype)


def with_elementwise(net: nn.Module, call: Callable[[], Outputs]) -> Callable[[], Outputs]:
    def run() -> Outputs:
        with elementwise_attention(net):
            return call()
    return run


def prepare(name: str, net: nn.Module, molecules: Sequence[Molecule], dtype: torch.dtype, device: torch.device,
            seed: int = 0, width: int | None = None) -> Prepared:
    """Random network inputs on real positions (noised as the diffusion noises them), in both layouts."""
    z, pos, mask = padded(molecules, width)
    g = torch.Generator().manual_seed(seed)
    b, n = mask.shape
    m = mask[..., None].to(dtype)
    pos = pos.to(dtype)
    identity = lambda out: out
    if name == "dtn":
        x = torch.cat([pos + 0.2 * torch.randn(b, n, 3, generator=g, dtype=dtype),
                       torch.randn(b, n, net.node_features, generator=g, dtype=dtype)], dim=-1) * m
        t = torch.rand(b, generator=g, dtype=dtype)
        graphs = graph_batch(mask, {"x": x}, {}, self_loops=False, triplets=True)
        batch = Batch.from_data_list(graphs).to(device)
        x, t, mask_d = x.to(device), t.to(device), mask.to(device)
        layout = lambda out: (atoms_of(out[0], mask_d),)
        return Prepared({"dense": (lambda: (net(x, t, mask_d),), layout),
                         "pyg": (lambda: (dtn_graph(net, batch.x, t, batch),), identity)},
                        (x, t, mask_d), batch, graphs)
    if name == "dmt":
        cfg = net.config
        z_t = GraphState((pos + 0.3 * torch.randn(b, n, 3, generator=g, dtype=dtype)) * m,
                         torch.randn(b, n, cfg.node_features, generator=g, dtype=dtype) * m,
                         symmetric_pairs(b, n, cfg.num_bond_types, mask, g, dtype))
        sc = GraphState((pos + 0.05 * torch.randn(b, n, 3, generator=g, dtype=dtype)) * m,
                        torch.randn(b, n, cfg.node_features, generator=g, dtype=dtype) * m,
                        symmetric_pairs(b, n, cfg.num_bond_types, mask, g, dtype))
        lam = 4 * torch.randn(b, generator=g, dtype=dtype)
        cond = torch.randn(b, cfg.cond_dim, generator=g, dtype=dtype)
        graphs = graph_batch(mask, {"pos": z_t.pos, "nodes": z_t.nodes, "sc_pos": sc.pos, "sc_nodes": sc.nodes},
                             {"edges": z_t.edges, "sc_edges": sc.edges}, self_loops=False, reverse=True)
        batch = Batch.from_data_list(graphs).to(device)
        z_t, sc = z_t.map(lambda v: v.to(device)), sc.map(lambda v: v.to(device))
        lam, cond, mask_d = lam.to(device), cond.to(device), mask.to(device)

        def dense_call() -> Outputs:
            out = net(z_t, lam, mask_d, cond, sc)
            return out.pos, out.nodes, out.edges

        def graph_call() -> Outputs:
            out = dmt_graph(net, GraphState(batch.pos, batch.nodes, batch.edges), lam, cond,
                            GraphState(batch.sc_pos, batch.sc_nodes, batch.sc_edges), batch)
            return out.pos, out.nodes, out.edges

        def layout(out: Outputs) -> Outputs:
            return atoms_of(out[0], mask_d), atoms_of(out[1], mask_d), edges_of(out[2], batch)

        return Prepared({"dense": (dense_call, layout), "dense-ew": (with_elementwise(net, dense_call), layout),
                         "pyg": (graph_call, identity)},
                        (*vars(z_t).values(), *vars(sc).values(), lam, cond, mask_d), batch, graphs)
    types_ = (torch.tensor(QM9_ELEMENTS)[None, None] == z[..., None]).long().argmax(-1) * mask
    noisy = (pos + 0.04 * torch.randn(b, n, 3, generator=g, dtype=dtype)) * m
    graphs = graph_batch(mask, {"types": types_, "pos": noisy}, {}, self_loops=True)
    batch = Batch.from_data_list(graphs).to(device)
    types_, noisy, mask_d = types_.to(device), noisy.to(device), mask.to(device)
    dense_call = lambda: net(types_, noisy, mask_d)
    layout = lambda out: (out[0], atoms_of(out[1], mask_d))
    return Prepared({"dense": (dense_call, layout), "dense-ew": (with_elementwise(net, dense_call), layout),
                     "pyg": (lambda: encoder_graph(net, batch.types, batch.pos, batch, cutoff_graph=False), identity),
                     "pyg-cutoff": (lambda: encoder_graph(net, batch.types, batch.pos, batch, cutoff_graph=True),
                                    identity)},
                    (types_, noisy, mask_d), batch, graphs)


# ============================================================================ measuring
def training_step(call: Callable[[], tuple[torch.Tensor, ...]], params: Sequence[torch.Tensor]) -> None:
    for param in params:
        param.grad = None
    loss = sum((out.float() ** 2).sum() for out in call())
    loss.backward()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_mmap_threshold() -> bool:
    """glibc: serve every block >= 64 KiB by mmap, so a freed tensor leaves the RSS at once (no heap reuse
    that would hide a later step's memory); False where that cannot be set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Peak memory of ``run`` above what was allocated before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:   # resets VmHWM to the current RSS (Linux >= 4.0)
        clear.write("5")
    run()
    return (resident_kib("VmHWM") - before) * 1024


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def batch_tensors(batch: Batch) -> list[torch.Tensor]:
    return [v for _, v in batch.items() if isinstance(v, torch.Tensor)]


def collate_ms(prepared: Prepared, repeats: int) -> dict[str, float]:
    """Dense: index a resident padded bucket (twice the batch, as `ResidentBatches.draw`); PyG: from_data_list."""
    bucket = [torch.cat([t, t]) if t.dim() else t for t in prepared.dense_inputs]
    rows = torch.randperm(len(bucket[-1]))[: len(prepared.dense_inputs[-1])].to(bucket[-1].device)
    timings = {"dense": [], "pyg": []}
    for _ in range(repeats):
        start = time.perf_counter()
        [t[rows] if t.dim() else t for t in bucket]
        timings["dense"].append(time.perf_counter() - start)
        start = time.perf_counter()
        Batch.from_data_list(prepared.graph_list)
        timings["pyg"].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in timings.items()}


@dataclass(frozen=True)
class Row:
    network: str
    config: str
    case: str
    sizes: str
    batch: int
    path: str
    ms: float
    peak_mb: float
    inputs_mb: float
    collate_ms: float


def measure(name: str, config: str, case: str, net: nn.Module, molecules: Sequence[Molecule], width: int | None,
            repeats: int, device: torch.device, dtype: torch.dtype) -> list[Row]:
    """Each path: one warm-up step, then ``repeats`` timed rounds that alternate the paths (so a change of the
    shared machine's load falls on all of them); the first round's steps are also weighed."""
    prepared = prepare(name, net, molecules, dtype, device, width=width)
    params = list(net.parameters())
    paths = {path: call for path, (call, _) in prepared.paths.items()}
    sizes = [len(m.atomic_numbers) for m in molecules]
    size_text = f"{min(sizes)}-{max(sizes)} -> {prepared.dense_inputs[-1].shape[1]}"
    collate = collate_ms(prepared, max(3, repeats))
    inputs = {"dense": tensor_bytes(prepared.dense_inputs), "pyg": tensor_bytes(batch_tensors(prepared.graph_batch))}
    peaks, times = {}, {path: [] for path in paths}
    for call in paths.values():
        training_step(call, params)
    synchronize(device)
    for round_ in range(repeats):
        for path, call in paths.items():
            start = time.perf_counter()
            if round_ == 0:
                peaks[path] = peak_bytes(lambda call=call: training_step(call, params), device)
            else:
                training_step(call, params)
                synchronize(device)
            times[path].append(time.perf_counter() - start)
    rows = []
    for path in paths:
        kind = "dense" if path.startswith("dense") else "pyg"
        rows.append(Row(name, config, case, size_text, len(molecules), path, 1000 * statistics.median(times[path]),
                        peaks[path] / 2**20, inputs[kind] / 2**20, collate[kind]))
        print(format_row(rows[-1]), flush=True)
    return rows


def check_equal(name: str, net: nn.Module, molecules: Sequence[Molecule], device: torch.device) -> float:
    """Largest |dense - graph| over the outputs and over the parameter gradients (float64, position updates made
    lively so that the geometry path matters), each relative to the largest entry of its group (a per-tensor
    scale would divide by the key biases' gradients, zero up to rounding: softmax ignores a shift)."""
    net = copy.deepcopy(net).double().to(device)
    torch.manual_seed(0)
    if name == "dtn":
        for block in net.blocks:
            nn.init.normal_(block.position_update.phi[-1].weight, std=0.3)
    if name == "dmt":
        for block in net.blocks:
            block.position_update.coord_scale.data.fill_(0.5)
    prepared = prepare(name, net, molecules, torch.float64, device, seed=1)
    params = list(net.parameters())

    def run(call):
        for param in params:
            param.grad = None
        outputs = call()
        sum((out ** 2).sum() for out in outputs).backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return [o.detach() for o in outputs], grads

    def relative(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> float:
        scale = max(x.abs().max().item() for x in xs)
        return max((x - y).abs().max().item() for x, y in zip(xs, ys)) / scale

    dense_call, dense_layout = prepared.paths["dense"]
    dense_out, dense_grad = run(dense_call)
    dense_out = dense_layout(dense_out)
    worst = 0.0
    for path, (call, layout) in prepared.paths.items():
        out, grad = run(call)
        worst = max(worst, relative(dense_out, layout(out)), relative(dense_grad, grad))
        if worst > 1e-12:
            raise AssertionError(f"{name} {path}: differs from the dense module by {worst:.2e} (relative)")
    return worst


def format_row(row: Row) -> str:
    return (f"| {row.network:7s} | {row.config:4s} | {row.case:10s} | {row.sizes:13s} | {row.batch:5d} | "
            f"{row.path:10s} | {row.ms:9.1f} | {row.peak_mb:8.1f} | {row.inputs_mb:8.2f} | {row.collate_ms:8.2f} |")


HEADER = ("| network | cfg  | case       | atoms         | batch | path       | ms f+b    | peak MB  | "
          "input MB | coll. ms |\n|---|---|---|---|---|---|---|---|---|---|")


def molecules_for(case: str, batch: int, seed: int) -> tuple[list[Molecule], int | None]:
    """The case's molecules and padded width."""
    if case in QM9_CASES:
        sizes, width = QM9_CASES[case]
        return qm9_molecules(batch, seed, sizes), width
    return synthetic_molecules(batch, int(case), seed), None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--config", default="cpu", help="shipped config of every network (tiny, cpu, gpu)")
    parser.add_argument("--dtn-large-config", default="tiny",
                        help="the DTN's config at 100 and 180 atoms (its N^3 triplet track)")
    parser.add_argument("--batch", action="append", metavar="CASE=B",
                        help="molecules per batch, e.g. --batch 100=4 (default qm9 32, qm9-b20 24, qm9-b29 16, "
                             "qm9-n18 24, 50: 4, 100: 2, 180: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps of each path after one warm-up step")
    parser.add_argument("--max-dense-triplets", type=float, default=4e6,
                        help="skip the DTN where B N^3 exceeds this (tiny DTN: ~1 GB dense, ~2.6 GB PyG per million)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--no-check", action="store_true", help="skip the float64 dense == graph check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = {**QM9_BATCHES, "50": 4, "100": 2, "180": 2}
    for text in (args.batch or []):   # e.g. 100=4 -> a different batch at 100 atoms
        case, _, value = text.partition("=")
        batches[case] = int(value)
    mmap = pin_mmap_threshold() if device.type == "cpu" else True
    print(f"device {device}, threads {torch.get_num_threads()}, {args.dtype}, load {os.getloadavg()[0]:.2f}, "
          f"mmap threshold pinned: {mmap}", flush=True)
    if not args.no_check:
        real = qm9_molecules(6, args.seed + 1)
        for name in args.networks:
            worst = check_equal(name, build_network(name, "tiny"), real, device)
            print(f"{name}: every path == dense on 6 QM9 molecules (float64, outputs and gradients): worst relative "
                  f"difference {worst:.1e}", flush=True)
    print(HEADER, flush=True)
    start = time.perf_counter()
    for name in args.networks:
        for case in args.cases:
            config = args.dtn_large_config if name == "dtn" and case in ("100", "180") else args.config
            molecules, width = molecules_for(case, batches[case], args.seed)
            slots = len(molecules) * max(width or 0, max(len(m.atomic_numbers) for m in molecules)) ** 3
            if name == "dtn" and slots > args.max_dense_triplets:
                print(f"| dtn     | {config:4s} | {case:10s} | skipped: B N^3 = {slots:,} triplet slots > "
                      f"--max-dense-triplets {args.max_dense_triplets:,.0f} |", flush=True)
                continue
            torch.manual_seed(args.seed)
            net = build_network(name, config).to(device=device, dtype=dtype).train()
            measure(name, config, case, net, molecules, width, args.repeats, device, dtype)
    print(f"{time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
