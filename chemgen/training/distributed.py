"""Where this process stands in a multi-process training run: its rank, the world, its device.

chemgen trains on several processes and machines through Lightning's DDP strategy. The processes are started by
the launcher, never by chemgen: ``torchrun`` (one machine or several) or SLURM's ``srun`` (one task per GPU).
Lightning detects either from the environment they set; `world` reads the same variables, so that the data can be
sharded per rank before the `Trainer` exists, each rank knows its device, and only rank 0 writes the lineage.

    torchrun --nproc-per-node 8 -m chemgen.training.standalone --model adit ...          # one machine, 8 GPUs
    srun --ntasks-per-node 8 --gpus-per-node 8 python -m chemgen.training.standalone ...   # SLURM, any nodes

Without a launcher the world is one process (rank 0), and training runs exactly as it always did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    size: int = 1          # processes in the run, all machines
    rank: int = 0          # this process among them
    local_rank: int = 0    # this process on its machine (its GPU index)
    local_size: int = 1    # processes on each machine (Lightning's ``devices``)
    launcher: str = ""     # "torchrun", "slurm" or "" (a single process)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_zero(self) -> bool:
        """The process that writes: the lineage, the samples, the report, the MLflow run."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    def device(self, kind: str | torch.device | None = None) -> torch.device:
        """This rank's device: ``cuda:<local rank>`` on GPUs (one process per GPU), else the CPU."""
        kind = torch.device(kind).type if kind is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "cuda":
            return torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        return torch.device(kind)


def _int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"the launcher did not set {name}")
        return default
    return int(value)


def world() -> World:
    """The world of this process, from what ``torchrun`` or ``srun`` set (Lightning detects the same)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        size = _int("WORLD_SIZE")
        return World(size, _int("RANK"), _int("LOCAL_RANK"), _int("LOCAL_WORLD_SIZE", size), "torchrun")
    if SLURMEnvironment.detect() and _int("SLURM_NTASKS", 1) > 1:
        size = _int("SLURM_NTASKS")
        per_node = size // _int("SLURM_NNODES", 1)
        return World(size, _int("SLURM_PROCID"), _int("SLURM_LOCALID"), per_node, "slurm")
    return World()


def shard(count: int, world: World) -> slice:
    """This rank's members of ``count`` ordered items: every ``size``-th one from its rank (all ranks equal in number
    when ``count`` divides; the first ranks have one more otherwise)."""
    return slice(world.rank, count, world.size)
