"""Decode edge cases, TF1 resize arithmetic, VGG layout/precision (no ../shared needed)."""
from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
import torch

from lesa.errors import CheckpointError, ConfigError, DataError, ImageError
from lesa.features import VGG19Conv54, decode_jpeg, vgg_preprocess, vgg_preprocess_batch
from lesa.features.preprocess import RGB_MEAN, crop_plan, pack_crops, resized_size, vgg_preprocess_packed
from lesa.device import precision_context
from lesa.features.vgg import conv_names

RNG = np.random.default_rng(0)


def smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], -1).astype(np.uint8)


def reason(data, **kw):
    with pytest.raises(ImageError) as info:
        decode_jpeg(data, "x.jpg", **kw)
    assert "x.jpg" in str(info.value)
    return info.value.reason


def test_decode_errors():
    good = simplejpeg.encode_jpeg(smooth_image(64, 80), quality=90)
    assert decode_jpeg(good).shape == (64, 80, 3)
    assert reason(b"") == "empty"
    assert reason(b"<html>404</html>") == "not_image"
    assert reason(b"GIF89a" + bytes(30)) == "gif"
    assert reason(good[: len(good) // 2]) == "truncated"
    assert reason(good, max_pixels=1000) == "too_large"
    cmyk = simplejpeg.encode_jpeg(RNG.integers(0, 255, (16, 16, 4), dtype=np.uint8), colorspace="CMYK")
    assert reason(cmyk) == "cmyk"
    flipped = bytearray(good)
    flipped[3:40] = bytes(37)
    assert reason(bytes(flipped)) in ("corrupt", "truncated")
    # trailing bytes after the end-of-image marker: TF1 only warned; same pixels
    np.testing.assert_array_equal(decode_jpeg(good + b"\x00\x01junk"), decode_jpeg(good))


def test_grayscale_jpeg_becomes_three_equal_channels():
    gray = smooth_image(40, 50)[:, :, :1].copy()
    data = simplejpeg.encode_jpeg(gray, colorspace="GRAY")
    image = decode_jpeg(data)
    assert image.shape == (40, 50, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])


def png_bytes(image: np.ndarray) -> bytes:
    """A minimal 8-bit PNG writer (grey, RGB or RGBA) for the tests."""
    import struct
    import zlib

    h, w, c = image.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_png_inside_jpg_is_decoded_like_tf():
    rgba = RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_jpeg(png_bytes(rgba)), rgba[..., :3])  # alpha dropped
    gray = rgba[..., :1].copy()
    data = png_bytes(gray)
    np.testing.assert_array_equal(decode_jpeg(data), np.repeat(gray, 3, axis=2))
    assert reason(data[:40]) in ("corrupt", "truncated")


def test_resize_size_rounding_as_tf_slim():
    assert resized_size(512, 512) == (256, 256)
    assert resized_size(400, 600) == (256, 384)
    assert resized_size(451, 300) == (385, 256)  # 451 * float32(256/300) = 384.85 -> 385
    assert resized_size(100, 150) == (256, 384)
    assert resized_size(3, 1000) == (256, 85333)
    (lo, hi, lerp), _ = crop_plan(512, 512)
    assert lo[0] == 32 and lerp[0] == 0.0  # offset 16 * scale 2.0
    assert np.all(hi <= 511) and np.all((lerp >= 0) & (lerp < 1))


def test_preprocess_shapes_and_batch_equals_single():
    images = [smooth_image(37, 300), smooth_image(500, 260), RNG.integers(0, 255, (224, 224, 3), dtype=np.uint8)]
    batch = vgg_preprocess_batch(images)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    for i, image in enumerate(images):
        torch.testing.assert_close(vgg_preprocess(image), batch[i], rtol=0, atol=0)
    # a 256x256 image is cropped, not resampled: pixels minus the means
    image = RNG.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    out = vgg_preprocess(image).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, image[16:240, 16:240].astype(np.float32) - [123.68, 116.78, 103.94], atol=1e-4)
    with pytest.raises(ImageError):
        vgg_preprocess(np.zeros((10, 10), np.uint8))


def whole_image_reference(image: np.ndarray) -> np.ndarray:
    """TF1's resize + crop + mean sampled from the whole image in numpy float32 (3, 224, 224)."""
    (y_lo, y_hi, dy), (x_lo, x_hi, dx) = crop_plan(*image.shape[:2])
    im = image.astype(np.float32)
    dx, dy = dx[None, :, None], dy[:, None, None]
    top = im[y_lo][:, x_lo] + (im[y_lo][:, x_hi] - im[y_lo][:, x_lo]) * dx
    bottom = im[y_hi][:, x_lo] + (im[y_hi][:, x_hi] - im[y_hi][:, x_lo]) * dx
    return (top + (bottom - top) * dy - np.float32(RGB_MEAN)).transpose(2, 0, 1)


