"""Experiment configuration: one TOML file per experiment, tables [experiment] [data] [model]
[train] [evaluate], every key type-checked; ``--set table.key=value`` overrides (TOML values).
Found by bundled name (``configs/``), TOML path or run folder (its ``config.toml``); data paths are
taken inside ``data.dir``. ``check_config`` validates everything before any long work, in one place.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from lesa import layout
from lesa.datasets.h5 import expand_paths
from lesa.device import PRECISIONS as EVAL_PRECISIONS, TRAIN_PRECISIONS
from lesa.errors import ConfigError, DataError
from lesa.model import LESAConfig

TASKS = ("nus_wide_zero_shot", "nus_wide_multilabel", "openimages")
PRELOAD = ("none", "ram", "gpu", "auto")
# train.step: auto = the whole step as one CUDA graph on a single GPU, the plain step otherwise
STEP_MODES = ("auto", "eager", "compile", "cuda_graph", "compile+cuda_graph")

# Every setting with a fixed set of values, checked in one place (check_config).
CHOICES = {
    "experiment.task": TASKS,
    "data.preload": PRELOAD,
    "train.monitor": ("mF1", "mAP"),
    "train.val_batchnorm": ("inference", "batch"),
    "train.step": STEP_MODES,
    "train.precision": TRAIN_PRECISIONS,
    "evaluate.precision": EVAL_PRECISIONS,
}
# Settings and values that no longer exist, with what replaces them.
REMOVED = {
    "data.read_workers": "it is now data.workers: the number of DataLoader worker processes that read "
                         "the feature files (0 reads them in the training process)",
}
REMOVED_VALUES = {
    ("train.precision", "tf32x3"): "train.precision = \"tf32x3\" was removed (its speed was never measured "
                                   "on a GPU); use \"fp32\" (exact) or \"tf32\" (GPU matrix units)",
}
# Settings that may differ when a run is resumed: where things are and how they are read, not
# what is computed.
RUNTIME_SETTINGS = {"train.device", "train.step", "data.preload", "data.workers", "data.dir",
                    "data.train", "data.validation", "data.test", "data.label_vectors", "data.nus_wide",
                    "data.tag_list", "data.concepts", "data.seen_label_ids", "data.unseen_label_ids",
                    "data.class_descriptions", "data.top_unseen", "experiment.out", "experiment.description"}


@dataclass
class ExperimentSection:
    name: str = "experiment"
    task: str = "nus_wide_zero_shot"  # one of TASKS: which labels train and which reports come out
    out: str = ""  # output folder; "" = results/<name> (relative to the current folder)
    description: str = ""  # free text written to description.txt


@dataclass
class DataSection:
    dir: str = layout.DATA_DIR  # the data folder: relative paths below are taken inside it
    train: list[str] = field(default_factory=list)  # HDF5 file(s) or glob(s) of the training split
    validation: list[str] = field(default_factory=list)  # [] = the first n_validation train records
    test: list[str] = field(default_factory=list)
    n_validation: int = 5000  # original (NUS-WIDE): validation = first 5,000 train records, skipped in training
    label_vectors: str = ""  # pickle (seen/1k, unseen/81) of raw word vectors, or .npz
    nus_wide: str = layout.NUS_WIDE  # NUS-WIDE's metadata folder (as unzipped, or the original's layout)
    tag_list: str = ""  # NUS-WIDE TagList1k.txt; "" = found in data.nus_wide
    concepts: str = ""  # NUS-WIDE Concepts81.txt; "" = found in data.nus_wide
    seen_label_ids: str = ""  # Open Images classes-trainable.txt
    unseen_label_ids: str = ""  # Open Images unseen_labels.pkl
    class_descriptions: str = ""  # Open Images class-descriptions.csv (id -> name); optional
    top_unseen: str = ""  # Open Images top_400_unseen.csv; "" = all unseen labels
    skip_no_positive: bool = False  # original (Open Images): train only on images with a positive label
    shuffle: bool = False  # original: no shuffling (sequential, repeating)
    shuffle_buffer: int = 20000  # records mixed together when shuffling (bounded memory)
    preload: str = "none"  # none | ram | gpu | auto (auto: gpu/ram when it fits, else stream)
    chunk_mb: int = 64  # contiguous read size when streaming
    workers: int = 0  # DataLoader worker processes reading ahead (0: read in the training process; see docs/performance.md)
    eval_batch_size: int = 1000


@dataclass
class TrainSection:
    n_iters: int = 200000
    batch_size: int = 32
    lr: float = 0.001
    rmsprop_decay: float = 0.9
    rmsprop_momentum: float = 0.9
    rmsprop_eps: float = 1.0
    signal_strength: float = 0.3
    patience: int = 5
    decay_rate: float = 0.8
    limit_scale: float = 0.001
    n_report: int = 50  # evaluations per run: every max(n_iters // n_report, min_eval_interval)
    min_eval_interval: int = 500
    eval_interval: int = 0  # > 0 overrides the formula above (tests, demos)
    monitor: str = "mF1"  # validation column feeding the adaptive rate and early stopping: mF1 | mAP
    val_k: int = 5  # K of the validation F1
    val_batchnorm: str = "inference"  # inference | batch (original NUS-WIDE multi-label: batch statistics)
    zs_test_quarters: bool = False  # original (Open Images): zero-shot test at each quarter of the run
    checkpoint_every: int = 0  # iterations between resume checkpoints (last.pt); 0 = at each evaluation
    checkpoint_minutes: float = 5.0  # also save last.pt after this many minutes of training; 0 = off
    seed: int = 0
    deterministic: bool = True  # deterministic kernels; a resumed run equals an uninterrupted one
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: the whole step captured as one CUDA graph on a single GPU, the plain eager step otherwise
    # (CPU, torchrun, data.skip_no_positive) | eager | compile | cuda_graph | compile+cuda_graph
    step: str = "auto"
    # fp32: full float32 (the goldens' tolerances) | tf32: TF32 matrix units on the GPU (faster;
    # scores move by ~5e-4 relative, outside the goldens' 1e-5)
    precision: str = "fp32"


@dataclass
class EvaluateSection:
    k: list[int] = field(default_factory=lambda: [3, 5])  # K of the zero-shot (or multi-label) report
    k_gzs: list[int] = field(default_factory=lambda: [3, 5])  # K of the generalised report
    k_seen: list[int] = field(default_factory=lambda: [3, 5])  # K of the seen-label report (Open Images)
    precision: str = "fp32"  # lesa evaluate's forward pass: fp32 (exact) | tf32 | bf16 (faster, scores ~4e-3 off)


@dataclass
class Config:
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    model: LESAConfig = field(default_factory=LESAConfig)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    source: str = "<defaults>"  # where the configuration came from (for messages)

    @property
    def eval_interval(self) -> int:
        """Iterations between evaluations: ``max(n_iters // n_report, 500)`` as the original."""
        t = self.train
        if t.eval_interval > 0:
            return t.eval_interval
        return max(t.n_iters // max(t.n_report, 1), t.min_eval_interval)

    @property
    def out_dir(self) -> Path:
        return Path(self.experiment.out or os.path.join("results", self.experiment.name)).absolute()

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTION_TYPES}


_SECTION_TYPES = {
    "experiment": ExperimentSection,
    "data": DataSection,
    "model": LESAConfig,
    "train": TrainSection,
    "evaluate": EvaluateSection,
}


def _coerce(value, current, where: str):
    """Convert a TOML/CLI value to the type of the field's default, or raise ConfigError."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or int(value) != value:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(current, list):
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if current and isinstance(current[0], int):
            return [_coerce(v, 0, where) for v in value]
        return [str(v) for v in value]
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def set_value(cfg: Config, dotted: str, value, where: str | None = None) -> None:
    """Set ``section.key`` to ``value`` (type-checked against the field)."""
    where = where or cfg.source
    section, _, key = dotted.partition(".")
    if section not in _SECTION_TYPES or not key:
        raise ConfigError(f"{where}: unknown setting {dotted!r}; settings are <table>.<key> with "
                          f"table one of {list(_SECTION_TYPES)}")
    if dotted in REMOVED:
        raise ConfigError(f"{where}: {dotted} no longer exists: {REMOVED[dotted]}")
    stype = _SECTION_TYPES[section]
    known = [f.name for f in fields(stype)]
    if key not in known:
        raise ConfigError(f"{where}: unknown key {key!r} in [{section}]; known keys: {', '.join(known)}")
    setattr(getattr(cfg, section), key, _coerce(value, getattr(stype(), key), f"{where}: {dotted}"))


def config_from_dict(values: dict, source: str = "<dict>") -> Config:
    cfg = Config(source=source)
    for section, table in values.items():
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{source}: unknown table [{section}]; tables are {list(_SECTION_TYPES)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in table.items():
            set_value(cfg, f"{section}.{key}", value, source)
    cfg.model = _checked_model(cfg.model, source)  # re-run its checks
    return cfg


def bundled_configs() -> dict[str, object]:
    """``{name: resource}`` of the configurations shipped with lesa: the package ``lesa.configs`` of an
    installed lesa, or ``configs/`` beside the package when it runs from a source checkout."""
    try:
        folder = resources.files("lesa.configs")
    except ModuleNotFoundError:  # lesa imported from a checkout's source tree
        folder = Path(__file__).resolve().parents[1] / "configs"
    return {p.name[:-len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def find_config(name: str | os.PathLike) -> tuple[str, str]:
    """``(source, TOML text)`` of a configuration given as a TOML file, a run folder (its
    ``config.toml``) or the name of a bundled configuration."""
    path = Path(name)
    if path.is_dir() and (path / "config.toml").is_file():
        path = path / "config.toml"
    if path.is_file():
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the configuration ({exc})") from exc
    bundled = bundled_configs()
    key = path.name[:-len(".toml")] if path.name.endswith(".toml") else path.name
    if str(name) == path.name and key in bundled:
        return f"lesa.configs/{key}.toml", bundled[key].read_text(encoding="utf-8")
    what = "run folder without config.toml" if path.is_dir() else "no such file"
    raise ConfigError(f"configuration {str(name)!r} not found ({what}); give a TOML file, a run folder "
                      f"holding config.toml, or one of the bundled configurations: {', '.join(sorted(bundled))}")


def load_config(name: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a configuration (see ``find_config``) and apply ``key=value`` overrides."""
    source, text = find_config(name)
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    cfg = config_from_dict(values, source=source)
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``table.key=value`` texts (the value parsed as TOML, else taken as a string)."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"override {text!r} must look like table.key=value (e.g. train.n_iters=100)")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        set_value(cfg, key.strip(), value, where="command line")
    cfg.model = _checked_model(cfg.model, "command line")
    return cfg


def _checked_model(model: LESAConfig, where: str) -> LESAConfig:
    """Re-run ``LESAConfig``'s checks; its errors name where the values came from."""
    try:
        return LESAConfig(**dataclasses.asdict(model))
    except ConfigError as exc:
        raise ConfigError(f"{where}: [model] {exc}") from exc


# -- validation before any long work -------------------------------------------------------------
PATH_KEYS = ("nus_wide", "label_vectors", "tag_list", "concepts", "seen_label_ids", "unseen_label_ids",
             "class_descriptions", "top_unseen")
SPLIT_KEYS = ("train", "validation", "test")
# how to get each input, for the message when it is missing
WHERE_FROM = {
    "label_vectors": "the original repository's wiki_contexts/ folder (github.com/hbdat/cvpr20_LESA), "
                     "or build one from GloVe with `lesa build-vectors`",
    **dict.fromkeys(("seen_label_ids", "unseen_label_ids", "class_descriptions", "top_unseen"),
                    "the original repository's data/OpenImages/2018_04/ folder"),
}


def resolve_data_paths(cfg: Config) -> Config:
    """Make every data path absolute (relative ones inside ``data.dir``) and the output folder. Idempotent."""
    d = cfg.data
    d.dir = str(layout.data_dir(d.dir))
    for key in PATH_KEYS:
        value = getattr(d, key)
        if value:
            setattr(d, key, str(layout.resolve(value, d.dir)))
    for key in SPLIT_KEYS:
        setattr(d, key, [str(layout.resolve(p, d.dir)) for p in getattr(d, key)])
    cfg.experiment.out = str(cfg.out_dir)
    return cfg


def _need_file(cfg: Config, key: str, what: str) -> None:
    value = getattr(cfg.data, key)
    if not value:
        raise ConfigError(f"{cfg.source}: data.{key} is not set; give the {what} "
                          f"(in the configuration or with --set data.{key}=PATH)")
    path = Path(value)
    if not path.exists():
        origin = f"; get it from {WHERE_FROM[key]}" if key in WHERE_FROM else ""
        raise ConfigError(f"{cfg.source}: data.{key}: {path} does not exist ({what}){origin}. "
                          f"{layout.missing_hint(path, cfg.data.dir)}")


def _need_split(cfg: Config, split: str) -> None:
    paths = getattr(cfg.data, split)
    dataset = "nus-wide" if cfg.experiment.task.startswith("nus_wide") else "openimages"
    make = (f"`lesa extract {dataset} --split ...` writes feature files (or `lesa convert-tfrecord` from "
            "the original's TFRecords)")
    if not paths:
        raise ConfigError(f"{cfg.source}: data.{split} is not set; give the HDF5 feature file(s) of the "
                          f"{split} split (--{split} PATH); {make}")
    try:
        files = expand_paths(paths)
    except DataError as exc:
        raise ConfigError(f"{cfg.source}: data.{split}: {exc}; {make}") from exc
    for path in files:
        if not path.exists():
            raise ConfigError(f"{cfg.source}: data.{split}: {path} does not exist; {make}. "
                              f"{layout.missing_hint(path, cfg.data.dir)}")


def check_config(cfg: Config, splits=("train", "validation", "test"), vectors: bool = True) -> None:
    """Fail fast: every choice and range, every label file (NUS-WIDE's lists found in data.nus_wide
    when not given), the feature files of ``splits`` and, with ``vectors``, the label-vector pickle."""
    resolve_data_paths(cfg)
    e, d, t, ev = cfg.experiment, cfg.data, cfg.train, cfg.evaluate
    src = cfg.source
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if (dotted, value) in REMOVED_VALUES:
            raise ConfigError(f"{src}: {REMOVED_VALUES[dotted, value]}")
        if value not in choices:
            raise ConfigError(f"{src}: {dotted} = {value!r}; choose one of {', '.join(choices)}")
    positive = {"train.n_iters": t.n_iters, "train.batch_size": t.batch_size, "train.val_k": t.val_k,
                "data.eval_batch_size": d.eval_batch_size, "data.chunk_mb": d.chunk_mb,
                "data.shuffle_buffer": d.shuffle_buffer, "train.n_report": t.n_report,
                "train.patience": t.patience}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{src}: {key} = {value}; it must be at least 1")
    for key, value in {"train.lr": t.lr, "train.rmsprop_eps": t.rmsprop_eps}.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{src}: {key} = {value}; it must be a positive number")
    if not 0 < t.signal_strength <= 1 or not 0 < t.decay_rate <= 1:
        raise ConfigError(f"{src}: train.signal_strength and train.decay_rate must be in (0, 1]")
    for key, ks in {"evaluate.k": ev.k, "evaluate.k_gzs": ev.k_gzs, "evaluate.k_seen": ev.k_seen}.items():
        if not ks or any(k < 1 for k in ks):
            raise ConfigError(f"{src}: {key} = {ks}; give at least one K >= 1")
    if t.eval_interval < 0 or t.checkpoint_every < 0 or d.n_validation < 0 or d.workers < 0 \
            or not t.checkpoint_minutes >= 0:
        raise ConfigError(f"{src}: train.eval_interval, train.checkpoint_every, train.checkpoint_minutes, "
                          "data.n_validation and data.workers must not be negative")
    if not t.device == "auto" and not t.device.startswith(("cpu", "cuda")):
        raise ConfigError(f"{src}: train.device = {t.device!r}; use auto, cpu, cuda or cuda:N")
    if e.task.startswith("nus_wide"):
        for key in ("tag_list", "concepts"):
            name = Path(layout.NUS_WIDE_FILES[key][0]).name
            if not getattr(d, key):
                try:
                    setattr(d, key, str(layout.nus_wide_file(d.nus_wide, key)))
                except DataError:
                    places = " or ".join(str(Path(d.nus_wide) / p) for p in layout.NUS_WIDE_FILES[key])
                    raise ConfigError(
                        f"{src}: data.{key}: NUS-WIDE's {name} not found (looked for {places}); unzip NUS-WIDE's "
                        f"metadata ({layout.NUS_WIDE_DOWNLOAD}) into {d.nus_wide}, point --data-dir at the folder "
                        f"holding NUS_WIDE/, or pass --set data.{key}=PATH") from None
            _need_file(cfg, key, f"NUS-WIDE {name}")
    else:
        _need_file(cfg, "seen_label_ids", "Open Images classes-trainable.txt")
        _need_file(cfg, "unseen_label_ids", "Open Images unseen_labels.pkl")
        if d.top_unseen:
            _need_file(cfg, "top_unseen", "Open Images top_400_unseen.csv")
        if d.class_descriptions:
            _need_file(cfg, "class_descriptions", "Open Images class-descriptions.csv")
    if vectors:
        _need_file(cfg, "label_vectors", "label-vector pickle")
    for split in splits:
        if split != "validation" or d.validation:
            _need_split(cfg, split)


def resume_differences(saved: Config, wanted: Config) -> list[str]:
    """The settings (``table.key: saved -> wanted``) in which ``wanted`` differs from the
    configuration a run was started with, leaving out ``RUNTIME_SETTINGS``."""
    old, new = saved.to_dict(), wanted.to_dict()
    return [f"{section}.{key}: {old[section].get(key)!r} -> {value!r}"
            for section, table in new.items() for key, value in table.items()
            if f"{section}.{key}" not in RUNTIME_SETTINGS and old[section].get(key) != value]


# -- writing a configuration back (config.toml in the output folder) -----------------------------
def _toml_value(value) -> str:
    # JSON's strings, integers, booleans and arrays are valid TOML; floats by repr (inf, nan)
    return repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def dumps_config(cfg: Config) -> str:
    """The configuration as TOML, paths absolute: ``lesa train RUN_DIR --resume`` reads it back."""
    lines = [f"# resolved configuration (from {cfg.source})"]
    for name, table in cfg.to_dict().items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
