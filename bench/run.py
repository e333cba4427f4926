"""`make bench`: run every benchmark module in bench/ (bench_*.py) and print a markdown table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import HEADER, run  # noqa: E402


def main(argv: list[str]) -> int:
    wanted = argv[1:]
    print(HEADER)
    extra: list[str] = []
    for module_path in sorted(HERE.glob("bench_*.py")):
        if wanted and module_path.stem not in wanted:
            continue
        module = importlib.import_module(module_path.stem)
        for bench in module.BENCHMARKS:
            print(run(bench).row(), flush=True)
        if hasattr(module, "report"):  # figures beyond time: throughput, recall, memory
            extra.append(module.report())
    for text in extra:
        print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