def test_packing_only_the_cropped_window_gives_the_same_numbers():
    """What the extraction workers send: the rows and columns the resize + crop reads."""
    sizes = [(375, 500), (500, 375), (333, 500), (224, 224), (256, 256), (37, 300), (1, 700), (900, 2),
             (1, 1), (3, 1000)] + [tuple(RNG.integers(1, 900, 2)) for _ in range(20)]
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    pixels, plan = pack_crops(images)
    assert pixels.numel() < sum(h * w * 3 for h, w in sizes)
    assert pack_crops(images[:1])[0].numel() == 329 * 329 * 3  # 500 x 375 photo: 58% of its pixels
    batch = vgg_preprocess_packed(pixels, plan)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch[i].numpy(), whole_image_reference(image), err_msg=str(sizes[i]))
    empty, no_plan = pack_crops([])
    assert empty.numel() == 0 and vgg_preprocess_packed(empty, no_plan).shape == (0, 3, 224, 224)
    with pytest.raises(ImageError):
        pack_crops([np.zeros((10, 10), np.uint8)])


def test_vgg_layout_and_tf_weight_mapping():
    rng = np.random.default_rng(1)
    tensors = {}
    model0 = VGG19Conv54()
    for conv, name in zip(model0.conv_layers(), conv_names()):
        tensors[f"vgg_19/{name}/weights"] = rng.standard_normal((3, 3, conv.in_channels, conv.out_channels)).astype(np.float32) * 0.05
        tensors[f"vgg_19/{name}/biases"] = rng.standard_normal(conv.out_channels).astype(np.float32) * 0.01
    model = VGG19Conv54.from_tf_tensors(tensors)
    first = model.conv_layers()[0]
    np.testing.assert_array_equal(first.weight[5, 2, 0, 1].item(), tensors["vgg_19/conv1/conv1_1/weights"][0, 1, 2, 5])
    x = torch.randn(1, 3, 112, 112)  # 224 gives 14 x 14; 112 gives 7 x 7 at a quarter of the cost
    with torch.no_grad():
        out = model(x)
        fmap = model.features(x)  # (1, 512, 7, 7)
    assert out.shape == (1, 49, 512)
    # region r = row * width + col, as TF's NHWC reshape
    torch.testing.assert_close(out[0, 3 * 7 + 5], fmap[0, :, 3, 5])
    bad = dict(tensors)
    bad["vgg_19/conv2/conv2_1/weights"] = np.zeros((3, 3, 64, 64), np.float32)
    with pytest.raises(CheckpointError, match="conv2_1"):
        VGG19Conv54.from_tf_tensors(bad)


def test_precision_context():
    model = VGG19Conv54().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with precision_context("bf16", "cpu"):
            low = model(x).float()
    assert low.shape == ref.shape
    assert torch.linalg.norm(low - ref) / torch.linalg.norm(ref) < 0.05
    with pytest.raises(ConfigError):
        with precision_context("fp8", "cpu"):
            pass


def test_torchvision_weights_offline_error_or_file(tmp_path):
    with pytest.raises(CheckpointError):
        VGG19Conv54.from_torchvision(tmp_path / "missing.pth")
    # torchvision's layout: a state dict saved from torchvision's vgg19 loads directly
    from torchvision.models.vgg import cfgs, make_layers

    tv = torch.nn.Module()
    tv.features = make_layers(cfgs["E"])  # torchvision's VGG-19 feature layers (no slow fc init)
    torch.save(tv.state_dict(), tmp_path / "vgg19.pth")
    model = VGG19Conv54.from_torchvision(tmp_path / "vgg19.pth")
    x = torch.rand(1, 3, 64, 64) * 255  # raw pixels
    slim_input = x - torch.tensor([123.68, 116.78, 103.94])[:, None, None]
    tv_input = (x / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        ours = model(slim_input)
        ref = tv.features[:36](tv_input).permute(0, 2, 3, 1).reshape(1, 16, 512)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_torchvision_weights_offline_name_each_commands_flag(monkeypatch):
    """`lesa extract` takes the file with --weights, `lesa tag` / `lesa visualize` with
    --torchvision-weights: the offline error names both."""
    import urllib.error

    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError) as info:
        VGG19Conv54.from_torchvision()
    message = str(info.value)
    assert "lesa extract --backbone torchvision --weights PATH" in message
    assert "`lesa tag` / `lesa visualize --torchvision-weights PATH`" in message


