"""Planted synthetic datasets in the real file layouts, and the ``lesa demo`` run.

Label vectors mix a few latent topics, so unseen vectors lie near the seen ones' span; each of an
image's 1-3 labels is painted into a random 4x4 patch of the 14x14 regions as ``relu(A v_l)`` (one
hidden map ``A``) over background noise. Learning ``A`` from seen labels transfers to unseen ones;
ignoring the labels leaves zero-shot mAP at chance. ``write_synthetic`` writes a data folder in the
``lesa.layout`` layout with the real datasets' files (label lists, vector pickle, HDF5 splits), in
chunks of ``chunk`` images, so the bundled configurations read it as they are.
"""
from __future__ import annotations

import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tqdm import tqdm

from lesa import layout
from lesa.datasets.embeddings import save_vector_pair
from lesa.datasets.h5 import FeatureWriter

DIM_W2V = 300
N_TOPICS = 24
PATCH = 4  # a present label covers a PATCH x PATCH block of the 14x14 regions


@dataclass
class SynthSpec:
    kind: str = "nus_wide"  # nus_wide | openimages
    n_train: int = 1200
    n_validation: int = 300  # openimages only (NUS-WIDE validates on the first train records)
    n_test: int = 400
    n_tags: int = 60  # nus_wide: tags; openimages: seen labels
    n_concepts: int = 16  # nus_wide: concepts (unseen); openimages: unseen labels
    n_shared: int = 10  # nus_wide: concepts that are also tags (NUS-WIDE: 75 of 81)
    n_top_unseen: int = 0  # openimages: rows in top_400_unseen.csv (0 = n_concepts // 2)
    dtype: str = "float32"
    seed: int = 0
    signal: float = 1.0  # strength of a painted label against the background
    chunk: int = 256


PRESETS = {
    "demo": dict(n_train=1500, n_test=400, n_tags=60, n_concepts=16, n_shared=10),
    "tiny": dict(n_train=120, n_validation=40, n_test=60, n_tags=24, n_concepts=8, n_shared=4),
    "nus-wide": dict(n_train=161789, n_test=107859, n_tags=1000, n_concepts=81, n_shared=75),
    "openimages-small": dict(kind="openimages", n_train=2000, n_validation=300, n_test=500, n_tags=200,
                             n_concepts=60),
}


