"""``lesa demo`` (planted synthetic data -> train -> evaluate) and ``lesa synth`` (write such data)."""
from __future__ import annotations


def run_demo(args) -> int:
    from lesa.synth import run_demo as demo

    demo(args.out, seed=args.seed, n_iters=args.iters, full_model=args.full_model, progress=not args.no_progress)
    return 0


def run_synth(args) -> int:
    from lesa.synth import PRESETS, SynthSpec, next_command, write_synthetic

    keys = ("kind", "n_train", "n_validation", "n_test", "n_tags", "n_concepts", "n_shared", "dtype", "seed", "chunk")
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    spec = SynthSpec(**{**PRESETS.get(args.preset, {}), **given})
    files = write_synthetic(args.out, spec, progress=not args.no_progress)
    for key, path in files.items():
        print(f"{key:20s} {path}")
    print(f"next: {next_command(args.out, spec)}")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train and evaluate on a planted synthetic dataset (CPU, about a minute)",
                              description="Writes a small planted NUS-WIDE-like dataset, trains the zero-shot "
                                          "model, evaluates it and prints the table. Needs no downloads.")
    p.add_argument("--out", default="lesa_demo", help="output folder (default: ./lesa_demo)")
    p.add_argument("--iters", type=int, default=100, help="training iterations (default 100)")
    p.add_argument("--no-conv", dest="full_model", action="store_false",
                   help="leave out the 2x2 conv + batch-norm over the regions (about 2x faster on a CPU; "
                        "the default trains the paper's full model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_demo)

    s = subparsers.add_parser("synth", help="write a planted synthetic dataset as a data folder",
                              description="Writes a data folder (label lists, a label-vector pickle and HDF5 "
                                          "feature files with planted structure, streamed in chunks, any size) "
                                          "in the layout the bundled configurations read, and prints the "
                                          "`lesa train` command for it.")
    s.add_argument("out", help="the data folder to write")
    s.add_argument("--preset", choices=["demo", "tiny", "nus-wide", "openimages-small"],
                   help="sizes (nus-wide: the real NUS-WIDE split sizes, 1000 tags, 81 concepts)")
    s.add_argument("--kind", choices=["nus_wide", "openimages"])
    s.add_argument("--n-train", type=int)
    s.add_argument("--n-validation", type=int, help="Open Images only")
    s.add_argument("--n-test", type=int)
    s.add_argument("--n-tags", type=int, help="NUS-WIDE tags / Open Images seen labels")
    s.add_argument("--n-concepts", type=int, help="NUS-WIDE concepts / Open Images unseen labels")
    s.add_argument("--n-shared", type=int, help="NUS-WIDE concepts that are also tags")
    s.add_argument("--dtype", choices=["float32", "float16"])
    s.add_argument("--seed", type=int)
    s.add_argument("--chunk", type=int, help="images generated and written at a time")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run_synth)
