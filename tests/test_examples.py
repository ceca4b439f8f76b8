import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns(capsys):
    accuracy = _load("quickstart").main()
    out = capsys.readouterr().out
    assert accuracy >= 0.97
    assert "test accuracy" in out and out.count("loss") == 5


def test_every_example_explains_its_options():
    """--help prints each option with its meaning and default, and trains nothing."""
    import re
    import subprocess
    import sys

    for name in ("quickstart", "train_lenet", "train_resnet_mini"):
        out = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--help"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout and not re.search(r"accuracy \d", out.stdout)
        usage, _, body = out.stdout.partition("options:")
        options = re.findall(r"\[(--[\w-]+)", usage)
        assert options and body.count("(default:") >= len(options), out.stdout
