"""TFRecord framing, CRC32C, tf.train.Example and the original's feature-file schemas."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lesa.datasets.tfrecord_source import iter_feature_batches, iter_feature_records
from lesa.errors import TFRecordError
from lesa.tf_formats import iter_tfrecords, parse_example
from lesa.tf_formats.crc32c import crc32c, mask, masked_crc32c, unmask
from lesa.tf_formats.tfrecord import detect_compression
from tf_writers import encode_example, encode_key, encode_length_field, encode_varint, write_tfrecords

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GOLDEN_FILES = {  # expected.npz prefix -> file
    "nus": "NUS_WIDE_Test_full_feature_ZLIB.tfrecords",
    "oi_train": "train_feature_2018_04_ZLIB.tfrecords",
    "oi_test": "OI_seen_unseen_test_feature_2018_04_ZLIB.tfrecords",
}
LABEL_KEYS = {"nus": {"labels_1k": "label_1k", "labels_81": "label_81"}, "oi_train": {"labels": "label"},
              "oi_test": {"seen_labels": "seen_label", "unseen_labels": "unseen_label"}}


# ---------------------------------------------------------------- CRC32C

def bytewise_crc32c(data: bytes) -> int:
    """The textbook definition, one bit at a time (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"\0" * 32) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), split=st.integers(0, 5000))
def test_crc32c_equals_bytewise_and_streams(data, split):
    reference = bytewise_crc32c(data)
    assert crc32c(data) == reference
    assert crc32c(data[split:], crc32c(data[:split])) == reference
    assert crc32c(np.frombuffer(data, np.uint8)) == reference
    assert crc32c(memoryview(bytearray(data))[split:], crc32c(bytearray(data[:split]))) == reference


def test_crc32c_of_arrays_is_of_their_bytes():
    data = np.random.default_rng(0).integers(0, 256, (1 << 22) + 12345, dtype=np.uint8)
    whole = crc32c(data)
    assert crc32c(data[1000:], crc32c(data[:1000])) == whole == crc32c(data.tobytes())
    assert crc32c(data[:3000]) == bytewise_crc32c(data[:3000].tobytes())
    floats = data[: 4 * 6000].view("<f4").reshape(60, 100)
    assert crc32c(floats) == crc32c(floats.tobytes())
    assert crc32c(floats[:, ::3]) == crc32c(floats[:, ::3].tobytes())  # not contiguous


@given(st.integers(0, 2**32 - 1))
def test_mask_roundtrip(value):
    assert unmask(mask(value)) == value


# ---------------------------------------------------------------- framing

RECORDS = [b"", b"a", b"hello world" * 100, bytes(range(256)) * 50]


@pytest.mark.parametrize("compression", ["", "ZLIB", "GZIP"])
def test_roundtrip_and_detection(tmp_path, compression):
    plain_name = tmp_path / "data.tfrecords"  # name says nothing: content sniffing decides
    assert write_tfrecords(plain_name, RECORDS, compression=compression) == len(RECORDS)
    assert detect_compression(plain_name) == compression
    assert list(iter_tfrecords(plain_name)) == RECORDS
    assert list(iter_tfrecords(plain_name, compression=compression or "none")) == RECORDS
    named = tmp_path / f"x_{compression or 'PLAIN'}.tfrecords"
    write_tfrecords(named, RECORDS)  # compression from the name, as the original
    assert detect_compression(named, None) == compression
    assert list(iter_tfrecords(named)) == RECORDS


def test_explicit_compression_overrides_and_errors(tmp_path):
    path = tmp_path / "data_ZLIB.tfrecords"
    write_tfrecords(path, RECORDS, compression="")  # a plain file despite its name
    assert list(iter_tfrecords(path)) == RECORDS  # sniffing sees a valid plain header
    with pytest.raises(TFRecordError, match="record 0"):
        list(iter_tfrecords(path, compression="ZLIB"))
    with pytest.raises(TFRecordError, match="unknown compression"):
        list(iter_tfrecords(path, compression="LZ4"))
    with pytest.raises(TFRecordError, match="not found"):
        list(iter_tfrecords(tmp_path / "missing.tfrecords"))


def test_empty_file_and_concatenated_gzip_members(tmp_path):
    empty = tmp_path / "empty.tfrecords"
    empty.write_bytes(b"")
    assert list(iter_tfrecords(empty)) == []
    one, two = tmp_path / "1.tfrecords", tmp_path / "2.tfrecords"
    write_tfrecords(one, RECORDS[:2], compression="GZIP")
    write_tfrecords(two, RECORDS[2:], compression="GZIP")
    both = tmp_path / "both.tfrecords"
    both.write_bytes(one.read_bytes() + two.read_bytes())
    assert list(iter_tfrecords(both)) == RECORDS


def _read_until_error(path, compression=None):
    got = []
    try:
        for record in iter_tfrecords(path, compression=compression):
            got.append(record)
    except TFRecordError as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("compression", ["", "ZLIB"])
