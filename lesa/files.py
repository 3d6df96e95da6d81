"""Writing files so that a crash never leaves a half-written one under the final name.

``atomic_write(path, write)`` is the one way ``lesa`` writes checkpoints, reports, label-vector
pickles, downloaded images and new HDF5 files: the bytes go to a temporary file
next to ``path`` (``<name>.tmp-<pid>``), which is flushed, fsynced and renamed over ``path``.
``write_csv`` is the one CSV writer (the layout pandas' ``DataFrame.to_csv`` gave the original's
logs and reports: an unnamed index column first).
"""
from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

TMP_MARK = ".tmp-"  # temporary files are <name>.tmp-<pid>: never a final name


def _fsync_folder(folder: Path) -> None:
    try:  # makes the rename itself durable (not possible on every file system)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable, mode: int | None = None,
                 by_name: bool = False) -> Path:
    """Call ``write(file)`` on a temporary binary file next to ``path`` (``by_name``: ``write(tmp_path)``,
    for libraries that open files themselves, such as h5py), fsync it and rename it to ``path``.
    ``mode``: file permissions to set (default: the process's umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        if by_name:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # still there only when writing failed
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    return atomic_write(path, lambda f: f.write(data), mode=mode)


def remove_temporaries(folder: str | os.PathLike, name: str = "*") -> None:
    """Delete the temporary files that writes interrupted by a crash left in ``folder``."""
    for stale in Path(folder).glob(f"{name}{TMP_MARK}*"):
        stale.unlink(missing_ok=True)


def csv_cell(value) -> str:
    """Floats as Python's shortest repr (NaN as an empty cell), everything else as ``str``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy floats too
        value = float(value)
        return "" if value != value else repr(value)
    return str(value)


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV with an unnamed index column first (0, 1, ...), as the original's pandas files."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *columns])
    for i, row in enumerate(rows):
        writer.writerow([i, *(csv_cell(v) for v in row)])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """``(columns, rows)`` of a file ``write_csv`` wrote (the index column dropped)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    if not table:
        return [], []
    drop = 1 if table[0] and table[0][0] in ("", "Unnamed: 0") else 0
    return table[0][drop:], [row[drop:] for row in table[1:]]
