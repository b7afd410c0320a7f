"""The top functions of each service's cProfile dump (``benchmarks.recommend --profile DIR``).

python -m benchmarks.profiling.top DIR [--limit 25] [--sort tottime]
"""

from __future__ import annotations

import argparse
import pstats
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    args = parser.parse_args(argv)
    for dump in sorted(Path(args.folder).glob("*.prof")):
        print(f"==== {dump.name}")
        pstats.Stats(str(dump)).strip_dirs().sort_stats(args.sort).print_stats(args.limit)


if __name__ == "__main__":
    main()
