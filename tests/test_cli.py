"""The `lesa` command itself."""
import subprocess
import sys


def test_every_command_module_registers_and_help_needs_no_torch():
    code = ("import sys, lesa.cli; p = lesa.cli.build_parser(); "
            "print(sorted(p._subparsers._group_actions[0].choices)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, torch_loaded = out.strip().splitlines()
    for command in ("demo", "synth", "extract", "merge-shards", "train", "evaluate", "import-tf",
                    "convert-tfrecord", "visualize", "plot", "tag", "download", "bench", "build-vectors"):
        assert f"'{command}'" in names
    assert torch_loaded == "False"


def test_bench_sections_match_the_benchmark_module():
    from lesa.bench import SECTIONS
    from lesa.commands.bench import SECTIONS as listed

    assert list(SECTIONS) == listed


def test_python_dash_m_lesa_runs():
    out = subprocess.run([sys.executable, "-m", "lesa", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "lesa" in out.stdout


def test_errors_exit_1_with_a_message(capsys, tmp_path):
    from lesa.cli import main

    assert main(["evaluate", str(tmp_path / "missing.toml"), "--checkpoint", "x.pt"]) == 1
    assert "lesa: error:" in capsys.readouterr().err


def test_extract_layout_option():
    from lesa.cli import build_parser

    def layout(*flags):
        return build_parser().parse_args(["extract", "nus-wide", "--root", "r", "--split", "Train", "--out", "o", *flags]).channels_last

    assert layout() == "auto" and layout("--channels-last") is True and layout("--no-channels-last") is False
