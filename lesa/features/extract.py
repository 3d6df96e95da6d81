"""Feature extraction: an image list -> VGG-19 conv5_4 features in one HDF5 split file (or shard).

Workers read and decode (TF1's pixels) the images and hand over their crop windows (``pack_crops``;
``decoder="gpu"``: the files, for nvjpeg); ``model_input`` -> ``VGG19Conv54`` -> ``FeatureWriter``.
An unusable image is left out and logged in ``OUT.failed.tsv``; ``resume`` continues ``OUT.partial``
into an uninterrupted run's file; rank r of w writes positions ``[n*r//w, n*(r+1)//w)`` to a shard.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lesa.datasets.h5 import FeatureWriter, open_features
from lesa.device import channels_last_by_default, check_precision, pick_device, precision_context
from lesa.errors import ConfigError, DataError, ImageError
from lesa.features.jpeg import MAX_PIXELS, ImageDecodeError, decode_jpeg, image_format
from lesa.features.preprocess import pack_crops, vgg_preprocess_batch, vgg_preprocess_packed
from lesa.features.vgg import VGG19Conv54
from lesa.files import atomic_write_text
from lesa.layout import VGG_WEIGHTS

DECODERS = ("exact", "gpu")
BACKBONE = "vgg19_conv54"
MISSING_WARNING = 0.1  # warn at the start when more of the listed images are missing


@dataclass
class ExtractionSource:
    """What to extract: the images in order, how to label them, what was skipped beforehand."""

    dataset: str
    split: str
    img_ids: list[str]
    paths: list[Path]
    label_dims: dict[str, int]
    labels_for: Callable[[np.ndarray], dict[str, np.ndarray]]  # positions (B,) -> {name: (B, D)}
    label_names: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> image ids
    images_dir: Path | None = None  # where the images were looked for

    def __len__(self) -> int:
        return len(self.img_ids)


def nus_wide_source(split) -> ExtractionSource:
    """From ``lesa.datasets.nus_wide.load_nus_wide_split(...)``."""
    labels = split.labels
    return ExtractionSource("nus_wide", split.split, split.img_ids, split.paths,
                            {k: v.shape[1] for k, v in labels.items()},
                            lambda pos: {k: v[pos] for k, v in labels.items()},
                            split.label_names, split.skipped, split.images_dir)


def openimages_source(split) -> ExtractionSource:
    """From ``lesa.datasets.openimages.load_openimages_split(...)``."""
    labels = split.labels
    return ExtractionSource("openimages", split.split, split.img_ids, split.paths, dict(labels.label_dims),
                            lambda pos: {k: labels.dense(k, pos) for k in labels.label_dims},
                            split.label_names, split.skipped, split.images_dir)


@dataclass
class ExtractOptions:
    """How to extract (the flags of ``lesa extract``)."""

    device: str = "cpu"                 # cpu, cuda, cuda:N or auto
    batch_size: int = 64
    workers: int = 2                    # processes reading (and decoding) images; 0: this one
    precision: str = "fp32"             # fp32 (the original's), tf32, bf16
    decoder: str = "exact"              # exact: TF1's pixels, in the workers; gpu: nvjpeg
    dtype: str = "float32"              # of the stored features: float32 or float16
    channels_last: bool | None = None   # NHWC convolutions; None: channels_last_by_default
    resume: bool = False
    overwrite: bool = False
    rank: int = 0
    world_size: int = 1
    max_pixels: int = MAX_PIXELS        # larger images are refused (decompression bombs)
    progress: bool = True

    def check(self) -> torch.device:
        """The device to run on, once every setting is valid."""
        if self.decoder not in DECODERS:
            raise ConfigError(f"--decoder {self.decoder!r} is not one of {DECODERS}")
        if self.batch_size < 1 or self.workers < 0:
            raise ConfigError(f"--batch-size {self.batch_size} / --workers {self.workers}: need a batch "
                              "of at least 1 and workers >= 0")
        check_precision(self.precision, what="--precision")
        device = pick_device(self.device)
        if self.decoder == "gpu" and device.type != "cuda":
            raise ConfigError("--decoder gpu needs --device cuda; use --decoder exact on the CPU")
        return device


@dataclass
class ExtractionSummary:
    output: Path
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # before extraction, by reason
    failed: dict[str, int] = field(default_factory=dict)   # images that could not be used, by reason
    seconds: float = 0.0
    images: int = 0                                        # images this run went through
    resumed_from: int = 0
    # seconds spent waiting for decoded images (add --workers), in the model, in the writer (the disk)
    waits: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        def counts(d):
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"
        waited = ", ".join(f"{v:.1f} s {k}" for k, v in self.waits.items())
        return [f"wrote {self.written} images to {self.output}"
                + (f" (resumed after {self.resumed_from})" if self.resumed_from else ""),
                f"skipped before extraction: {counts(self.skipped)}",
                f"failed to decode: {counts(self.failed)}",
                f"{self.images_per_second:.1f} images/s over {self.seconds:.1f} s" + (f" ({waited})" if waited else "")]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice of ``n`` images that ``rank`` of ``world_size`` extracts."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} --world-size {world_size}: need 0 <= rank < world size")
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_path(output: str | Path, rank: int, world_size: int) -> Path:
    """``out.h5`` -> ``out.shard-00001-of-00004.h5`` (``out.h5`` itself for one rank)."""
    output = Path(output)
    name = f"{output.stem}.shard-{rank:05d}-of-{world_size:05d}{output.suffix}"
    return output if world_size == 1 else output.with_name(name)


def failed_log_path(output: str | Path) -> Path:
    return Path(output).with_name(Path(output).name + ".failed.tsv")


# -- 1. images -> batches (in the DataLoader's worker processes) --------------------------------
@dataclass
class Batch:
    """What the workers hand over: ``pack_crops``'s ``pixels`` and ``plan`` (decoder="exact"), or
    the files' bytes in ``pixels``, their ``sizes`` and which ``nvjpeg`` may take (decoder="gpu")."""

    positions: list[int]                  # in the image list, of the images in ``pixels``
    failures: list[tuple[int, str, str]]  # (position, reason, message) of images left out
    pixels: torch.Tensor                  # (n,) uint8
    plan: dict[str, torch.Tensor] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    nvjpeg: list[bool] = field(default_factory=list)

    def pin_memory(self) -> "Batch":  # called by the DataLoader (pin_memory=True) for a GPU
        return replace(self, pixels=self.pixels.pin_memory(), plan={k: v.pin_memory() for k, v in self.plan.items()})


