"""Streaming batches from HDF5 feature files: the original's order, shuffling, float16, preload,
resumable positions, the same batches whatever the number of DataLoader workers, errors from
workers, and bounded memory on a file several times larger than the bound."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lesa.datasets.embeddings import save_vector_pair
from lesa.datasets.h5 import FeatureWriter, contiguous_runs, open_features
from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream
from lesa.errors import ConfigError, DataError


def write_file(path, n, dtype="float32", seed=0):
    """Record i has features filled with i (plus a small pattern) and labels_81[:, 0] = i % 2."""
    rng = np.random.default_rng(seed)
    pattern = rng.random((196, 512)).astype(np.float32) * 0.01
    with FeatureWriter(path, "nus_wide", "Train", {"labels_1k": 6, "labels_81": 3}, dtype=dtype) as w:
        for a in range(0, n, 50):
            b = min(n, a + 50)
            feats = np.arange(a, b, dtype=np.float32)[:, None, None] + pattern
            l1k = np.tile(np.array([1, -1, 0, 1, -1, 1], np.int8), (b - a, 1))
            l81 = np.stack([np.arange(a, b) % 2 * 2 - 1, -np.ones(b - a), np.ones(b - a)], 1).astype(np.int8)
            w.append([f"i{i}" for i in range(a, b)], feats, {"labels_1k": l1k, "labels_81": l81})
        w.finish()
    return path


@pytest.fixture
def split(tmp_path):
    s = open_features(write_file(tmp_path / "train.h5", 230))
    yield s
    s.close()


def rows_of(batch):
    return np.rint(batch.features[:, 0, 0].numpy()).astype(int).tolist()


def test_sequential_repeat_skips_validation_and_keeps_partial_batch(split):
    # original: dataset.skip(5000).batch(32).repeat() -> here skip 30, batches of 64
    reader = RangeReader(split, {"seen": ("labels_1k", np.array([0, 1, 3]))}, start=30, chunk_mb=1)
    plan = BatchPlan(30, 230, 64)
    stream = TrainStream(reader, plan)
    got = [rows_of(next(stream)) for _ in range(5)]
    assert got[0] == list(range(30, 94))
    assert got[3] == list(range(222, 230))  # the remainder of the epoch, not wrapped
    assert got[4] == list(range(30, 94))  # next epoch starts again after the skipped records
    assert stream.position == {"epoch": 1, "batch": 1}
    b = next(stream)
    assert b.labels["seen"].shape == (64, 3) and b.labels["seen"][0].tolist() == [1, -1, 1]
    assert b.features.dtype.is_floating_point and b.features.shape == (64, 196, 512)
    stream.close()


def test_resume_position_replays_the_same_batches(split):
    reader = RangeReader(split, {"y": ("labels_81", None)}, chunk_mb=1)
    plan = BatchPlan(0, 230, 32, shuffle=True, seed=3, block=8, buffer=64)
    full = TrainStream(reader, plan)
    ref = [rows_of(next(full)) for _ in range(12)]
    full.close()
    first = TrainStream(reader, plan)
    part = [rows_of(next(first)) for _ in range(5)]
    pos = first.position
    first.close()
    second = TrainStream(reader, plan, position=pos)
    part += [rows_of(next(second)) for _ in range(7)]
    second.close()
    assert part == ref


def test_shuffle_covers_every_record_once_per_epoch_and_differs_by_epoch():
    plan = BatchPlan(10, 1010, 32, shuffle=True, seed=1, block=16, buffer=128)
    e0, e1 = plan.epoch_order(0), plan.epoch_order(1)
    assert sorted(e0.tolist()) == list(range(10, 1010))
    assert e0.tolist() != list(range(10, 1010)) and e0.tolist() != e1.tolist()
    assert BatchPlan(10, 1010, 32, shuffle=True, seed=1, block=16, buffer=128).epoch_order(1).tolist() == e1.tolist()


def test_float16_file_and_preload_give_the_same_batches(tmp_path):
    s16 = open_features(write_file(tmp_path / "h.h5", 100, dtype="float16"))
    spec = {"y": ("labels_81", None)}
    streamed = list(RangeReader(s16, spec, chunk_mb=1).iter_batches(30))
    preloaded = list(RangeReader(s16, spec, preload="ram", progress=False).iter_batches(30))
    assert [len(b.rows) for b in streamed] == [30, 30, 30, 10]
    for a, b in zip(streamed, preloaded):
        assert a.features.dtype == b.features.dtype == torch.float16  # evaluation batches: as stored
        assert (a.features == b.features).all() and (a.labels["y"] == b.labels["y"]).all()
    # float16 storage: values are the float16 rounding of the float32 ones
    ref = open_features(write_file(tmp_path / "f.h5", 100)).read_features([7])[0]
    np.testing.assert_array_equal(streamed[0].features[7].numpy(), ref.astype(np.float16).astype(np.float32))
    s16.close()


def test_evaluation_of_a_float16_file_scores_as_float32_batches(tmp_path):
    """Evaluation hands float16 batches to the model (no float32 copy of the batch): the scores are
    bit for bit those of the same batches converted to float32 first, in fp32 and in bf16."""
    from lesa.evaluate import predict
    from lesa.device import precision_context
    from lesa.model import LESA, LESAConfig

    gen = torch.Generator().manual_seed(0)
    # (no 2x2 conv: bf16 is slow on CPUs without bfloat16 units, and the cast happens before it)
    model = LESA(torch.randn(6, 300, generator=gen), torch.randn(3, 300, generator=gen),
                 LESAConfig(n_attention=2, conv=False))
    s16 = open_features(write_file(tmp_path / "h.h5", 20, dtype="float16"))
    spec = {"seen": ("labels_1k", None), "unseen": ("labels_81", None)}
    for precision in ("fp32", "bf16"):
        got, labels = predict(model, RangeReader(s16, spec, chunk_mb=1), 8, precision=precision)
        as_float32 = torch.from_numpy(s16.read_features(np.arange(20), dtype=np.float16).astype(np.float32))
        with torch.no_grad():
            model.eval()
            with precision_context(precision, torch.device("cpu")):
                want = {h: torch.cat([model.scores(as_float32[i:i + 8])[h] for i in range(0, 20, 8)])
                        for h in got}
        for head in got:
            np.testing.assert_array_equal(got[head], want[head].float().numpy(), err_msg=f"{precision} {head}")
        assert labels["seen"].shape == (20, 6)
    s16.close()


def batches_of(reader, plan, n, shard=(0, 1), position=None):
    stream = TrainStream(reader, plan, shard=shard, position=position)
    try:
        return [(b.rows.tolist(), rows_of(b), b.labels["y"].tolist()) for b in (next(stream) for _ in range(n))]
    finally:
        stream.close()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_batches_do_not_depend_on_the_number_of_workers(tmp_path, dtype):
    split = open_features(write_file(tmp_path / "w.h5", 230, dtype=dtype))
    spec = {"y": ("labels_81", None)}
    for plan, shard in ((BatchPlan(0, 230, 16), (0, 1)),
                        (BatchPlan(10, 230, 16, shuffle=True, seed=5, block=8, buffer=48), (0, 1)),
                        (BatchPlan(0, 230, 16), (1, 3))):  # this process's slice of every global batch
        want = batches_of(RangeReader(split, spec, chunk_mb=1, workers=0), plan, 40, shard)
        for workers in (1, 2):
            assert batches_of(RangeReader(split, spec, chunk_mb=1, workers=workers), plan, 40, shard) == want
        skip = plan.batches_per_epoch + 1  # resumed at epoch 1, batch 1
        resumed = batches_of(RangeReader(split, spec, chunk_mb=1, workers=2), plan, 40 - skip, shard,
                             position={"epoch": 1, "batch": 1})
        assert resumed == want[skip:]
    loaded = RangeReader(split, spec, chunk_mb=1, workers=2, preload="ram", progress=False)
    streamed = list(RangeReader(split, spec, chunk_mb=1).iter_batches(50))
    for a, b in zip(loaded.iter_batches(50), streamed):
        assert torch.equal(a.features, b.features) and torch.equal(a.labels["y"], b.labels["y"])
    split.close()


def test_a_damaged_record_read_by_a_worker_is_the_same_data_error(tmp_path, monkeypatch):
    """A worker's DataError reaches the training loop as it is, after every window before it."""
    from lesa.datasets import h5

    path = write_file(tmp_path / "bad.h5", 120)
    real = h5.FeatureSplit._read_into

    def damaged(self, name, start, out):  # the features of record 70 fail their checksum
        if name is None and start <= 70 < start + len(out):
            raise DataError(f"{self.paths[0]}: cannot read rows 70..70 (checksum); the file is damaged")
        return real(self, name, start, out)

    monkeypatch.setattr(h5.FeatureSplit, "_read_into", damaged)  # (inherited by forked workers)
    split = open_features(path)
    for workers in (0, 2):
        seen = []
        with pytest.raises(DataError, match=r"bad\.h5: cannot read rows 70") as info:
            for batch in RangeReader(split, {"y": ("labels_81", None)}, chunk_mb=1, workers=workers).iter_batches(8):
                seen += batch.rows.tolist()
        assert "Traceback" not in str(info.value)
        assert seen == list(range(len(seen))) and seen[-1] < 70
    split.close()


