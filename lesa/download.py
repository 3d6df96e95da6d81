"""Open Images downloader: parallel, MD5-verified, resized to a short side of 256, resumable.

Reads an Open Images image list (2017_11 ``<split>/images.csv``, 2018_04
``<split>-images-with-rotation.csv``), checks each image against ``OriginalMD5`` and writes
``OUT/<ImageID>.jpg``, which the feature extractor reads. Per-image failures go to
``OUT/download_failures.csv`` (image_id, url, reason, detail, attempts). Reasons: ``http_<code>``,
``timeout``, ``truncated``, ``connection_error`` (retried, here with backoff and by a later run);
``md5_mismatch``, ``unavailable`` (Flickr's placeholder), ``decode_error``, ``too_large``,
``bad_url``, ``bad_md5`` and 4xx but 408/429 (not requested again unless ``retry_failed``).

Differences from the original ``download_imgs/asyn_image_downloader.py``: threads, HTTPS
certificates verified (the original disabled that), redirects followed (the original refused
them, so every moved photo failed its MD5 five times), failures reported instead of printed,
JPEG quality 90 (original: PIL's 75). Kept: the short side becomes 256, smaller images are never
enlarged (original: ``PIL.Image.thumbnail``).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import gzip
import hashlib
import http.client
import io
import itertools
import json
import math
import os
import random
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lesa.datasets.nus_wide import FLICKR_PLACEHOLDER_SHA256
from lesa.errors import ConfigError, DataError, ImageError, LesaError
from lesa.files import atomic_write_bytes, atomic_write_text, remove_temporaries

SPLITS = ("train", "validation", "test")
SHORT_SIDE = 256
JPEG_QUALITY = 90
MAX_IMAGE_BYTES = 100 * 1024 * 1024  # the largest Open Images originals are a few tens of MB
MAX_BACKOFF_S = 60.0
USER_AGENT = "lesa-openimages-downloader/1.0 (+https://github.com/hbdat/cvpr20_LESA port)"
FAILURES_NAME = "download_failures.csv"
SUMMARY_NAME = "download_summary.json"
FAILURE_COLUMNS = ("image_id", "url", "reason", "detail", "attempts")
# Failures that a later run does not request again (unless asked to): the answer will not change.
_PERMANENT = {"md5_mismatch", "unavailable", "decode_error", "too_large", "bad_url", "bad_md5"}
_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


class DownloadError(LesaError):
    """The download run cannot continue (output folder not writable, disk full)."""


@dataclass(frozen=True)
class ImageRecord:
    """One row of an Open Images image list."""

    image_id: str
    url: str
    md5: str            # OriginalMD5 as in the CSV ('' = no check)
    rotation: int = 0   # degrees counter-clockwise that make the image upright (2018_04 'Rotation')


def default_image_list(split: str, data_root: str | os.PathLike = "data/OpenImages") -> Path:
    """The image list of ``split`` in the original's data layout (2017_11 first, then 2018_04)."""
    _check_split(split)
    root = Path(data_root)
    v4_name = ("train-images-with-labels-with-rotation.csv" if split == "train"
               else f"{split}-images-with-rotation.csv")
    candidates = [root / "2017_11" / split / "images.csv", root / "2018_04" / split / v4_name,
                  root / "2018_04" / v4_name]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise ConfigError(
        f"no Open Images image list for split '{split}' (looked for {tried}). Download "
        "https://storage.googleapis.com/openimages/2017_11/images_2017_11.tar.gz and extract it "
        f"into {root / '2017_11'}, or fetch https://storage.googleapis.com/openimages/2018_04/"
        f"{split}/{v4_name}, or pass --csv PATH.")


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")


