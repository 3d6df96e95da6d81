"""What users look at: ``lesa visualize`` (attention maps), ``lesa plot`` (run figures) and
``lesa tag`` (zero-shot tagging of new images). Parsing and printing only; the work is in
``lesa.tag``, ``lesa.viz`` and ``lesa.plots``.
"""
from __future__ import annotations

import argparse
import json
import sys

VGG_HELP = ("VGG-19 weights (one of): --vgg vgg_19.ckpt (TF-slim model zoo, as the original), "
            "--torchvision (torchvision's ImageNet weights, downloaded to torch's cache) or "
            "--torchvision-weights vgg19-dcbb9e9d.pth (the same, from a local file)")


def _add_model_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="LESA weights: a native .pt (lesa train) or the original's TF model.ckpt prefix")
    vgg = parser.add_argument_group("VGG-19 feature extractor", VGG_HELP)
    group = vgg.add_mutually_exclusive_group(required=True)
    group.add_argument("--vgg", metavar="VGG_CKPT", help="TF-slim vgg_19.ckpt")
    group.add_argument("--torchvision", action="store_true", help="torchvision's ImageNet VGG-19 weights")
    group.add_argument("--torchvision-weights", metavar="PTH", help="a local torchvision vgg19 .pth file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _add_label_args(parser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--labels", metavar="TEXT", help='label names, comma-separated: "beach, dog, sunset"')
    group.add_argument("--labels-file", metavar="FILE", help="a text file with one label name per line")
    parser.add_argument("--embeddings", metavar="GLOVE_TXT", required=required,
                        help="GloVe-format text file ('word v1 ... vD' per line), D = the model's "
                             "word-vector dimension (300 for the paper's models)")
    parser.add_argument("--top", type=int, default=5, help="how many best-scored labels to show (0: all)")


def _add_visualize(subparsers) -> None:
    parser = subparsers.add_parser(
        "visualize", help="draw each attention head's map over an image",
        description=(
            "Run an image through VGG-19 and LESA and draw the crop the model sees with each shared "
            "attention head's 14x14 map upsampled over it, one panel per head; each head is titled "
            "with the top-scored labels whose best head it is. Labels: the names given with "
            "--labels/--labels-file (scored zero-shot from --embeddings), or the checkpoint's own "
            "labels (--label-set; native checkpoints saved by `lesa train`)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("image", metavar="IMAGE", help="a JPEG or PNG file")
    _add_model_args(parser)
    _add_label_args(parser, required=False)
    parser.add_argument("--label-set", choices=["seen", "unseen", "all"], default="seen",
                        help="without --labels: which of the checkpoint's labels to score")
    parser.add_argument("--out", required=True, metavar="FIG_PNG", help="the PNG to write")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution")
    parser.set_defaults(func=run_visualize)


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="training curves and per-class AP bars of a run",
        description="Write the figures of a run folder into RUN_DIR/plots/: training curves from "
                    "log.csv and per-class AP bars from each evaluation CSV.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a results/<run> folder written by lesa train")
    parser.set_defaults(func=run_plot)


def _add_tag(subparsers) -> None:
    parser = subparsers.add_parser(
        "tag", help="zero-shot tagging of new images with any label names",
        description=(
            "Score images against any label names: their word vectors come from a GloVe-format "
            "file and become the model's unseen labels; each label's score is the best of the "
            "attention heads' scores (zs_logits). Prints the ranked labels of each image; "
            "optionally writes them as JSON and draws the attention maps."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    _add_model_args(parser)
    _add_label_args(parser, required=True)
    parser.add_argument("--json", metavar="OUT_JSON", help="also write the rankings and all scores as JSON")
    parser.add_argument("--attention", metavar="FIG_PNG",
                        help="also draw the attention maps (several images: FIG-<image name>.png each)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per VGG-19 forward pass")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_tag)


def _warn(message: str) -> None:
    print(f"lesa: warning: {message}", file=sys.stderr)


def _tagger(args, label_set: str = "unseen"):
    """Model, VGG-19 and labels from the arguments -> a ``lesa.tag.Tagger``."""
    from lesa.checkpoint import load_model
    from lesa.device import pick_device
    from lesa.errors import ConfigError
    from lesa.tag import Tagger, label_vectors, load_vgg, parse_labels, read_labels_file

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    device = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=device, placeholder_seen=True)
    labels = None
    if args.labels is not None or args.labels_file is not None:
        if not args.embeddings:
            raise ConfigError("label names need --embeddings GLOVE_TXT to turn them into word vectors")
        names = parse_labels(args.labels) if args.labels is not None else read_labels_file(args.labels_file)
        labels = label_vectors(names, args.embeddings, loaded.dim_w2v)
        if labels.dropped:
            _warn(f"no word of these labels is in {args.embeddings}, left out: {', '.join(labels.dropped)}")
        if labels.missing_words:
            lost = "; ".join(f"{k}: {', '.join(v)}" for k, v in labels.missing_words.items())
            _warn(f"words not in {args.embeddings} (left out of their label's mean): {lost}")
    vgg = load_vgg(args.vgg, args.torchvision_weights, device=device)
    return Tagger(loaded, vgg, labels, label_set=label_set, device=device,
                  batch_size=getattr(args, "batch_size", 8)), labels


def run_visualize(args) -> int:
    from lesa.errors import ConfigError
    from lesa.viz import save_attention_figure

    if args.dpi < 1:
        raise ConfigError(f"--dpi must be at least 1, got {args.dpi}")
    label_set = "unseen" if (args.labels is not None or args.labels_file is not None) else args.label_set
    tagger, _ = _tagger(args, label_set)
    (result,) = tagger.tag([args.image], keep_crops=True)
    path = save_attention_figure(args.out, result, top=args.top or len(result.names), dpi=args.dpi)
    print(f"wrote {path}")
    return 0


def run_plot(args) -> int:
    from lesa.plots import plot_run

    for path in plot_run(args.run_dir, log=lambda note: print(f"lesa: note: {note}", file=sys.stderr)):
        print(f"wrote {path}")
    return 0


def run_tag(args) -> int:
    from lesa.files import atomic_write_text
    from lesa.tag import figure_path, format_tags
    from lesa.viz import save_attention_figure

    tagger, labels = _tagger(args)
    top = args.top or None
    errors: list = []
    results = []
    for result in tagger.tag(args.images, keep_crops=args.attention is not None, errors=errors,
                             progress=not args.no_progress):
        if args.attention is not None:
            save_attention_figure(figure_path(args.attention, result.image, args.images), result,
                                  top=top or len(result.names))
            result.crop = None
        results.append(result)
    for result in results:
        print(format_tags(result, top))
    if args.json:
        doc = {"checkpoint": str(args.checkpoint), "embeddings": str(args.embeddings),
               "vgg": tagger.vgg.source, "labels": labels.names, "missing_words": labels.missing_words,
               "failed": {path: str(exc) for path, exc in errors},
               "images": [r.to_json(top) for r in results]}
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    for path, exc in errors:
        print(f"lesa: skipped an image: {exc}", file=sys.stderr)
    return 1 if errors else 0


SUBCOMMANDS = [_add_visualize, _add_plot, _add_tag]


def add_commands(subparsers) -> None:
    for add in SUBCOMMANDS:
        add(subparsers)
