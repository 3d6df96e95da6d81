"""Open Images downloader against a local HTTP server (127.0.0.1 only, started by the tests).

The server serves good JPEGs made from scikit-image photos, a 404, a wrong-MD5 file, a slow
response (longer than the client timeout), a truncated body, a 500 that succeeds on retry and a
redirect to Flickr's "photo unavailable" page, and counts every request per path.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from skimage import data as skdata

from lesa.download import (
    FAILURES_NAME, SUMMARY_NAME, DownloadOptions, FetchError, ImageList, ImageRecord,
    decode_image, default_image_list, download_images, download_openimages,
    md5_digest_from_csv, resize_short_side,
)
from lesa.errors import ConfigError, DataError, LesaError

REPO = Path(__file__).resolve().parents[1]
HEADER_2017 = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
               "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
               "Thumbnail300KURL"]
HEADER_2018 = HEADER_2017 + ["Rotation"]


def _jpeg(image: np.ndarray) -> bytes:
    if image.ndim == 2:
        return simplejpeg.encode_jpeg(image[:, :, None], quality=95, colorspace="GRAY",
                                      colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=95)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


PHOTOS = {  # image id -> original JPEG bytes
    "0000astronaut000": _jpeg(skdata.astronaut()),          # 512x512 RGB
    "0001coffee000000": _jpeg(skdata.coffee()),             # 400x600 RGB
    "0002camera000000": _jpeg(skdata.camera()),             # 512x512 grey
    "0003chelsea00000": _jpeg(skdata.chelsea()),            # 300x451 RGB
    "0004rocket000000": _jpeg(skdata.rocket()),             # 427x640 RGB
    "0005small0000000": _jpeg(skdata.astronaut()[:200, :300]),  # short side < 256: kept
}


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> with scripted answers per path."""

    def __init__(self, delay: float = 0.0):
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.delay = delay
        self.routes: dict[str, tuple] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                if server.delay:
                    server.release.wait(server.delay)
                kind, *spec = server.routes.get(self.path, ("status", 404))
                if kind == "ok":
                    self._send(200, spec[0])
                elif kind == "status":
                    self.send_error(spec[0])
                elif kind == "flaky":  # fails `spec[0]` times with 500, then serves the bytes
                    if hit <= spec[0]:
                        self.send_error(500)
                    else:
                        self._send(200, spec[1])
                elif kind == "slow":
                    server.release.wait(spec[0])
                    if not server.release.is_set():
                        self._send(200, spec[1])
                elif kind == "truncated":  # promises all the bytes, sends half, hangs up
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(spec[0])))
                    self.end_headers()
                    self.wfile.write(spec[0][: len(spec[0]) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", spec[0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = _Server()
    yield srv
    srv.close()


def _write_csv(path: Path, rows: list[dict], header=HEADER_2017) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({"Subset": "validation", "License": "cc-by", "Title": "a, \"title\"",
                             **row})
    return path


def _good_rows(server: _Server) -> list[dict]:
    rows = []
    for image_id, body in PHOTOS.items():
        server.routes[f"/{image_id}.jpg"] = ("ok", body)
        rows.append({"ImageID": image_id, "OriginalURL": server.url(f"/{image_id}.jpg"),
                     "OriginalMD5": _md5_b64(body)})
    return rows


def _bad_rows(server: _Server) -> tuple[list[dict], dict[str, str]]:
    """Rows that fail (or need a retry) and the outcome each must get."""
    cat = PHOTOS["0003chelsea00000"]
    server.routes.update({
        "/missing.jpg": ("status", 404),
        "/wrongmd5.jpg": ("ok", cat),
        "/slow.jpg": ("slow", 20.0, cat),
        "/truncated.jpg": ("truncated", cat),
        "/flaky.jpg": ("flaky", 1, cat),
        "/gone.jpg": ("redirect", "/photo_unavailable.png"),
        "/photo_unavailable.png": ("ok", b"\x89PNG\r\n\x1a\n not really"),
        "/teapot.jpg": ("status", 503),
    })
    rows = [
        {"ImageID": "f404", "OriginalURL": server.url("/missing.jpg"), "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "fmd5", "OriginalURL": server.url("/wrongmd5.jpg"),
         "OriginalMD5": _md5_b64(b"something else")},
        {"ImageID": "fslow", "OriginalURL": server.url("/slow.jpg"), "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "ftrunc", "OriginalURL": server.url("/truncated.jpg"),
         "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "flaky", "OriginalURL": server.url("/flaky.jpg"), "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "fgone", "OriginalURL": server.url("/gone.jpg"), "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "f503", "OriginalURL": server.url("/teapot.jpg"), "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "fnourl", "OriginalURL": "", "OriginalMD5": _md5_b64(cat)},
        {"ImageID": "fbadmd5", "OriginalURL": server.url("/flaky.jpg"), "OriginalMD5": "xyz"},
    ]
    expected = {"f404": "http_404", "fmd5": "md5_mismatch", "fslow": "timeout",
                "ftrunc": "truncated", "fgone": "unavailable", "f503": "http_503",
                "fnourl": "bad_url", "fbadmd5": "bad_md5"}
    return rows, expected


FAST = dict(workers=4, retries=2, timeout=1.0, backoff=0.01)  # generous for a loaded CI box


def _read_failures(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


def _assert_no_partials(out: Path):
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    for path in out.glob("*.jpg"):  # every file under a final name is a whole JPEG
        simplejpeg.decode_jpeg(path.read_bytes(), strict=True)


def test_every_outcome_is_reported(server, tmp_path):
    good = _good_rows(server)
    bad, expected = _bad_rows(server)
    csv_path = _write_csv(tmp_path / "images.csv", good + bad)
    out = tmp_path / "out"
    summary = download_openimages("validation", out, csv_path=csv_path,
                                  options=DownloadOptions(**FAST), progress=False)

    written = {p.stem for p in out.glob("*.jpg")}
    assert written == set(PHOTOS) | {"flaky"}
    assert summary.written == len(PHOTOS) + 1 and summary.total == len(good) + len(bad)
    assert summary.failed == dict(Counter(expected.values()))
    assert not summary.interrupted

    failures = _read_failures(out / FAILURES_NAME)
    assert {k: v["reason"] for k, v in failures.items()} == expected
    assert failures["f404"]["url"] == server.url("/missing.jpg")
    # retried: network errors and 5xx (1 + 2 retries); not retried: 404, verified wrong MD5
    assert failures["fslow"]["attempts"] == "3" and failures["ftrunc"]["attempts"] == "3"
    assert failures["f503"]["attempts"] == "3" and failures["f404"]["attempts"] == "1"
    assert server.hits["/missing.jpg"] == 1 and server.hits["/wrongmd5.jpg"] == 1
    assert server.hits["/flaky.jpg"] == 2 and server.hits["/teapot.jpg"] == 3
    assert server.hits["/slow.jpg"] == 3 and server.hits["/truncated.jpg"] == 3

    saved = json.loads((out / SUMMARY_NAME).read_text())
    assert saved["written"] == summary.written and saved["failed_total"] == len(expected)
    text = summary.format()
    assert "http_404: 1" in text and "timeout: 1" in text
    _assert_no_partials(out)


def test_written_images_are_resized_faithfully(server, tmp_path):
    csv_path = _write_csv(tmp_path / "images.csv", _good_rows(server))
    out = tmp_path / "out"
    download_openimages("validation", out, csv_path=csv_path,
                        options=DownloadOptions(**FAST), progress=False)
    for image_id, original_bytes in PHOTOS.items():
        original = decode_image(original_bytes)
        saved = simplejpeg.decode_jpeg((out / f"{image_id}.jpg").read_bytes(),
                                       colorspace="GRAY" if original.shape[2] == 1 else "RGB")
        h, w = original.shape[:2]
        if min(h, w) <= 256:  # never enlarged
            assert saved.shape == original.shape
            continue
        assert min(saved.shape[:2]) == 256 and saved.shape[2] == original.shape[2]
        assert abs(saved.shape[0] / saved.shape[1] - h / w) < 0.01
        reference = resize_short_side(original, 256)
        assert saved.shape == reference.shape
        mse = np.mean((saved.astype(float) - reference.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 28  # PSNR: same picture, only JPEG noise


def test_resume_after_limit_downloads_nothing_twice(server, tmp_path):
    good = _good_rows(server)
    bad, expected = _bad_rows(server)
    rows = good[:3] + bad[:2] + good[3:]  # a 404 and a wrong MD5 among the first five
    csv_path = _write_csv(tmp_path / "images.csv", rows)
    out = tmp_path / "out"
    options = DownloadOptions(**FAST)
    first = download_openimages("validation", out, csv_path=csv_path, limit=5,
                                options=options, progress=False)
    assert first.total == 5 and first.written == 3
    second = download_openimages("validation", out, csv_path=csv_path, options=options,
                                 progress=False)
    assert second.skipped_existing == 3 and second.skipped_failed_before == 2
    assert second.written == len(good) - 3 and second.failed_total == 0
    assert all(server.hits[f"/{i}.jpg"] == 1 for i in PHOTOS)
    assert server.hits["/missing.jpg"] == 1 and server.hits["/wrongmd5.jpg"] == 1
    # The consolidated report still lists the two permanent failures, once each.
    assert set(_read_failures(out / FAILURES_NAME)) == {"f404", "fmd5"}

    third = download_openimages("validation", out, csv_path=csv_path, progress=False,
                                options=DownloadOptions(**FAST, retry_failed=True))
    assert third.skipped_existing == len(good) and third.failed == {"http_404": 1,
                                                                    "md5_mismatch": 1}
    assert server.hits["/missing.jpg"] == 2
    assert all(server.hits[f"/{i}.jpg"] == 1 for i in PHOTOS)


def test_interrupt_then_resume(server, tmp_path):
    server.delay = 0.05
    rows = _good_rows(server)
    records = list(ImageList(_write_csv(tmp_path / "images.csv", rows)))
    out = tmp_path / "out"
    seen = []

    def interrupt_after_two(result):
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_images(records, out, DownloadOptions(**{**FAST, "workers": 2}),
                        progress=False, on_result=interrupt_after_two)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["interrupted"] and 2 <= summary["written"] < len(PHOTOS)
    _assert_no_partials(out)
    first_ids = {p.stem for p in out.glob("*.jpg")}

    resumed = download_images(records, out, DownloadOptions(**FAST), progress=False)
    assert resumed.skipped_existing == len(first_ids)
    assert resumed.written == len(PHOTOS) - len(first_ids)
    assert all(server.hits[f"/{i}.jpg"] == 1 for i in PHOTOS)


def test_kill9_midway_leaves_no_partial_file_and_resumes(server, tmp_path):
    server.delay = 0.3
    rows = _good_rows(server)
    csv_path = _write_csv(tmp_path / "images.csv", rows)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["no_proxy"] = "127.0.0.1"
    # The user-facing script in download_imgs/ (same as `lesa download openimages`).
    cmd = [sys.executable, str(REPO / "download_imgs" / "download_openimages.py"),
           "--split", "validation",
           "--out", str(out), "--csv", str(csv_path), "--workers", "1", "--timeout", "5",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(server.hits.values()) < 3 \
                and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    first_ids = {p.stem for p in out.glob("*.jpg")}
    assert 1 <= len(first_ids) < len(PHOTOS)
    _assert_no_partials(out)
    hits_before = Counter(server.hits)

    server.delay = 0.0
    resumed = download_openimages("validation", out, csv_path=csv_path,
                                  options=DownloadOptions(**FAST), progress=False)
    assert resumed.failed_total == 0 and {p.stem for p in out.glob("*.jpg")} == set(PHOTOS)
    for image_id in first_ids:  # finished before the kill: never requested again
        assert server.hits[f"/{image_id}.jpg"] == hits_before[f"/{image_id}.jpg"] == 1


def test_cli_end_to_end(server, tmp_path, capsys):
    from lesa.cli import main

    rows = _good_rows(server)[:2] + _bad_rows(server)[0][:1]
    csv_path = _write_csv(tmp_path / "images.csv", rows, header=HEADER_2018)
    out = tmp_path / "imgs"
    code = main(["download", "openimages", "--split", "validation", "--out", str(out),
                 "--csv", str(csv_path), "--workers", "2", "--timeout", "2", "--retries", "1",
                 "--backoff", "0.01", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 images listed: 2 written" in printed and "http_404: 1" in printed
    assert len(list(out.glob("*.jpg"))) == 2
    assert main(["download", "openimages", "--split", "validation", "--out", str(out),
                 "--csv", str(tmp_path / "nope.csv")]) == 1


def test_cli_defaults_to_the_data_folder(server, tmp_path, capsys):
    """Without --out and --csv: the list from DATA/OpenImages/2018_04, the images into
    DATA/OpenImages/image_data/<split>, where `lesa extract openimages` looks; it says so."""
    from lesa.cli import main

    data = tmp_path / "data"
    csv_path = data / "OpenImages" / "2018_04" / "validation-images-with-rotation.csv"
    csv_path.parent.mkdir(parents=True)
    _write_csv(csv_path, _good_rows(server)[:2], header=HEADER_2018)
    assert main(["download", "openimages", "--split", "validation", "--data-dir", str(data),
                 "--workers", "2", "--timeout", "2", "--no-progress"]) == 0
    assert len(list((data / "OpenImages" / "image_data" / "validation").glob("*.jpg"))) == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"next: lesa extract openimages --split validation --data-dir {data}"


def test_verify_existing_replaces_broken_files_and_stale_partials_go(server, tmp_path):
    rows = _good_rows(server)[:2]
    csv_path = _write_csv(tmp_path / "images.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    broken = out / f"{rows[0]['ImageID']}.jpg"  # what the original could leave when killed
    broken.write_bytes(PHOTOS[rows[0]["ImageID"]][:3000])
    stale = out / f"{rows[1]['ImageID']}.jpg.tmp-12345"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    summary = download_openimages("validation", out, csv_path=csv_path, progress=False,
                                  options=DownloadOptions(**FAST, verify_existing=True))
    assert summary.written == 2 and not stale.exists()
    _assert_no_partials(out)
    again = download_openimages("validation", out, csv_path=csv_path, progress=False,
                                options=DownloadOptions(**FAST, verify_existing=True))
    assert again.skipped_existing == 2
    assert all(server.hits[f"/{r['ImageID']}.jpg"] == 1 for r in rows)


def test_thumbnails_column_has_no_md5_check(server, tmp_path):
    body = PHOTOS["0003chelsea00000"]
    server.routes["/thumb.jpg"] = ("ok", body)
    row = {"ImageID": "t1", "OriginalURL": server.url("/missing.jpg"),
           "OriginalMD5": _md5_b64(b"the original"), "Thumbnail300KURL": server.url("/thumb.jpg")}
    csv_path = _write_csv(tmp_path / "images.csv", [row])
    summary = download_openimages("validation", tmp_path / "out", csv_path=csv_path,
                                  thumbnails=True, options=DownloadOptions(**FAST),
                                  progress=False)
    assert summary.written == 1 and server.hits["/missing.jpg"] == 0


def test_apply_rotation(server, tmp_path):
    body = PHOTOS["0001coffee000000"]  # 400x600 landscape
    server.routes["/c.jpg"] = ("ok", body)
    row = {"ImageID": "rot", "OriginalURL": server.url("/c.jpg"), "OriginalMD5": _md5_b64(body),
           "Rotation": "90.0"}
    csv_path = _write_csv(tmp_path / "images.csv", [row], header=HEADER_2018)
    plain, rotated = tmp_path / "plain", tmp_path / "rotated"
    download_openimages("validation", plain, csv_path=csv_path,
                        options=DownloadOptions(**FAST), progress=False)
    download_openimages("validation", rotated, csv_path=csv_path, progress=False,
                        options=DownloadOptions(**FAST, apply_rotation=True))
    a = simplejpeg.decode_jpeg((plain / "rot.jpg").read_bytes())
    b = simplejpeg.decode_jpeg((rotated / "rot.jpg").read_bytes())
    assert a.shape == (256, 384, 3) and b.shape == (384, 256, 3)
    assert np.abs(np.rot90(a).astype(int) - b).mean() < 3  # counter-clockwise


def test_image_list_formats(tmp_path):
    rows = [{"ImageID": "aaaa", "Subset": "train", "OriginalURL": "http://127.0.0.1/a.jpg",
             "OriginalMD5": "x", "Rotation": ""},
            {"ImageID": "bbbb", "Subset": "validation", "OriginalURL": "http://127.0.0.1/b.jpg",
             "OriginalMD5": "y", "Rotation": "270.0"},
            {"ImageID": "cccc", "Subset": "validation", "OriginalURL": "http://127.0.0.1/c.jpg",
             "OriginalMD5": "z", "Rotation": "nan"}]
    path = tmp_path / "validation-images-with-rotation.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:  # BOM tolerated
        writer = csv.DictWriter(handle, fieldnames=HEADER_2018, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    listed = list(ImageList(path, split="validation"))
    assert [r.image_id for r in listed] == ["bbbb", "cccc"]
    assert listed[0] == ImageRecord("bbbb", "http://127.0.0.1/b.jpg", "y", 270)
    assert listed[1].rotation == 0
    assert len(ImageList(path)) == 3 and len(ImageList(path, limit=1)) == 1
    thumbs = list(ImageList(path, url_column="Thumbnail300KURL"))
    assert all(r.md5 == "" for r in thumbs)  # no MD5 check for thumbnails
    with pytest.raises(DataError, match="Subset == 'test'"):
        ImageList(path, split="test")

    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,URL\nabc,http://127.0.0.1/x\n")
    with pytest.raises(DataError, match="OriginalURL"):
        ImageList(bad)
    evil = tmp_path / "evil.csv"
    evil.write_text("ImageID,OriginalURL\n../../etc/passwd,http://127.0.0.1/x\n")
    with pytest.raises(DataError, match="row 2"):
        ImageList(evil)


def test_default_image_list(tmp_path):
    with pytest.raises(ConfigError, match="--csv"):
        default_image_list("validation", tmp_path)
    v4 = tmp_path / "2018_04" / "train" / "train-images-with-labels-with-rotation.csv"
    v4.parent.mkdir(parents=True)
    v4.write_text(",".join(HEADER_2018) + "\n")
    assert default_image_list("train", tmp_path) == v4
    v3 = tmp_path / "2017_11" / "train" / "images.csv"
    v3.parent.mkdir(parents=True)
    v3.write_text(",".join(HEADER_2017) + "\n")
    assert default_image_list("train", tmp_path) == v3
    with pytest.raises(ConfigError, match="unknown split"):
        default_image_list("val", tmp_path)


def test_md5_field_formats():
    digest = hashlib.md5(b"abc").digest()
    assert md5_digest_from_csv(base64.b64encode(digest).decode()) == digest
    assert md5_digest_from_csv(digest.hex()) == digest
    with pytest.raises(FetchError) as info:
        md5_digest_from_csv("not-an-md5")
    assert info.value.reason == "bad_md5"


def test_decode_non_jpeg_and_errors(tmp_path):
    import skimage.io
    from PIL import Image

    skimage.io.imsave(tmp_path / "cat.png", skdata.chelsea())
    image = decode_image((tmp_path / "cat.png").read_bytes())
    assert image.shape == (300, 451, 3) and np.array_equal(image, skdata.chelsea())
    Image.fromarray(skdata.chelsea()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = decode_image((tmp_path / "cmyk.jpg").read_bytes())  # RGB, not the C, M, Y planes
    assert np.abs(cmyk.astype(int) - skdata.chelsea()).mean() < 3
    with pytest.raises(LesaError):
        decode_image(b"\xff\xd8\xff" + b"\x00" * 100)
    with pytest.raises(LesaError):
        decode_image(PHOTOS["0000astronaut000"][:5000])  # truncated JPEG, strict
    with pytest.raises(LesaError):
        decode_image(b"<html>not an image</html>")


def test_bad_options_are_config_errors(tmp_path):
    for bad in (dict(workers=0), dict(timeout=0), dict(retries=-1), dict(quality=101)):
        with pytest.raises(ConfigError):
            download_images([], tmp_path / "o", DownloadOptions(**bad), progress=False)
