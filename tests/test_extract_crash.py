"""kill -9 in the middle of `lesa extract`, then --resume: the final file equals an uninterrupted run's."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lesa.cli import main
from lesa.datasets.h5 import partial_path
from test_extract_datasets import assert_same_file, build_nus_tree
from test_h5 import KILL_AT_WRITE

ARGS = ["--split", "Train", "--backbone", "random", "--device", "cpu", "--workers", "0",
        "--batch-size", "1", "--no-progress"]
# `lesa extract` killed (-9) just before its KILL_AT-th write into an HDF5 array: 6 per image (id
# bytes, id ends, ids, features, labels_1k, labels_81)
KILLED_AT_WRITE = "import sys\nKILL_AT = int(sys.argv[1])\n" + KILL_AT_WRITE + """
from lesa.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill9_then_resume(tmp_path, shared_data):
    root = tmp_path / "nus"
    build_nus_tree(root, shared_data)
    ref = tmp_path / "ref.h5"
    assert main(["extract", "nus-wide", "--root", str(root), "--out", str(ref), *ARGS]) == 0

    out = tmp_path / "out.h5"
    cmd = ["extract", "nus-wide", "--root", str(root), "--out", str(out), *ARGS]
    # killed in the 2nd image's features; resumed, in the labels of the next but one (the image
    # between fails to decode); resumed again, in the labels of the last image
    for kill_at, resume in ((10, []), (11, ["--resume"]), (17, ["--resume"])):
        proc = subprocess.run([sys.executable, "-c", KILLED_AT_WRITE, str(kill_at), *cmd, *resume],
                              capture_output=True)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        assert partial_path(out).exists() and not out.exists(), "a killed run leaves no file under the final name"
    assert main([*cmd, "--resume"]) == 0
    assert_same_file(out, ref)
    assert (tmp_path / "out.h5.failed.tsv").read_text().count("\ttruncated\t") == 1


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["extract", "nus-wide", "--root", str(tmp_path), "--split", "Train", "--out",
                 str(tmp_path / "x.h5"), "--backbone", "random", "--device", "cpu"]) == 1
    assert "TagList1k.txt not found" in capsys.readouterr().err
    assert main(["merge-shards", str(tmp_path / "none*.h5"), "--out", str(tmp_path / "m.h5")]) == 1
    assert "no feature files match" in capsys.readouterr().err


def _source_with_failures(folder):
    """Five small JPEGs; images 1 and 4 are cut short (they fail to decode)."""
    import numpy as np
    import simplejpeg

    from lesa.features.extract import ExtractionSource

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        data = simplejpeg.encode_jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), quality=90)
        path = folder / f"{i}.jpg"
        path.write_bytes(data[: len(data) // 3] if i in (1, 4) else data)
        paths.append(path)
    return ExtractionSource("test", "Train", [p.name for p in paths], paths, {}, lambda pos: {})


def test_a_crash_while_resuming_keeps_the_failed_image_log(tmp_path, monkeypatch):
    """--resume rewrites the failed-image log (the lines before the resume point); a crash at that
    moment must not lose the failures found by the earlier run."""
    from lesa.features import extract as extract_module
    from lesa.features.extract import build_model, extract_features

    source = _source_with_failures(tmp_path)
    model = build_model("random", None)
    out = tmp_path / "out.h5"
    log_path = tmp_path / "out.h5.failed.tsv"
    options = dict(batch_size=1, workers=0, progress=False)
    skipped = []

    def interrupt_at_the_second_failure(message):
        skipped.append(message)
        if len(skipped) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # images 0, 2 and 3 written, 1 and 4 failed
        extract_features(source, out, model, log=interrupt_at_the_second_failure, **options)
    assert "\t1.jpg\t" in log_path.read_text()

    def crash(*args, **kwargs):
        raise OSError("simulated crash while the log is rewritten")

    monkeypatch.setattr(extract_module, "atomic_write_text", crash)
    with pytest.raises(OSError, match="simulated"):
        extract_features(source, out, model, resume=True, **options)
    assert "\t1.jpg\t" in log_path.read_text()  # the earlier failure survived the crash
    monkeypatch.undo()

    summary = extract_features(source, out, model, resume=True, **options)
    assert (summary.written, summary.resumed_from, summary.failed) == (3, 3, {"truncated": 2})
    lines = log_path.read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["1.jpg", "4.jpg"]
