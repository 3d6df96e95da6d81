"""LESA's losses (paper Sec. 3.2-3.3; original ``core/model_share_attention.py``).

Labels are (B, C) in {-1, 0, 1}: 1 present, -1 absent, 0 not annotated (ignored).
Each term is a small pure function of tensors so tests can call it directly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lesa.errors import ShapeError

if TYPE_CHECKING:  # pragma: no cover
    from lesa.model import LESA, LESAOutput

# original: divides by (number of violated pairs + 1e-8)
RANK_EPS = 1e-8


def ranking_loss(logits: torch.Tensor, labels: torch.Tensor, max_positives: int | None = None) -> torch.Tensor:
    """Pairwise ranking loss: for every image, every (positive p, negative n) pair costs
    max(0, 1 + s_n - s_p); an image's cost is the sum over pairs divided by the number of
    violated pairs (cost > 0); the loss is the mean over the batch (images without a positive
    or without a negative add 0 but still count in the mean).

    The original builds a (B, C, C) tensor over the labels present in the batch. This computes
    the same value in O(B * P * C) memory, P = the most positives of any image in the batch
    (padded, never truncated): with 7,186 Open Images labels the dense version needs gigabytes.

    ``max_positives``: a fixed P (at least the most positives of any image, e.g. over the whole
    label matrix) instead of the batch's maximum: no host sync and a static shape, as CUDA graphs
    and ``torch.compile`` need. The value is the same for any P >= the batch's maximum.
    """
    positive = labels > 0  # (B,C)
    negative = (labels < 0).to(logits.dtype)  # (B,C)
    if max_positives is None:
        n_pos = positive.sum(dim=1)
        P = max(int(n_pos.max()), 1) if labels.numel() else 1
    else:
        P = max(min(int(max_positives), labels.shape[1]), 1)
        if labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling():
            most = int(positive.sum(dim=1).max())  # free on the CPU; never truncate silently
            if most > P:
                raise ShapeError(f"an image of the batch has {most} positive labels but max_positives "
                                 f"is {P}: pass at least the most positives of any image")
    # Indices of each image's positives first (a stable sort keeps them in label order), padded.
    order = torch.argsort(positive.to(torch.int8), dim=1, descending=True, stable=True)[:, :P]  # (B,P)
    pos_valid = torch.gather(positive, 1, order).to(logits.dtype)  # (B,P) 1 where a real positive
    pos_scores = torch.gather(logits, 1, order)  # (B,P)
    margins = 1.0 + logits[:, None, :] - pos_scores[:, :, None]  # (B,P,C): 1 + s_n - s_p
    pair_mask = pos_valid[:, :, None] * negative[:, None, :]  # (B,P,C)
    # original: max(mask * O, 0), i.e. mask * relu(O) for a 0/1 mask
    cost = torch.relu(margins) * pair_mask
    violated = (cost > 0).to(logits.dtype).sum(dim=(1, 2))  # tf.sign of a non-negative tensor
    return (cost.sum(dim=(1, 2)) / (violated + RANK_EPS)).mean()


def ranking_loss_dense(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original's (B, C, C) formulation, kept as a reference for tests and small C."""
    positive = labels.clamp(0, 1)
    negative = (-labels).clamp(0, 1)
    mask = positive[:, None, :] * negative[:, :, None]  # (B, neg, pos)
    margins = 1.0 + (logits * negative)[:, :, None] - (logits * positive)[:, None, :]
    cost = torch.relu(mask * margins)
    violated = torch.sign(cost).sum(dim=(1, 2))
    return (cost.sum(dim=(1, 2)) / (violated + RANK_EPS)).mean()


