"""The original's optimiser and learning-rate schedule.

- ``TFRMSprop``: TF1 ``tf.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0)``.
  It differs from ``torch.optim.RMSprop``: the mean-square slot starts at ones (not zeros), epsilon
  sits inside the square root, and the learning rate multiplies the gradient before it enters the
  momentum accumulator (so changing the rate only affects new updates, not the stored momentum).
- ``AdaptiveLR``: the original's ``LearningRate.adapt`` (``core/utils.py``): an exponential
  moving average of a validation metric; when it drops, the rate decays by 0.8, then waits
  ``patience`` evaluations before it may decay again.
"""
from __future__ import annotations

import numpy as np
import torch

from lesa.errors import ConfigError


class TFRMSprop(torch.optim.Optimizer):
    """TF1 RMSProp with momentum, update for update:

        ms  <- ms + (g^2 - ms) * (1 - decay)          (ms starts at 1)
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        w   <- w - mom

    The update runs as torch's multi-tensor (foreach) kernels, as torch's own optimizers do. For a
    captured CUDA graph the rate can live in a device tensor (``capture_lr``): the graph then reads
    whatever ``set_lr`` last wrote.
    """

    def __init__(self, params, lr: float = 1e-3, decay: float = 0.9, momentum: float = 0.9, eps: float = 1.0):
        if lr < 0 or not 0 <= decay < 1 or momentum < 0 or eps < 0:
            raise ConfigError(
                f"invalid RMSProp settings lr={lr} decay={decay} momentum={momentum} eps={eps}"
            )
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))
        self.lr_tensor: torch.Tensor | None = None

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        """The rate of every group (and of the device tensor a captured graph reads)."""
        for group in self.param_groups:
            group["lr"] = float(lr)
        if self.lr_tensor is not None:
            self.lr_tensor.fill_(float(lr))

    def capture_lr(self, device: torch.device) -> None:
        """From now on the update reads the rate from a 0-dim tensor on ``device`` (one group only)."""
        if len(self.param_groups) != 1:
            raise ConfigError("a device-resident learning rate needs a single parameter group")
        self.lr_tensor = torch.tensor(self.lr, device=device)

    @torch.no_grad()
    def init_state(self) -> None:
        """Create the slots of every trainable parameter now (a CUDA graph must not allocate them)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and not self.state[p]:
                    self.state[p]["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)  # TF1: ones
                    self.state[p]["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.init_state()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            ms = [self.state[p]["ms"] for p in params]
            mom = [self.state[p]["mom"] for p in params]
            lr = group["lr"] if self.lr_tensor is None else self.lr_tensor
            delta = torch._foreach_mul(grads, grads)  # g^2 - ms
            torch._foreach_sub_(delta, ms)
            torch._foreach_add_(ms, delta, alpha=1 - group["decay"])
            denom = torch._foreach_add(ms, group["eps"])  # TF1: eps inside the root
            torch._foreach_sqrt_(denom)
            scaled = torch._foreach_mul(grads, lr)  # TF1: the rate enters the momentum accumulator
            torch._foreach_mul_(mom, group["momentum"])
            torch._foreach_addcdiv_(mom, scaled, denom)
            torch._foreach_sub_(params, mom)
        return loss


class AdaptiveLR:
    """The original's adaptive learning rate, step for step.

    ``step(metric)`` is called after each evaluation with the validation metric and returns the
    rate to use next. The first call compares against a moving average that starts at 0
    (original: ``is_reset`` starts False), so it never decays.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, signal_strength: float = 0.3,
                 patience: int = 5, decay_rate: float = 0.8, limit_scale: float = 1e-3):
        self.optimizer = optimizer
        self.signal_strength = float(signal_strength)
        self.patience = int(patience)
        # original: the LearningRate class ignores its decay_rate/limit_lr_scale arguments for
        # the decay itself and always uses 0.8; our defaults equal those values.
        self.decay_rate = float(decay_rate)
        # original: the floor is computed from the *initial* rate and the given scale.
        self.limit_lr = self.lr * float(limit_scale)
        self._set_lr(self.lr)  # TF1: the rate is held in float32 from the start
        self.avg_old = 0.0
        self.avg_new = 0.0
        self.wait = 0  # original: m

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _set_lr(self, lr: float) -> float:
        lr = float(np.float32(lr))  # TF1: the rate lives in a float32 variable
        set_lr(self.optimizer, lr)
        return lr

    def decay(self) -> float:
        """Multiply the rate by ``decay_rate`` (original: ``LearningRate.decay``)."""
        # TF1 (as recorded): the product is formed in float32, the factor rounded to float32 too
        return self._set_lr(np.float32(self.lr) * np.float32(self.decay_rate))

    def step(self, metric: float) -> float:
        current = self.lr
        new_lr = current
        self.avg_old = self.avg_new
        self.avg_new = self.avg_new * (1 - self.signal_strength) + float(metric) * self.signal_strength
        if self.avg_new < self.avg_old and current >= self.limit_lr and self.wait <= 0:
            new_lr = self.decay()
            self.wait = self.patience
        self.wait -= 1
        return new_lr

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("signal_strength", "patience", "decay_rate", "limit_lr", "avg_old", "avg_new", "wait")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate of any optimizer (``TFRMSprop.set_lr`` also updates a captured graph's rate)."""
    if isinstance(optimizer, TFRMSprop):
        optimizer.set_lr(lr)
    else:
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
