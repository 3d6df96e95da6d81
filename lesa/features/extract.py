"""Extraction engine: an image list -> VGG-19 conv5_4 features in one HDF5 split file (or shard).

    image files --(worker processes: read + decode)--> uint8 images
                --(device: vgg_preprocess_batch, VGG19Conv54 at --precision)--> (B, 196, 512)
                --> FeatureWriter (lesa.datasets.h5), labels from the dataset source

- Order is preserved (the file rows follow the image list); a bad image is skipped and logged with
  its reason, never its batch; a summary counts written / skipped (before extraction: missing,
  placeholder, small) / failed (decode errors) by reason.
- Crash safety: every batch is durable once written; ``resume=True`` continues ``<out>.partial``
  and the final file equals an uninterrupted run's. Failed images are logged, one per line, in
  ``<out>.failed.tsv`` (position, image id, reason, message).
- Sharding: rank ``r`` of ``world_size`` takes the contiguous slice
  ``[n*r//world_size, n*(r+1)//world_size)`` of the image list and writes
  ``<stem>.shard-RRRRR-of-WWWWW.h5``; ``merge_shards`` joins them into the file one rank would write.
"""
from __future__ import annotations

import functools
import json
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lesa.files import atomic_write_text
from lesa.datasets.h5 import FeatureWriter, fletcher32_of_records, partial_path, read_split_files, record_chunks
from lesa.datasets.read_workers import shared_bytes, shared_memory_error
from lesa.errors import ConfigError, DataError, ImageError
from lesa.features.jpeg import MAX_PIXELS, decode_jpeg, image_format
from lesa.features.preprocess import pack_crops, vgg_preprocess_batch, vgg_preprocess_packed
from lesa.device import channels_last_by_default, precision_context
from lesa.features.vgg import VGG19Conv54

DECODERS = ("exact", "gpu")
BACKBONE = "vgg19_conv54"


@dataclass
class ExtractionSource:
    """What to extract: images in order, how to label them, and what was skipped beforehand."""

    dataset: str
    split: str
    img_ids: list[str]
    paths: list[Path]
    label_dims: dict[str, int]
    labels_for: Callable[[np.ndarray], dict[str, np.ndarray]]  # positions (B,) -> {name: (B, D)}
    label_names: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> image ids

    def __len__(self) -> int:
        return len(self.img_ids)


def nus_wide_source(split) -> ExtractionSource:
    """From ``lesa.datasets.nus_wide.load_nus_wide_split(...)``."""
    labels = split.labels
    return ExtractionSource("nus_wide", split.split, split.img_ids, split.paths,
                            {k: v.shape[1] for k, v in labels.items()},
                            lambda pos: {k: v[pos] for k, v in labels.items()},
                            split.label_names, split.skipped)


def openimages_source(split) -> ExtractionSource:
    """From ``lesa.datasets.openimages.load_openimages_split(...)``."""
    labels = split.labels
    return ExtractionSource("openimages", split.split, split.img_ids, split.paths, dict(labels.label_dims),
                            lambda pos: {k: labels.dense(k, pos) for k in labels.label_dims},
                            split.label_names, split.skipped)


@dataclass
class ExtractionSummary:
    output: Path
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # before extraction, by reason
    failed: dict[str, int] = field(default_factory=dict)   # decode errors, by reason
    seconds: float = 0.0
    images_per_second: float = 0.0
    resumed_from: int = 0
    # seconds the main loop waited: for decoded images (add --workers), for the device's results
    # (the model is the limit), for the HDF5 writer (the disk is the limit)
    waits: dict[str, float] = field(default_factory=dict)
    # images/s after the first batch reached the writer (worker start-up, cuDNN and nvjpeg set-up
    # excluded): what a long extraction runs at
    steady_images_per_second: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"written": self.written, "skipped": self.skipped, "failed": self.failed},
                          sort_keys=True)

    def lines(self) -> list[str]:
        def fmt(d):
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"
        return [f"wrote {self.written} images to {self.output}"
                + (f" (resumed after {self.resumed_from})" if self.resumed_from else ""),
                f"skipped before extraction: {fmt(self.skipped)}",
                f"failed to decode: {fmt(self.failed)}",
                f"{self.images_per_second:.1f} images/s over {self.seconds:.1f} s"
                + (f", {self.steady_images_per_second:.1f} after start-up" if self.steady_images_per_second else "")
                + (" (waited " + ", ".join(f"{v:.1f} s for {k}" for k, v in self.waits.items()) + ")"
                   if self.waits else "")]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice of ``n`` items that ``rank`` of ``world_size`` extracts."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} --world-size {world_size}: need 0 <= rank < world size")
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_path(output: str | Path, rank: int, world_size: int) -> Path:
    """``out.h5`` -> ``out.shard-00001-of-00004.h5`` (the output itself when world_size == 1)."""
    output = Path(output)
    if world_size == 1:
        return output
    return output.with_name(f"{output.stem}.shard-{rank:05d}-of-{world_size:05d}{output.suffix}")


