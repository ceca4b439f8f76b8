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
