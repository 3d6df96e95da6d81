"""The CUDA paths against the goldens (skipped without a GPU; run them on a machine with one):
the model's outputs, losses and gradients, the golden four training steps through every step
mode, ``lesa train`` with ``train.step = "cuda_graph"`` against the eager loop, inference, and
VGG-19 conv5_4 features (full float32, TF32, bfloat16, nvjpeg decoding).

Training and scoring on a GPU run in full float32 (``lesa.device.set_tf32(False)``): the
tolerances are the CPU tests'. Measured errors are printed (``pytest -s`` shows them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import test_golden_model
from conftest import rel_err
from lesa.device import set_tf32
from lesa.evaluate import predict
from test_golden_model import OUTPUTS, golden  # noqa: F401  (the parametrised golden fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_MODES = ["eager", "cuda_graph", "compile+cuda_graph"]


@pytest.fixture(autouse=True)
def full_float32():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    set_tf32(False)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_golden_outputs_losses_and_gradients_on_the_gpu(golden):  # noqa: F811
    model = golden.model().cuda().eval()
    with torch.no_grad():
        out = model(torch.tensor(golden.inputs["eval_features"]).cuda())
    for name in OUTPUTS:
        assert rel_err(getattr(out, name), golden.expected[f"init_eval/{name}"]) <= 1e-5, name
    test_golden_model.check_training_mode(golden, model.train(), *(t.cuda() for t in golden.batch(0)))


@pytest.mark.parametrize("mode", GPU_MODES)
def test_golden_four_steps_on_the_gpu(golden, mode):  # noqa: F811
    test_golden_model.test_four_training_steps_reach_the_originals_weights(golden, mode, device="cuda")


def test_predict_on_the_gpu_equals_the_cpu(golden):  # noqa: F811
    model = golden.model()
    features = torch.tensor(golden.inputs["eval_features"])
    cpu, _ = predict(model, features, batch_size=3)
    gpu, _ = predict(model.cuda(), features, batch_size=3)
    for head in cpu:
        assert rel_err(gpu[head], cpu[head]) <= 1e-5, head
    for precision, bound in (("tf32", 1e-2), ("bf16", 5e-2)):
        fast, _ = predict(model, features, batch_size=3, precision=precision)
        err = max(rel_err(fast[h], cpu[h]) for h in cpu)
        print(f"\n[cuda] inference {precision} vs fp32 scores: {err:.2e} relative")
        assert err <= bound, precision


@pytest.mark.parametrize("step", ["cuda_graph"])
@pytest.mark.parametrize("preload", ["gpu", "none"])
def test_lesa_train_fast_step_on_the_gpu_equals_eager(tmp_path, step, preload):
    """The training loop (features preloaded on the GPU, or streamed from the file through
    page-locked windows) with the captured step gives the eager loop's weights and log."""
    import csv

    from lesa.checkpoint import load_checkpoint
    from lesa.synth import SynthSpec, config_for, write_synthetic
    from lesa.train import train

    files = write_synthetic(tmp_path / "data", SynthSpec(n_train=200, n_test=40, n_tags=24, n_concepts=6,
                                                         n_shared=3, seed=1, dtype="float16"), progress=False)
    runs = {}
    for name in ("eager", step):
        cfg = config_for(files, "nus_wide_zero_shot", tmp_path / name.replace("+", "_"), "gpu", n_iters=30,
                         eval_interval=10, device="cuda", step=name)
        cfg.data.n_validation, cfg.data.eval_batch_size, cfg.data.preload = 32, 32, preload
        cfg.data.chunk_mb = 1  # streamed: several windows
        cfg.model.n_attention = 3
        train(cfg, progress=False, final_eval=False, log=lambda *a: None)
        runs[name] = cfg.out_dir
    a = load_checkpoint(runs["eager"] / "model.pt")["model_state"]
    b = load_checkpoint(runs[step] / "model.pt")["model_state"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    rows_a = list(csv.reader(open(runs["eager"] / "log.csv")))
    rows_b = list(csv.reader(open(runs[step] / "log.csv")))
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b) == 5  # header + iterations 0, 10, 20, 29
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        for x, y in zip(ra[1:], rb[1:]):
            assert float(x) == pytest.approx(float(y), rel=1e-3, abs=1e-5)


def test_streamed_gpu_batches_from_worker_processes_equal_the_main_process(tmp_path):
    """A CUDA reader's batches (page-locked windows from DataLoader workers) equal those read in the
    training process, while the consumer keeps several batches alive on the GPU."""
    from lesa.datasets.h5 import open_features
    from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream
    from test_stream import write_file

    split = open_features(write_file(tmp_path / "f.h5", 230, dtype="float16"))
    plan = BatchPlan(0, 230, 16, shuffle=True, seed=2, block=8, buffer=64)
    got = {}
    for workers in (0, 2):
        stream = TrainStream(RangeReader(split, {"y": ("labels_81", None)}, chunk_mb=1, device="cuda",
                                         workers=workers), plan)
        got[workers] = [next(stream) for _ in range(40)]
        stream.close()
    for a, b in zip(got[0], got[2]):
        assert a.rows.tolist() == b.rows.tolist() and a.features.is_cuda and b.features.is_cuda
        assert torch.equal(a.features, b.features) and torch.equal(a.labels["y"], b.labels["y"])
    split.close()


