"""Native checkpoints (``.pt``): everything needed to use a model or to resume its training.

Contents (a dict saved with ``torch.save``; loaded with ``weights_only=True``, so no code runs)::

    format            "lesa-checkpoint", format_version 1
    model_config      LESAConfig as a dict
    model_state       the model's state_dict (weights, batch-norm statistics, label vectors)
    config            the experiment configuration (lesa.experiment.Config.to_dict()), optional
    optimizer_state   TFRMSprop state_dict, optional
    schedule_state    AdaptiveLR state_dict, optional
    train_state       iteration, data position, best metric, log rows, ... optional
    rng_state         python / numpy / torch RNG states, optional
    label_names       {"seen": [...], "unseen": [...]}, optional

Written atomically (``lesa.files.atomic_write``): a crash leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesa.errors import CheckpointError
from lesa.files import atomic_write
from lesa.model import LESA, LESAConfig
from lesa.tf_weights import import_tf_checkpoint

FORMAT = "lesa-checkpoint"
FORMAT_VERSION = 1


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return _to_safe(state)


def set_rng_state(state: dict) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_safe(value):
    """Convert numpy arrays to tensors and tuples to lists so ``weights_only`` loading accepts them."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _to_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_safe(v) for v in value]
    return value


def save_checkpoint(path: str | os.PathLike, model, *, config=None, optimizer=None, schedule=None,
                    train_state: dict | None = None, label_names: dict | None = None,
                    include_rng: bool = True) -> Path:
    """Write a native checkpoint atomically (see the module docstring for the contents)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": asdict(model.config),
                               "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if config is not None:
        payload["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if optimizer is not None:
        payload["optimizer_state"] = optimizer.state_dict()
    if schedule is not None:
        payload["schedule_state"] = _to_safe(schedule.state_dict())
    if train_state is not None:
        payload["train_state"] = _to_safe(train_state)
    if label_names is not None:
        payload["label_names"] = {k: [str(x) for x in v] for k, v in label_names.items()}
    if include_rng:
        payload["rng_state"] = rng_state()
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a native checkpoint; ``CheckpointError`` names the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    _check_zip_crcs(path)
    try:
        with warnings.catch_warnings():  # torch's note on odd pickle protocols: damaged bytes, reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable lesa checkpoint ({type(exc).__name__}: {str(exc)[:200]}); the file "
            "is truncated or corrupted, or it is a TF checkpoint (pass the model.ckpt prefix instead)"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lesa checkpoint (no 'format: {FORMAT}' entry)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')} is not "
                              f"supported by this lesa (expects {FORMAT_VERSION}); upgrade lesa")
    for key in ("model_config", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: entry {key!r} is missing or damaged")
    state = payload["model_state"]
    for key in ("init_vecs", "unseen_vecs", "W"):
        if key not in state or not torch.is_tensor(state[key]) or state[key].ndim != 2:
            raise CheckpointError(f"{path}: model tensor {key!r} is missing or not a matrix")
    for key, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: model tensor {key!r} contains NaN or inf values")
    return payload


def _check_zip_crcs(path: Path) -> None:
    """torch.load does not verify the CRC-32 of the zip records it reads: a flipped byte in a
    tensor would load as a silently different weight. Check every record first."""
    if not zipfile.is_zipfile(path):
        return  # not a zip (truncated, legacy format, or not a checkpoint): torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # damaged headers: BadZipFile, zlib errors, EOFError, ...
        raise CheckpointError(f"{path}: the checkpoint archive is damaged ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); use another copy or an earlier checkpoint") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: record {bad!r} fails its CRC-32 check; the file is corrupted — "
                              "use another copy or an earlier checkpoint")


def tf_prefix(path: str | os.PathLike) -> str | None:
    """The prefix of an original TF checkpoint (``model.ckpt``, whichever of its files is named),
    or None for a native ``.pt`` checkpoint."""
    p = str(path)
    if p.endswith(".pt"):
        return None
    p = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", p)
    if p.endswith(".ckpt") or ".ckpt" in Path(p).name or Path(p + ".index").exists():
        return p
    return None


@dataclass
class LoadedModel:
    """A LESA model and what its checkpoint says about its labels (names empty when it has none)."""

    model: Any
    source: str
    seen_names: list = field(default_factory=list)
    unseen_names: list = field(default_factory=list)

    @property
    def dim_w2v(self) -> int:
        return int(self.model.W.shape[1])


def load_model(path: str | os.PathLike, seen_vecs=None, unseen_vecs=None, model_config=None,
               device: str | torch.device = "cpu", placeholder_seen: bool = False) -> LoadedModel:
    """The one way from a checkpoint to a model: a native ``.pt`` or the original's TF checkpoint.

    ``unseen_vecs`` replace the stored unseen labels; a native checkpoint's ``seen_vecs`` must
    match its count. TF checkpoints: see ``lesa.tf_weights.import_tf_checkpoint`` (``model_config``
    gives the loss weights)."""
    prefix = tf_prefix(path)
    if prefix is not None:
        model, _ = import_tf_checkpoint(prefix, seen_vecs, unseen_vecs, base=model_config,
                                        placeholder_seen=placeholder_seen)
        return LoadedModel(model.to(device), str(path))
    payload = load_checkpoint(path)
    try:
        config = LESAConfig.from_dict(dict(payload["model_config"]))
    except Exception as exc:
        raise CheckpointError(f"{path}: model_config is invalid ({exc})") from exc
    state = payload["model_state"]
    n_seen = state["init_vecs"].shape[0]
    if seen_vecs is not None and len(seen_vecs) != n_seen:
        raise CheckpointError(f"{path}: the model was trained on {n_seen} seen labels but {len(seen_vecs)} "
                              "were given; use the configuration the model was trained with")
    model = LESA(state["init_vecs"].numpy(), state["unseen_vecs"].numpy(), config)
    load_model_state(model, state, str(path))
    if unseen_vecs is not None:
        model.set_unseen_vecs(unseen_vecs)
    names = payload.get("label_names") or {}
    seen = [str(x) for x in names.get("seen", [])]
    unseen = [str(x) for x in names.get("unseen", [])] if unseen_vecs is None else []
    return LoadedModel(model.to(device), str(path), seen if len(seen) == model.n_seen else [],
                       unseen if len(unseen) == model.n_unseen else [])


def load_model_state(model, state: dict, where: str) -> None:
    """Load ``state`` into ``model`` (label vectors may differ in count: they are replaced)."""
    model = getattr(model, "module", model)
    if "unseen_vecs" in state and state["unseen_vecs"].shape != model.unseen_vecs.shape:
        model.unseen_vecs = state["unseen_vecs"].clone().to(model.init_vecs.device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the weights do not fit this model ({str(exc)[:300]})") from exc
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not fit this model (missing {missing}, "
                              f"unexpected {unexpected}); was it trained with other model settings?")