class PlantedWorld:
    """Label vectors and the hidden visual map of one synthetic world."""

    def __init__(self, n_labels: int, seed: int):
        rng = np.random.default_rng([seed, 1])
        topics = rng.standard_normal((N_TOPICS, DIM_W2V))
        mix = rng.standard_normal((n_labels, N_TOPICS)) * (rng.random((n_labels, N_TOPICS)) < 0.3)
        mix[np.arange(n_labels), rng.integers(0, N_TOPICS, n_labels)] += 1.5  # no empty mixture
        self.vecs = (mix @ topics + 0.3 * rng.standard_normal((n_labels, DIM_W2V))).astype(np.float32)
        unit = self.vecs / np.linalg.norm(self.vecs, axis=1, keepdims=True)
        a = rng.standard_normal((512, DIM_W2V))
        self.prototypes = np.maximum(unit @ a.T, 0).astype(np.float32) * 2.0  # (L, 512) relu(A v)
        self.n_labels = n_labels

    def images(self, rng: np.random.Generator, n: int, signal: float, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``features (n,196,512)`` and presence ``(n, L)`` in {0,1} for n new images."""
        feats = np.abs(rng.standard_normal((n, 14, 14, 512), dtype=np.float32)) * 0.2
        present = np.zeros((n, self.n_labels), dtype=np.int8)
        n_pos = rng.integers(1, 4, size=n)
        for i in range(n):
            labels = rng.choice(self.n_labels, size=n_pos[i], replace=False)
            present[i, labels] = 1
            for lab in labels:
                r, c = rng.integers(0, 14 - PATCH + 1, size=2)
                patch = self.prototypes[lab] * signal * (0.7 + 0.6 * rng.random((PATCH, PATCH, 1), dtype=np.float32))
                feats[i, r:r + PATCH, c:c + PATCH] += patch
        return feats.reshape(n, 196, 512).astype(dtype), present


def _write_lines(path: Path, lines, crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8") + (b"\r\n" if crlf else b"\n"))


def _write_split(out: Path, world: PlantedWorld, rng, spec: SynthSpec, split: str, n: int, label_names: dict,
                 to_labels, progress: bool, prefix: str) -> Path:
    path = out / layout.features_file(spec.kind, split)
    label_dims = {k: len(v) for k, v in label_names.items()}
    with FeatureWriter(path, spec.kind, split, label_dims, dtype=spec.dtype, overwrite=True, label_names=label_names,
                       attrs={"backbone": "synthetic", "synthetic_seed": spec.seed}) as w:
        bar = tqdm(total=n, desc=f"writing {path.name}", unit="img", disable=not progress, leave=False)
        for a in range(0, n, spec.chunk):
            b = min(n, a + spec.chunk)
            feats, present = world.images(rng, b - a, spec.signal, spec.dtype)
            w.append([f"{prefix}{i:07d}" for i in range(a, b)], feats, to_labels(present))
            bar.update(b - a)
        bar.close()
        w.finish()
    return path


def write_synthetic(out_dir, spec: SynthSpec | None = None, progress: bool = True) -> dict:
    """Write a planted dataset; returns ``{key: path}`` of its files (keys as the ``data`` settings)."""
    spec = spec or SynthSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, 2])
    if spec.kind == "nus_wide":
        return _write_nus_wide(out, spec, rng, progress)
    if spec.kind == "openimages":
        return _write_openimages(out, spec, rng, progress)
    raise ValueError(f"unknown synthetic kind {spec.kind!r}")


def _write_nus_wide(out: Path, spec: SynthSpec, rng, progress: bool) -> dict:
    n_only_concepts = spec.n_concepts - spec.n_shared
    n_labels = spec.n_tags + n_only_concepts  # distinct labels of the world
    world = PlantedWorld(n_labels, spec.seed)
    names = [f"label{i:04d}" for i in range(n_labels)]
    # the shared labels are spread through the tag list (as the 75 concepts among the 1k tags)
    shared_pos = np.sort(np.random.default_rng([spec.seed, 3]).choice(spec.n_tags, spec.n_shared, replace=False))
    tag_ids = list(range(spec.n_tags))
    concept_ids = sorted([int(i) for i in shared_pos] + list(range(spec.n_tags, n_labels)))
    tags = [names[i] for i in tag_ids]
    concepts = [names[i] for i in concept_ids]
    files = {"tag_list": out / layout.NUS_WIDE / layout.NUS_WIDE_FILES["tag_list"][0],
             "concepts": out / layout.NUS_WIDE / layout.NUS_WIDE_FILES["concepts"][0],
             "label_vectors": out / layout.LABEL_VECTORS["nus_wide"]}
    _write_lines(files["tag_list"], tags, crlf=True)
    _write_lines(files["concepts"], concepts, crlf=True)
    save_vector_pair(files["label_vectors"], world.vecs[tag_ids], world.vecs[concept_ids])
    shared_mask = np.isin(tag_ids, concept_ids)

    def to_labels(present):
        l1k = (2 * present[:, tag_ids] - 1).astype(np.int8)
        l1k[:, shared_mask] = 0  # as the extraction: tags that are concepts are not seen labels
        return {"labels_1k": l1k, "labels_81": (2 * present[:, concept_ids] - 1).astype(np.int8)}

    names = {"labels_1k": tags, "labels_81": concepts}
    files["train"] = _write_split(out, world, rng, spec, "Train", spec.n_train, names, to_labels, progress, "train/")
    files["test"] = _write_split(out, world, rng, spec, "Test", spec.n_test, names, to_labels, progress, "test/")
    return files


def _write_openimages(out: Path, spec: SynthSpec, rng, progress: bool) -> dict:
    n_seen, n_unseen = spec.n_tags, spec.n_concepts
    world = PlantedWorld(n_seen + n_unseen, spec.seed)
    seen_ids = [f"/m/s{i:05d}" for i in range(n_seen)]
    unseen_ids = [f"/m/u{i:05d}" for i in range(n_unseen)]
    lists = out / layout.OPENIMAGES
    files = {"seen_label_ids": lists / "classes-trainable.txt", "unseen_label_ids": lists / "unseen_labels.pkl",
             "top_unseen": lists / "top_400_unseen.csv", "class_descriptions": lists / "class-descriptions.csv",
             "label_vectors": out / layout.LABEL_VECTORS["openimages"]}
    _write_lines(files["seen_label_ids"], seen_ids)
    with open(files["unseen_label_ids"], "wb") as f:
        pickle.dump(np.array(unseen_ids, dtype=object), f, protocol=2)
    n_top = spec.n_top_unseen or max(1, n_unseen // 2)
    top = np.sort(np.random.default_rng([spec.seed, 4]).choice(n_unseen, n_top, replace=False))
    files["top_unseen"].write_text("\ufeff" + "\n".join(str(int(i)) for i in top) + "\n", encoding="utf-8")
    _write_lines(files["class_descriptions"], [f"{i},synthetic {i.split('/')[-1]}" for i in seen_ids + unseen_ids])
    save_vector_pair(files["label_vectors"], world.vecs[:n_seen], world.vecs[n_seen:])

    def train_labels(present):
        # Open Images annotates only some labels: leave ~70% of the absent ones unannotated (0)
        lab = (2 * present[:, :n_seen] - 1).astype(np.int8)
        lab[(lab < 0) & (rng.random(lab.shape) < 0.7)] = 0
        lab[: max(1, lab.shape[0] // 20)][lab[: max(1, lab.shape[0] // 20)] > 0] = 0  # some without a positive
        return {"labels": lab}

    def test_labels(present):
        return {"seen_labels": (2 * present[:, :n_seen] - 1).astype(np.int8),
                "unseen_labels": (2 * present[:, n_seen:] - 1).astype(np.int8)}

    seen, both = {"labels": seen_ids}, {"seen_labels": seen_ids, "unseen_labels": unseen_ids}
    files["train"] = _write_split(out, world, rng, spec, "train", spec.n_train, seen, train_labels, progress, "tr")
    files["validation"] = _write_split(out, world, rng, spec, "validation", spec.n_validation, seen, train_labels,
                                       progress, "va")
    files["test"] = _write_split(out, world, rng, spec, "test", spec.n_test, both, test_labels, progress, "te")
    return files


def config_for(files: dict, task: str, out: str, name: str, **train) -> "object":
    """A ``Config`` for the synthetic files (the experiment's config file values + small overrides)."""
    from lesa.experiment import config_from_dict

    data = {k: [str(Path(v).absolute())] if k in ("train", "validation", "test") else str(Path(v).absolute())
            for k, v in files.items()}  # (absolute: not inside any data folder)
    values = {"experiment": {"name": name, "task": task, "out": str(out)}, "data": data, "train": train}
    return config_from_dict(values, source=f"synthetic {task}")


def next_command(out_dir, spec: SynthSpec) -> str:
    """The ``lesa train`` command that trains on a data folder ``write_synthetic`` wrote: the bundled
    configuration as it is, with a short schedule unless the sizes are the real datasets'."""
    config = "nus_wide_zero_shot" if spec.kind == "nus_wide" else "openimages_train"
    cmd = f"lesa train {config} --data-dir {Path(out_dir).absolute()}"
    if spec.kind == "nus_wide" and spec.n_train <= 5000:  # the configuration validates on 5,000 records
        cmd += f" --set data.n_validation={max(1, spec.n_train // 4)}"
    if spec.n_train < 100_000:
        cmd += f" --set train.n_iters=200 --out {Path(out_dir).absolute() / 'run'}"
    return cmd


def run_demo(out_dir, seed: int = 0, n_iters: int = 100, full_model: bool = True, progress: bool = True,
             log=print, sizes: dict | None = None) -> dict:
    """``lesa demo``: write the planted NUS-WIDE-like dataset, train the zero-shot model, evaluate.
    Batches of 16 at lr 0.03 (the paper: 32 and 0.001) so that it runs in under a minute on a CPU."""
    from lesa.train import train

    out = Path(out_dir)
    t0 = time.perf_counter()
    previous = out / "run" / "config.toml"
    if previous.exists() and 'name = "demo"' in previous.read_text():
        shutil.rmtree(out / "run")  # an earlier demo's outputs: the demo always starts afresh
    # float16 files: half the disk (about 380 MB) and the same training (batches become float32)
    spec = SynthSpec(seed=seed, dtype="float16", **{**PRESETS["demo"], **(sizes or {})})
    size = (spec.n_train + spec.n_test) * 196 * 512 * 2 / 1e6
    log(f"writing a planted synthetic NUS-WIDE-like dataset ({size:.0f} MB) to {out / 'data'} ...")
    files = write_synthetic(out / "data", spec, progress=progress)
    cfg = config_for(files, "nus_wide_zero_shot", out / "run", "demo", n_iters=n_iters,
                     eval_interval=max(1, n_iters // 4), batch_size=16, lr=0.03, seed=seed)
    cfg.data.n_validation = min(200, spec.n_train // 4)
    cfg.data.preload = "ram"
    cfg.data.eval_batch_size = 200
    cfg.model.conv = bool(full_model)
    n_seen = spec.n_tags - spec.n_shared
    log(f"training LESA zero-shot: {n_seen} seen tags -> {spec.n_concepts} unseen concepts, {n_iters} "
        f"iterations{'' if full_model else ' (demo: no 2x2 conv)'} ...")
    result = train(cfg, progress=progress, log=log)
    result["seconds"] = time.perf_counter() - t0
    zs = result["summaries"]["f"]["reports"]["81"]["mAP"]
    untrained = untrained_zero_shot_map(cfg, files)
    result["zero_shot_map"], result["untrained_zero_shot_map"] = zs, untrained
    log(f"zero-shot mAP on the {spec.n_concepts} unseen concepts: trained {100 * zs:.1f}%, "
        f"same model untrained {100 * untrained:.1f}%")
    log(f"demo finished in {result['seconds']:.0f} s; outputs in {out / 'run'}")
    return result


def untrained_zero_shot_map(cfg, files) -> float:
    """Zero-shot mAP of the model with its initial (random) weights: the chance level."""
    import torch

    from lesa import metrics
    from lesa.datasets.h5 import open_features
    from lesa.datasets.stream import RangeReader
    from lesa.evaluate import predict
    from lesa.model import LESA
    from lesa.tasks import load_task

    task = load_task(cfg)
    torch.manual_seed(cfg.train.seed)
    model = LESA(task.seen_vecs, task.unseen_vecs, cfg.model)
    with open_features(files["test"]) as split:
        scores, labels = predict(model, RangeReader(split, task.test_labels, progress=False),
                                 cfg.data.eval_batch_size, heads=("zs_logits",))
    return metrics.mean_average_precision(scores["zs_logits"], labels["unseen"])