def failed_log_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".failed.tsv")


# -- reading images in worker processes --------------------------------------------------------
class _ImageReader(torch.utils.data.Dataset):
    """Item k -> (position, uint8 image (H, W, 3) array or the raw bytes or None, reason, message)."""

    def __init__(self, paths: Sequence[Path], positions: Sequence[int], decode: bool, max_pixels: int):
        self.paths, self.positions, self.decode, self.max_pixels = paths, positions, decode, max_pixels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        pos = self.positions[k]
        path = self.paths[pos]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return pos, None, "unreadable", f"{path}: cannot read ({exc.strerror or exc})"
        if not self.decode:
            return pos, data, "", ""
        try:
            image = decode_jpeg(data, str(path), self.max_pixels)
        except ImageError as exc:
            return pos, None, getattr(exc, "reason", "corrupt"), str(exc)
        return pos, image, "", ""


def _collate(items, max_pixels: int = MAX_PIXELS) -> dict:
    """Runs in the worker: one batch -> {"positions", "failures" [(position, reason, message)], and
    decoder=exact: "flat" (packed uint8 pixels of the windows the crop reads), "sizes" (of those
    windows), "plan" (their sampling plan); decoder=gpu: "flat" (the files' bytes one after the
    other), "sizes" (their lengths), "nvjpeg" (which of them nvjpeg may take)}."""
    failures = [(pos, reason, message) for pos, image, reason, message in items if image is None]
    good = [(pos, image) for pos, image, _, _ in items if image is not None]
    batch = {"failures": failures, "positions": [], "flat": None, "sizes": [], "plan": None, "nvjpeg": None}
    if good and isinstance(good[0][1], bytes):  # decoder=gpu: the main process only slices
        blobs = [data for _, data in good]
        batch["positions"], batch["sizes"] = [pos for pos, _ in good], [len(data) for data in blobs]
        batch["flat"] = shared_bytes(sum(batch["sizes"]))
        batch["flat"].numpy()[:] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        batch["nvjpeg"] = [_gpu_decodable(data, max_pixels) for data in blobs]
        return batch
    if good:  # (every decoded image fits the crop: its short side is resized to 256)
        batch["positions"] = [pos for pos, _ in good]
        batch["flat"], batch["sizes"], batch["plan"] = pack_crops([im for _, im in good], shared_bytes)
    return batch


def image_loader(paths: Sequence[Path], positions: Sequence[int], decoder: str, batch_size: int, workers: int,
                 device: torch.device, max_pixels: int = MAX_PIXELS) -> torch.utils.data.DataLoader:
    """Batches of ``_collate`` dicts for ``paths[positions]``, read (and with decoder="exact"
    decoded and packed) in ``workers`` processes; page-locked for a CUDA ``device``. Each worker
    keeps two batches in flight (shared, then page-locked memory: ~95 MB per batch of 256 photos),
    enough to keep every worker busy while the model runs."""
    reader = _ImageReader(paths, positions, decode=decoder == "exact", max_pixels=max_pixels)
    return torch.utils.data.DataLoader(
        reader, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=functools.partial(_collate, max_pixels=max_pixels),
        pin_memory=torch.device(device).type == "cuda", prefetch_factor=2 if workers else None,
    )


def _gpu_decodable(data: bytes, max_pixels: int) -> bool:
    """JPEGs nvjpeg may take: complete (end marker present), not CMYK, not too large. The rest goes
    through the exact decoder, which decodes or rejects them as TF did."""
    import simplejpeg

    if image_format(data) != "jpeg" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return False
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return False
    return colorspace not in ("CMYK", "YCCK") and 0 < height * width <= max_pixels


