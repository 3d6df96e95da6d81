"""Label word vectors: the original's pickles (read safely) and vectors built from a GloVe text file.

The original's pickles: NUS-WIDE ``(vecs_1k (1000,300), vecs_81 (81,300))``, Open Images ``(seen
(7186,300), unseen (2594,300))`` and ``unseen_labels.pkl`` (an object array of label ids). They are
read by a restricted unpickler that only rebuilds numpy arrays and plain containers: a pickle that
would import anything else (and so could run code) is refused with ``DataError``.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lesa.errors import DataError, ShapeError

# (module, name) pairs a label-vector pickle may reference; nothing else can be imported
# (_codecs.encode: protocol-2 pickles written by Python 3 encode raw bytes as latin-1 text through it)
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                      for name in ("_reconstruct", "scalar"))}
_DTYPE_CLASS = re.compile(r"\w+DType")  # numpy>=1.25 pickles dtypes by their class

MAX_PICKLE_BYTES = 1 << 31  # 2 GiB: far above any label-vector file; refuses absurd inputs


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS or (module in ("numpy", "numpy.dtypes") and _DTYPE_CLASS.fullmatch(name)):
            return super().find_class(module, name)
        raise DataError(f"{self._path}: the pickle references {module}.{name}; only numpy arrays are allowed in "
                        "label-vector pickles (refused without running it). Re-save the vectors as a pickle of "
                        "numpy arrays, or build them from GloVe with `lesa build-vectors`")


def load_pickle(path: str | os.PathLike):
    """Unpickle a file of numpy arrays/dtypes and plain containers; anything else, or a damaged
    file, is a ``DataError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"label-vector file {path} not found")
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {size} bytes is too large for a label-vector pickle")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncation, bad opcodes, an impossible size, an inconsistent array
        raise DataError(f"{path}: not a valid label-vector pickle ({type(exc).__name__}: {exc}); "
                        "the file is truncated or corrupted — download it again") from exc


def _as_matrix(value, path, what: str, dim: int | None) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind != "f":
        desc = f"{type(value).__name__} {getattr(value, 'shape', '')} {getattr(value, 'dtype', '')}"
        raise ShapeError(f"{path}: {what} must be a 2-d float array (labels, dim); got {desc.strip()}")
    if dim is not None and value.shape[1] != dim:
        raise ShapeError(f"{path}: {what} has {value.shape[1]} dimensions; expected {dim}")
    if not np.all(np.isfinite(value)):
        raise DataError(f"{path}: {what} contains NaN or infinite values")
    return np.ascontiguousarray(value, dtype=np.float32)


def load_vector_pair(path: str | os.PathLike, dim: int | None = 300) -> tuple[np.ndarray, np.ndarray]:
    """The original's label-vector pickle: a pair ``(first (A, dim), second (B, dim))`` float32."""
    pair = load_pickle(path)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"{path}: expected a pair of arrays (seen, unseen); got {type(pair).__name__}"
                        f"{' of length ' + str(len(pair)) if isinstance(pair, (tuple, list)) else ''}")
    return (_as_matrix(pair[0], path, "the first array", dim), _as_matrix(pair[1], path, "the second array", dim))


def save_vector_pair(path: str | os.PathLike, first: np.ndarray, second: np.ndarray) -> Path:
    """Write a pair of float32 arrays in the original's pickle format (readable by ``load_vector_pair``)."""
    from lesa.files import atomic_write

    pair = (np.asarray(first, np.float32), np.asarray(second, np.float32))
    # a temporary file renamed when complete: an interrupted write never leaves a cut pickle
    return atomic_write(path, lambda f: pickle.dump(pair, f, protocol=3))


def load_label_ids_pickle(path: str | os.PathLike) -> list[str]:
    """``unseen_labels.pkl``: a numpy object array of label ids -> list of str."""
    value = load_pickle(path)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: expected an array of label-id strings")
    return value


