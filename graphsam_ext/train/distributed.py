"""Data-parallel training with ``torch.distributed``: the process group a ``torchrun`` worker
joins, how each global batch is split over the ranks, and the ``torchrun`` command line that
``graphsam train --nproc-per-node N`` runs.

The split keeps a distributed run equal to one process training on the same global batches: the
epoch order is a function of (seed, epoch) on every rank, each global batch of ``batch_size``
molecules is cut into ``world_size`` contiguous shards, and each rank weighs its shard's mean
loss by its share of the global batch's labels times ``world_size``, so the gradient DDP
averages over the ranks is the gradient of the global batch's mean loss (see
``docs/scaling.md``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from graphsam_ext.errors import UserError

# torchrun's options that ``graphsam train`` passes through, with the argparse destinations
LAUNCH_OPTIONS = {"--nproc-per-node": "nproc_per_node", "--nnodes": "nnodes", "--node-rank": "node_rank",
                  "--master-addr": "master_addr", "--master-port": "master_port"}


@dataclass
class DistContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch_dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks (a copy; the collective runs on ``tensor``'s device)."""
        out = tensor.clone()
        torch_dist.all_reduce(out)
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` (its parameters are broadcast from rank 0)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def from_environment(device: torch.device) -> DistContext | None:
    """Join the process group when this process was started by ``torchrun`` with more than one
    process (``WORLD_SIZE`` > 1): gloo on the CPU, NCCL on CUDA, each rank on
    ``cuda:LOCAL_RANK``. Returns None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"--nproc-per-node: local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                            "visible); start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, device)


def shard(indices, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous part of one global batch (sizes differ by at most one)."""
    n = len(indices)
    start, end = rank * n // world_size, (rank + 1) * n // world_size
    return list(indices[start:end])


def check_shardable(num_train: int, batch_size: int, world_size: int) -> None:
    """Every global batch must give each rank at least one molecule."""
    tail = num_train % batch_size
    if batch_size < world_size or 0 < tail < world_size:
        smallest = batch_size if batch_size < world_size else tail
        raise UserError(
            f"--batch-size {batch_size} over {num_train} training molecules leaves a batch of {smallest} "
            f"molecule(s), fewer than the {world_size} processes, so a rank would get none; choose a --batch-size "
            f"of at least {world_size} whose last batch has at least {world_size} molecules, or fewer processes")


def label_counts(dataset) -> np.ndarray:
    """Present labels per molecule: the weights of the masked mean losses."""
    mask = getattr(dataset, "mask", None)
    if mask is None:
        mask = torch.stack([torch.as_tensor(dataset[i].mask, dtype=torch.bool).reshape(-1)
                            for i in range(len(dataset))])
    return torch.as_tensor(mask).reshape(len(dataset), -1).sum(1).numpy().astype(np.int64)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random stream (dropout), distinct per (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def strip_launch_options(argv: list[str]) -> list[str]:
    """``argv`` without the torchrun options (for the command every worker runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def torchrun_command(worker_argv: list[str], nproc_per_node: int, nnodes: str | None = None,
                     node_rank: int | None = None, master_addr: str | None = None,
                     master_port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run ... -m graphsam_ext.cli <worker_argv>``. A single-node
    run without an address uses ``--standalone`` (torchrun picks a free port)."""
    import sys

    if nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    multi = nnodes is not None and str(nnodes) not in ("1", "1:1")
    if multi or master_addr is not None or master_port is not None or node_rank is not None:
        if nnodes is not None:
            cmd.append(f"--nnodes={nnodes}")
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
        if master_addr is not None:
            cmd.append(f"--master-addr={master_addr}")
        if master_port is not None:
            cmd.append(f"--master-port={master_port}")
    else:
        cmd.append("--standalone")
    return cmd + ["-m", "graphsam_ext.cli", *worker_argv]