def attention_distribution_loss(att_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft cardinality of the heads' use: for each image, the softmax over heads of every
    positive label's per-head score is summed per head; the loss is the mean squared head load.
    Pushes the positive labels of an image to spread over different heads."""
    share = torch.softmax(att_logits, dim=1)  # (B,T,C): which head each label's score comes from
    load = (share * labels.clamp(0, 1)[:, None, :]).sum(dim=2)  # (B,T)
    return (load**2).mean()


def attention_span_loss(attention_logits: torch.Tensor) -> torch.Tensor:
    """Diversity of the heads: the Frobenius norm, over the whole batch, of the off-diagonal
    cosine similarities between the heads' (pre-softmax) attention logits."""
    # TF1 tf.nn.l2_normalize over the 196 regions
    unit = attention_logits * torch.rsqrt(
        torch.clamp((attention_logits**2).sum(dim=2, keepdim=True), min=1e-12)
    )
    gram = unit @ unit.transpose(1, 2)  # (B,T,T)
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    squared = (off_diagonal**2).sum()
    # original: tf.norm has an undefined (NaN) gradient at 0, e.g. with a single head; the
    # value is the same, the gradient there is taken as 0.
    return torch.sqrt(squared.clamp_min(torch.finfo(squared.dtype).tiny)) * (squared > 0)


def attention_global_loss(
    logits: torch.Tensor, global_logits: torch.Tensor, labels: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """Attended features must score positive labels above, and negative labels below, what the
    global (mean/max pooled) feature scores: sum of max(0, -(s_att - s_global) * y + margin)."""
    return torch.relu(-(logits - global_logits) * labels + margin).sum()


def w2v_diff_loss(init_vecs: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """Squared distance of trainable label vectors from where they started."""
    return ((init_vecs - vecs) ** 2).sum()


def weighted_total(cfg, terms: dict) -> torch.Tensor:
    """The original's total: rank + the weighted attention terms (+ l2 when switched on)."""
    total = (
        terms["rank"]
        + cfg.lamb_att_dist * terms["att_dist"]
        + cfg.lamb_att_global * terms["att_global"]
        + cfg.lamb_att_span * terms["att_span"]
        + cfg.lamb_w2v_diff * terms["w2v_diff"]
    )
    if cfg.l2_regularizer and cfg.conv:
        total = total + terms["l2"]
    return total


def lesa_losses(model: "LESA", out: "LESAOutput", labels: torch.Tensor, max_positives: int | None = None,
                world_size: int = 1) -> dict[str, torch.Tensor]:
    """Every loss term of the original and the weighted total (keys: total, rank, att_dist,
    att_span, att_global, w2v_diff, l2). ``max_positives``: see :func:`ranking_loss`.

    ``world_size > 1`` (data-parallel training, ``lesa.distributed``): ``out``/``labels`` are this
    process's share of a global batch. The values returned are the global batch's (the same on
    every rank), and ``total``'s gradient, averaged over the ranks as DDP does, is the gradient of
    the global batch's loss. With B the global batch, b the rank's images and N ranks, rank r
    minimises L_r with mean_r grad L_r = grad L:

        rank, att_dist   (means over images):  N * (sum over the rank's images) / B
        att_global       (a sum over images):  N * the rank's sum
        att_span = sqrt(S), S = sum_r s_r (one Frobenius norm over the whole batch):
                         N * sqrt(s_r + stop_gradient(S - s_r)), whose gradient is sqrt'(S) ds_r
        w2v_diff, l2     (parameters only, equal on every rank): unchanged

    B and S come from one all-reduce of the detached pieces.
    """
    labels = torch.as_tensor(labels, dtype=out.logits.dtype, device=out.logits.device)
    if labels.shape != out.logits.shape:
        raise ShapeError(
            f"labels have shape {tuple(labels.shape)} but the model scores {tuple(out.logits.shape)} "
            "(batch, seen labels): the label columns must match the seen label vectors"
        )
    cfg = model.config
    terms = {
        "rank": ranking_loss(out.logits, labels, max_positives),
        "att_dist": attention_distribution_loss(out.att_logits, labels),
        "att_span": attention_span_loss(out.attention_logits),
        "att_global": attention_global_loss(out.logits, out.f_global @ out.classifiers.t(), labels),
        "w2v_diff": w2v_diff_loss(model.init_vecs, model.seen_vecs()),
        "l2": model.l2_penalty(),
    }
    if world_size == 1:
        return {"total": weighted_total(cfg, terms), **terms}
    import torch.distributed as dist

    b = labels.shape[0]
    zero = out.logits.sum() * 0  # keeps the graph (DDP needs every parameter's gradient)
    rank_sum = terms["rank"] * b if b else zero
    dist_sum = terms["att_dist"] * b if b else zero
    span_sq = terms["att_span"] ** 2  # s_r
    # (the image count is filled on the device: copying a Python number to a GPU waits for its queue)
    count = torch.full((), float(b), dtype=rank_sum.dtype, device=rank_sum.device)
    pieces = torch.stack([count, rank_sum, dist_sum, terms["att_global"], span_sq]).detach()
    dist.all_reduce(pieces)
    B, rank_total, dist_total, glob_total, span_total = pieces.unbind()
    s = span_sq + (span_total - span_sq).detach()  # S, with the gradient of this rank's s_r only
    span_share = torch.sqrt(s.clamp_min(torch.finfo(s.dtype).tiny)) * (s > 0)  # (guard as above)
    local = weighted_total(cfg, {
        "rank": (world_size / B) * rank_sum, "att_dist": (world_size / B) * dist_sum,
        "att_global": world_size * terms["att_global"], "att_span": world_size * span_share,
        "w2v_diff": terms["w2v_diff"], "l2": terms["l2"]})
    values = {"rank": rank_total / B, "att_dist": dist_total / B, "att_span": torch.sqrt(span_total),
              "att_global": glob_total, "w2v_diff": terms["w2v_diff"].detach(), "l2": terms["l2"].detach()}
    total = weighted_total(cfg, values)
    return {"total": local + (total - local).detach(), **values}
