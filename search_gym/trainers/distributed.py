"""Data-parallel RL training through ``accelerate`` (one process per GPU, launched by ``accelerate launch``).

Each rank rolls out its contiguous share of the step's ``questions_per_step`` questions (whole groups, so GRPO's
group advantages need no communication), the policy's gradients are averaged by DDP, and losses that divide by a
batch count (episodes or tokens) divide by the global count, so one optimiser step equals the single-process step on
the union of the ranks' batches. Only rank 0 writes logs and checkpoints; every rank resumes from them.

One process (no launcher) never creates an ``Accelerator``: :class:`SingleProcess` is a no-op with the same
methods, so single-process runs are bit-for-bit what they were before data parallelism existed.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def launched_world_size() -> int:
    """Processes of the launch this one belongs to (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class SingleProcess:
    """The one-process case: rank 0 of 1, every collective the identity."""

    enabled = False
    rank, world_size = 0, 1
    is_main = True
    accelerator = None

    def prepare(self, model, optimizer):
        return model, optimizer

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def gather_objects(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        pass


class DataParallel(SingleProcess):
    """Several processes under one ``accelerate.Accelerator`` (DDP on GPUs with NCCL, gloo on CPUs)."""

    enabled = True

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def prepare(self, model, optimizer):
        # Only the policy and its optimiser: the frozen reference and the generator stay per-rank copies, and the
        # scheduler is stepped by the trainer (accelerate's scheduler wrapper would step it once per process).
        return self.accelerator.prepare(model, optimizer)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone().to(self.accelerator.device)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.to(value.device)

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        """Equal-shaped tensors of every rank concatenated in rank order along dim 0."""
        local = value.detach().to(self.accelerator.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.cat(parts).to(value.device)

    def gather_objects(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def make_parallel(accelerator=None) -> SingleProcess:
    """:class:`DataParallel` on ``accelerator`` (or a new one when launched with several processes), else the
    one-process no-op."""
    if accelerator is None:
        if launched_world_size() <= 1:
            return SingleProcess()
        from accelerate import Accelerator

        # Without a GPU accelerate forms a process group only when told to use the CPU (gloo).
        accelerator = Accelerator(cpu=True) if not torch.cuda.is_available() else Accelerator()
        if accelerator.num_processes != launched_world_size():
            # Each process would otherwise train alone and all of them would write the same run folder.
            raise RuntimeError(f"launched as {launched_world_size()} processes but accelerate formed a group of "
                               f"{accelerator.num_processes}: launch with `accelerate launch --num_processes N` "
                               "(add --cpu on a machine without GPUs)")
    if accelerator.num_processes <= 1:
        return SingleProcess()
    return DataParallel(accelerator)


# Throughputs add up over ranks and wall times are those of the slowest rank; every other metric is a mean over
# ranks, which for episode means is the global mean (every rank holds the same number of episodes).
SUMMED = ("charts/SPS", "charts/tokens_per_second")


def reduce_metrics(parallel: SingleProcess, metrics: dict[str, float]) -> dict[str, float]:
    """Every rank's metrics combined into the job's (identical on every rank)."""
    if not parallel.enabled:
        return metrics
    rows = parallel.gather_objects({k: float(v) for k, v in metrics.items()})
    keys = [k for row in rows for k in row]
    out: dict[str, float] = {}
    for key in dict.fromkeys(keys):  # first-seen order
        values = [row[key] for row in rows if key in row]
        if key in SUMMED:
            out[key] = float(sum(values))
        elif key.startswith("time/"):
            out[key] = float(max(values))
        else:
            out[key] = float(sum(values) / len(values))
    return out
