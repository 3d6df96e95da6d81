"""TF1 checkpoints without TensorFlow: V2 bundles and V1 tables, checksums, hostile files."""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cramjam

from lesa.errors import CheckpointError
from lesa.tf_formats import list_tf_checkpoint, read_tf_checkpoint
from lesa.tf_formats.crc32c import crc32c, mask
from lesa.tf_formats.sstable import SSTable
from tf_writers import (encode_fixed32_field, encode_length_field, encode_varint, encode_varint_field, write_table,
                        write_tf_checkpoint, write_tf_checkpoint_v1)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NUS_TENSORS = {  # the model tensors of the original's NUS-WIDE checkpoint (+ 12 RMSProp slots = 22)
    "Variable": ((), np.float32),
    "conv/is_train": ((), np.bool_),
    "conv/conv/weights": ((2, 2, 512, 512), np.float32),
    "conv/conv/batch_normalization/beta": ((512,), np.float32),
    "conv/conv/batch_normalization/gamma": ((512,), np.float32),
    "conv/conv/batch_normalization/moving_mean": ((512,), np.float32),
    "conv/conv/batch_normalization/moving_variance": ((512,), np.float32),
    "attention_layer/w_att_1": ((513, 512), np.float32),
    "attention_layer/w_att_2": ((513, 10), np.float32),
    "prediction_frac/W": ((512, 300), np.float32),
}
NUS_SLOTTED = ["conv/conv/weights", "conv/conv/batch_normalization/beta", "conv/conv/batch_normalization/gamma",
               "attention_layer/w_att_1", "attention_layer/w_att_2", "prediction_frac/W"]