def _read_image(path: Path, decode: bool, max_pixels: int):
    """The file's bytes or (``decode``) its uint8 (H, W, 3) pixels; an ``ImageError`` with a reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})", "unreadable") from None
    return decode_jpeg(data, str(path), max_pixels) if decode else data


def _collate(positions, paths: Sequence[Path], decode: bool, max_pixels: int) -> Batch:
    """The ``Batch`` of the images at ``positions``, read (and decoded) in a worker process."""
    good, failures = [], []
    for pos in positions:
        try:
            good.append((pos, _read_image(paths[pos], decode, max_pixels)))
        except ImageError as exc:
            failures.append((pos, getattr(exc, "reason", "corrupt"), str(exc)))
    positions = [pos for pos, _ in good]
    if good and isinstance(good[0][1], bytes):  # decoder="gpu"
        files = [data for _, data in good]
        return Batch(positions, failures, torch.frombuffer(bytearray(b"".join(files)), dtype=torch.uint8),
                     sizes=[len(data) for data in files], nvjpeg=[_nvjpeg_can_take(data, max_pixels) for data in files])
    return Batch(positions, failures, *pack_crops([image for _, image in good]))


def image_loader(paths: Sequence[Path], positions: Sequence[int], decoder: str, batch_size: int, workers: int,
                 device: torch.device, max_pixels: int = MAX_PIXELS) -> torch.utils.data.DataLoader:
    """``Batch``es of ``paths[positions]`` in order, made by ``workers`` processes (page-locked for CUDA)."""
    return torch.utils.data.DataLoader(
        positions, batch_size=batch_size, num_workers=workers, pin_memory=torch.device(device).type == "cuda",
        collate_fn=partial(_collate, paths=paths, decode=decoder == "exact", max_pixels=max_pixels))


def _nvjpeg_can_take(data: bytes, max_pixels: int) -> bool:
    """Complete RGB JPEGs within the size limit; the exact decoder takes (or rejects) the rest."""
    import simplejpeg

    if image_format(data) != "jpeg" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return False
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return False
    return colorspace not in ("CMYK", "YCCK") and 0 < height * width <= max_pixels


# -- 2. batch -> model input ---------------------------------------------------------------------
def model_input(batch: Batch, device: torch.device, max_pixels: int = MAX_PIXELS):
    """``(positions, images (B, 3, 224, 224) float32 on device, failures)`` of a batch."""
    if not batch.sizes:  # decoded in the workers
        return batch.positions, vgg_preprocess_packed(batch.pixels, batch.plan, device), batch.failures
    positions, images, failures = gpu_decode(batch, device, max_pixels)
    return positions, vgg_preprocess_batch(images, device), failures


def gpu_decode(batch: Batch, device: torch.device, max_pixels: int = MAX_PIXELS):
    """decoder="gpu": ``(positions, uint8 (H, W, 3) images on device, failures)``; nvjpeg where it
    may, the exact decoder for the rest and for what nvjpeg refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg as nvjpeg

    files = batch.pixels.split(batch.sizes)
    take = [i for i, ok in enumerate(batch.nvjpeg) if ok]
    decoded = {}
    with suppress(RuntimeError), warnings.catch_warnings():  # torchvision 0.29 flags its codecs as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        if take:  # what nvjpeg refuses (RuntimeError) goes to the exact decoder
            decoded = dict(zip(take, nvjpeg([files[i] for i in take], mode=ImageReadMode.RGB, device=device)))
    positions, images, failures = [], [], list(batch.failures)
    for i, pos in enumerate(batch.positions):
        try:
            image = decoded[i].permute(1, 2, 0) if i in decoded else \
                torch.from_numpy(decode_jpeg(files[i].numpy().tobytes(), f"image {pos}", max_pixels)).to(device)
        except ImageError as exc:
            failures.append((pos, getattr(exc, "reason", "corrupt"), str(exc)))
            continue
        positions.append(pos)
        images.append(image)
    return positions, images, failures


