"""Data-parallel training under ``torchrun`` (DDP: NCCL on GPUs, Gloo on CPUs).

``torchrun --nproc_per_node=N [--nnodes ...] -m lesa train CONFIG`` starts N processes per node;
each reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
What N ranks compute is what one process with the same global batch computes:

- Data: the global batch (``train.batch_size``, 32 as the original) is the same sequence of
  records as in one process; rank r reads its slice of every global batch
  (``TrainStream(shard=(rank, world))``, ``np.array_split`` order), so B/N images per rank.
- Batch-norm: ``nn.BatchNorm2d`` becomes :class:`SyncBatchNorm2d` (same eps, momentum, parameters
  and buffers): in training its mean and variance are those of the global batch (autograd-aware
  all-reduce), and the moving statistics are updated with them identically on every rank.
- Losses: each rank minimises its share of the global batch's loss, so that DDP's average of the
  ranks' gradients is the single-process gradient term by term; the values logged are the global
  ones (``lesa.losses.lesa_losses`` with ``world_size``, run through ``lesa.step.TrainStep``).
- Evaluation, checkpoints, log.csv and printing happen on rank 0; the adaptive learning rate is
  decided there and broadcast. Checkpoints hold the global position (epoch, global batch), so
  ``--resume`` works with any world size (every rank reads ``last.pt``: on several nodes the
  output folder must be on a shared file system).

Evaluation on rank 0 calls the bare model: its batch-norm layers synchronise only inside the
DDP training forward (:class:`_SyncedForward`), never in a forward that only rank 0 runs.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from lesa.errors import ConfigError
from lesa.optim import set_lr

# rank 0 evaluates while the others wait: collectives must tolerate a long validation
TIMEOUT_ENV = "LESA_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120


# -- process group ----------------------------------------------------------------------------
@dataclass
class DistContext:
    """This process's place in the job; ``world_size == 1`` is an ordinary single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False  # this module initialised the process group (and destroys it)
    ddp: nn.Module | None = None  # the DDP-wrapped training forward (``prepare``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return (self.rank, self.world_size)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun, "
                          "which sets RANK, WORLD_SIZE and LOCAL_RANK") from None


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1) or 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """Each rank's device: GPU ``LOCAL_RANK`` for auto/cuda when CUDA is available, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # torch.device("cuda") now means this rank's GPU
        return torch.device("cuda", local_rank)
    if name == "auto" or name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu (Gloo)")
    raise ConfigError(f"device {name!r}: under torchrun each process takes GPU LOCAL_RANK; use --device cuda "
                      "(or auto), or --device cpu; restrict the GPUs with CUDA_VISIBLE_DEVICES")


def setup(device_name: str = "auto", batch_size: int | None = None) -> DistContext:
    """Join the torchrun job described by the environment (or reuse an initialised group).

    Without WORLD_SIZE > 1 and without an initialised group this is a single-process run and
    nothing is done. ``batch_size`` (the global batch) must divide by the world size.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                          local_rank=_env_int("LOCAL_RANK", 0), backend=str(dist.get_backend()))
    else:
        world = env_world_size()
        if world <= 1:
            return DistContext()
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
        if rank is None or not 0 <= rank < world:
            raise ConfigError(f"RANK={os.environ.get('RANK')!r} with WORLD_SIZE={world}: launch with torchrun, "
                              "which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(key):
                raise ConfigError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun "
                                  "(--master_addr/--master_port or --rdzv-endpoint)")
        ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank)
    if ctx.world_size > 1 and batch_size is not None and batch_size % ctx.world_size:
        lower = batch_size - batch_size % ctx.world_size
        raise ConfigError(f"train.batch_size {batch_size} (the global batch) does not divide over the "
                          f"{ctx.world_size} processes; use --set train.batch_size={lower or ctx.world_size} "
                          f"or {lower + ctx.world_size}, or a world size that divides {batch_size}")
    device = resolve_device(device_name, ctx.local_rank)
    if not dist.is_initialized():
        ctx.backend = "nccl" if device.type == "cuda" else "gloo"
        minutes = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN)
        dist.init_process_group(ctx.backend, init_method="env://", rank=ctx.rank, world_size=ctx.world_size,
                                timeout=timedelta(minutes=minutes))
        ctx.owns_group = True
    return ctx


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None and ctx.active:
        import torch.distributed as dist

        dist.barrier()


