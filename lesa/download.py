"""Open Images downloader: parallel, MD5-verified, resized, resumable.

Reads an Open Images image list (2017_11 ``<split>/images.csv`` or 2018_04
``<split>-images-with-rotation.csv``; the columns used are ``ImageID``, ``OriginalURL``,
``OriginalMD5`` and, where present, ``Subset`` and ``Rotation``), downloads every image with a
pool of threads, checks the bytes against ``OriginalMD5`` (base64 of the MD5 digest), resizes so
the short side is 256 and writes ``OUT/<ImageID>.jpg`` -- the layout the feature extractor reads.

Per-image outcomes never stop the run; they are counted and appended to a failures report
(``OUT/download_failures.csv``: image_id, url, reason, detail, attempts). Reasons:

==================  =========================================================  ===========
reason              meaning                                                    on resume
==================  =========================================================  ===========
``http_<code>``     the server answered with that status (404, 410, 500, ...)  4xx skipped
``timeout``         no byte arrived within ``timeout`` seconds                 retried
``truncated``       the body ended before its Content-Length / was cut off     retried
``connection_error`` DNS, refused, reset before a response                     retried
``md5_mismatch``    bytes differ from ``OriginalMD5``                          skipped
``unavailable``     Flickr's "photo unavailable" placeholder came back         skipped
``decode_error``    bytes verified (or unverifiable) but not a decodable image skipped
``too_large``       the body exceeds ``MAX_IMAGE_BYTES``                       skipped
``bad_url``         the CSV's URL is empty or not http(s)                      skipped
``bad_md5``         the CSV's ``OriginalMD5`` is neither base64 nor hex MD5    skipped
==================  =========================================================  ===========

"skipped" failures are not requested again by a later run unless ``retry_failed=True``.
Network errors, 5xx, 408 and 429 are retried with exponential backoff inside a run; other 4xx
are not. A file appears under its final name only once complete (``lesa.files.atomic_write``).

Differences from the original ``download_imgs/asyn_image_downloader.py`` (processes + requests +
PIL): threads (the work is network-bound), HTTPS certificates verified (the original disabled
verification), redirects followed (the original refused them, so every moved photo failed its
MD5 five times), failures reported instead of printed, JPEG quality 90 (original: PIL's default
75). Resizing keeps the original's rule: the short side becomes 256, smaller images are never
enlarged (original: ``PIL.Image.thumbnail``).
"""
from __future__ import annotations

import base64
import binascii
import csv
import gzip
import hashlib
import http.client
import io
import json
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lesa.errors import ConfigError, DataError, ImageError, LesaError
from lesa.files import TMP_MARK, atomic_write_bytes

SPLITS = ("train", "validation", "test")
SHORT_SIDE = 256
JPEG_QUALITY = 90
MAX_IMAGE_BYTES = 100 * 1024 * 1024  # the largest Open Images originals are a few tens of MB
MAX_PIXELS = 300_000_000             # decompression-bomb guard for non-JPEG images
MAX_BACKOFF_S = 60.0
USER_AGENT = "lesa-openimages-downloader/1.0 (+https://github.com/hbdat/cvpr20_LESA port)"
FAILURES_NAME = "download_failures.csv"
SUMMARY_NAME = "download_summary.json"
FAILURE_COLUMNS = ("image_id", "url", "reason", "detail", "attempts")
# Flickr serves this PNG (1024x768 grey "This photo is no longer available") for deleted photos.
# SHA-256 of the bytes; the file itself belongs to Flickr and is not shipped.
from lesa.datasets.nus_wide import FLICKR_PLACEHOLDER_SHA256  # noqa: E402  (one definition)
# Failures that a later run does not request again (unless asked to): the answer will not change.
_PERMANENT = {"md5_mismatch", "unavailable", "decode_error", "too_large", "bad_url", "bad_md5"}
_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


class DownloadError(LesaError):
    """The download run cannot continue (output folder not writable, disk full)."""


# --------------------------------------------------------------------------------------------
# The image list


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
    candidates = [
        root / "2017_11" / split / "images.csv",
        root / "2018_04" / split / v4_name,
        root / "2018_04" / v4_name,
    ]
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


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