class ImageList:
    """A streamed Open Images image list: ``len()`` and iteration over :class:`ImageRecord`.

    Rows are read lazily (the 2017_11 train list has 9 M): one pass counts and validates, the
    next yields. ``split`` keeps rows whose ``Subset`` equals it (when the column exists). With
    ``url_column="Thumbnail300KURL"`` there is no MD5 to check (the CSV's is the original's).
    """

    def __init__(self, path: str | os.PathLike, *, split: str | None = None,
                 url_column: str = "OriginalURL", limit: int | None = None):
        _check_split(split)
        if limit is not None and limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {limit}")
        self.path = Path(path)
        self.split = split
        self.url_column = url_column
        if not self.path.is_file():
            raise DataError(f"image list {self.path} not found; pass the Open Images "
                            "images CSV with --csv")
        self._count = sum(1 for _ in itertools.islice(self._rows(), limit))
        if self._count == 0 and split is not None and limit != 0:
            raise DataError(f"{self.path}: no row with Subset == '{split}'; check --split "
                            "or pass the image list of that split with --csv")

    def _rows(self) -> Iterator[ImageRecord]:
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rt", encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DataError(f"{self.path} is empty; expected an Open Images image list CSV")
            header = reader.fieldnames = [name.strip() for name in reader.fieldnames]
            missing = [c for c in ("ImageID", self.url_column) if c not in header]
            if missing:
                raise DataError(
                    f"{self.path}: missing column(s) {', '.join(missing)} (header: "
                    f"{', '.join(header[:12])}). Expected an Open Images image list: 2017_11 "
                    "<split>/images.csv or 2018_04 <split>-images-with-rotation.csv.")
            for row in reader:  # short rows: the missing fields are None
                where = f"{self.path}, row {reader.line_num}"
                if row[self.url_column] is None:
                    raise DataError(f"{where}: fewer fields than the {len(header)} of the "
                                    "header; the CSV is truncated or malformed")
                subset = row.get("Subset")
                if self.split is not None and subset is not None and subset != self.split:
                    continue
                image_id = row["ImageID"].strip()
                if not _IMAGE_ID.match(image_id):
                    raise DataError(f"{where}: ImageID {image_id!r} is not a valid file name "
                                    "(letters, digits, '_', '-', '.')")
                md5 = row.get("OriginalMD5") if self.url_column == "OriginalURL" else None
                rotation = _parse_rotation(row.get("Rotation") or "", where)
                yield ImageRecord(image_id, row[self.url_column].strip(), (md5 or "").strip(),
                                  rotation)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[ImageRecord]:
        return itertools.islice(self._rows(), self._count)


def _parse_rotation(text: str, where: str) -> int:
    text = text.strip()
    if text in ("", "nan", "NaN", "None"):  # nan: Open Images could not recover the orientation
        return 0
    try:
        degrees = float(text)
    except ValueError:
        raise DataError(f"{where}: Rotation {text!r} is not a number") from None
    if degrees % 90 != 0:
        raise DataError(f"{where}: Rotation {text!r} is not a multiple of 90")
    return int(degrees) % 360