def test_errors_are_clear(split):
    with pytest.raises(DataError, match="no label array 'labels'"):
        RangeReader(split, {"y": ("labels", None)})
    with pytest.raises(DataError, match="column 9"):
        RangeReader(split, {"y": ("labels_1k", np.array([9]))})
    with pytest.raises(ConfigError, match="CUDA"):
        RangeReader(split, {"y": ("labels_81", None)}, preload="gpu", device="cpu")
    with pytest.raises(DataError, match="n_validation"):
        BatchPlan(50, 50, 32)
    assert contiguous_runs(np.array([1, 2, 3, 7, 9, 10])) == [(1, 4), (7, 8), (9, 11)]


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from lesa.datasets.h5 import open_features
    from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    def rss():
        return status("VmRSS")
    def peak_rss():
        # VmHWM, not getrusage's ru_maxrss: after fork+exec, ru_maxrss keeps the forking parent's
        # peak (here: the whole pytest process), which made this test fail inside the full suite
        return status("VmHWM")
    base = rss()  # after the imports
    split = open_features(sys.argv[1])
    reader = RangeReader(split, {"y": ("labels_81", None)}, start=100, chunk_mb=16)
    plan = BatchPlan(100, len(split), 32)
    stream = TrainStream(reader, plan)
    seen = 0
    total = 0.0
    while stream.position["epoch"] < 1 or stream.position["batch"] < 3:   # one full pass and a wrap
        b = next(stream)
        seen += len(b.rows)
        total += float(b.features[:, 0, 0].sum())
    stream.close()
    peak = peak_rss()
    # then a few training iterations of the real loop over the same file, streamed
    from lesa.synth import config_for
    from lesa.train import train
    files = dict(train=sys.argv[1], test=sys.argv[1], tag_list=sys.argv[2], concepts=sys.argv[3],
                 label_vectors=sys.argv[4])
    cfg = config_for(files, "nus_wide_zero_shot", sys.argv[5], "memory", n_iters=4, eval_interval=3,
                     device="cpu")
    cfg.data.n_validation, cfg.data.eval_batch_size, cfg.data.chunk_mb = 64, 32, 16
    cfg.data.preload = "none"
    cfg.model.conv = False
    train(cfg, progress=False, final_eval=False, log=lambda *a: None)
    train_peak = peak_rss()
    print(json.dumps({"base": base, "peak": peak, "seen": seen, "total": total, "train_peak": train_peak}))