def test_truncation_keeps_earlier_records(tmp_path, compression):
    path = tmp_path / "t.tfrecords"
    records = [bytes([i]) * (1000 + i) for i in range(6)]
    write_tfrecords(path, records, compression=compression)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    got, exc = _read_until_error(path, compression)
    assert exc is not None and got == records[: len(got)]
    assert f"record {len(got)}" in str(exc) and str(path) in str(exc)
    assert f"the {len(got)} records before it were read" in str(exc)


@FUZZ
@given(compression=st.sampled_from(["", "ZLIB", "GZIP"]), data=st.data())
def test_fuzz_truncation_and_flips(tmp_path, compression, data):
    path = tmp_path / "f.tfrecords"
    records = [bytes([i % 256]) * (i * 37 % 300) for i in range(8)]
    write_tfrecords(path, records, compression=compression)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        flipped = False
    else:
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        flipped = True
    path.write_bytes(bytes(raw))
    got, exc = _read_until_error(path, compression)
    # never garbage: what was yielded is an exact prefix; anything short of all records is an error
    assert got == records[: len(got)]
    # undetectable only: a plain file cut exactly at a record boundary (or emptied), or a flip in
    # gzip header fields that do not affect the data (mtime, OS)
    if exc is None and (flipped or compression) and len(raw) > 0:
        assert got == records


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path, blob):
    path = tmp_path / "r.tfrecords"
    path.write_bytes(blob)
    for compression in (None, "", "ZLIB", "GZIP"):
        try:
            list(iter_tfrecords(path, compression=compression))
        except TFRecordError:
            pass


def test_huge_declared_length_refused(tmp_path):
    import struct

    length = struct.pack("<Q", 1 << 40)
    path = tmp_path / "h.tfrecords"
    path.write_bytes(length + struct.pack("<I", masked_crc32c(length)) + b"x" * 100)
    with pytest.raises(TFRecordError, match="exceeds"):
        list(iter_tfrecords(path))
    comp = tmp_path / "h_ZLIB.tfrecords"
    comp.write_bytes(zlib.compress(path.read_bytes()))
    with pytest.raises(TFRecordError, match="exceeds"):
        list(iter_tfrecords(comp, max_record_bytes=1 << 20))


# ---------------------------------------------------------------- tf.train.Example

def test_example_roundtrip():
    features = {"img_id": b"abc", "names": [b"x", b"yz"], "floats": np.array([1.5, -2.0], np.float32),
                "ints": np.array([-5, 0, 1 << 40], np.int64), "empty": []}
    parsed = parse_example(encode_example(features))
    assert parsed["img_id"] == [b"abc"] and parsed["names"] == [b"x", b"yz"] and parsed["empty"] == []
    assert parsed["floats"].dtype == np.float32 and parsed["floats"].tolist() == [1.5, -2.0]
    assert parsed["ints"].dtype == np.int64 and parsed["ints"].tolist() == [-5, 0, 1 << 40]


def test_example_unpacked_repeated_values():
    # older writers emit repeated scalars unpacked: one tagged value each
    floats = b"".join(encode_key(1, 5) + np.float32(v).tobytes() for v in (1.0, 2.5))
    ints = b"".join(encode_key(1, 0) + encode_varint(v) for v in (3, -1))
    feature_f = encode_length_field(2, floats)
    feature_i = encode_length_field(3, ints)
    entries = (encode_length_field(1, encode_length_field(1, b"f") + encode_length_field(2, feature_f))
               + encode_length_field(1, encode_length_field(1, b"i") + encode_length_field(2, feature_i)))
    parsed = parse_example(encode_length_field(1, entries))
    assert parsed["f"].tolist() == [1.0, 2.5] and parsed["i"].tolist() == [3, -1]


@FUZZ
@given(blob=st.binary(max_size=200))
def test_fuzz_parse_example(blob):
    try:
        parsed = parse_example(blob, where="fuzz")
    except TFRecordError as exc:
        assert "fuzz" in str(exc)
    else:
        assert isinstance(parsed, dict)


@FUZZ
@given(data=st.data())
def test_fuzz_example_flips(data):
    blob = bytearray(encode_example({"img_id": b"q" * 20, "feature": np.arange(30, dtype=np.float32)}))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    try:
        parse_example(bytes(blob))
    except TFRecordError:
        pass


# ---------------------------------------------------------------- the original's feature schemas

def _nus_example(img_id: str, rng) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    feature = rng.random((196, 512), dtype=np.float32)
    l1k = rng.integers(-1, 2, 1000).astype(np.float32)
    l81 = rng.choice([-1.0, 1.0], 81).astype(np.float32)
    record = encode_example({"img_id": img_id.encode(), "feature": feature.tobytes(),
                             "label_1k": l1k.tobytes(), "label_81": l81.tobytes()})
    return record, feature, l1k, l81