# -- 3. + 4. the run ------------------------------------------------------------------------------
def extract_features(source: ExtractionSource, output: str | Path, model: VGG19Conv54,
                     options: ExtractOptions | None = None, *, log: Callable[[str], None] | None = None,
                     **settings) -> ExtractionSummary:
    """Extract this rank's slice of ``source`` into ``output``. ``settings`` override fields of
    ``options``; ``log`` gets one line per image left out."""
    options = replace(options or ExtractOptions(), **settings)
    device = options.check()
    start, stop = shard_range(len(source), options.rank, options.world_size)
    out = shard_path(output, options.rank, options.world_size)
    if options.resume and out.exists() and not options.overwrite:
        return _summary_of_complete(out)
    _warn_if_many_missing(source)
    channels_last = channels_last_by_default(device, options.precision) if options.channels_last is None \
        else options.channels_last
    model = model.to(device).eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    summary = ExtractionSummary(out, skipped={k: len(v) for k, v in sorted(source.skipped.items())}, waits=Counter())
    attrs = {"backbone": BACKBONE, "weights": model.source, "weights_sha256": model.weights_sha256,
             "decoder": options.decoder, "precision": options.precision,
             "skipped_before_extraction": json.dumps(summary.skipped, sort_keys=True)}
    if options.world_size > 1:
        attrs.update(shard_rank=options.rank, shard_world_size=options.world_size, shard_start=start, shard_stop=stop)
    t0 = time.perf_counter()
    with FeatureWriter(out, source.dataset, source.split, source.label_dims, options.dtype, attrs,
                       source.label_names or None, options.resume, options.overwrite) as writer:
        summary.resumed_from = writer.n_written
        begin = _resume_position(source.img_ids, start, stop, writer.done_ids, writer.partial)
        failed = _restart_failed_log(failed_log_path(out), begin if options.resume else None)
        loader = image_loader(source.paths, range(begin, stop), options.decoder, options.batch_size,
                              options.workers, device, options.max_pixels)
        feature_dtype = getattr(torch, options.dtype)
        with open(failed_log_path(out), "a", encoding="utf-8") as failed_log, \
                tqdm(total=stop - start, initial=begin - start, desc=f"extract {out.name}", unit="img",
                     disable=not options.progress, dynamic_ncols=True) as bar, \
                torch.no_grad(), precision_context(options.precision, device):
            for batch in _batches(loader, out, summary.waits):
                with _timed(summary.waits, "in the model"):
                    positions, images, failures = model_input(batch, device, options.max_pixels)
                    features = model(images).to(feature_dtype).cpu().numpy() if positions else None
                for pos, reason, message in sorted(failures):
                    failed[reason] += 1
                    failed_log.write(f"{pos}\t{source.img_ids[pos]}\t{reason}\t{' '.join(message.split())}\n")
                    if log:
                        log(f"skipped {source.img_ids[pos]}: {message}")
                failed_log.flush()
                if positions:
                    with _timed(summary.waits, "in the writer"):
                        writer.append([source.img_ids[p] for p in positions], features,
                                      source.labels_for(np.array(positions)))
                summary.images += len(positions) + len(failures)
                bar.update(len(positions) + len(failures))
        writer.set_attrs(failed=json.dumps(dict(sorted(failed.items())), sort_keys=True))
        summary.written, summary.failed = writer.n_written, dict(failed)
        summary.seconds = time.perf_counter() - t0
        summary.waits = {k: round(v, 3) for k, v in summary.waits.items()}
        writer.finish()
    return summary