class FetchError(Exception):
    """One image could not be obtained; ``reason`` is a short code for the failures report."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False,
                 retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


def _network_error(err: Exception, reason: str, detail: str, timeout_detail: str) -> FetchError:
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return FetchError("timeout", timeout_detail, retryable=True)
    return FetchError(reason, detail, retryable=True)


def fetch_bytes(url: str, *, timeout: float, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, bool]:
    """GET ``url`` once -> (body, whether it was checked against a Content-Length).

    ``timeout`` bounds each wait (connect, headers, every read). Raises :class:`FetchError`,
    ``retryable`` for network errors, timeouts, truncated bodies, 5xx, 408 and 429.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError("bad_url", f"not an http(s) URL: {url!r}")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        try:  # Retry-After as an HTTP date is ignored: the exponential backoff applies
            retry_after = max(0.0, float(err.headers.get("Retry-After")))
        except (AttributeError, TypeError, ValueError):
            retry_after = None
        raise FetchError(f"http_{err.code}", str(err.reason), retry_after=retry_after,
                         retryable=err.code >= 500 or err.code in (408, 429)) from None
    except ValueError as err:  # malformed URL
        raise FetchError("bad_url", str(err)) from None
    except (http.client.HTTPException, OSError) as err:  # URLError included
        detail = (str(err.reason) if isinstance(err, urllib.error.URLError)
                  else f"{type(err).__name__}: {err}")
        raise _network_error(err, "connection_error", detail,
                             f"no response within {timeout:g} s") from None
    with response:
        final_url = response.geturl()
        if "photo_unavailable" in final_url:  # Flickr redirects deleted photos there
            raise FetchError("unavailable", f"redirected to {final_url}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            raise FetchError("too_large", f"Content-Length {expected} > {max_bytes} bytes")
        buffer = io.BytesIO()
        try:
            while chunk := response.read(1 << 16):
                buffer.write(chunk)
                if buffer.tell() > max_bytes:
                    raise FetchError("too_large", f"body exceeds {max_bytes} bytes")
        except (OSError, http.client.HTTPException) as err:  # IncompleteRead included
            raise _network_error(err, "truncated", f"{type(err).__name__} after {buffer.tell()} "
                                 f"bytes", f"body stalled for {timeout:g} s after "
                                 f"{buffer.tell()} bytes") from None
    data = buffer.getvalue()
    if expected is not None and len(data) != expected:
        raise FetchError("truncated", f"received {len(data)} of {expected} bytes",
                         retryable=True)
    return data, expected is not None


def md5_digest_from_csv(text: str) -> bytes:
    """The 16-byte digest in an ``OriginalMD5`` field: base64 (Open Images) or 32 hex digits."""
    text = text.strip()
    try:
        digest = bytes.fromhex(text) if len(text) == 32 else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise FetchError("bad_md5", f"OriginalMD5 {text!r} is not a base64 or hex MD5 digest")
    return digest


def fetch_verified(record: ImageRecord, *, timeout: float) -> bytes:
    """Fetch one image and check it against the CSV's MD5 and Flickr's placeholder."""
    expected = md5_digest_from_csv(record.md5) if record.md5 else None
    if not record.url:
        raise FetchError("bad_url", "the CSV has no URL for this image")
    data, length_checked = fetch_bytes(record.url, timeout=timeout)
    if hashlib.sha256(data).hexdigest() == FLICKR_PLACEHOLDER_SHA256:
        raise FetchError("unavailable", "Flickr's 'photo unavailable' placeholder")
    if expected is not None and hashlib.md5(data).digest() != expected:
        got = base64.b64encode(hashlib.md5(data).digest()).decode()
        # Without a Content-Length a cut-off body looks like a wrong MD5: worth another try.
        raise FetchError("md5_mismatch", f"{len(data)} bytes with MD5 {got}, CSV says "
                         f"{record.md5}", retryable=not length_checked)
    return data


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode_image(data: bytes, *, min_short_side: int = 0, strict: bool = True) -> np.ndarray:
    """Decode image bytes to uint8 ``(H, W, 3)`` RGB or ``(H, W, 1)`` grey; raises ImageError.

    JPEGs go through simplejpeg; with ``min_short_side`` they are scaled down in the DCT domain
    to the smallest size whose short side is still >= it (what PIL's ``draft`` did inside the
    original's ``thumbnail``). ``strict`` rejects recoverable JPEG errors (truncated data).
    Other formats (PNG, GIF, WebP, CMYK JPEG) go through PIL.
    """
    import simplejpeg

    if _is_jpeg(data):
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = None  # unusual sampling: let the general reader try
        if colorspace is not None and colorspace not in ("CMYK", "YCCK"):
            scale_min = {}
            if min_short_side > 0 and min(height, width) > min_short_side:
                ratio = min_short_side / min(height, width)
                scale_min = {"min_height": math.ceil(height * ratio),
                             "min_width": math.ceil(width * ratio)}
            try:
                return simplejpeg.decode_jpeg(data, colorspace="GRAY" if colorspace == "Gray"
                                              else "RGB", strict=strict, **scale_min)
            except ValueError as err:
                raise ImageError(f"JPEG decode failed: {err}") from None
    return _decode_other(data)


def _decode_other(data: bytes) -> np.ndarray:
    """Non-JPEG data (and CMYK JPEGs) through PIL: first frame, alpha dropped, 16-bit grey to its
    high byte. Decompression bombs are PIL's ``Image.MAX_IMAGE_PIXELS`` error."""
    from PIL import Image

    try:  # only image formats: an HTML error page is not left to a generic reader's guess
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "GIF", "BMP", "TIFF",
                                                   "WEBP")) as image:
            if image.mode.startswith("I;16"):
                return (np.asarray(image) >> 8).astype(np.uint8)[:, :, None]
            grey = image.mode in ("1", "L", "LA", "La", "I", "F")
            pixels = np.asarray(image.convert("L" if grey else "RGB"))
    except Exception as err:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
        raise ImageError(f"not a decodable image ({type(err).__name__}: {err})") from None
    if pixels.size == 0:
        raise ImageError(f"unsupported image layout {pixels.shape}")
    return np.ascontiguousarray(pixels[:, :, None] if pixels.ndim == 2 else pixels)