class ImageList:
    """A streamed Open Images image list: ``len()`` and iteration over :class:`ImageRecord`.

    The 2017_11 train list has 9 million rows, so rows are read lazily (two passes: one to
    count and validate, one to yield). ``split`` keeps only rows whose ``Subset`` column equals
    it (when the column exists); ``url_column`` picks ``OriginalURL`` (default) or
    ``Thumbnail300KURL`` (then there is no MD5 to check: the MD5 is the original's).
    """

    def __init__(self, path: str | os.PathLike, *, split: str | None = None,
                 url_column: str = "OriginalURL", limit: int | None = None):
        _check_split(split)
        self.path = Path(path)
        self.split = split
        self.url_column = url_column
        self.limit = limit
        if limit is not None and limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {limit}")
        if not self.path.is_file():
            raise DataError(f"image list {self.path} not found; pass the Open Images "
                            "images CSV with --csv")
        self._count = self._scan()

    def _columns(self, header: list[str]) -> tuple[int, int, int | None, int | None, int | None]:
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("ImageID", self.url_column) if c not in index]
        if missing:
            raise DataError(
                f"{self.path}: missing column(s) {', '.join(missing)} (header: "
                f"{', '.join(header[:12])}). Expected an Open Images image list: 2017_11 "
                "<split>/images.csv or 2018_04 <split>-images-with-rotation.csv.")
        md5 = index.get("OriginalMD5") if self.url_column == "OriginalURL" else None
        return index["ImageID"], index[self.url_column], md5, index.get("Rotation"), \
            index.get("Subset")

    def _rows(self) -> Iterator[tuple[int, ImageRecord]]:
        with _open_text(self.path) as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{self.path} is empty; expected an Open Images image list CSV")
            id_i, url_i, md5_i, rot_i, subset_i = self._columns(header)
            for row_number, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) <= max(id_i, url_i):
                    raise DataError(f"{self.path}, row {row_number}: {len(row)} fields, header "
                                    f"has {len(header)}; the CSV is truncated or malformed")
                if self.split is not None and subset_i is not None and subset_i < len(row) \
                        and row[subset_i] != self.split:
                    continue
                image_id = row[id_i].strip()
                if not _IMAGE_ID.match(image_id):
                    raise DataError(f"{self.path}, row {row_number}: ImageID {image_id!r} is not "
                                    "a valid file name (letters, digits, '_', '-', '.')")
                md5 = row[md5_i].strip() if md5_i is not None and md5_i < len(row) else ""
                rotation = _parse_rotation(row[rot_i] if rot_i is not None and rot_i < len(row)
                                           else "", self.path, row_number)
                yield row_number, ImageRecord(image_id, row[url_i].strip(), md5, rotation)

    def _scan(self) -> int:
        count = 0
        for _ in self._rows():
            count += 1
            if self.limit is not None and count >= self.limit:
                break
        if count == 0 and self.split is not None and self.limit != 0:
            raise DataError(f"{self.path}: no row with Subset == '{self.split}'; check --split "
                            "or pass the image list of that split with --csv")
        return count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[ImageRecord]:
        for count, (_, record) in enumerate(self._rows(), start=1):
            if count > self._count:
                return
            yield record


def _parse_rotation(text: str, path: Path, row_number: int) -> int:
    text = text.strip()
    if text in ("", "nan", "NaN", "None"):  # nan: Open Images could not recover the orientation
        return 0
    try:
        degrees = float(text)
    except ValueError:
        raise DataError(f"{path}, row {row_number}: Rotation {text!r} is not a number") from None
    if degrees % 90 != 0:
        raise DataError(f"{path}, row {row_number}: Rotation {text!r} is not a multiple of 90")
    return int(degrees) % 360


# --------------------------------------------------------------------------------------------
# One HTTP request