def _warn_if_many_missing(source: ExtractionSource) -> None:
    """Say at the start (not only in the summary) when many images are missing."""
    missing = len(source.skipped.get("missing", ()))
    listed = len(source) + sum(len(ids) for ids in source.skipped.values())
    if missing > MISSING_WARNING * listed:
        print(f"warning: {missing} of the {listed} images listed for {source.dataset} {source.split} are not "
              f"in {source.images_dir}; if that is the wrong folder, stop and pass the right one with "
              "--images-dir", file=sys.stderr)


def _resume_position(ids: Sequence[str], start: int, stop: int, done_ids: Sequence[str], where) -> int:
    """The position after the last image written (a subsequence of ``ids[start:stop]``: no failed ones)."""
    pos = start
    for done in done_ids:
        while pos < stop and ids[pos] != done:
            pos += 1
        if pos == stop:
            raise DataError(f"{where}: the images already in the file are not in this image list (another "
                            "dataset root or split?); run without --resume to start over")
        pos += 1
    return pos


def _restart_failed_log(path: Path, keep_before: int | None) -> Counter:
    """Restart the failed-image log, keeping (resumed run) the lines before ``keep_before``, in one
    rename so a crash never loses them; returns their counts by reason."""
    kept = []
    if keep_before is not None and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            pos = line.split("\t", 1)[0]
            if pos.isdigit() and int(pos) < keep_before and line.count("\t") >= 3:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return Counter(line.split("\t")[2] for line in kept)


def _batches(loader, out: Path, waits: Counter):
    """The loader's batches, timed; running out of /dev/shm (small in containers) says what to do."""
    batches = iter(loader)
    while True:
        with _timed(waits, "waiting for decoded images"):
            try:
                batch = next(batches, None)
            except RuntimeError as exc:
                if "No space left on device" not in str(exc) and "Bus error" not in str(exc):
                    raise
                detail = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), "")
                raise DataError(f"{out}: the image-reading workers ran out of shared memory (/dev/shm) "
                                f"({detail[:160]}); give the machine more (docker run --shm-size=8g) or lower "
                                "--batch-size / --workers, then rerun with --resume") from exc
        if batch is None:
            return
        yield batch


@contextmanager
def _timed(waits: Counter, what: str):
    tic = time.perf_counter()
    try:
        yield
    finally:
        waits[what] += time.perf_counter() - tic


def _summary_of_complete(path: Path) -> ExtractionSummary:
    """--resume of a finished file: nothing to do; what it holds."""
    with open_features(path) as split:
        return ExtractionSummary(path, len(split), json.loads(split.attrs.get("skipped_before_extraction", "{}")),
                                 json.loads(split.attrs.get("failed", "{}")), resumed_from=len(split))


def merge_shards(paths, output: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Join the shard files (list or glob) into the file that one rank writes."""
    with open_features(paths) as split:
        first = split.files[0].attrs
        attrs = {k: v for k, v in split.attrs.items() if k not in (
            "shard_world_size", "dataset", "split", "feature_dtype", "complete", "failed", "lesa_version")}
        failed = sum((Counter(json.loads(f.attrs.get("failed", "{}"))) for f in split.files), Counter())
        ids = split.img_ids
        with FeatureWriter(output, first["dataset"], first["split"], split.label_dims, str(split.feature_dtype),
                           attrs, split.label_names or None, overwrite=overwrite) as writer, \
                tqdm(total=len(split), desc=f"merge {Path(output).name}", unit="img", disable=not progress) as bar:
            for a in range(0, len(split), 1024):
                rows = np.arange(a, min(a + 1024, len(split)))
                writer.append(ids[a:a + len(rows)], *split.read(rows, dtype=None))
                bar.update(len(rows))
            writer.set_attrs(failed=json.dumps(dict(sorted(failed.items())), sort_keys=True))
            return writer.finish()


def build_model(backbone: str, weights: str | None = None, seed: int = 0) -> VGG19Conv54:
    """``tf_slim`` (vgg_19.ckpt, default model/vgg_19.ckpt), ``torchvision`` (optional .pth) or
    ``random`` (seeded, for tests and benchmarks)."""
    if backbone == "tf_slim":
        return VGG19Conv54.from_tf_slim(weights or VGG_WEIGHTS)
    if backbone == "torchvision":
        return VGG19Conv54.from_torchvision(weights)
    if backbone == "random":
        torch.manual_seed(seed)
        model = VGG19Conv54().eval()
        model.source = f"random:seed={seed}"
        model.weights_sha256 = f"random-seed-{seed}"
        return model
    raise ConfigError(f"--backbone {backbone!r} is not one of tf_slim, torchvision, random")