def broadcast_float(ctx: DistContext | None, value: float | None, src: int = 0) -> float:
    """The ``src`` rank's value on every rank (float64; others may pass None)."""
    if ctx is None or not ctx.active:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([0.0 if value is None else float(value)], dtype=torch.float64, device=_comm_device(ctx))
    dist.broadcast(t, src)
    return float(t.item())


def any_true(ctx: DistContext | None, flag: bool) -> bool:
    """True when any rank's flag is true: the same answer on every rank."""
    if ctx is None or not ctx.active:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(ctx))
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _comm_device(ctx: DistContext) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")


def share_learning_rate(ctx: DistContext | None, optimizer) -> float:
    """Rank 0 decided the learning rate (AdaptiveLR after its validation): set it on every rank."""
    lr = broadcast_float(ctx, optimizer.param_groups[0]["lr"] if ctx is None or ctx.is_main else None)
    set_lr(optimizer, lr)
    return lr


# -- synchronised batch-norm ------------------------------------------------------------------
_SYNC_DEPTH = 0  # > 0 inside the DDP training forward


@contextlib.contextmanager
def batchnorm_sync():
    """Within this block SyncBatchNorm2d layers in training mode use the global batch statistics."""
    global _SYNC_DEPTH
    _SYNC_DEPTH += 1
    try:
        yield
    finally:
        _SYNC_DEPTH -= 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, autograd-aware (each rank's gradient is the sum of the ranks' gradients)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x.contiguous())


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the batch of all ranks together.

    torch's ``nn.SyncBatchNorm`` only runs on GPUs and synchronises in any training-mode forward;
    this one runs on any device (Gloo or NCCL) and only within :func:`batchnorm_sync`, so rank 0
    can evaluate alone. Mean and variance are computed in two passes (sum, then centred squares),
    each all-reduced with autograd so the gradient flows through the global statistics.
    Parameters, buffers and state_dict keys are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W)
        import torch.distributed as dist

        if not (self.training and _SYNC_DEPTH > 0 and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        C = x.shape[1]
        count = x.new_tensor([x.numel() // C])
        sums = all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))  # (C+1,) global sums, global count
        n = sums[C].detach()
        if float(n) < 2:
            raise ValueError(f"batch-norm needs more than one value per channel over the global batch, got {int(n)}")
        mean = sums[:C] / n  # (C,)
        centred = x - mean[None, :, None, None]
        var = all_reduce_sum((centred * centred).sum(dim=(0, 2, 3))) / n  # (C,) biased, as used to normalise
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                # as nn.BatchNorm2d: the moving variance takes the unbiased variance
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` by a :class:`SyncBatchNorm2d` holding the same parameter and
    buffer objects (an optimiser built before keeps working). Returns the (possibly new) module."""
    if type(module) is nn.BatchNorm2d:
        new = SyncBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                              affine=module.affine, track_running_stats=module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


class _SyncedForward(nn.Module):
    """The module DDP wraps: the model's forward with batch-norm synchronisation switched on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features):
        with batchnorm_sync():
            return self.model(features)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """SyncBatchNorm2d conversion (in place) and the DDP training forward (``ctx.ddp``)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    convert_batchnorm(model)
    device = next(model.parameters()).device
    # broadcast_buffers=False: the moving statistics are identical on every rank already (global
    # statistics), and the label-vector buffers never change — no per-step broadcast needed.
    with warnings.catch_warnings():  # the replacement (forward_sync_buffers) still syncs at init
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        ctx.ddp = DDP(_SyncedForward(model), device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False)
    return ctx.ddp
