"""The LESA model: a learned 2x2 conv over VGG conv5_4 regions, T shared attention heads, and
label classifiers made from word vectors (paper Sec. 3; original ``core/model_share_attention.py``).

Data flow, shapes for a batch of B images, C seen and U unseen labels, T attention heads:

    features (B,196,512) --conv 2x2 + batch-norm + ReLU--> regions r (B,196,512)
    attention logits  e = [tanh([r,1] W1), 1] W2              (B,T,196)
    alphas = softmax over the 196 regions                     (B,T,196)
    f_att  = alphas @ [r,1]                                   (B,T,513)
    classifiers = [normalised vecs W^T, 0]                     (C,513)
    att_logits = f_att @ classifiers^T                        (B,T,C)
    logits = max over the T heads                             (B,C)

The original appends a constant 1 to every region (and to the hidden layer) so that the last row
of W1 (and of W2) acts as a bias. The weights keep that layout here (checkpoints load unchanged),
but the products run over the 512 real dimensions with the last row added as a bias: the same
sums, without two (B,196,513) copies and with an inner dimension of 512, which matrix units want.

The same attention and projection W serve seen, unseen (zero-shot) and all (generalised) labels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesa.errors import ConfigError, ShapeError
from lesa.shapes import FEATURE_DIM, GRID, N_REGIONS

# Inference on the CPU runs the forward pass over slices of this many images: the (n,196,512)
# activations then stay in the CPU's caches (1.19x the images/s of slices of 1,000 on a 2-core EPYC).
CPU_INFERENCE_SLICE = 16


GLOBAL_POOLS = ("mean", "max")


@dataclass
class LESAConfig:
    """Switches of the original ``AttentionClassifier``; the defaults are the paper's setting."""

    n_attention: int = 10  # T, number of shared attention heads
    lamb_att_dist: float = 0.1  # weight of the attention-distribution (soft cardinality) loss
    lamb_att_global: float = 0.001  # weight of the attended-vs-global-feature loss
    lamb_att_span: float = 0.01  # weight of the attention diversity (orthogonality) loss
    lamb_w2v_diff: float = 0.0  # weight keeping trainable vectors near their start
    trainable_vecs: bool = False  # fine-tune the seen label vectors (re-normalised every step)
    separate_w1: bool = False  # one first-layer attention matrix per head
    batchnorm: bool = True  # batch-norm after the conv (else the conv has biases)
    conv: bool = True  # learn the 2x2 conv over the regions
    l2_regularizer: bool = False  # add 0.0005 * sum(w^2)/2 of the conv weights to the loss
    global_pool: str = "mean"  # "mean" or "max": the global feature of the att_global loss

    def __post_init__(self):
        if self.global_pool not in GLOBAL_POOLS:
            raise ConfigError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if int(self.n_attention) < 1:
            raise ConfigError(f"n_attention must be >= 1, got {self.n_attention}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LESAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class LESAOutput:
    """What one forward pass returns (all tensors; B images, T heads, C seen, U unseen labels)."""

    logits: torch.Tensor  # (B, C) seen-label scores
    zs_logits: torch.Tensor  # (B, U) unseen-label scores (zero-shot)
    gzs_logits: torch.Tensor  # (B, U+C) all labels, unseen first (generalised zero-shot)
    alphas: torch.Tensor  # (B, T, 196) attention weights
    att_logits: torch.Tensor  # (B, T, C) per-head seen scores
    zs_att_logits: torch.Tensor  # (B, T, U) per-head unseen scores
    f_att: torch.Tensor  # (B, T, 513) attended regions [r,1]; the last column is the alphas' sum
    attention_logits: torch.Tensor  # (B, T, 196) attention before the softmax
    f_global: torch.Tensor  # (B, 513) mean/max pooled regions [r,1]
    classifiers: torch.Tensor  # (C, 513) seen-label classifiers


def _as_tensor(vecs, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(vecs, dtype=np.float32) if not torch.is_tensor(vecs) else vecs)
    t = t.detach().to(torch.float32).cpu()
    if t.ndim != 2 or t.shape[0] < 1:
        raise ShapeError(f"{what} must be a (n_labels, dim) matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ShapeError(f"{what} contains NaN or inf values")
    return t


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    # TF1 tf.nn.l2_normalize: x / sqrt(max(sum(x^2), 1e-12)) (a zero row stays zero)
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-12))


def compute_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 under bfloat16 autocast (where the conv and the products would cast the features
    anyway: the same numbers, padded and read in half the bytes), else float32."""
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def append_one(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D+1) with a constant 1 appended (the original's bias trick)."""
    return F.pad(x, (0, 1), value=1.0)


