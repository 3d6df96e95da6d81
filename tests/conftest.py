"""Shared fixtures: the golden references recorded from the original code live in ../shared.

Tests that need them skip with a clear reason when ../shared is absent (a user's clone).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LESA_SHARED", REPO.parent / "shared"))
NO_SHARED = "needs ../shared (golden references and real label data); absent in this checkout"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{NO_SHARED}: {path} not found")
    return path


@pytest.fixture(scope="session")
def golden_root(tmp_path_factory) -> "GoldenRoot":
    return GoldenRoot(tmp_path_factory.mktemp("golden"))


class GoldenRoot:
    """Unpacks ``../shared/golden/<name>.tar.xz`` once per test session."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, name: str) -> Path:
        target = self.root / name
        if not target.exists():
            archive = shared_path("golden", f"{name}.tar.xz")
            with tarfile.open(archive) as tar:
                tar.extractall(self.root, filter="data")
        return target


@pytest.fixture
def shared_data():
    return lambda *parts: shared_path("data", *parts)


def rel_err(ours, ref) -> float:
    import numpy as np
    import torch

    if torch.is_tensor(ours):  # any device
        ours = ours.detach().cpu()
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(ours - ref) / (denom if denom > 0 else 1.0))
