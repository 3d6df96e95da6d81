"""The original's TF1 variables (as its ``tf.train.Saver`` wrote them) <-> a ``LESA`` module.
Anything else (learning rate, ``conv/is_train``, the ``*/RMSProp*`` slots) is returned as extras."""
from __future__ import annotations

import numpy as np
import torch

from lesa.errors import CheckpointError
from lesa.model import LESA, LESAConfig

CONV_W = "conv/conv/weights"  # (2, 2, 512, 512) HWIO
BN = "conv/conv/batch_normalization/"  # {gamma, beta, moving_mean, moving_variance} (512,)
W1 = "attention_layer/w_att_1"  # (513, 512), or (T, 513, 512) with separate W1
W2 = "attention_layer/w_att_2"  # (513, T)
W = "prediction_frac/W"  # (512, 300)
VECS = "vecs"  # (C, 300), only with trainable vectors
TF_NAMES = {  # TF variable -> LESA state_dict key (the model has those its configuration needs)
    CONV_W: "conv.weight", "conv/conv/biases": "conv.bias",  # biases (512,): only without batch-norm
    BN + "gamma": "bn.weight", BN + "beta": "bn.bias",
    BN + "moving_mean": "bn.running_mean", BN + "moving_variance": "bn.running_var",
    W1: "w_att_1", W2: "w_att_2", W: "W", VECS: "vecs",
}


def _hwio_to_oihw(array):
    return np.transpose(array, (3, 2, 0, 1))  # TF1 conv kernels are HWIO; torch wants OIHW


def tf_variables(model: LESA) -> dict[str, tuple[str, object]]:
    """The model's variables: TF name -> (state_dict key, converter from the TF array to torch's layout)."""
    state = model.state_dict()
    return {name: (key, _hwio_to_oihw if name == CONV_W else np.asarray)
            for name, key in TF_NAMES.items() if key in state}


def is_model_variable(name: str) -> bool:
    return name in TF_NAMES


def load_tf_weights(model: LESA, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> dict:
    """Copy TF-named arrays into ``model``; returns the others. CheckpointError lists every misfit."""
    wanted, state = tf_variables(model), model.state_dict()
    missing, mismatched, converted = [], [], {}
    for tf_name, (key, convert) in wanted.items():
        if tf_name not in tensors:
            missing.append(tf_name)
            continue
        array = np.asarray(convert(np.asarray(tensors[tf_name])))
        if tuple(array.shape) != tuple(state[key].shape):
            mismatched.append(f"{tf_name}: checkpoint {tuple(np.shape(tensors[tf_name]))}, "
                              f"model expects {tuple(state[key].shape)} (as {key})")
        converted[key] = array
    unexpected = [n for n in tensors if is_model_variable(n) and n not in wanted]
    if missing or mismatched or unexpected:
        lines = [f"{source} does not fit this LESA model ({model.config}):"]
        lines += [f"  missing: {n}" for n in missing]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        lines += [f"  not used by this configuration: {n}" for n in unexpected]
        lines.append("  (use `lesa import-tf` to infer the configuration from the checkpoint)")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, array in converted.items():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return {n: a for n, a in tensors.items() if n not in wanted}


def load_tf_checkpoint(model: LESA, path) -> dict:
    """Fill ``model`` from the original's TF1 checkpoint; returns the extras (optimizer slots, ...)."""
    from lesa.tf_formats import read_tf_checkpoint

    return load_tf_weights(model, read_tf_checkpoint(path), source=str(path))


def infer_config(shapes: dict[str, tuple], base: LESAConfig | None = None) -> LESAConfig:
    """The configuration implied by a TF checkpoint's ``shapes`` (name -> shape); the loss weights,
    not in a checkpoint, come from ``base`` (default: the paper's)."""
    missing = [n for n in (W1, W2, W) if n not in shapes]
    if missing:
        raise CheckpointError(f"not a LESA checkpoint: it lacks the attention/prediction variables {missing} "
                              f"(found {sorted(shapes)[:8]}...)")
    values = (base or LESAConfig()).to_dict()
    values.update(separate_w1=len(shapes[W1]) == 3, n_attention=int(tuple(shapes[W2])[-1]), conv=CONV_W in shapes,
                  batchnorm=(BN + "gamma") in shapes, trainable_vecs=VECS in shapes)
    return LESAConfig.from_dict(values)


def import_tf_checkpoint(path, seen_vecs=None, unseen_vecs=None, base: LESAConfig | None = None,
                         placeholder_seen: bool = False):
    """``(model, extras)`` from an original TF checkpoint, its configuration inferred.

    The original kept fixed label vectors as graph constants: unless trainable (``vecs``) give
    ``seen_vecs``; missing unseen vectors (and, with ``placeholder_seen``, seen ones: zero-shot
    scoring only) become a zero placeholder row.
    """
    from lesa.tf_formats import list_tf_checkpoint, read_tf_checkpoint

    shapes = {name: info.shape for name, info in list_tf_checkpoint(path).items()}
    config = infer_config(shapes, base)
    dim = shapes[W][1]
    if VECS in shapes:
        if seen_vecs is not None and tuple(np.shape(seen_vecs)) != shapes[VECS]:
            raise CheckpointError(f"{path}: holds {shapes[VECS][0]} trainable seen vectors but "
                                  f"{np.shape(seen_vecs)[0]} were given; is it the right configuration?")
    elif seen_vecs is None:
        if not placeholder_seen:
            raise CheckpointError(f"{path}: the label vectors were constants of the original graph and are "
                                  "not in the checkpoint; pass the experiment's seen_vecs (`lesa import-tf` "
                                  "reads them with --config CONFIG --data-dir DIR, or --vectors PKL)")
        seen_vecs = np.zeros((1, dim), np.float32)
    tensors = read_tf_checkpoint(path)
    if seen_vecs is None:
        seen_vecs = tensors[VECS]
    if unseen_vecs is None:
        unseen_vecs = np.zeros((1, dim), np.float32)
    if np.shape(seen_vecs)[1] != dim:
        raise CheckpointError(f"{path}: W projects {dim}-d word vectors, the given vectors are "
                              f"{np.shape(seen_vecs)[1]}-d")
    model = LESA(seen_vecs, unseen_vecs, config)
    return model, load_tf_weights(model, tensors, source=str(path))