def resize_short_side(image: np.ndarray, short_side: int = SHORT_SIDE) -> np.ndarray:
    """Anti-aliased bilinear resize of ``image (H, W, C)`` so min(H, W) == ``short_side``.
    original: images whose short side is already <= it are kept (``thumbnail`` never enlarges)."""
    from skimage.transform import resize

    height, width = image.shape[:2]
    short = min(height, width)
    if short <= short_side:
        return image
    new_h = short_side if height == short else max(1, round(height * short_side / short))
    new_w = short_side if width == short else max(1, round(width * short_side / short))
    resized = resize(image, (new_h, new_w, image.shape[2]), order=1, mode="edge",
                     anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def make_thumbnail(data: bytes, *, short_side: int = SHORT_SIDE, quality: int = JPEG_QUALITY,
                   rotation: int = 0, strict: bool = True) -> bytes:
    """Downloaded bytes -> the JPEG written to disk (short side ``short_side``)."""
    import simplejpeg

    # Decode at >= 2x the target and finish with an anti-aliased resize (PIL's reducing_gap=2).
    image = decode_image(data, min_short_side=2 * short_side, strict=strict)
    if rotation:
        image = np.rot90(image, k=rotation // 90)  # counter-clockwise, as Open Images defines it
    image = np.ascontiguousarray(resize_short_side(image, short_side))
    gray = image.shape[2] == 1  # baseline JPEG, 4:2:0 colour like PIL's default
    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="GRAY" if gray else "RGB",
                                  colorsubsampling="Gray" if gray else "420")


@dataclass
class DownloadOptions:
    workers: int = 16
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 1.0
    short_side: int = SHORT_SIDE
    quality: int = JPEG_QUALITY
    apply_rotation: bool = False   # original: Rotation ignored (pixels stored as served)
    verify_existing: bool = False  # decode existing files, re-download broken ones
    retry_failed: bool = False     # request again images that failed for good before

    def check(self) -> None:
        for flag, value, ok, rule in (
                ("workers", self.workers, self.workers >= 1, ">= 1"),
                ("retries", self.retries, self.retries >= 0, ">= 0"),
                ("timeout", self.timeout, self.timeout > 0, "> 0 seconds"),
                ("backoff", self.backoff, self.backoff >= 0, ">= 0 seconds"),
                ("short-side", self.short_side, self.short_side >= 1, ">= 1"),
                ("quality", self.quality, 1 <= self.quality <= 100, "in 1..100")):
            if not ok:
                raise ConfigError(f"--{flag} must be {rule}, got {value}")


@dataclass
class ImageResult:
    image_id: str
    url: str
    status: str             # 'written' | 'failed' | 'skipped'
    reason: str = ""        # failure reason, or why skipped ('exists', 'failed_before')
    detail: str = ""
    attempts: int = 0
    bytes: int = 0          # downloaded bytes


@dataclass
class DownloadSummary:
    out_dir: str
    total: int = 0
    written: int = 0
    skipped_existing: int = 0
    skipped_failed_before: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count
    bytes_downloaded: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures_report: str = ""

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def format(self) -> str:
        lines = [
            f"{self.total} images listed: {self.written} written, {self.skipped_existing} "
            f"already there, {self.skipped_failed_before} skipped (failed for good before), "
            f"{self.failed_total} failed" + (" (interrupted)" if self.interrupted else ""),
            *(f"  {reason}: {count}" for reason, count in
              sorted(self.failed.items(), key=lambda kv: (-kv[1], kv[0]))),
            f"{self.bytes_downloaded / 1e6:.1f} MB downloaded in {self.seconds:.1f} s "
            f"({self.written / self.seconds if self.seconds > 0 else 0.0:.1f} images/s)"]
        if self.failed_total or self.skipped_failed_before:
            lines.append(f"failures: {self.failures_report}")
        return "\n".join(lines)


def download_one(record: ImageRecord, out_dir: Path, options: DownloadOptions,
                 stop: threading.Event | None = None) -> ImageResult:
    """Download, verify, resize and write one image. Per-image problems become a failed result;
    errors writing to ``out_dir`` propagate (they concern the whole run)."""
    target = out_dir / f"{record.image_id}.jpg"
    if options.verify_existing and target.exists():
        with contextlib.suppress(OSError, ImageError):  # strict: a truncated file is re-fetched
            existing = target.read_bytes()
            if _is_jpeg(existing) and decode_image(existing, min_short_side=1) is not None:
                return ImageResult(record.image_id, record.url, "skipped", "exists")
        target.unlink(missing_ok=True)
    stop = stop or threading.Event()
    for attempts in itertools.count(1):
        try:
            data = fetch_verified(record, timeout=options.timeout)
            break
        except FetchError as err:
            # Before try k+2: backoff * 2**k s (x0.5-1.5 jitter, at least a server's Retry-After,
            # at most MAX_BACKOFF_S); a set `stop` ends the wait and the tries.
            delay = options.backoff * 2 ** (attempts - 1) * (0.5 + random.random())
            if not err.retryable or attempts > options.retries \
                    or stop.wait(min(max(delay, err.retry_after or 0.0), MAX_BACKOFF_S)):
                return ImageResult(record.image_id, record.url, "failed", err.reason,
                                   err.detail, attempts)
    try:
        # Bytes whose MD5 matched are the original file: accept libjpeg's recoverable warnings
        # there (TF did); without an MD5, strict decoding is what catches a truncated file.
        jpeg = make_thumbnail(data, short_side=options.short_side, quality=options.quality,
                              rotation=record.rotation if options.apply_rotation else 0,
                              strict=not record.md5)
    except ImageError as err:
        return ImageResult(record.image_id, record.url, "failed", "decode_error", str(err),
                           attempts, len(data))
    try:
        atomic_write_bytes(target, jpeg, mode=0o644)
    except OSError as err:
        raise DownloadError(f"cannot write {target}: {err}; free disk space or choose another "
                            "--out folder") from err
    return ImageResult(record.image_id, record.url, "written", attempts=attempts,
                       bytes=len(data))


def is_permanent(reason: str) -> bool:
    """Whether a failure will not change on another try (so a resumed run skips it)."""
    return reason in _PERMANENT or (reason.startswith("http_4")
                                    and reason not in ("http_408", "http_429"))


def _read_failures(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle) if row.get("image_id")}