# -- VGG-19 conv5_4 on the GPU ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg_golden(golden_root):
    from lesa.features import VGG19Conv54

    root = golden_root("vgg19_slim")
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    return root, np.load(root / "expected.npz"), names, VGG19Conv54.from_tf_slim(root / "vgg_19.ckpt").cuda().eval()


def test_vgg_features_on_the_gpu(vgg_golden):
    from lesa.features import decode_jpeg, vgg_preprocess_batch
    from lesa.device import precision_context

    root, expected, names, model = vgg_golden
    images = [decode_jpeg((root / "images" / n).read_bytes(), n) for n in names]
    x = vgg_preprocess_batch(images, device="cuda")
    for precision, bound in (("fp32", 1e-5), ("tf32", 1e-2), ("bf16", 5e-2)):
        with torch.no_grad(), precision_context(precision, "cuda"):
            feats = model(x).float().cpu().numpy()
        err = max(rel_err(feats[i], expected[f"features/{n}"]) for i, n in enumerate(names))
        print(f"\n[cuda] VGG-19 conv5_4 {precision} vs the original's features: {err:.2e} relative (worst image)")
        assert err <= bound, precision


def test_nvjpeg_decoder_against_the_exact_one(vgg_golden):
    from lesa.features import decode_jpeg, vgg_preprocess_batch
    from lesa.features.extract import gpu_decode, image_loader

    root, expected, names, model = vgg_golden
    paths = [root / "images" / n for n in names]
    blobs = [p.read_bytes() for p in paths]
    (batch,) = image_loader(paths, range(len(paths)), "gpu", len(paths), 0, torch.device("cuda"))
    positions, images, failures = gpu_decode(batch, torch.device("cuda"), 10**9)
    assert positions == list(range(len(blobs))) and not failures
    diffs = []
    for blob, name, image in zip(blobs, names, images):
        exact = decode_jpeg(blob, name).astype(np.int16)
        assert image.shape == exact.shape, name
        diffs.append(np.abs(image.cpu().numpy().astype(np.int16) - exact))
    mean_abs = float(np.mean([d.mean() for d in diffs]))
    worst = int(max(d.max() for d in diffs))
    with torch.no_grad():
        feats = model(vgg_preprocess_batch(images, device="cuda")).cpu().numpy()
    err = max(rel_err(feats[i], expected[f"features/{n}"]) for i, n in enumerate(names))
    print(f"\n[cuda] nvjpeg vs TF-exact decode: mean |diff| {mean_abs:.3f} levels, max {worst}; "
          f"conv5_4 features from nvjpeg pixels vs the original's: {err:.2e} relative (worst image)")
    assert mean_abs <= 2.0 and err <= 5e-2


def test_extract_features_with_the_nvjpeg_decoder(vgg_golden, tmp_path):
    from lesa.datasets.h5 import open_features
    from lesa.features.extract import ExtractionSource, extract_features

    root, expected, names, model = vgg_golden
    paths = [root / "images" / n for n in names]
    source = ExtractionSource("bench", "bench", list(names), paths, {}, lambda pos: {})
    summary = extract_features(source, tmp_path / "f.h5", model, device="cuda", batch_size=4, workers=2,
                               decoder="gpu", progress=False)
    assert summary.written == len(names)
    with open_features(tmp_path / "f.h5") as split:
        feats, _ = split.read(np.arange(len(names)))
    err = max(rel_err(feats[i], expected[f"features/{n}"]) for i, n in enumerate(names))
    print(f"\n[cuda] lesa extract --decoder gpu vs the original's features: {err:.2e} relative (worst image)")
    assert err <= 5e-2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_extract_features_on_the_gpu_writes_the_originals_features(vgg_golden, tmp_path, dtype):
    """The GPU pipeline gives a file whose features equal the original's and whose checksums HDF5
    verifies."""
    from lesa.datasets.h5 import open_features
    from lesa.features.extract import ExtractionSource, extract_features

    root, expected, names, model = vgg_golden
    paths = [root / "images" / n for n in names]
    source = ExtractionSource("bench", "bench", list(names), paths, {}, lambda pos: {})
    summary = extract_features(source, tmp_path / "f.h5", model, device="cuda", batch_size=4, workers=2,
                               dtype=dtype, progress=False)
    assert summary.written == len(names)
    with open_features(tmp_path / "f.h5") as split:
        feats, _ = split.read(np.arange(len(names)))  # HDF5 checks every chunk's Fletcher-32 here
        ids = list(split.img_ids)
    bound = 1e-5 if dtype == "float32" else 1e-3
    for i, name in enumerate(names):
        assert ids[i] == name
        assert rel_err(feats[i], expected[f"features/{name}"]) <= bound, name