def _decode_on_gpu(positions, flat: torch.Tensor, sizes, nvjpeg, device, max_pixels):
    """decoder=gpu: the batch's files (``flat``, cut at ``sizes``) decoded by nvjpeg through
    torchvision where ``nvjpeg`` allows; the rest, and any it fails on, through the exact CPU
    decoder (so nothing is lost). Returns (positions, images, failures)."""
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode_jpeg

    files = flat.split(list(sizes))  # 1-D views, no copies
    on_gpu = [i for i, ok in enumerate(nvjpeg) if ok]
    decoded = {}
    if on_gpu:
        try:
            with warnings.catch_warnings():  # torchvision 0.29 flags its codecs as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                images = tv_decode_jpeg([files[i] for i in on_gpu], mode=ImageReadMode.RGB, device=device)
            decoded = {i: im.permute(1, 2, 0) for i, im in zip(on_gpu, images)}  # (H, W, 3)
        except RuntimeError:
            decoded = {}
    keep_pos, keep_images, failures = [], [], []
    for i, pos in enumerate(positions):
        if i in decoded:
            keep_pos.append(pos)
            keep_images.append(decoded[i])
            continue
        try:
            image = decode_jpeg(files[i].numpy().tobytes(), str(pos), max_pixels)
            keep_images.append(torch.from_numpy(image).to(device))
            keep_pos.append(pos)
        except ImageError as exc:
            failures.append((pos, getattr(exc, "reason", "corrupt"), str(exc)))
    return keep_pos, keep_images, failures


def _resume_position(ids: Sequence[str], positions: Sequence[int], done_ids: Sequence[str], where) -> int:
    """Index into ``positions`` after the last image already written (written ids are a
    subsequence of the list: failed images are missing from it)."""
    j = 0
    if not done_ids:
        return 0
    for k, pos in enumerate(positions):
        if ids[pos] == done_ids[j]:
            j += 1
            if j == len(done_ids):
                return k + 1
    raise DataError(f"{where}: the images already in the file are not in this image list "
                    "(different dataset root or split?); run without --resume to start over")


