"""Training data that lives on the device: size buckets of padded systems, batches drawn without host syncs.

A `TensorPack` is padded once into a few buckets by number of atoms (QM9's 29-atom molecules
need not pad MP-20's 8-atom cells), every bucket moved to the device whole. A batch is a
random draw with replacement inside one bucket: the bucket is chosen on the host, the indices
on the device, so no step waits for the GPU. Each bucket's batch holds about the same number
of tokens, and buckets are drawn in proportion to their systems, so every system is seen at
the same rate; ``oversample`` repeats a dataset (ADiT mixes MP-20 about 3x against QM9).

Under data-parallel training (`chemgen.training.distributed`) each rank keeps only its shard of every bucket
on its device and draws its share of each global batch from it: the buckets, their weights and the sequence of
buckets drawn are computed from the whole pack and are the same on every rank, so that all ranks step on batches
of the same shape, and the global batch of N ranks is the batch one process would draw.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from chemgen.data.tensors import TensorPack
from chemgen.dense import DenseBatch
from chemgen.datasets import dataset_label
from chemgen.training.distributed import World

# Bucket edges (padded atoms): fine where QM9 is dense (13-25 atoms) so that a batch pads little. Attention costs
# N^2 and GFMDiff's triplet track N^3 per system: with (12, 20, 32) QM9 padded to 1.5x the pair work and 2x the
# triplet work it needs, with these to 1.08x and 1.14x (bench/bench_graph_batching.py), and GFMDiff trained 1.75x
# as many molecules per second on one CPU thread (15.0 -> 26.3 at 512 tokens per step).
DEFAULT_EDGES = (12, 14, 16, 17, 18, 19, 20, 21, 23, 25, 29, 32)


@dataclass(frozen=True)
class Bucket:
    batch: DenseBatch         # every system of the bucket, padded to `size` atoms, on the device
    draw: torch.Tensor        # (M,) indices into the bucket, oversampled datasets repeated
    size: int                 # padded number of atoms
    batch_size: int           # systems per training batch on this rank (the global batch over the world's ranks)


class ResidentBatches:
    def __init__(self, pack: TensorPack, device: torch.device | str, tokens_per_batch: int = 32_768,
                 edges: Sequence[int] = DEFAULT_EDGES, oversample: Mapping[str, int] | None = None, seed: int = 0,
                 multiple_of: int = 8, world: World | None = None):
        self.device = torch.device(device)
        self.world = world or World()
        self.num_systems = len(pack)
        sizes = pack.num_atoms
        edges = sorted({e for e in edges if e < int(sizes.max())} | {int(sizes.max())})
        repeats = torch.ones(len(pack), dtype=torch.long)
        for name, times in (oversample or {}).items():
            repeats[pack.dataset_idx == dataset_label(name)] = int(times)
        ranks = self.world.size
        self.buckets: list[Bucket] = []
        self.weights: list[float] = []
        lower = 0
        for edge in edges:
            members = torch.nonzero((sizes > lower) & (sizes <= edge)).squeeze(1)
            lower = edge
            if len(members) < ranks:   # none at all, or too few to give every rank one (a handful, dropped)
                continue
            global_batch = max(multiple_of, tokens_per_batch // edge // multiple_of * multiple_of)
            # a bucket's share of steps: its (oversampled) systems over the systems one of its batches takes
            self.weights.append(float(repeats[members].sum()) / global_batch)
            mine = members[self.world.rank::ranks]
            batch = pack.dense(mine).pad_atoms(edge).to(self.device)
            draw = torch.repeat_interleave(torch.arange(len(mine)), repeats[mine]).to(self.device)
            self.buckets.append(Bucket(batch, draw, edge, -(-global_batch // ranks)))
        self.reseed(seed)

    def __len__(self) -> int:
        return self.num_systems

    def reseed(self, seed: int) -> None:
        """Draw from ``seed`` on: the buckets (the same sequence on every rank) and the systems within them (a
        generator of this rank's own, on the device: the draws never wait for the host)."""
        self._rng = random.Random(seed)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed * 65_537 + self.world.rank)

    @property
    def mean_batch_size(self) -> float:
        """Systems per global batch (every rank's share) on average."""
        total = sum(self.weights)
        return self.world.size * sum(w * b.batch_size for w, b in zip(self.weights, self.buckets)) / total

    @property
    def mean_batch_tokens(self) -> float:
        """Padded tokens per step on this rank's device on average: what its FLOPs scale with."""
        total = sum(self.weights)
        return sum(w * b.batch_size * b.size for w, b in zip(self.weights, self.buckets)) / total

    def sample(self) -> DenseBatch:
        bucket = self._rng.choices(self.buckets, weights=self.weights)[0]
        return self.draw(bucket, self._generator)

    @staticmethod
    def draw(bucket: Bucket, generator: torch.Generator | None = None) -> DenseBatch:
        pick = bucket.draw[torch.randint(len(bucket.draw), (bucket.batch_size,), device=bucket.draw.device,
                                         generator=generator)]
        return bucket.batch.select(pick)