def read_label_list(path: str | os.PathLike) -> list[str]:
    """A text file with one label per line (CRLF or LF); blank trailing lines ignored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"label list {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text label list ({exc})") from exc
    labels = [line.strip() for line in text.rstrip().splitlines()]
    if not labels:
        raise DataError(f"{path}: the label list is empty")
    if any(not label for label in labels):
        raise DataError(f"{path}: line {labels.index('') + 1} is empty; one label per line expected")
    return labels


@dataclass
class GloveVectors:
    """Result of ``vectors_from_glove``: ``vectors (L, dim)`` float32 in label order and a report."""

    vectors: np.ndarray
    labels: list[str]
    missing_words: dict[str, list[str]] = field(default_factory=dict)  # label -> its words not found
    unknown_labels: list[str] = field(default_factory=list)  # no word found: zero vectors

    def report(self) -> str:
        if not self.missing_words and not self.unknown_labels:
            return f"all {len(self.labels)} labels found"
        lines = [f"{len(self.missing_words)} of {len(self.labels)} labels have words missing from GloVe "
                 f"({len(self.unknown_labels)} all of them: zero vectors):"]
        lines += [f"  {label}: {', '.join(words) or '(no word)'}" for label, words in self.missing_words.items()]
        return "\n".join(lines)


def label_words(label: str) -> list[str]:
    """Words of a label as GloVe spells them: lower case, split on spaces, '_', '-', '/' and '&'."""
    return [w for w in re.split(r"[\s_\-/&,()]+", label.lower()) if w]


def _preview(names: Sequence[str], n: int = 20) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (" ..." if len(names) > n else "")


def vectors_from_glove(glove_path: str | os.PathLike, labels: Sequence[str], dim: int | None = None,
                       allow_missing_labels: bool = False) -> GloveVectors:
    """Label vectors ``(L, dim)`` from a GloVe text file (streamed once), multi-word labels the mean
    of their words. Labels none of whose words is found are a ``DataError`` naming them, or with
    ``allow_missing_labels`` zero vectors (``lesa tag`` drops them)."""
    glove_path = Path(glove_path)
    if not glove_path.exists():
        raise DataError(f"GloVe file {glove_path} not found")
    words_of = {label: label_words(label) for label in labels}
    wanted = {w for words in words_of.values() for w in words}
    found: dict[str, np.ndarray] = {}
    with open(glove_path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in wanted or word in found:
                continue
            try:
                with np.errstate(over="ignore"):  # beyond float32 -> inf, reported just below
                    vec = np.array(rest.split(), dtype=np.float32)
            except ValueError as exc:
                raise DataError(f"{glove_path}: line {lineno} ({word!r}) is not 'word v1 v2 ...' ({exc})") from exc
            if dim is None:
                dim = vec.size
            if vec.size != dim or dim == 0:
                raise DataError(f"{glove_path}: line {lineno} ({word!r}) has {vec.size} values; expected "
                                f"{dim or 'at least 1'}")
            if not np.all(np.isfinite(vec)):  # NaN, inf, or beyond float32 range (1e39 -> inf)
                raise DataError(f"{glove_path}: line {lineno} ({word!r}) has NaN or infinite values; "
                                "the file is corrupted — download it again")
            found[word] = vec
            if len(found) == len(wanted):
                break
    if dim is None:
        raise DataError(f"{glove_path}: none of the words of the {len(labels)} label(s) ({_preview(labels)}) "
                        "is in the file; give labels in words the file has, or another GloVe text file "
                        "('word v1 ... vD' per line)")
    vectors = np.zeros((len(labels), dim), dtype=np.float32)
    missing = {label: [w for w in words if w not in found] for label, words in words_of.items()}
    for i, label in enumerate(labels):
        got = [found[w] for w in words_of[label] if w in found]
        if got:
            vectors[i] = np.mean(got, axis=0)
    unknown = [label for label in labels if len(missing[label]) == len(words_of[label])]
    if unknown and not allow_missing_labels:
        raise DataError(f"{glove_path}: no word of {len(unknown)} label(s) is in the file: {_preview(unknown)}; "
                        "rename these labels in words the file has, or give them zero vectors (`lesa build-vectors "
                        "--allow-missing`; allow_missing_labels=True in Python)")
    return GloveVectors(vectors=vectors, labels=list(labels),
                        missing_words={label: lost for label, lost in missing.items() if lost or label in unknown},
                        unknown_labels=unknown)