def _read_failed_log(path: Path, before_position: int) -> list[str]:
    """Lines of a failed-image log for positions before ``before_position`` (what survives a resume)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].isdigit() and int(parts[0]) < before_position:
            keep.append(line)
    return keep


def extract_features(source: ExtractionSource, output: str | Path, model: VGG19Conv54, *,
                     device: str = "cpu", batch_size: int = 64, workers: int = 2, precision: str = "fp32",
                     decoder: str = "exact", dtype: str = "float32", channels_last: bool | None = None,
                     resume: bool = False, overwrite: bool = False, rank: int = 0, world_size: int = 1,
                     max_pixels: int = MAX_PIXELS, progress: bool = True, attrs: dict | None = None,
                     log: Callable[[str], None] | None = None) -> ExtractionSummary:
    """Extract ``source`` (or this rank's shard of it) into ``output``; returns the summary.
    ``channels_last``: NHWC convolutions; None chooses (``channels_last_by_default``)."""
    if decoder not in DECODERS:
        raise ConfigError(f"--decoder {decoder!r} is not one of {DECODERS}")
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"--batch-size {batch_size} / --workers {workers}: need batch >= 1, workers >= 0")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if decoder == "gpu" and device.type != "cuda":
        raise ConfigError("--decoder gpu needs --device cuda; use --decoder exact on CPU")
    start, stop = shard_range(len(source), rank, world_size)
    positions = list(range(start, stop))
    out_path = shard_path(output, rank, world_size)
    log = log or (lambda message: None)

    model = model.to(device).eval()
    if channels_last is None:
        channels_last = channels_last_by_default(device, precision)
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    file_attrs = {
        "backbone": BACKBONE, "weights": model.source, "weights_sha256": model.weights_sha256,
        "decoder": decoder,  # exact: TF1-identical simplejpeg (fastdct); gpu: nvjpeg
        "precision": precision, "skipped_before_extraction": json.dumps(
            {k: len(v) for k, v in sorted(source.skipped.items())}, sort_keys=True),
        **(attrs or {}),
    }
    if world_size > 1:
        file_attrs.update(shard_rank=rank, shard_world_size=world_size, shard_start=start, shard_stop=stop)
    failed_path = failed_log_path(out_path)
    if resume and out_path.exists() and not overwrite:
        return _summary_of_complete(out_path)
    writer = FeatureWriter(out_path, source.dataset, source.split, source.label_dims, dtype=dtype,
                           attrs=file_attrs, label_names=source.label_names or None, resume=resume,
                           overwrite=overwrite)
    t0 = time.perf_counter()
    with writer:
        begin = _resume_position(source.img_ids, positions, writer.done_ids, partial_path(out_path)) \
            if resume else 0
        resumed_from = writer.n_written
        old_failures = _read_failed_log(failed_path, positions[begin] if begin < len(positions) else stop) \
            if resume else []
        failed = Counter(line.split("\t")[2] for line in old_failures)
        # the kept lines replace the log in one rename: a kill here never loses the earlier failures
        atomic_write_text(failed_path, "".join(line + "\n" for line in old_failures))
        with open(failed_path, "a", encoding="utf-8") as flog:
            todo = positions[begin:]
            loader = image_loader(source.paths, todo, decoder, batch_size, workers, device, max_pixels)
            bar = _progress(len(positions), begin, out_path.name, progress)
            done_now = 0
            batches = iter(loader)  # the worker processes start (fork) before this process's threads
            appender = _BackgroundAppender()
            waits = {"decoded images": 0.0, "the model": 0.0, "the writer": 0.0}
            in_flight = None  # the previous batch: copied to the host while this one is computed

            steady = {}  # time and count when the first batch was written: the rate after start-up

            def hand_over(batch_out) -> None:
                ids, labels, result = batch_out
                if not steady:
                    steady.update(t=time.perf_counter(), done=done_now)
                tic = time.perf_counter()
                out = result.get()
                waits["the model"] += time.perf_counter() - tic
                tic = time.perf_counter()
                appender.append(writer.append_chunks if result.gives_chunks else writer.append, ids, out, labels)
                waits["the writer"] += time.perf_counter() - tic

            try:
                with torch.no_grad(), precision_context(precision, device):
                    while True:
                        tic = time.perf_counter()
                        batch = _next_batch(batches, out_path)
                        waits["decoded images"] += time.perf_counter() - tic
                        if batch is None:
                            break
                        failures = list(batch["failures"])
                        good_pos = list(batch["positions"])
                        if batch["nvjpeg"] is not None:
                            good_pos, images, gpu_failures = _decode_on_gpu(good_pos, batch["flat"], batch["sizes"],
                                                                            batch["nvjpeg"], device,
                                                                            max_pixels)
                            failures += gpu_failures
                            x = vgg_preprocess_batch(images, device=device) if images else None
                        else:
                            x = vgg_preprocess_packed(batch["flat"], batch["sizes"], device, batch["plan"]) \
                                if good_pos else None
                        for pos, reason, message in sorted(failures):
                            failed[reason] += 1
                            flog.write(f"{pos}\t{source.img_ids[pos]}\t{reason}\t{message}\n")
                            log(f"skipped {source.img_ids[pos]}: {message}")
                        flog.flush()
                        if good_pos:
                            pos_arr = np.array(good_pos, dtype=np.int64)
                            result = _ForwardResult(model, x, writer.dtype)
                            if in_flight is not None:
                                hand_over(in_flight)
                            in_flight = ([source.img_ids[p] for p in pos_arr], source.labels_for(pos_arr), result)
                        n_items = len(good_pos) + len(failures)
                        done_now += n_items
                        bar.update(n_items)
                    if in_flight is not None:
                        hand_over(in_flight)
                tic = time.perf_counter()
                appender.close()
                waits["the writer"] += time.perf_counter() - tic
            finally:
                appender.close(raise_errors=False)
                bar.close()
        seconds = time.perf_counter() - t0
        summary = ExtractionSummary(out_path, writer.n_written, {k: len(v) for k, v in source.skipped.items()},
                                    dict(failed), seconds, done_now / seconds if seconds > 0 else 0.0,
                                    resumed_from, {k: round(v, 3) for k, v in waits.items()},
                                    _steady_rate(steady, done_now, t0 + seconds))
        writer.set_attrs(failed=json.dumps(dict(sorted(failed.items())), sort_keys=True))
        writer.finish()
    return summary


def _next_batch(batches, out_path: Path):
    """The loader's next batch (None at the end); running out of shared memory (the workers hand
    batches over in /dev/shm, which containers keep small) becomes an error that says what to do."""
    try:
        return next(batches, None)
    except RuntimeError as exc:
        err = shared_memory_error(exc, str(out_path), "lower --batch-size / --workers, then rerun with --resume")
        if err is None:
            raise
        raise err from exc


def _steady_rate(steady: dict, done: int, end: float) -> float:
    """Images/s from the first written batch to the end (0 when there were fewer than 2 batches)."""
    if not steady or done <= steady["done"] or end <= steady["t"]:
        return 0.0
    return (done - steady["done"]) / (end - steady["t"])


class _BackgroundAppender:
    """Runs the FeatureWriter's appends in a thread (in order) while the next batch is computed.

    At most two batches wait; an error in the thread is raised by the next ``append``/``close``."""

    def __init__(self):
        import queue
        import threading

        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lesa-h5-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                method, args = item
                try:
                    method(*args)
                except BaseException as exc:  # handed to the main thread
                    self.error = exc

    def append(self, method, *args) -> None:
        """Queue ``method(*args)`` (the writer's ``append`` or ``append_chunks``)."""
        if self.error is not None:
            raise self.error
        self.queue.put((method, args))

    def close(self, raise_errors: bool = True) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if raise_errors and self.error is not None:
            raise self.error


def _summary_of_complete(path: Path) -> ExtractionSummary:
    """--resume on a finished file: nothing to do; report what it holds."""
    with read_split_files(path) as split:
        attrs = split.attrs
        return ExtractionSummary(path, len(split), json.loads(attrs.get("skipped_before_extraction", "{}")),
                                 json.loads(attrs.get("failed", "{}")), 0.0, 0.0, len(split))


class _ForwardResult:
    """VGG-19 conv5_4 of one preprocessed batch, started on the device; ``get()`` waits for it.

    On a GPU the features are cast to the file's dtype there and laid out there as the file's
    chunks (each record's bytes and its HDF5 Fletcher-32: ``record_chunks``), then copied into
    pinned host memory without blocking, so the host prepares the next batch meanwhile and the
    writer stores the chunks as they are. On the CPU, HDF5's filter computes the checksums."""

    def __init__(self, model, x: torch.Tensor, dtype: np.dtype):
        feats = model(x).to(getattr(torch, np.dtype(dtype).name))  # (B, 196, 512)
        self.event = None
        if feats.is_cuda:
            chunks = record_chunks(feats, fletcher32_of_records(feats))
            self.out = torch.empty(chunks.shape, dtype=chunks.dtype, pin_memory=True)
            self.out.copy_(chunks, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.out = feats

    @property
    def gives_chunks(self) -> bool:
        """Whether ``get()`` returns the file's chunks (else features)."""
        return self.event is not None

    def get(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.out.numpy()


def _progress(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"extract {name}", unit="img", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def merge_shards(paths, output: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Join shard files (list or glob) into one file equal to the one a single rank writes."""
    split = read_split_files(paths)
    try:
        first = split.files[0]
        attrs = {k: v for k, v in split.attrs.items()
                 if k not in ("shard_world_size", "dataset", "split", "feature_dtype", "complete",
                              "failed", "lesa_version")}
        failed: Counter = Counter()
        for f in split.files:
            failed.update(json.loads(f.attrs.get("failed", "{}")))
        writer = FeatureWriter(output, first.attrs["dataset"], first.attrs["split"], split.label_dims,
                               dtype=str(split.feature_dtype), attrs=attrs,
                               label_names=split.label_names or None, overwrite=overwrite)
        from tqdm.auto import tqdm

        with writer, tqdm(total=len(split), desc=f"merge {Path(output).name}", unit="img",
                          disable=not progress) as bar:
            step = 1024
            for f in split.files:
                ids = f.img_ids
                for s in range(0, len(f), step):
                    e = min(s + step, len(f))
                    writer.append(ids[s:e], f.features[s:e],
                                  {name: f.labels[name][s:e] for name in split.label_dims})
                    bar.update(e - s)
            writer.set_attrs(failed=json.dumps(dict(sorted(failed.items())), sort_keys=True))
            return writer.finish()
    finally:
        split.close()


def build_model(backbone: str, weights: str | None, seed: int = 0) -> VGG19Conv54:
    """``tf_slim`` (weights = vgg_19.ckpt), ``torchvision`` (weights = optional .pth) or ``random``
    (seeded He-initialised weights: for tests and throughput benchmarks only)."""
    if backbone == "tf_slim":
        if not weights:
            raise ConfigError("--backbone tf_slim needs --weights PATH/vgg_19.ckpt (the TF-slim model zoo's "
                              "vgg_19_2016_08_28.tar.gz)")
        return VGG19Conv54.from_tf_slim(weights)
    if backbone == "torchvision":
        return VGG19Conv54.from_torchvision(weights)
    if backbone == "random":
        torch.manual_seed(seed)
        model = VGG19Conv54().eval()
        model.source = f"random:seed={seed}"
        model.weights_sha256 = f"random-seed-{seed}"
        return model
    raise ConfigError(f"--backbone {backbone!r} is not one of tf_slim, torchvision, random")


__all__ = ["ExtractionSource", "ExtractionSummary", "extract_features", "merge_shards", "shard_range",
           "shard_path", "nus_wide_source", "openimages_source", "build_model"]
