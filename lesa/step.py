"""One training step for every way of running it: forward, every loss term, backward and the TF1
RMSProp update (batch-norm statistics included), as the original's train op did in one run.

    step = TrainStep(model, optimizer, mode="eager")
    losses = step(features, labels)     # features (B,196,512), labels (B,C) in {-1,0,1}
                                        # -> {name: 0-dim tensor}, no host sync

``step_losses`` is the one function that runs the forward pass and computes the losses of a batch;
every mode below calls it:

- ``eager``: the plain step. On the CPU a non-finite loss stops before the update (``NonFiniteLoss``).
- ``compile``: ``step_losses`` through ``torch.compile`` (static shapes: needs ``max_positives``).
- ``cuda_graph``: the whole step recorded once as a CUDA graph and replayed (a GPU step is bound by
  kernel launches); inputs are copied into static buffers, the learning rate is read from a device
  tensor (``TFRMSprop.capture_lr``), a batch of another size runs eagerly.
- ``compile+cuda_graph``: the compiled ``step_losses``, captured as above.

Data-parallel training passes the DDP-wrapped forward (``forward``) and ``world_size``: the losses
are then those of the global batch (``lesa.losses.lesa_losses``); it runs eagerly.
"""
from __future__ import annotations

import numpy as np
import torch

from lesa.errors import ConfigError, TrainingError
from lesa.experiment import STEP_MODES
from lesa.losses import lesa_losses
from lesa.model import LESA
from lesa.optim import TFRMSprop

LOSS_KEYS = ("total", "rank", "att_dist", "att_span", "att_global", "w2v_diff", "l2")


class NonFiniteLoss(TrainingError):
    """The loss of a batch is NaN or infinite (raised before the update)."""


def step_losses(model: LESA, features: torch.Tensor, labels: torch.Tensor, forward=None,
                max_positives: int | None = None, world_size: int = 1) -> dict[str, torch.Tensor]:
    """The forward pass (``forward``: the module to run, default ``model``) and every loss term."""
    out = (forward or model)(features)
    return lesa_losses(model, out, labels, max_positives, world_size)


def max_positives_of(labels) -> int:
    """The most positive labels of any image of a (N, C) label matrix (numpy or tensor): a static
    ranking-loss padding."""
    labels = labels.numpy(force=True) if torch.is_tensor(labels) else np.asarray(labels)
    return max(int((labels > 0).sum(axis=1).max()), 1) if labels.size else 1


class TrainStep:
    """Callable ``step(features, labels) -> {loss name: 0-dim tensor}`` (see the module doc)."""

    def __init__(self, model: LESA, optimizer: TFRMSprop, mode: str = "eager", max_positives: int | None = None,
                 forward=None, world_size: int = 1, warmup: int = 3):
        if mode not in STEP_MODES or mode == "auto":
            raise ConfigError(f"train step mode {mode!r}; choose one of {', '.join(STEP_MODES[1:])}")
        on_cuda = next(model.parameters()).is_cuda
        if "cuda_graph" in mode and not on_cuda:
            raise ConfigError(f"train.step = {mode!r} needs the model on a GPU; use \"eager\" or \"compile\"")
        if mode != "eager" and (max_positives is None or world_size > 1):
            raise ConfigError(f"train.step = {mode!r} needs one process and a fixed max_positives "
                              "(static shapes); use \"eager\"")
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.max_positives, self.forward, self.world_size = max_positives, forward, world_size
        self.warmup = int(warmup)
        self._losses = self._plain_losses
        if mode.startswith("compile"):
            self._losses = torch.compile(self._plain_losses, fullgraph=True, dynamic=False)
        self._graph = None  # (torch.cuda.CUDAGraph, static features, static labels, static losses)

    def _plain_losses(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = step_losses(self.model, features, labels, self.forward, self.max_positives, self.world_size)
        return torch.stack([losses[k] for k in LOSS_KEYS])  # (7,) in LOSS_KEYS order

    def _backward_and_update(self, values: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        values[0].backward()
        self.optimizer.step()

    def _eager(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.train()
        values = self._losses(features, labels)
        # On the CPU this check costs nothing: stop before the update. On a GPU it would be a host
        # sync per step; the training loop checks the losses before saving anything instead.
        if not values.is_cuda and not torch.isfinite(values[0]):
            raise NonFiniteLoss(f"non-finite loss ({float(values[0].detach())})")
        self._backward_and_update(values)
        return values.detach()

    def _capture(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the step as a CUDA graph. The warm-up steps (allocator, cuDNN and compiled kernels)
        change the weights, the optimizer's slots and the batch-norm statistics: they are put back."""
        device = next(self.model.parameters()).device
        static_features = features.to(device, torch.float32, copy=True)
        static_labels = labels.to(device, torch.float32, copy=True)
        self.optimizer.capture_lr(device)
        self.optimizer.init_state()
        tensors = [p.data for p in self.model.parameters()] + list(self.model.buffers())
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        saved = [t.clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(self.warmup, 1)):
                self.model.train()
                self._backward_and_update(self._losses(static_features, static_labels))
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            values = self._losses(static_features, static_labels)
            values[0].backward()
            self.optimizer.step()
        self._graph = (graph, static_features, static_labels, values.detach())

    def __call__(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if "cuda_graph" in self.mode and (self._graph is None or (
                features.shape == self._graph[1].shape and labels.shape == self._graph[2].shape)):
            if self._graph is None:
                self._capture(features, labels)  # recording runs nothing: the first step replays below
            graph, static_features, static_labels, values = self._graph
            self.optimizer.set_lr(self.optimizer.lr)  # (a device-side fill: the graph reads the tensor)
            static_features.copy_(features, non_blocking=True)
            static_labels.copy_(labels, non_blocking=True)
            self.model.train()
            graph.replay()
            values = values.clone()
        else:  # eager and compiled modes, or a batch of another size than the captured one
            values = self._eager(features, labels)
        return dict(zip(LOSS_KEYS, values.unbind()))