class LESA(nn.Module):
    """Shared multi-attention classifier over VGG-19 conv5_4 regions.

    ``seen_vecs (C,300)`` and ``unseen_vecs (U,300)`` are raw word vectors; they are
    L2-normalised here as the original did.
    """

    def __init__(self, seen_vecs, unseen_vecs, config: LESAConfig | None = None):
        super().__init__()
        self.config = config = config or LESAConfig()
        seen = _as_tensor(seen_vecs, "seen_vecs")
        unseen = _as_tensor(unseen_vecs, "unseen_vecs")
        if seen.shape[1] != unseen.shape[1]:
            raise ShapeError(
                f"seen and unseen vectors differ in dimension: {seen.shape[1]} vs {unseen.shape[1]}"
            )
        dim_w2v = seen.shape[1]
        T, D = int(config.n_attention), FEATURE_DIM

        # original: seen vectors normalised once (sklearn.normalize); when trainable, the variable
        # starts from them and is normalised again at every use (the "constraint_vecs" path).
        self.register_buffer("init_vecs", l2_normalize_rows(seen))
        if config.trainable_vecs:
            self.vecs = nn.Parameter(self.init_vecs.clone())
        else:
            self.vecs = None
        self.register_buffer("unseen_vecs", l2_normalize_rows(unseen))

        if config.conv:
            # TF-slim conv2d 2x2, stride 1, SAME padding; biases only without batch-norm.
            self.conv = nn.Conv2d(D, D, kernel_size=2, bias=not config.batchnorm)
            # TF1 tf.layers.batch_normalization: epsilon 1e-3, moving averages with decay 0.99
            # (torch's momentum = 1 - decay); the moving variance takes the unbiased batch variance.
            self.bn = nn.BatchNorm2d(D, eps=1e-3, momentum=0.01) if config.batchnorm else None
        else:
            self.conv = None
            self.bn = None

        # Attention MLP on regions with the constant 1 appended: W1 (D+1, D) shared by the heads,
        # or one per head (T, D+1, D); W2 (D+1, T) gives one logit per head.
        w1_shape = (T, D + 1, D) if config.separate_w1 else (D + 1, D)
        self.w_att_1 = nn.Parameter(torch.empty(w1_shape))
        self.w_att_2 = nn.Parameter(torch.empty(D + 1, T))
        # Projection of word vectors into the visual space: classifier_c = W v_c.
        self.W = nn.Parameter(torch.empty(D, dim_w2v))
        self.reset_parameters()

    # -- set-up -------------------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise as the original: tf.contrib.layers.variance_scaling_initializer() (factor 2,
        fan-in, truncated normal with stddev sqrt(1.3 * 2 / fan_in), cut at 2 stddev); conv biases
        start at zero, batch-norm at gamma 1, beta 0."""

        def variance_scaling_(param: torch.Tensor, fan_in: int) -> None:
            std = (1.3 * 2.0 / fan_in) ** 0.5
            nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std, generator=generator)

        D = FEATURE_DIM
        T = int(self.config.n_attention)
        # fan-in as TF computes it: shape[-2] times the product of any leading dimensions
        variance_scaling_(self.w_att_1, (D + 1) * (T if self.config.separate_w1 else 1))
        variance_scaling_(self.w_att_2, D + 1)
        variance_scaling_(self.W, D)
        if self.conv is not None:
            variance_scaling_(self.conv.weight, 2 * 2 * D)
            if self.conv.bias is not None:
                nn.init.zeros_(self.conv.bias)
        if self.bn is not None:
            self.bn.reset_parameters()

    @property
    def n_seen(self) -> int:
        return self.init_vecs.shape[0]

    @property
    def n_unseen(self) -> int:
        return self.unseen_vecs.shape[0]

    def set_unseen_vecs(self, unseen_vecs) -> None:
        """Swap the unseen (zero-shot) label vectors, e.g. for a label subset or new label names."""
        vecs = _as_tensor(unseen_vecs, "unseen_vecs")
        if vecs.shape[1] != self.init_vecs.shape[1]:
            raise ShapeError(
                f"unseen vectors must have dimension {self.init_vecs.shape[1]}, got {vecs.shape[1]}"
            )
        self.unseen_vecs = l2_normalize_rows(vecs).to(self.init_vecs.device)

    def seen_vecs(self) -> torch.Tensor:
        """The seen label vectors in use (C, 300): fixed, or trainable and re-normalised."""
        if self.vecs is None:
            return self.init_vecs
        return l2_normalize_rows(self.vecs)

    # -- the forward pass ---------------------------------------------------------------------
    def regions(self, features: torch.Tensor) -> torch.Tensor:
        """(B,196,512) -> conv/bn/ReLU -> regions (B,196,512) (the original's constant 1 is not
        appended: see the module doc). ``features`` may be stored as float16 (or any float type):
        they are computed in float32, or in bfloat16 under bfloat16 autocast."""
        if features.ndim != 3 or features.shape[1:] != (N_REGIONS, FEATURE_DIM):
            raise ShapeError(
                f"features must be (batch, 196, 512) VGG-19 conv5_4 regions, got {tuple(features.shape)}"
            )
        x = features.to(compute_dtype(features.device))
        if self.conv is not None:
            B = x.shape[0]
            x = x.reshape(B, GRID, GRID, FEATURE_DIM).permute(0, 3, 1, 2)  # NHWC -> NCHW
            # TF1 SAME padding for an even kernel puts the extra row/column at the end.
            x = F.pad(x, (0, 1, 0, 1))
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            x = F.relu(x)
            x = x.permute(0, 2, 3, 1).reshape(B, N_REGIONS, FEATURE_DIM)
        return x

    def attention(self, regions: torch.Tensor) -> torch.Tensor:
        """Attention logits (B,T,196) from regions (B,196,512): ``[tanh([r,1] W1), 1] W2``, with
        the last rows of W1 and W2 added as biases (the original's appended 1; see the module doc)."""
        w1, b1 = self.w_att_1[..., :-1, :], self.w_att_1[..., -1, :]
        w2, b2 = self.w_att_2[:-1], self.w_att_2[-1]
        if self.config.separate_w1:  # one W1 per head: (T, 513, 512)
            hidden = torch.tanh(torch.einsum("brf,tfh->btrh", regions, w1) + b1[:, None, :])  # (B,T,196,512)
            return torch.einsum("btrh,ht->btr", hidden, w2) + b2[:, None]
        hidden = torch.tanh(F.linear(regions, w1.t(), b1))  # (B,196,512)
        return F.linear(hidden, w2.t(), b2).transpose(1, 2)  # (B,T,196)

    @staticmethod
    def head_max(att_logits: torch.Tensor) -> torch.Tensor:
        # TF1 reduce_max: tied maxima share the gradient equally; torch.amax does the same
        # (torch.max(dim) would send it all to one head).
        return torch.amax(att_logits, dim=1)

    def forward(self, features: torch.Tensor) -> LESAOutput:
        regions = self.regions(features)  # (B,196,512)
        attention_logits = self.attention(regions)  # (B,T,196)
        alphas = torch.softmax(attention_logits, dim=2)
        attended = alphas @ regions  # (B,T,512)
        # f_att = alphas @ [r,1]: the last column is the alphas' sum (1 up to rounding)
        f_att = torch.cat([attended, alphas.sum(dim=2, keepdim=True)], dim=2)  # (B,T,513)
        pooled = regions.amax(dim=1) if self.config.global_pool == "max" else regions.mean(dim=1)
        f_global = append_one(pooled)  # (B,513): the mean/max of the constant 1 is 1

        seen_projection = self.seen_vecs() @ self.W.t()  # (C,512)
        classifiers = F.pad(seen_projection, (0, 1), value=0.0)  # (C,513) = [v W^T, 0]: the 0 ignores f_att's 1
        # the classifiers' last column is 0, so f_att's last column adds nothing: left out
        att_logits = attended @ seen_projection.t()  # (B,T,C)
        logits = self.head_max(att_logits)
        zs_att_logits = attended @ (self.unseen_vecs @ self.W.t()).t()  # (B,T,U)
        zs_logits = self.head_max(zs_att_logits)
        # The original scores [unseen; seen] in one product; each label's score only depends on
        # its own vector, so concatenating the two gives the same numbers.
        gzs_logits = torch.cat([zs_logits, logits], dim=1)
        return LESAOutput(
            logits=logits,
            zs_logits=zs_logits,
            gzs_logits=gzs_logits,
            alphas=alphas,
            att_logits=att_logits,
            zs_att_logits=zs_att_logits,
            f_att=f_att,
            attention_logits=attention_logits,
            f_global=f_global,
            classifiers=classifiers,
        )

    def scores(self, features: torch.Tensor, heads=("logits", "zs_logits", "gzs_logits")) -> dict[str, torch.Tensor]:
        """``{head: scores}`` of the forward pass, for inference. In eval mode on the CPU the
        batch goes through in slices of ``CPU_INFERENCE_SLICE`` images (each image's scores do
        not depend on the others' then); on a GPU, or in training mode (batch statistics), whole."""
        if self.training or features.device.type != "cpu" or features.shape[0] <= CPU_INFERENCE_SLICE:
            out = self(features)
            return {h: getattr(out, h) for h in heads}
        parts = [self(features[i:i + CPU_INFERENCE_SLICE]) for i in range(0, features.shape[0], CPU_INFERENCE_SLICE)]
        return {h: torch.cat([getattr(out, h) for out in parts]) for h in heads}

    def loss(self, out: LESAOutput, labels: torch.Tensor,
             max_positives: int | None = None) -> dict[str, torch.Tensor]:
        """All loss terms of the original, and their weighted total (see ``lesa.losses``).
        ``max_positives``: a fixed padding of the ranking loss (see ``lesa.losses.ranking_loss``)."""
        from lesa.losses import lesa_losses

        return lesa_losses(self, out, labels, max_positives)

    def l2_penalty(self) -> torch.Tensor:
        """0.0005 * sum(w^2) / 2 over the conv weights (TF-slim l2_regularizer(0.0005))."""
        if self.conv is None:
            return self.W.new_zeros(())
        return 0.0005 * (self.conv.weight**2).sum() / 2