def test_gpu_decoder_fallbacks_run_on_cpu(tmp_path):
    """The decoder=gpu routing (nvjpeg for complete RGB JPEGs, the exact decoder for the rest)
    exercised with torchvision's CPU decoder."""
    from lesa.features.extract import gpu_decode, image_loader, model_input

    image = smooth_image(260, 270)
    good = simplejpeg.encode_jpeg(image, quality=90)
    cmyk = simplejpeg.encode_jpeg(RNG.integers(0, 255, (16, 16, 4), dtype=np.uint8), colorspace="CMYK")
    blobs = [good, good[: len(good) // 2], png_bytes(image), cmyk, b"junk"]
    paths = []
    for i, data in enumerate(blobs):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    paths.append(tmp_path / "gone.jpg")
    # the workers only read the files and mark which nvjpeg may take; the main process decodes
    (batch,) = image_loader(paths, range(6), "gpu", 8, 0, torch.device("cpu"))
    assert batch.nvjpeg == [True, False, False, False, False] and [f[:2] for f in batch.failures] == [(5, "unreadable")]
    assert batch.pixels.numpy().tobytes() == b"".join(blobs)
    positions, images, failures = gpu_decode(batch, torch.device("cpu"))
    assert positions == [0, 2] and [image.shape for image in images] == [(260, 270, 3)] * 2
    np.testing.assert_array_equal(images[1].numpy(), image)  # the PNG, by the exact decoder
    positions, x, failures = model_input(batch, torch.device("cpu"))
    assert positions == [0, 2] and x.shape == (2, 3, 224, 224)
    assert sorted((p, r) for p, r, _ in failures) == [(1, "truncated"), (3, "cmyk"), (4, "not_image"), (5, "unreadable")]
    torch.testing.assert_close(x[1], vgg_preprocess(image), rtol=0, atol=0)  # the PNG: the exact decoder
    # integer-accurate libjpeg vs TF's fast DCT: close, not identical
    assert (x[0] - vgg_preprocess(decode_jpeg(good))).abs().max() <= 8


@pytest.mark.parametrize("decoder", ["exact", "gpu"])
def test_worker_processes_hand_over_packed_batches(tmp_path, decoder):
    """image_loader with real worker processes: batches arrive as packed uint8 (decoded crop
    windows, or the files' bytes for nvjpeg) with every image accounted for, in order."""
    from lesa.features.extract import image_loader

    images = [smooth_image(h, w) for h, w in [(60, 70), (300, 200), (90, 400), (240, 240), (50, 50)]]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(simplejpeg.encode_jpeg(image, quality=90))
    paths += [tmp_path / "missing.jpg", tmp_path / "junk.jpg"]
    paths[-1].write_bytes(b"junk")
    seen, failed = [], {}
    for batch in image_loader(paths, range(len(paths)), decoder, 3, 2, torch.device("cpu")):
        seen += batch.positions
        failed.update({pos: reason for pos, reason, _ in batch.failures})
        if not batch.positions:
            continue
        if decoder == "exact":
            got = vgg_preprocess_packed(batch.pixels, batch.plan)
            want = vgg_preprocess_batch([decode_jpeg(paths[p].read_bytes()) for p in batch.positions])
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:
            files = batch.pixels.split(batch.sizes)
            assert [f.numpy().tobytes() for f in files] == [paths[p].read_bytes() for p in batch.positions]
            assert batch.nvjpeg == [pos != 6 for pos in batch.positions]  # junk: the exact decoder's
    if decoder == "exact":  # decoded (or rejected) in the workers
        assert seen == [0, 1, 2, 3, 4] and failed == {5: "unreadable", 6: "not_image"}
    else:  # only read there: the main process decodes (and rejects) them
        assert seen == [0, 1, 2, 3, 4, 6] and failed == {5: "unreadable"}


def test_running_out_of_shared_memory_is_a_clear_error_and_resumable(tmp_path, monkeypatch):
    import lesa.features.extract as extract
    from lesa.datasets.h5 import partial_path

    def full(images):  # what torch raises in a worker when /dev/shm is full
        raise RuntimeError("unable to write to file </torch_7_1234_0>: No space left on device (28)")

    monkeypatch.setattr(extract, "pack_crops", full)  # the forked worker inherits it
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for path in paths:
        path.write_bytes(simplejpeg.encode_jpeg(smooth_image(40, 50), quality=90))
    source = extract.ExtractionSource("bench", "bench", [p.name for p in paths], paths, {}, lambda pos: {})
    with pytest.raises(DataError, match=r"shared memory \(/dev/shm\).*No space left.*--shm-size.*--resume"):
        extract.extract_features(source, tmp_path / "f.h5", extract.build_model("random", None), batch_size=2,
                                 workers=1, progress=False)
    assert partial_path(tmp_path / "f.h5").exists() and not (tmp_path / "f.h5").exists()
