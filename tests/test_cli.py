"""The `lesa` command itself."""
import subprocess
import sys

COMMANDS = ("demo", "synth", "extract", "merge-shards", "train", "evaluate", "evaluate-released", "import-tf",
            "convert-tfrecord", "visualize", "plot", "tag", "download", "bench", "build-vectors", "score")


def test_every_command_is_listed_and_help_needs_no_torch():
    out = subprocess.run([sys.executable, "-m", "lesa", "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert f"    {command} " in out or f"    {command}\n" in out, command
    code = "import sys, lesa.cli; lesa.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_python_dash_m_lesa_runs():
    out = subprocess.run([sys.executable, "-m", "lesa", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "lesa" in out.stdout


def test_errors_exit_1_with_a_message(capsys, tmp_path):
    from lesa.cli import main

    assert main(["evaluate", str(tmp_path / "missing.toml"), "--checkpoint", "x.pt"]) == 1
    assert "lesa: error:" in capsys.readouterr().err


def test_bench_is_a_command_of_the_source_checkout():
    out = subprocess.run([sys.executable, "-m", "lesa", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--baseline" in out.stdout
