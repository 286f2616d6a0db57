"""Data-parallel training under PyTorch's own launchers (DistributedDataParallel).

    torchrun --nproc_per_node=N -m delrec_train.stage1 ...      # or stage2
    accelerate launch --multi_gpu --num_processes N -m delrec_train.stage1 ...   # torchrun underneath

The launcher sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (+ ``MASTER_ADDR`` / ``MASTER_PORT``);
:class:`Dist` then joins the process group (``nccl`` on CUDA, ``gloo`` on CPU, each process on
``cuda:LOCAL_RANK``). Every optimizer step's examples (the same seeded order on every rank) are
split into disjoint slices, one per rank; each rank backpropagates its slice with the per-example
weight ``WORLD_SIZE / batch``, and DDP's gradient averaging (divide by ``WORLD_SIZE``, sum) turns that
into the single-process gradient, the mean over the global batch. Rank 0 alone writes checkpoints,
outputs and logs. Without a launcher (or with one process) nothing here does anything: the stages
run exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as tdist


class Ranker(torch.nn.Module):
    """The trainable part as one module, so that DDP can wrap it: the soft prompts (trained when
    they are parameters) and, in stage 2, the LoRA-adapted model (its frozen weights are ignored by
    DDP's reducer). ``forward(history, candidates)`` = the candidates' scores (:class:`Scorer`)."""

    def __init__(self, scorer, soft: dict | None, model=None):
        super().__init__()
        self.scorer, self.soft = scorer, soft
        self.prompts = torch.nn.ParameterDict(
            {k: v for k, v in (soft or {}).items() if isinstance(v, torch.nn.Parameter)})
        self.model = model

    def forward(self, history, candidates):
        return self.scorer.score(history, candidates, self.soft)[0]


class Dist:
    """Rank, world size and the few collectives the stages need; all no-ops when ``world == 1``."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0
        self.enabled = self.world > 1
        self.is_main = self.rank == 0
        self.device = device
        self.backend = None
        if not self.enabled:
            return
        if device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        tdist.init_process_group(self.backend)
        self.print(f"distributed: {self.world} processes, backend {self.backend}, device {self.device.type}")

    def print(self, *a, **kw) -> None:
        """print on rank 0 only (stderr unless ``file`` is given)."""
        if self.is_main:
            kw.setdefault("file", sys.stderr)
            print(*a, **kw)

    def check_batch(self, batch: int) -> None:
        if batch < self.world:
            raise SystemExit(f"--batch-size {batch} is smaller than the {self.world} processes "
                             f"(each process needs at least one example per step)")

    def shard(self, idx: list[int]) -> list[int]:
        """This rank's disjoint slice of one step's example indices."""
        return idx[self.rank::self.world]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (rotary tables) are constants: no need to broadcast them at every forward
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def no_sync(self, module: torch.nn.Module, sync: bool):
        """Accumulate gradients locally (``sync=False``) or let this backward all-reduce them."""
        if self.enabled and not sync:
            return module.no_sync()
        return contextlib.nullcontext()

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sums of per-rank statistics (not gradients: those are DDP's)."""
        if not self.enabled:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return dict(zip(values, t.tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (e.g. a time budget reached)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def from_main(self, fn):
        """``fn()`` evaluated on rank 0 and sent to every rank (token ids: one tokenizer run and one
        token-cache writer; a checkpoint: read once, so ``--out`` need not be shared by the machines)."""
        if not self.enabled:
            return fn()
        obj = [fn() if self.is_main else None]
        tdist.broadcast_object_list(obj, src=0)
        return obj[0]

    def close(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()
