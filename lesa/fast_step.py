"""A fast training step: forward + all losses + backward + TF1 RMSProp update, optionally compiled
by ``torch.compile`` and/or captured as one CUDA graph (the step is launch-bound on a GPU).

    step = make_train_step(model, optimizer, max_positives=max_positives_of(train_labels),
                           mode="auto")            # cuda_graph on a GPU, eager on the CPU
    for features, labels in batches:               # features (B,196,512), labels (B,C) in {-1,0,1}
        losses = step(features, labels)            # dict of 0-dim tensors (no host sync)

Every mode computes what the plain loop computes (``model(features)``, ``model.loss``,
``backward``, ``TFRMSprop`` update) with the same operations; ``tests/test_fast_step.py`` runs the
golden four-step check through it. Modes:

- ``"eager"``: the plain step (the CPU path).
- ``"compile"``: forward + losses compiled by ``torch.compile`` (needs a static ``max_positives``);
  backward through the compiled graph; fused (multi-tensor) optimizer update.
- ``"cuda_graph"``: the whole step (forward, losses, backward, update, batch-norm statistics)
  recorded once as a CUDA graph and replayed: inputs are copied into static buffers, the learning
  rate lives in a device tensor (changes of ``param_groups[0]["lr"]`` are picked up), the ranking
  loss uses the static ``max_positives``. A batch of another size runs eagerly.
- ``"compile+cuda_graph"``: the compiled forward + losses, captured as above.
- ``"auto"``: ``cuda_graph`` for a model on a CUDA device, else ``eager``.

A GPU mode asked for a CPU model falls back to ``eager`` with a warning (``step.mode`` tells which
ran). The returned loss tensors are fresh copies, valid after the next step.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from lesa.errors import ConfigError
from lesa.model import LESA
from lesa.optim import TFRMSprop, rmsprop_update_  # noqa: F401 (re-exported)

MODES = ("auto", "eager", "compile", "cuda_graph", "compile+cuda_graph")
LOSS_KEYS = ("total", "rank", "att_dist", "att_span", "att_global", "w2v_diff", "l2")


def max_positives_of(labels) -> int:
    """The most positive labels of any image: a static ranking-loss padding for a label matrix
    (N, C) (numpy or tensor, values in {-1, 0, 1})."""
    if torch.is_tensor(labels):
        return max(int((labels > 0).sum(dim=1).max()), 1) if labels.numel() else 1
    labels = np.asarray(labels)
    return max(int((labels > 0).sum(axis=1).max()), 1) if labels.size else 1


class TrainStep:
    """Callable ``step(features, labels) -> {loss name: 0-dim tensor}`` (see the module doc)."""

    def __init__(self, model: LESA, optimizer: TFRMSprop, max_positives: int | None = None,
                 mode: str = "auto", warmup: int = 3):
        if mode not in MODES:
            raise ConfigError(f"unknown fast-step mode {mode!r}; choose one of {MODES}")
        if not isinstance(optimizer, TFRMSprop):
            raise ConfigError(f"the fast step implements TFRMSprop updates, got {type(optimizer).__name__}")
        if len(optimizer.param_groups) != 1:
            raise ConfigError("the fast step supports one optimizer parameter group")
        self.model = model
        self.optimizer = optimizer
        self.max_positives = None if max_positives is None else int(max_positives)
        self.warmup = int(warmup)
        on_cuda = next(model.parameters()).is_cuda
        if mode == "auto":
            mode = "cuda_graph" if on_cuda else "eager"
        if "cuda_graph" in mode and not on_cuda:
            warnings.warn(f"fast step mode {mode!r} needs a model on a CUDA device; running eagerly "
                          "on the CPU instead", stacklevel=2)
            mode = "compile" if mode.startswith("compile") and _compiler_usable() else "eager"
        if mode != "eager" and self.max_positives is None:
            raise ConfigError(f"fast step mode {mode!r} needs max_positives (a static ranking-loss "
                              "padding): pass max_positives_of(train_labels)")
        self.mode = mode
        self._forward_loss = self._eager_forward_loss
        if mode.startswith("compile"):
            self._forward_loss = torch.compile(self._eager_forward_loss, fullgraph=True, dynamic=False)
        self._graph = None  # (torch.cuda.CUDAGraph, static features, static labels, static losses)
        self._lr = None  # device tensor of the learning rate (graph mode)
        self._lr_value = None

    # -- the plain pieces ---------------------------------------------------------------------
    def _eager_forward_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = self.model.loss(self.model(features), labels, max_positives=self.max_positives)
        return torch.stack([losses[k] for k in LOSS_KEYS])  # (7,) in LOSS_KEYS order

    def _params_with_state(self):
        group = self.optimizer.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        slots = [self.optimizer._slots(p) for p in params]
        return group, params, [s[0] for s in slots], [s[1] for s in slots]

    def _update(self, lr) -> None:
        group, params, ms, mom = self._params_with_state()
        if params:
            rmsprop_update_(params, [p.grad for p in params], ms, mom, lr,
                            group["decay"], group["momentum"], group["eps"])

    def _eager_step(self, features, labels) -> torch.Tensor:
        self.model.train()
        values = self._forward_loss(features, labels)
        self.optimizer.zero_grad(set_to_none=True)
        values[0].backward()
        if self.mode == "eager":
            self.optimizer.step()  # exactly the plain loop's update
        else:
            with torch.no_grad():
                self._update(self.optimizer.param_groups[0]["lr"])
        return values.detach()

    # -- the CUDA graph -----------------------------------------------------------------------
    def _snapshot(self):
        tensors = [p.data for p in self.model.parameters()] + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        return tensors, [t.clone() for t in tensors]

    def _capture(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        device = next(self.model.parameters()).device
        static_features = torch.empty(features.shape, dtype=torch.float32, device=device)
        static_labels = torch.empty(labels.shape, dtype=torch.float32, device=device)
        static_features.copy_(features)
        static_labels.copy_(labels)
        self._lr = torch.tensor(float(self.optimizer.param_groups[0]["lr"]), device=device)
        self._lr_value = float(self.optimizer.param_groups[0]["lr"])
        # Warm-up iterations (allocator, cuDNN and compiled kernels) change the weights, the
        # optimizer slots and the batch-norm statistics: they are put back afterwards.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p in self.model.parameters():  # create the slots before the snapshot
                if p.requires_grad:
                    self.optimizer._slots(p)
        tensors, saved = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(self.warmup, 1)):
                self.model.train()
                values = self._forward_loss(static_features, static_labels)
                self.optimizer.zero_grad(set_to_none=True)
                values[0].backward()
                with torch.no_grad():
                    self._update(self._lr)
        del values  # its autograd graph holds the side stream's AccumulateGrad nodes (not to be captured)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            values = self._forward_loss(static_features, static_labels)
            values[0].backward()
            with torch.no_grad():
                self._update(self._lr)
        self._graph = (graph, static_features, static_labels, values.detach())

    def _graph_step(self, features, labels) -> torch.Tensor:
        if self._graph is None:
            self._capture(features, labels)  # recording runs nothing: the first step replays below
        graph, static_features, static_labels, values = self._graph
        lr = float(self.optimizer.param_groups[0]["lr"])
        if lr != self._lr_value:
            self._lr.fill_(lr)
            self._lr_value = lr
        static_features.copy_(features, non_blocking=True)
        static_labels.copy_(labels, non_blocking=True)
        self.model.train()
        graph.replay()
        return values.clone()

    # -- the step -----------------------------------------------------------------------------
    def __call__(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if "cuda_graph" in self.mode and (self._graph is None or (
                features.shape == self._graph[1].shape and labels.shape == self._graph[2].shape)):
            values = self._graph_step(features, labels)
        else:  # eager modes, or a batch of another size than the captured one
            if "cuda_graph" in self.mode:
                features = features.to(self._graph[1].device, torch.float32)
                labels = labels.to(self._graph[2].device, torch.float32)
            values = self._eager_step(features, labels)
        return dict(zip(LOSS_KEYS, values.unbind()))


def make_train_step(model: LESA, optimizer: TFRMSprop, max_positives: int | None = None,
                    mode: str = "auto", warmup: int = 3) -> Callable:
    """A callable ``step(features (B,196,512), labels (B,C)) -> {loss name: 0-dim tensor}`` doing
    forward, losses, backward and the optimizer update (see the module doc for the modes)."""
    return TrainStep(model, optimizer, max_positives=max_positives, mode=mode, warmup=warmup)


def _compiler_usable() -> bool:
    """torch.compile on the CPU needs a C++ compiler."""
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@torch.no_grad()
def predict(model: LESA, features, batch_size: int = 4096, precision: str = "fp32",
            heads=("zs_logits", "gzs_logits")) -> dict[str, torch.Tensor]:
    """Inference scores over ``features`` (a (N,196,512) tensor/array, or an iterable of such
    batches), in inference mode (moving batch-norm statistics). ``precision``: "fp32" (exact),
    "tf32" (TF32 matrix units, GPU) or "bf16" (bfloat16 autocast): faster on a GPU, scores then
    differ from float32 in the fourth (tf32) or third (bf16) digit. Returns
    ``{head: (N, n) float32 tensor on the CPU}``."""
    from lesa.device import precision_context

    model.eval()
    device = next(model.parameters()).device
    if torch.is_tensor(features) or isinstance(features, np.ndarray):
        source = torch.as_tensor(features)
        batches = (source[i:i + batch_size] for i in range(0, source.shape[0], batch_size))
    else:
        batches = iter(features)
    out: dict[str, list] = {h: [] for h in heads}
    with precision_context(precision, device):
        for batch in batches:
            batch = torch.as_tensor(batch).to(device, non_blocking=True)  # as stored: the model casts
            for h, scores in model.scores(batch, heads).items():
                out[h].append(scores.float())
    return {h: torch.cat(v).cpu() if v else torch.empty(0) for h, v in out.items()}