def sample_tensors(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((6, 5)).astype(np.float32),
        "scope/b": rng.standard_normal(7),
        "count": np.array(42, dtype=np.int64),
        "ids": np.array([-3, 0, 70000], dtype=np.int32),
        "flag": np.array(True),
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "bytes": rng.integers(0, 255, (4,), dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        "names": np.array([b"cat", b"", b"dog house"], dtype=object),
    }


def assert_same(ours: dict, ref: dict) -> None:
    assert sorted(ours) == sorted(ref)
    for name, value in ref.items():
        assert ours[name].dtype == value.dtype, name
        assert ours[name].shape == value.shape, name
        assert np.array_equal(ours[name], value), name


# ---------------------------------------------------------------- V2 bundle, synthetic

def test_v2_roundtrip_every_dtype(tmp_path):
    tensors = sample_tensors()
    prefix = write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    assert_same(read_tf_checkpoint(prefix), tensors)
    listing = list_tf_checkpoint(prefix)
    assert {n: (i.dtype, i.shape) for n, i in listing.items()} == {
        n: (v.dtype, v.shape) for n, v in tensors.items()}


def test_v2_path_forms_and_selection(tmp_path):
    tensors = sample_tensors(1)
    prefix = write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    for form in [str(prefix), f"{prefix}.index", f"{prefix}.data-00000-of-00001"]:
        assert_same(read_tf_checkpoint(form), tensors)
    # a directory with a TF state file, even one naming the folder the checkpoint was written in
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/somewhere/else/model.ckpt"\n')
    assert_same(read_tf_checkpoint(tmp_path), tensors)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    assert_same(read_tf_checkpoint(tmp_path), tensors)
    part = read_tf_checkpoint(prefix, names=["w", "flag"])
    assert list(part) == ["w", "flag"]
    with pytest.raises(CheckpointError, match="not in the checkpoint: nope"):
        read_tf_checkpoint(prefix, names=["nope"])
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        read_tf_checkpoint(tmp_path / "other.ckpt")


def test_v2_mmap_is_read_only_and_verified(tmp_path):
    tensors = sample_tensors(2)
    prefix = write_tf_checkpoint(tmp_path / "m.ckpt", tensors)
    mapped = read_tf_checkpoint(prefix, mmap=True)
    assert isinstance(mapped["w"], np.memmap) and not mapped["w"].flags.writeable
    assert_same({k: np.asarray(v) for k, v in mapped.items()}, tensors)


def test_v2_missing_data_file_lists_but_does_not_read(tmp_path):
    prefix = write_tf_checkpoint(tmp_path / "m.ckpt", sample_tensors())
    (tmp_path / "m.ckpt.data-00000-of-00001").unlink()
    assert "w" in list_tf_checkpoint(prefix)
    with pytest.raises(CheckpointError, match="data file missing"):
        read_tf_checkpoint(prefix)


def test_v2_corrupted_tensor_named(tmp_path):
    tensors = {"a": np.ones(100, np.float32), "b": np.arange(50, dtype=np.float32)}
    prefix = write_tf_checkpoint(tmp_path / "m.ckpt", tensors)
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[400 + 8] ^= 0x01  # inside "b" (starts at byte 400)
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for tensor 'b'"):
        read_tf_checkpoint(prefix)
    assert np.array_equal(read_tf_checkpoint(prefix, names=["a"])["a"], tensors["a"])
    data.write_bytes(bytes(raw[:450]))
    with pytest.raises(CheckpointError, match=r"tensor 'b'.*truncated"):
        read_tf_checkpoint(prefix, names=["b"])


def _index_with_entry(path, entry: bytes) -> None:
    header = encode_varint_field(1, 1)
    write_table(path, [(b"", header), (b"huge", entry)])


def test_v2_hostile_declared_sizes_refused_before_allocating(tmp_path):
    shape = b"".join(encode_length_field(2, encode_varint_field(1, d)) for d in (1 << 20, 1 << 20))
    entry = (encode_varint_field(1, 1) + encode_length_field(2, shape) + encode_varint_field(5, 1 << 42)
             + encode_fixed32_field(6, 0))
    _index_with_entry(tmp_path / "m.ckpt.index", entry)
    (tmp_path / "m.ckpt.data-00000-of-00001").write_bytes(b"\0" * 64)
    assert list_tf_checkpoint(tmp_path / "m.ckpt")["huge"].shape == (1 << 20, 1 << 20)
    with pytest.raises(CheckpointError, match="truncated"):
        read_tf_checkpoint(tmp_path / "m.ckpt")
    # shape and size that disagree
    bad = encode_varint_field(1, 1) + encode_length_field(2, shape) + encode_varint_field(5, 16)
    _index_with_entry(tmp_path / "m.ckpt.index", bad)
    with pytest.raises(CheckpointError, match="should take"):
        list_tf_checkpoint(tmp_path / "m.ckpt")
    # resource / unknown dtypes
    _index_with_entry(tmp_path / "m.ckpt.index", encode_varint_field(1, 20))
    with pytest.raises(CheckpointError, match="resource"):
        list_tf_checkpoint(tmp_path / "m.ckpt")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(CheckpointError, match="not a TF table"):
        read_tf_checkpoint(junk)
    (tmp_path / "tiny.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="too short"):
        list_tf_checkpoint(tmp_path / "tiny.ckpt")


def test_bfloat16_and_big_endian(tmp_path):
    values = np.array([1.5, -2.25, 2.0**34], np.float32)  # exactly representable in bfloat16
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    big = np.array([1, -2, 3], ">i4").tobytes()

    def entry(dtype, dims, offset, payload):
        shape = b"".join(encode_length_field(2, encode_varint_field(1, d)) for d in dims)
        return (encode_varint_field(1, dtype) + encode_length_field(2, shape) + encode_varint_field(4, offset)
                + encode_varint_field(5, len(payload)) + encode_fixed32_field(6, mask(crc32c(payload))))

    header = encode_varint_field(1, 1) + encode_varint_field(2, 1)  # endianness BIG
    write_table(tmp_path / "m.ckpt.index", [(b"", header), (b"bf", entry(14, (3,), 0, bits)),
                                            (b"i", entry(3, (3,), len(bits), big))])
    (tmp_path / "m.ckpt.data-00000-of-00001").write_bytes(bits + big)
    # bfloat16 stored big-endian would be swapped too; here only check the int32 swap and bf16 widening
    out = read_tf_checkpoint(tmp_path / "m.ckpt", names=["i"])
    assert out["i"].tolist() == [1, -2, 3] and out["i"].dtype == np.int32
    header_le = encode_varint_field(1, 1)
    write_table(tmp_path / "m.ckpt.index", [(b"", header_le), (b"bf", entry(14, (3,), 0, bits))])
    out = read_tf_checkpoint(tmp_path / "m.ckpt")
    assert out["bf"].dtype == np.float32 and np.array_equal(out["bf"], values)


# ---------------------------------------------------------------- V1 table, synthetic

def test_v1_roundtrip_with_slices(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {"vgg/conv/weights": rng.standard_normal((9, 3, 2)).astype(np.float32),
               "vgg/conv/biases": rng.standard_normal(4).astype(np.float32),
               "d": rng.standard_normal((5, 2)), "i32": np.array([-1, 5, 1 << 30], np.int32),
               "i64": np.array([-(1 << 40), 7], np.int64), "scalar": np.array(2.5, np.float32)}
    for split in (None, 2):
        path = write_tf_checkpoint_v1(tmp_path / f"v1_{split}.ckpt", tensors, split_rows=split)
        out = read_tf_checkpoint(path)
        assert_same({k: out[k] for k in tensors}, tensors)
        assert {n: i.shape for n, i in list_tf_checkpoint(path).items()} == {n: v.shape for n, v in tensors.items()}


def test_v1_missing_slice_detected(tmp_path):
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(6, 2)}
    path = write_tf_checkpoint_v1(tmp_path / "v1.ckpt", tensors, split_rows=2)
    with SSTable(path) as table:
        items = [(bytes(k), bytes(v)) for k, v in table.items()]
    write_table(tmp_path / "cut.ckpt", items[:-1])  # drop the last slice
    with pytest.raises(CheckpointError, match=r"'w'.*8 of its 12 values"):
        read_tf_checkpoint(tmp_path / "cut.ckpt")


# ---------------------------------------------------------------- fuzzing

def _exact_or_checkpoint_error(path, reference: dict) -> None:
    try:
        out = read_tf_checkpoint(path)
    except CheckpointError:
        return
    assert_same(out, reference)  # if nothing was detected, the values must be exactly right


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_fuzz")
    tensors = sample_tensors(5)
    write_tf_checkpoint(root / "v2.ckpt", tensors)
    v1_tensors = {"a": np.linspace(-1, 1, 40, dtype=np.float32).reshape(8, 5), "b": np.arange(3, dtype=np.int64)}
    write_tf_checkpoint_v1(root / "v1.ckpt", v1_tensors, split_rows=3)
    return root, tensors, v1_tensors


@FUZZ
@given(which=st.sampled_from(["index", "data", "v1"]), data=st.data())
def test_fuzz_truncation(tmp_path, fuzz_files, which, data):
    root, tensors, v1_tensors = fuzz_files
    name = {"index": "v2.ckpt.index", "data": "v2.ckpt.data-00000-of-00001", "v1": "v1.ckpt"}[which]
    raw = (root / name).read_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    for f in root.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / name).write_bytes(raw[:cut])
    target = tmp_path / ("v1.ckpt" if which == "v1" else "v2.ckpt")
    with pytest.raises(CheckpointError):
        read_tf_checkpoint(target)


@FUZZ
@given(which=st.sampled_from(["index", "data", "v1"]), data=st.data())
def test_fuzz_byte_flips(tmp_path, fuzz_files, which, data):
    root, tensors, v1_tensors = fuzz_files
    name = {"index": "v2.ckpt.index", "data": "v2.ckpt.data-00000-of-00001", "v1": "v1.ckpt"}[which]
    raw = bytearray((root / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    for f in root.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / name).write_bytes(bytes(raw))
    if which == "v1":
        _exact_or_checkpoint_error(tmp_path / "v1.ckpt", v1_tensors)
    else:
        _exact_or_checkpoint_error(tmp_path / "v2.ckpt", tensors)
        try:
            list_tf_checkpoint(tmp_path / "v2.ckpt")
        except CheckpointError:
            pass


@FUZZ
@given(blob=st.binary(min_size=0, max_size=400))
def test_fuzz_random_table_bytes(tmp_path, blob):
    # random bytes that end in the table magic reach the footer/index parsing
    path = tmp_path / "r.ckpt"
    path.write_bytes(blob + struct.pack("<Q", 0xDB4775248B80FB57))
    with pytest.raises(CheckpointError):
        read_tf_checkpoint(path)


# ---------------------------------------------------------------- goldens recorded from the original

def test_golden_model_nus_init(golden_root):
    prefix = golden_root("model_nus") / "init" / "model.ckpt"
    listing = list_tf_checkpoint(prefix)
    expected = dict(NUS_TENSORS)
    for name in NUS_SLOTTED:
        expected[f"{name}/RMSProp"] = expected[name]
        expected[f"{name}/RMSProp_1"] = expected[name]
    assert len(listing) == 22  # the golden README says 21; the file holds 22 (incl. Variable, conv/is_train)
    assert {n: (i.shape, i.dtype) for n, i in listing.items()} == {
        n: (s, np.dtype(d)) for n, (s, d) in expected.items()}
    values = read_tf_checkpoint(prefix)
    assert values["conv/is_train"].dtype == np.bool_
    assert float(values["Variable"]) == pytest.approx(0.001)
    for name in NUS_SLOTTED:
        weights = values[name]
        assert np.all(np.isfinite(weights))
        assert np.all(weights.view(np.uint32) & 0xFFFF == 0), f"{name} not bfloat16-rounded"
        assert np.all(values[f"{name}/RMSProp"] == 1.0)  # TF1 RMSProp: mean square starts at 1
        assert np.all(values[f"{name}/RMSProp_1"] == 0.0)
    w = values["conv/conv/weights"]
    assert 0 < np.abs(w).max() < 1 and w.std() > 1e-3


def test_golden_model_nus_final_and_variant(golden_root):
    nus = golden_root("model_nus")
    init = read_tf_checkpoint(nus / "init")  # directory with a TF state file
    final = read_tf_checkpoint(nus / "final" / "model.ckpt")
    assert set(final) == set(NUS_TENSORS)
    for name in NUS_SLOTTED:
        assert final[name].shape == init[name].shape
        assert np.all(np.isfinite(final[name]))
        assert 0 < np.abs(final[name] - init[name]).max() < 0.1  # 4 small RMSProp steps
    assert np.any(final["conv/conv/batch_normalization/moving_mean"] != 0)
    variant = golden_root("model_variant")
    listing = list_tf_checkpoint(variant / "init" / "model.ckpt")
    assert listing["attention_layer/w_att_1"].shape == (3, 513, 512)
    assert "conv/conv/biases" in listing and "vecs" in listing
    values = read_tf_checkpoint(variant / "final" / "model.ckpt")
    assert all(np.all(np.isfinite(v)) for v in values.values() if v.dtype.kind == "f")


def test_golden_corruption_detected(golden_root, tmp_path):
    src = golden_root("model_nus") / "init"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for tensor '[^']+'"):
        read_tf_checkpoint(tmp_path / "model.ckpt")


def test_real_released_index(shared_data):
    index = shared_data("released_nus_wide", "model.ckpt.index")
    listing = list_tf_checkpoint(index)
    assert len(listing) == 22  # the golden README says 21; the file holds 22 (incl. Variable, conv/is_train)
    assert listing["attention_layer/w_att_2"].shape == (513, 10)
    assert listing["conv/conv/weights"].shape == (2, 2, 512, 512)
    assert listing["conv/is_train"].dtype == np.bool_
    with pytest.raises(CheckpointError, match="data file missing"):
        read_tf_checkpoint(index)


def test_golden_vgg19_v1(golden_root):
    path = golden_root("vgg19_slim") / "vgg_19.ckpt"
    listing = list_tf_checkpoint(path)
    convs = [n for n in listing if n.endswith("/weights")]
    assert len(convs) == 16 and "vgg_19/fc8/biases" in listing
    assert listing["vgg_19/conv1/conv1_1/weights"].shape == (3, 3, 3, 64)
    assert listing["vgg_19/conv5/conv5_4/weights"].shape == (3, 3, 512, 512)
    values = read_tf_checkpoint(path, names=["vgg_19/conv1/conv1_1/weights", "vgg_19/conv5/conv5_4/weights",
                                             "vgg_19/conv5/conv5_4/biases"])
    for name in ["vgg_19/conv1/conv1_1/weights", "vgg_19/conv5/conv5_4/weights"]:
        w = values[name]
        assert w.dtype == np.float32 and np.all(np.isfinite(w))
        assert 0.02 < np.count_nonzero(w) / w.size < 0.06  # 4% non-zero
        assert np.all(w.view(np.uint32) & 0xFFFF == 0)
    assert np.count_nonzero(values["vgg_19/conv5/conv5_4/biases"]) == 512


# ---------------------------------------------------------------- snappy-compressed table blocks

def _v1_items(tmp_path, tensors):
    plain = write_tf_checkpoint_v1(tmp_path / "plain.ckpt", tensors)
    with SSTable(plain) as table:
        return [(bytes(k), bytes(v)) for k, v in table.items()]


def test_v1_table_with_snappy_blocks(tmp_path):
    tensors = {"a": np.arange(30, dtype=np.float32).reshape(5, 6), "b": np.array([1.5, 2.5]),
               "c": np.zeros((40, 50), np.float32)}  # compresses into back-references
    write_table(tmp_path / "snappy.ckpt", _v1_items(tmp_path, tensors), compress=cramjam.snappy.compress_raw)
    assert_same(read_tf_checkpoint(tmp_path / "snappy.ckpt"), tensors)


@pytest.mark.parametrize("damage, message", [
    (lambda block: encode_varint(1 << 40) + block, "declares 1099511627776 bytes, more than the allowed"),
    (lambda block: bytes(cramjam.snappy.compress_raw(block))[:-3], "corrupted snappy block"),
    (lambda block: bytes(cramjam.snappy.compress_raw(block)) + b"\0", "corrupted snappy block"),
])
def test_bad_snappy_block_named(tmp_path, damage, message):
    # the checksum is right (it covers the stored bytes): only decompressing can tell
    write_table(tmp_path / "bad.ckpt", _v1_items(tmp_path, {"a": np.ones(64, np.float32)}), compress=damage)
    with pytest.raises(CheckpointError, match=message) as info:
        read_tf_checkpoint(tmp_path / "bad.ckpt")
    assert "bad.ckpt" in str(info.value)
