"""One process or a ``torchrun`` job: this process' rank, the sums and barriers between processes.

The same training code runs plainly (rank 0 of 1, every helper a no-op) or under ``torchrun
--nproc_per_node N`` (DDP, gloo on CPU); :func:`dist_env` is the one place that reads
``torchrun``'s environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process' place in a ``torchrun`` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read ``torchrun``'s environment (the one place that does) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size())


def all_sum(values: list[float], env: DistEnv) -> list[float]:
    """``values`` summed over every process (``values`` itself in a single process)."""
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    """Wait for every process (nothing in a single process)."""
    if env.world > 1:
        dist.barrier()


def quiet(*_args, **_kwargs) -> None:
    """The log of every process but rank 0: says nothing."""
    return None