class FetchError(Exception):
    """One image could not be obtained; ``reason`` is a short code for the failures report."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False,
                 retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 1


@dataclass
class Fetched:
    data: bytes
    final_url: str
    length_checked: bool  # True when the body was checked against a Content-Length header


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: ignore, the exponential backoff applies
        return None


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc)


def fetch_bytes(url: str, *, timeout: float, max_bytes: int = MAX_IMAGE_BYTES) -> Fetched:
    """GET ``url`` once. ``timeout`` bounds each wait (connect, headers, every read).

    Raises :class:`FetchError` with ``retryable`` set for errors worth another try
    (network errors, timeouts, truncated bodies, 5xx, 408, 429).
    """
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError("bad_url", f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        code = err.code
        err.close()
        raise FetchError(f"http_{code}", str(err.reason),
                         retryable=code >= 500 or code in (408, 429),
                         retry_after=_retry_after(err.headers)) from None
    except urllib.error.URLError as err:
        if _is_timeout(err.reason):
            raise FetchError("timeout", f"no response within {timeout:g} s",
                             retryable=True) from None
        raise FetchError("connection_error", str(err.reason), retryable=True) from None
    except ValueError as err:  # malformed URL
        raise FetchError("bad_url", str(err)) from None
    except (http.client.HTTPException, OSError) as err:
        if _is_timeout(err):
            raise FetchError("timeout", f"no response within {timeout:g} s",
                             retryable=True) from None
        raise FetchError("connection_error", f"{type(err).__name__}: {err}",
                         retryable=True) from None
    with response:
        final_url = response.geturl()
        if "photo_unavailable" in final_url:  # Flickr redirects deleted photos there
            raise FetchError("unavailable", f"redirected to {final_url}")
        length_header = response.headers.get("Content-Length")
        try:
            expected = int(length_header) if length_header is not None else None
        except ValueError:
            expected = None
        if expected is not None and expected > max_bytes:
            raise FetchError("too_large", f"Content-Length {expected} > {max_bytes} bytes")
        buffer = io.BytesIO()
        try:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                buffer.write(chunk)
                if buffer.tell() > max_bytes:
                    raise FetchError("too_large", f"body exceeds {max_bytes} bytes")
        except http.client.IncompleteRead as err:
            raise FetchError("truncated", f"connection closed after {buffer.tell()} bytes "
                             f"({err})", retryable=True) from None
        except (OSError, http.client.HTTPException) as err:
            if _is_timeout(err):
                raise FetchError("timeout", f"body stalled for {timeout:g} s after "
                                 f"{buffer.tell()} bytes", retryable=True) from None
            raise FetchError("truncated", f"{type(err).__name__} after {buffer.tell()} bytes",
                             retryable=True) from None
    data = buffer.getvalue()
    if expected is not None and len(data) != expected:
        raise FetchError("truncated", f"received {len(data)} of {expected} bytes",
                         retryable=True)
    return Fetched(data, final_url, expected is not None)


def md5_digest_from_csv(text: str) -> bytes:
    """The 16-byte digest in an ``OriginalMD5`` field: base64 (Open Images) or 32 hex digits."""
    text = text.strip()
    try:
        if len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        digest = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise FetchError("bad_md5", f"OriginalMD5 {text!r} is not a base64 or hex MD5 digest")
    return digest


def fetch_verified(record: ImageRecord, *, timeout: float) -> Fetched:
    """Fetch one image and check it against the CSV's MD5 and Flickr's placeholder."""
    expected = md5_digest_from_csv(record.md5) if record.md5 else None
    if not record.url:
        raise FetchError("bad_url", "the CSV has no URL for this image")
    fetched = fetch_bytes(record.url, timeout=timeout)
    if hashlib.sha256(fetched.data).hexdigest() == FLICKR_PLACEHOLDER_SHA256:
        raise FetchError("unavailable", "Flickr's 'photo unavailable' placeholder")
    if expected is not None and hashlib.md5(fetched.data).digest() != expected:
        got = base64.b64encode(hashlib.md5(fetched.data).digest()).decode()
        # Without a Content-Length a cut-off body looks like a wrong MD5: worth another try.
        raise FetchError("md5_mismatch", f"{len(fetched.data)} bytes with MD5 {got}, CSV says "
                         f"{record.md5}", retryable=not fetched.length_checked)
    return fetched


def with_retries(attempt: Callable[[], Fetched], *, retries: int, backoff: float,
                 stop: threading.Event | None = None) -> tuple[Fetched, int]:
    """Call ``attempt`` until it succeeds, fails for good, or ``retries`` extra tries are spent.

    Waits ``backoff * 2**k`` seconds (x0.5-1.5 jitter, at most ``MAX_BACKOFF_S``, at least a
    server's Retry-After) before try k+2. Returns (result, tries used).
    """
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(), tries
        except FetchError as err:
            err.attempts = tries
            if not err.retryable or tries > retries:
                raise
            delay = backoff * (2 ** (tries - 1)) * (0.5 + random.random())
            if err.retry_after is not None:
                delay = max(delay, err.retry_after)
            delay = min(delay, MAX_BACKOFF_S)
            if stop is not None:
                if stop.wait(delay):  # interrupted while waiting: give up on this image
                    raise
            else:
                time.sleep(delay)


# --------------------------------------------------------------------------------------------
# Image processing


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode_image(data: bytes, *, min_short_side: int = 0, strict: bool = True) -> np.ndarray:
    """Decode image bytes to uint8 ``(H, W, 3)`` RGB or ``(H, W, 1)`` grey.

    JPEGs go through simplejpeg (libjpeg-turbo); when ``min_short_side`` is set they are scaled
    down in the DCT domain to the smallest size whose short side is still >= it (what PIL's
    ``draft`` did inside the original's ``thumbnail``) -- decoding a 12-megapixel photo at 1/4
    scale is ~10x faster. ``strict`` rejects recoverable JPEG errors (truncated data).
    Other formats (PNG, GIF, WebP, CMYK JPEG) go through scikit-image's reader.
    Raises :class:`ImageError`.
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
            gray = colorspace == "Gray"
            try:
                return simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB",
                                              strict=strict, **scale_min)
            except ValueError as err:
                raise ImageError(f"JPEG decode failed: {err}") from None
    return _decode_other(data)


# Formats handed to scikit-image's reader; anything else (HTML error pages, ...) is rejected
# before a generic reader guesses at it.
_OTHER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                b"\xff\xd8\xff")


