"""VGG-19 up to conv5_4 + ReLU, the original's feature extractor (TF-slim ``vgg_19``):
images (B, 3, 224, 224) -> features (B, 196, 512), the 14 x 14 map row-major as in TF1's NHWC reshape.

Weights: ``from_tf_slim("vgg_19.ckpt")`` (the original's), or ``from_torchvision()`` (ImageNet
``IMAGENET1K_V1``, its ``(x/255 - mean)/std`` input made from the TF-slim input by an affine map).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from lesa.errors import CheckpointError, ConfigError
from lesa.features.preprocess import RGB_MEAN

# (block, number of 3x3 convs, output channels) of VGG-19
VGG19_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TF_SLIM_URL = "http://download.tensorflow.org/models/vgg_19_2016_08_28.tar.gz"


def conv_names() -> list[str]:
    """TF-slim names of the 16 conv layers in order: ``conv1/conv1_1`` ... ``conv5/conv5_4``."""
    return [f"conv{b}/conv{b}_{j}" for b, n, _ in VGG19_BLOCKS for j in range(1, n + 1)]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (stored in feature files to identify the weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class VGG19Conv54(nn.Module):
    """VGG-19 conv1_1 ... conv5_4 (+ReLU), 4 max-pools. ``features`` has torchvision's layer indices;
    ``input_scale``/``input_shift`` (identity for TF-slim weights) adapt the input to other weights."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for block, n_convs, out_ch in VGG19_BLOCKS:
            for _ in range(n_convs):
                # TF-slim: 3x3 SAME convolutions = padding 1
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if block < 5:  # conv5_4 is taken before pool5
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.register_buffer("input_scale", torch.ones(3))
        self.register_buffer("input_shift", torch.zeros(3))
        self.source = "random"
        self.weights_sha256 = ""

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 224, 224) preprocessed as TF-slim VGG -> features (B, 196, 512)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"VGG19Conv54 expects (B, 3, H, W) images, got {tuple(images.shape)}")
        if self.features[0].weight.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)  # NHWC model: NHWC input
        x = images * self.input_scale[:, None, None].to(images.dtype) \
            + self.input_shift[:, None, None].to(images.dtype)
        fmap = self.features(x)  # (B, 512, 14, 14)
        b, c, h, w = fmap.shape
        # TF1: NHWC map reshaped to (h*w, c) row-major -> permute channels last first
        return fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_tf_tensors(cls, tensors: dict, source: str = "<tensors>") -> "VGG19Conv54":
        """From ``{name: array}`` with TF-slim names (``vgg_19/convK/convK_J/weights`` HWIO)."""
        model = cls()
        for conv, name in zip(model.conv_layers(), conv_names()):
            w_name, b_name = f"vgg_19/{name}/weights", f"vgg_19/{name}/biases"
            for key in (w_name, b_name):
                if key not in tensors:
                    raise CheckpointError(f"{source}: tensor {key!r} is missing; expected the TF-slim "
                                          "model-zoo vgg_19.ckpt (vgg_19_2016_08_28)")
            weight = torch.as_tensor(tensors[w_name], dtype=torch.float32)
            bias = torch.as_tensor(tensors[b_name], dtype=torch.float32)
            expected = (3, 3, conv.in_channels, conv.out_channels)
            if tuple(weight.shape) != expected or tuple(bias.shape) != (conv.out_channels,):
                raise CheckpointError(f"{source}: tensor {w_name!r} has shape {tuple(weight.shape)} "
                                      f"(bias {tuple(bias.shape)}); expected {expected} HWIO")
            with torch.no_grad():
                conv.weight.copy_(weight.permute(3, 2, 0, 1))  # HWIO -> OIHW
                conv.bias.copy_(bias)
        model.source = source
        return model.eval()

    @classmethod
    def from_tf_slim(cls, path: str | os.PathLike) -> "VGG19Conv54":
        """From the TF-slim ``vgg_19.ckpt`` (TF1 V1 or V2 checkpoint, read without TensorFlow)."""
        path = Path(path)
        if not path.exists() and not Path(str(path) + ".index").exists():
            raise CheckpointError(f"{path}: VGG-19 checkpoint not found; download {TF_SLIM_URL} and unpack it "
                                  "into model/ (`mkdir -p model && tar -xzf vgg_19_2016_08_28.tar.gz -C model` gives "
                                  "model/vgg_19.ckpt, where `lesa extract` looks by default), or give its "
                                  "path (`lesa extract --weights`, `lesa tag` / `lesa visualize --vgg`)")
        from lesa.tf_formats.checkpoint import read_tf_checkpoint

        wanted = [f"vgg_19/{n}/{k}" for n in conv_names() for k in ("weights", "biases")]
        tensors = read_tf_checkpoint(path, names=wanted)  # fc layers and extras are not read
        model = cls.from_tf_tensors(tensors, str(path))
        model.source = f"tf_slim:{path.name}"
        model.weights_sha256 = file_sha256(path) if path.is_file() else ""
        return model

    @classmethod
    def from_torchvision(cls, path: str | os.PathLike | None = None) -> "VGG19Conv54":
        """torchvision's ImageNet VGG-19 weights (``path``: a local .pth; else torch's cache/download)."""
        if path is not None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: cannot read torchvision VGG-19 weights ({exc})") from exc
            sha = file_sha256(path)
        else:
            from torchvision.models import VGG19_Weights

            weights = VGG19_Weights.IMAGENET1K_V1
            try:
                state = weights.get_state_dict(progress=True)
            except Exception as exc:  # URLError, HTTPError, OSError when offline
                raise CheckpointError(
                    f"cannot download torchvision's VGG-19 weights from {weights.url} ({exc}); where there "
                    "is no network, download that file elsewhere and put it in torch's cache "
                    "(~/.cache/torch/hub/checkpoints/), or give its path: `lesa extract --backbone "
                    "torchvision --weights PATH`, `lesa tag` / `lesa visualize --torchvision-weights PATH`"
                ) from exc
            sha = Path(weights.url).name.split("-")[-1].split(".")[0]  # torchvision's hash prefix
        model = cls()
        wanted = model.features.state_dict()
        missing = sorted(k for k in wanted if f"features.{k}" not in state)
        if missing:
            raise CheckpointError(f"{path or 'torchvision VGG-19'}: missing {missing[:4]}...; "
                                  "not a torchvision VGG-19 state dict")
        model.features.load_state_dict({k: state[f"features.{k}"] for k in wanted})
        # input: x = pixel - slim_mean; torchvision wants (pixel/255 - mean)/std
        std, mean, slim = map(torch.tensor, (TORCHVISION_STD, TORCHVISION_MEAN, RGB_MEAN))
        model.input_scale.copy_(1.0 / (255.0 * std))
        model.input_shift.copy_((slim / 255.0 - mean) / std)
        model.source = "torchvision:IMAGENET1K_V1"
        model.weights_sha256 = sha
        return model.eval()

