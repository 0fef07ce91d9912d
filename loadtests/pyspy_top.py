"""The top of a py-spy flame graph as text: inclusive and self shares of the hottest frames.

    .venv/bin/python loadtests/pyspy_top.py PROFILE.raw [--top 40] [--self 25] [--match oms/]

PROFILE.raw is `py-spy record --format raw` output (collapsed stacks: `frame;frame;... count`).
Inclusive: the share of samples with the frame anywhere on the stack; self: on top of it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"\s*\(([^)]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (to/file.py)`: one name per function, not per line."""
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    path = m.group(1)
    for marker in ("site-packages/", "/wt-perf/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{frame[:m.start()].strip()} ({path})"


def read(path: Path) -> tuple[Counter, Counter, int]:
    inclusive: Counter = Counter()
    self_: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [frame_name(f) for f in stack.split(";")]
        # the first frames are the process and thread: skip them in the ranking
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        for f in set(frames):
            inclusive[f] += count
        if frames:
            self_[frames[-1]] += count
    return inclusive, self_, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=40, help="inclusive frames to print")
    ap.add_argument("--self", dest="self_top", type=int, default=25, help="self frames to print")
    ap.add_argument("--match", default="", help="only frames whose name contains this")
    args = ap.parse_args()
    inclusive, self_, total = read(args.profile)
    print(f"{total} samples")
    print(f"\ninclusive (top {args.top}{', matching ' + args.match if args.match else ''}):")
    for f, n in [x for x in inclusive.most_common() if args.match in x[0]][: args.top]:
        print(f"  {n / total * 100:5.1f} %  {f}")
    print(f"\nself (top {args.self_top}):")
    for f, n in self_.most_common(args.self_top):
        print(f"  {n / total * 100:5.1f} %  {f}")


if __name__ == "__main__":
    main()