def download_images(records: Iterable[ImageRecord], out_dir: str | os.PathLike,
                    options: DownloadOptions | None = None, *, total: int | None = None,
                    failures_path: str | os.PathLike | None = None, progress: bool = True,
                    stop: threading.Event | None = None,
                    on_result: Callable[[ImageResult], None] | None = None) -> DownloadSummary:
    """Download ``records`` into ``out_dir/<ImageID>.jpg`` (at most ``2 * workers`` in flight),
    skipping those already there and those that failed for good before.

    Ctrl-C (or ``stop``) lets the requests in flight finish, writes the reports and re-raises.
    Failures are appended to the report as they happen (kill -9 keeps them); at the end it is
    rewritten with one row per image still missing. Also writes ``download_summary.json``.
    """
    from tqdm import tqdm

    options = options or DownloadOptions()
    options.check()
    if total is None and hasattr(records, "__len__"):
        total = len(records)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise DownloadError(f"cannot write into output folder {out}: {err}; choose another "
                            "--out") from err
    remove_temporaries(out)  # left by a killed run (never under a final name)
    report = Path(failures_path) if failures_path else out / FAILURES_NAME
    failures = _read_failures(report)
    log = None  # the report, opened for appending at the first failure
    summary = DownloadSummary(out_dir=str(out), failures_report=str(report))
    stop = stop or threading.Event()
    started = time.monotonic()
    bar = tqdm(total=total, unit="img", desc="download", disable=not progress, smoothing=0.05)

    def record_result(result: ImageResult) -> None:
        nonlocal log
        summary.bytes_downloaded += result.bytes
        if result.status == "written":
            summary.written += 1
        elif result.reason == "exists":
            summary.skipped_existing += 1
        elif result.status == "skipped":
            summary.skipped_failed_before += 1
        else:
            summary.failed[result.reason] = summary.failed.get(result.reason, 0) + 1
            row = [result.image_id, result.url, result.reason, result.detail, result.attempts]
            if log is None:
                new = not report.exists() or report.stat().st_size == 0
                log = open(report, "a", encoding="utf-8", newline="")
                if new:
                    csv.writer(log).writerow(FAILURE_COLUMNS)
            csv.writer(log).writerow(row)
            log.flush()
            failures[result.image_id] = dict(zip(FAILURE_COLUMNS, map(str, row)))
        bar.update(1)
        bar.set_postfix(ok=summary.written, failed=summary.failed_total, refresh=False)
        if on_result is not None:
            on_result(result)

    def skip_reason(record: ImageRecord) -> str | None:
        if (out / f"{record.image_id}.jpg").exists():
            return None if options.verify_existing else "exists"
        # A line cut short by kill -9 parses with missing fields: treated as unknown.
        previous = failures.get(record.image_id)
        if not options.retry_failed and previous and is_permanent(previous.get("reason") or ""):
            return "failed_before"
        return None

    pending: set = set()
    records_iter = iter(records)
    pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="lesa-download")
    try:
        while True:
            while len(pending) < 2 * options.workers and not stop.is_set() \
                    and (record := next(records_iter, None)) is not None:
                summary.total += 1
                if reason := skip_reason(record):
                    record_result(ImageResult(record.image_id, record.url, "skipped", reason))
                else:
                    pending.add(pool.submit(download_one, record, out, options, stop))
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                # Discard first: if recording raises, the rest stay in `pending` and the drain
                # below still records them.
                pending.discard(future)
                record_result(future.result())
    except BaseException:
        # Ctrl-C or a run-level error: start nothing new, let the requests in flight end
        # (bounded by timeout and retries, which stop waiting once `stop` is set).
        stop.set()
        for future in [f for f in pending if not f.cancel()]:  # cancel all, then wait
            with contextlib.suppress(Exception):  # the first error is re-raised
                record_result(future.result())
        raise
    finally:
        pool.shutdown()
        bar.close()
        if log is not None:
            log.close()
        summary.seconds = time.monotonic() - started
        summary.interrupted = stop.is_set()
        rows = [row for image_id, row in failures.items()
                if not (out / f"{image_id}.jpg").exists()]
        if rows or report.exists():  # one row per image still missing
            text = io.StringIO()
            csv.writer(text).writerows([FAILURE_COLUMNS, *([row.get(c, "") for c in
                                                            FAILURE_COLUMNS] for row in rows)])
            atomic_write_text(report, text.getvalue())
        summary_dict = {**asdict(summary), "failed_total": summary.failed_total}
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary_dict, indent=2) + "\n")
    return summary


def download_openimages(split: str, out_dir: str | os.PathLike, *,
                        csv_path: str | os.PathLike | None = None,
                        data_root: str | os.PathLike = "data/OpenImages",
                        limit: int | None = None, thumbnails: bool = False,
                        options: DownloadOptions | None = None, progress: bool = True,
                        failures_path: str | os.PathLike | None = None) -> DownloadSummary:
    """Download the images of an Open Images split into ``out_dir/<ImageID>.jpg``.

    ``csv_path`` defaults to the original's layout (:func:`default_image_list`). With
    ``thumbnails`` the ``Thumbnail300KURL`` column is used (smaller files, no MD5 check).
    """
    path = Path(csv_path) if csv_path else default_image_list(split, data_root)
    images = ImageList(path, split=split, limit=limit,
                       url_column="Thumbnail300KURL" if thumbnails else "OriginalURL")
    return download_images(images, out_dir, options, total=len(images), progress=progress,
                           failures_path=failures_path)