def _decode_other(data: bytes) -> np.ndarray:
    import skimage.io

    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (is_webp or data.startswith(_OTHER_MAGIC)):
        raise ImageError(f"not an image (first bytes {data[:16]!r})")
    try:
        image = np.asarray(skimage.io.imread(io.BytesIO(data)))
    except Exception as err:  # the readers raise many types (OSError, ValueError, SyntaxError)
        raise ImageError(f"not a decodable image ({type(err).__name__}: {err})") from None
    if image.ndim == 4:     # animated GIF / multi-page: the first frame
        image = image[0]
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or image.size == 0:
        raise ImageError(f"unsupported image layout {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageError(f"{image.shape[1]}x{image.shape[0]} pixels exceeds {MAX_PIXELS}")
    if image.shape[2] == 2:       # grey + alpha
        image = image[:, :, :1]
    elif image.shape[2] == 4:     # RGBA: drop alpha
        image = image[:, :, :3]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(image.dtype, np.floating) else 1.0
        image = np.clip(image * scale, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def resize_short_side(image: np.ndarray, short_side: int = SHORT_SIDE) -> np.ndarray:
    """Anti-aliased bilinear resize of ``image (H, W, C)`` so min(H, W) == ``short_side``.

    original: images whose short side is already <= ``short_side`` are kept as they are
    (``PIL.Image.thumbnail`` never enlarges).
    """
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


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``image (H, W, 3|1)`` uint8 -> baseline JPEG bytes (4:2:0 colour, like PIL's default)."""
    import simplejpeg

    if image.shape[2] == 1:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality,
                                      colorspace="GRAY", colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality,
                                  colorspace="RGB", colorsubsampling="420")


def make_thumbnail(data: bytes, *, short_side: int = SHORT_SIDE, quality: int = JPEG_QUALITY,
                   rotation: int = 0, strict: bool = True) -> bytes:
    """Downloaded bytes -> the JPEG written to disk (short side ``short_side``)."""
    # Decode at >= 2x the target and finish with an anti-aliased resize (PIL's reducing_gap=2).
    image = decode_image(data, min_short_side=2 * short_side, strict=strict)
    if rotation:
        image = np.rot90(image, k=rotation // 90)  # counter-clockwise, as Open Images defines it
    return encode_jpeg(resize_short_side(image, short_side), quality)


def is_complete_jpeg(path: Path) -> bool:
    """True when ``path`` decodes as a whole JPEG (strict: no truncation)."""
    try:
        data = path.read_bytes()
        decode_image(data, min_short_side=1, strict=True)
        return _is_jpeg(data)
    except (OSError, ImageError):
        return False


# --------------------------------------------------------------------------------------------
# The run


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
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.backoff < 0:
            raise ConfigError(f"--backoff must be >= 0 seconds, got {self.backoff}")
        if self.short_side < 1:
            raise ConfigError(f"--short-side must be >= 1, got {self.short_side}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be in 1..100, got {self.quality}")


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
    failed: dict[str, int] = field(default_factory=dict)
    bytes_downloaded: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures_report: str = ""

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "failed_total": self.failed_total}

    def format(self) -> str:
        lines = [
            f"{self.total} images listed: {self.written} written, {self.skipped_existing} "
            f"already there, {self.skipped_failed_before} skipped (failed for good before), "
            f"{self.failed_total} failed" + (" (interrupted)" if self.interrupted else ""),
        ]
        for reason, count in sorted(self.failed.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason}: {count}")
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"{self.bytes_downloaded / 1e6:.1f} MB downloaded in {self.seconds:.1f} s "
                     f"({rate:.1f} images/s)")
        if self.failed_total or self.skipped_failed_before:
            lines.append(f"failures: {self.failures_report}")
        return "\n".join(lines)


def download_one(record: ImageRecord, out_dir: Path, options: DownloadOptions,
                 stop: threading.Event | None = None) -> ImageResult:
    """Download, verify, resize and write one image. Per-image problems become a failed result;
    errors writing to ``out_dir`` propagate (they concern the whole run)."""
    target = out_dir / f"{record.image_id}.jpg"
    if options.verify_existing and target.exists():
        if is_complete_jpeg(target):
            return ImageResult(record.image_id, record.url, "skipped", "exists")
        target.unlink()
    try:
        fetched, attempts = with_retries(lambda: fetch_verified(record, timeout=options.timeout),
                                         retries=options.retries, backoff=options.backoff,
                                         stop=stop)
    except FetchError as err:
        return ImageResult(record.image_id, record.url, "failed", err.reason, err.detail,
                           err.attempts)
    try:
        # Bytes whose MD5 matched are the original file: accept libjpeg's recoverable warnings
        # there (TF did); without an MD5, strict decoding is what catches a truncated file.
        jpeg = make_thumbnail(fetched.data, short_side=options.short_side,
                              quality=options.quality,
                              rotation=record.rotation if options.apply_rotation else 0,
                              strict=not record.md5)
    except ImageError as err:
        return ImageResult(record.image_id, record.url, "failed", "decode_error", str(err),
                           attempts, len(fetched.data))
    try:
        atomic_write_bytes(target, jpeg, mode=0o644)
    except OSError as err:
        raise DownloadError(f"cannot write {target}: {err}; free disk space or choose another "
                            "--out folder") from err
    return ImageResult(record.image_id, record.url, "written", attempts=attempts,
                       bytes=len(fetched.data))


class FailuresReport:
    """``download_failures.csv``: appended as failures happen (survives kill -9), rewritten at
    the end with the latest outcome per image, minus images that now exist."""

    def __init__(self, path: Path):
        self.path = path
        self.previous: dict[str, dict[str, str]] = {}
        if path.is_file():
            with open(path, encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("image_id"):
                        self.previous[row["image_id"]] = row
        self._handle = None
        self._writer = None

    def failed_for_good(self, image_id: str) -> bool:
        row = self.previous.get(image_id)
        # A line cut short by kill -9 parses with missing fields: treat it as unknown.
        return row is not None and is_permanent(row.get("reason") or "")

    def append(self, result: ImageResult) -> None:
        if self._handle is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", encoding="utf-8", newline="")
            self._writer = csv.writer(self._handle)
            if new:
                self._writer.writerow(FAILURE_COLUMNS)
        self._writer.writerow([result.image_id, result.url, result.reason, result.detail,
                               result.attempts])
        self._handle.flush()
        self.previous[result.image_id] = {
            "image_id": result.image_id, "url": result.url, "reason": result.reason,
            "detail": result.detail, "attempts": str(result.attempts)}

    def consolidate(self, out_dir: Path) -> int:
        """Rewrite the report: one row per image still missing. Returns the row count."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        rows = [row for image_id, row in self.previous.items()
                if not (out_dir / f"{image_id}.jpg").exists()]
        if not rows and not self.path.exists():
            return 0
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(FAILURE_COLUMNS)
        for row in rows:
            writer.writerow([row.get(column, "") for column in FAILURE_COLUMNS])
        atomic_write_bytes(self.path, text.getvalue().encode("utf-8"))
        return len(rows)


def is_permanent(reason: str) -> bool:
    """Whether a failure will not change on another try (so a resumed run skips it)."""
    if reason in _PERMANENT:
        return True
    if reason.startswith("http_4") and reason not in ("http_408", "http_429"):
        return True
    return False


def _remove_stale_partials(out_dir: Path, older_than_s: float = 60.0) -> int:
    """Delete temp files left by a killed run (never under a final name)."""
    removed = 0
    now = time.time()
    for entry in os.scandir(out_dir):
        if TMP_MARK in entry.name:
            try:
                if now - entry.stat().st_mtime > older_than_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def download_images(records: Iterable[ImageRecord], out_dir: str | os.PathLike,
                    options: DownloadOptions | None = None, *, total: int | None = None,
                    failures_path: str | os.PathLike | None = None, progress: bool = True,
                    stop: threading.Event | None = None,
                    on_result: Callable[[ImageResult], None] | None = None) -> DownloadSummary:
    """Download ``records`` into ``out_dir/<ImageID>.jpg``; skip those already there.

    ``options.workers`` threads, at most ``2 * workers`` images in flight. Ctrl-C (or setting
    ``stop``) lets the requests in flight finish (bounded by the timeout), writes the reports and
    re-raises; the next run resumes. Also writes ``out_dir/download_summary.json``.
    """
    from tqdm import tqdm

    options = options or DownloadOptions()
    options.check()
    if total is None and hasattr(records, "__len__"):
        total = len(records)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lesa-write-test{TMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DownloadError(f"cannot write into output folder {out}: {err}; choose another "
                            "--out") from err
    _remove_stale_partials(out)
    report = FailuresReport(Path(failures_path) if failures_path else out / FAILURES_NAME)
    summary = DownloadSummary(out_dir=str(out), failures_report=str(report.path))
    stop = stop or threading.Event()
    counts: Counter[str] = Counter()
    started = time.monotonic()

    def record_result(result: ImageResult) -> None:
        summary.bytes_downloaded += result.bytes
        if result.status == "written":
            summary.written += 1
        elif result.status == "skipped":
            if result.reason == "exists":
                summary.skipped_existing += 1
            else:
                summary.skipped_failed_before += 1
        else:
            counts[result.reason] += 1
            report.append(result)
        bar.update(1)
        bar.set_postfix(ok=summary.written, failed=sum(counts.values()), refresh=False)
        if on_result is not None:
            on_result(result)

    bar = tqdm(total=total, unit="img", desc="download", disable=not progress, smoothing=0.05)
    pending: set = set()
    try:
        with ThreadPoolExecutor(max_workers=options.workers,
                                thread_name_prefix="lesa-download") as pool:
            records_iter = iter(records)
            try:
                exhausted = False
                while True:
                    while not exhausted and len(pending) < 2 * options.workers \
                            and not stop.is_set():
                        record = next(records_iter, None)
                        if record is None:
                            exhausted = True
                            break
                        summary.total += 1
                        target = out / f"{record.image_id}.jpg"
                        if not options.verify_existing and target.exists():
                            record_result(ImageResult(record.image_id, record.url, "skipped",
                                                      "exists"))
                        elif not options.retry_failed and report.failed_for_good(
                                record.image_id) and not target.exists():
                            record_result(ImageResult(record.image_id, record.url, "skipped",
                                                      "failed_before"))
                        else:
                            pending.add(pool.submit(download_one, record, out, options, stop))
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        # Discard first: if recording raises, the rest stay in `pending` and
                        # the drain below still records them.
                        pending.discard(future)
                        record_result(future.result())
                    if stop.is_set() and not summary.interrupted:
                        summary.interrupted = True
            except BaseException:
                # Ctrl-C or a run-level error: start nothing new, let the requests in flight end
                # (bounded by timeout and retries, which stop waiting once `stop` is set).
                stop.set()
                summary.interrupted = True
                for future in pending:
                    future.cancel()
                for future in pending:
                    if not future.cancelled():
                        try:
                            record_result(future.result())
                        except Exception:  # already stopping; the first error is re-raised
                            pass
                raise
    finally:
        bar.close()
        summary.failed = dict(counts)
        summary.seconds = time.monotonic() - started
        report.consolidate(out)
        atomic_write_bytes(out / SUMMARY_NAME,
                     (json.dumps(summary.to_dict(), indent=2) + "\n").encode("utf-8"))
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
