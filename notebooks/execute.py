"""Run the notebooks top to bottom and save them with their outputs.

    python notebooks/execute.py                  # every notebook, outputs written in place
    python notebooks/execute.py 02_lenet_fashion_mnist.ipynb --out /tmp/nb

Needs the dev extra (nbclient, nbformat, ipykernel, matplotlib). The test suite runs the same
execution into a temporary folder (tests/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(path: Path, out: Path | None = None, timeout: int = 900) -> Path:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    target = (out / path.name) if out is not None else path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", help="file names in notebooks/ (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of in place")
    args = ap.parse_args(argv)
    names = args.notebooks or sorted(p.name for p in HERE.glob("[0-9]*.ipynb"))
    for name in names:
        start = time.perf_counter()
        target = execute(HERE / name, args.out)
        print(f"{name}: ran in {time.perf_counter() - start:.0f} s -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
