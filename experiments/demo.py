"""The toy world's pipeline: `make demo` (full) and `make demo-quick`.

Stages run as the console scripts a user would type, so the demo is also a walk-through of the CLI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True, cwd=ROOT)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller models and fewer steps (about 3 minutes)")
    parser.add_argument("--out", default="runs/demo", help="where the demo's models and results go")
    args = parser.parse_args()
    out = Path(args.out)
    steps = 300 if args.quick else 1500
    model = "toy-tiny" if args.quick else "toy-small"
    run("rmopt-sft", "experiment=toy", f"model={model}", f"output_dir={out}/models/sft", f"trainer.max_steps={steps}")


if __name__ == "__main__":
    main()