def test_synthetic_nus_records(tmp_path):
    rng = np.random.default_rng(0)
    made = [_nus_example(f"img{i}.jpg", rng) for i in range(5)]
    path = tmp_path / "NUS_WIDE_Train_full_feature_ZLIB.tfrecords"
    write_tfrecords(path, [m[0] for m in made])
    records = list(iter_feature_records(path, dataset="nus-wide"))
    assert [r.img_id for r in records] == [f"img{i}.jpg" for i in range(5)]
    for record, (_, feature, l1k, l81) in zip(records, made):
        assert record.feature.dtype == np.float32 and np.array_equal(record.feature, feature)
        assert record.labels["labels_1k"].dtype == np.int8
        assert np.array_equal(record.labels["labels_1k"], l1k) and np.array_equal(record.labels["labels_81"], l81)
    ids, feats, labels = next(iter_feature_batches([path, path], batch_size=8))
    assert feats.shape == (8, 196, 512) and labels["labels_81"].shape == (8, 81) and ids[5] == "img0.jpg"
    with pytest.raises(TFRecordError, match="not openimages"):
        list(iter_feature_records(path, dataset="openimages"))


@pytest.mark.parametrize("problem, message", [
    ("short_feature", "feature has 400 bytes"),
    ("bad_label", "values other than -1, 0, 1"),
    ("unknown_keys", "match none of the original's feature schemas"),
    ("two_ids", "one bytes value"),
])
def test_schema_errors(tmp_path, problem, message):
    fields = {"img_id": b"a", "feature": np.zeros(196 * 512, np.float32).tobytes(),
              "label": np.zeros(7186, np.int32).tobytes()}
    if problem == "short_feature":
        fields["feature"] = b"\0" * 400
    elif problem == "bad_label":
        fields["label"] = np.full(7186, 2, np.int32).tobytes()
    elif problem == "unknown_keys":
        fields["extra"] = b"x"
    elif problem == "two_ids":
        fields["img_id"] = [b"a", b"b"]
    path = tmp_path / "train_feature.tfrecords"
    write_tfrecords(path, [encode_example(fields)])
    with pytest.raises(TFRecordError, match=message) as info:
        list(iter_feature_records(path))
    assert "record 0" in str(info.value)


def test_mixed_label_widths_refused(tmp_path):
    def rec(n):
        return encode_example({"img_id": b"a", "feature": np.zeros(196 * 512, np.float32).tobytes(),
                               "label": np.zeros(n, np.int32).tobytes()})

    path = tmp_path / "x.tfrecords"
    write_tfrecords(path, [rec(10), rec(12)])
    with pytest.raises(TFRecordError, match="record 1.*12 columns"):
        list(iter_feature_records(path))


# ---------------------------------------------------------------- goldens written by TF

def _check_against_expected(records, expected, prefix):
    ids = [str(i) for i in expected[f"{prefix}/img_ids"]]
    assert [r.img_id for r in records] == ids
    for i, record in enumerate(records):
        assert np.array_equal(record.feature, expected[f"{prefix}/{i}/feature"])
        for name, key in LABEL_KEYS[prefix].items():
            assert np.array_equal(record.labels[name], expected[f"{prefix}/{i}/{key}"])


@pytest.mark.parametrize("prefix", sorted(GOLDEN_FILES))
def test_golden_files_read_exactly(golden_root, prefix):
    root = golden_root("tfrecord")
    expected = np.load(root / "expected.npz")
    records = list(iter_feature_records(root / GOLDEN_FILES[prefix]))
    _check_against_expected(records, expected, prefix)
    assert detect_compression(root / GOLDEN_FILES[prefix]) == "ZLIB"


def test_golden_uncompressed_sample(golden_root):
    root = golden_root("tfrecord")
    expected = np.load(root / "expected.npz")
    path = root / "uncompressed_nus_sample.tfrecords"
    assert detect_compression(path) == ""
    records = list(iter_feature_records(path, dataset="nus-wide"))
    ids = [str(i) for i in expected["nus/img_ids"]]
    assert records and all(r.img_id in ids for r in records)
    for record in records:
        i = ids.index(record.img_id)
        assert np.array_equal(record.feature, expected[f"nus/{i}/feature"])
        assert np.array_equal(record.labels["labels_1k"], expected[f"nus/{i}/label_1k"])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_golden_damage_named_and_prefix_kept(golden_root, tmp_path, damage):
    root = golden_root("tfrecord")
    expected = np.load(root / "expected.npz")
    raw = bytearray((root / GOLDEN_FILES["nus"]).read_bytes())
    if damage == "truncate":
        raw = raw[: int(len(raw) * 0.7)]
    else:
        raw[int(len(raw) * 0.7)] ^= 0x04
    path = tmp_path / GOLDEN_FILES["nus"]
    path.write_bytes(bytes(raw))
    got = []
    with pytest.raises(TFRecordError) as info:
        for record in iter_feature_records(path):
            got.append(record)
    assert 0 < len(got) < 5
    assert f"record {len(got)}" in str(info.value) and str(path) in str(info.value)
    _check_against_expected(got, {**expected, "nus/img_ids": expected["nus/img_ids"][: len(got)]}, "nus")