""")


@pytest.mark.slow
def test_streaming_memory_is_bounded_on_a_file_3x_larger(tmp_path):
    n = 9400  # float16 records of 196x512: 9400 * 200,704 bytes = 1.9 GB on disk
    path = tmp_path / "big.h5"
    block = (np.random.default_rng(0).random((50, 196, 512)) * 4).astype(np.float16)
    with FeatureWriter(path, "nus_wide", "Train", {"labels_1k": 2, "labels_81": 2}, dtype="float16") as w:
        for a in range(0, n, 50):
            feats = block.copy()
            feats[:, 0, 0] = np.arange(a, a + 50) % 1000
            lab = np.ones((50, 2), np.int8)
            w.append([str(i) for i in range(a, a + 50)], feats, {"labels_1k": lab, "labels_81": lab})
        w.finish()
    file_bytes = path.stat().st_size
    (tmp_path / "tags.txt").write_text("a\nb\n")
    (tmp_path / "concepts.txt").write_text("c\nd\n")
    save_vector_pair(tmp_path / "vecs.pkl", np.random.rand(2, 300), np.random.rand(2, 300))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(tmp_path / "tags.txt"),
                          str(tmp_path / "concepts.txt"), str(tmp_path / "vecs.pkl"), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    growth = res["peak"] - res["base"]
    bound = 600 * 2**20  # RSS growth allowed over the imports (torch + lesa), training included
    print(f"file {file_bytes / 2**20:.0f} MB, RSS at start {res['base'] / 2**20:.0f} MB, "
          f"peak {res['peak'] / 2**20:.0f} MB, growth {growth / 2**20:.0f} MB (bound {bound / 2**20:.0f} MB); "
          f"peak during training {res['train_peak'] / 2**20:.0f} MB")
    assert file_bytes > 3 * bound
    assert res["seen"] >= n - 100  # the whole training range went through
    assert growth < bound  # streaming alone: a few chunks in flight (measured 150-280 MB)
    assert res["train_peak"] - res["base"] < bound  # training streams too: far below the file size
    assert (tmp_path / "run" / "model.pt").exists()


def test_damaged_file_gives_a_data_error(tmp_path):
    path = write_file(tmp_path / "d.h5", 40)
    split = open_features(path)
    offset = split.files[0]._file["features"].id.get_offset()
    split.close()
    data = bytearray(path.read_bytes())
    if offset is None:  # chunked: damage the middle of the file instead
        offset = len(data) // 2
    path.write_bytes(bytes(data[: offset + 1000]))  # truncated inside the features
    try:
        split = open_features(path)
    except DataError:
        return  # refused at open: fine
    with pytest.raises(DataError, match="d.h5"):
        list(RangeReader(split, {"y": ("labels_81", None)}).iter_batches(8))
    split.close()
