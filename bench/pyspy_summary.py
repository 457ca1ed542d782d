"""Summarise a py-spy raw profile: per thread, the functions holding the most samples.

    py-spy record --threads -f raw -o prof.txt -- python bench/profile_pool.py --mode sequential
    python bench/pyspy_summary.py prof.txt [--top 15] [--calls N]

For each thread (named by py-spy's ``--threads`` output), prints its share of all samples and its
top functions by self samples (the frame on top of the stack) and by inclusive samples (anywhere
on the stack, counted once per stack). With --calls, also samples per 1,000 calls; with --busy, only
the samples where the thread was not blocked waiting (see ``WAITS``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

WAITS = ("Poller.poll", "Condition.wait", "Event.wait", "Barrier.wait", "_forward_stderr", "sleep", "Thread.join")
"""Leaf frames where a thread blocks: py-spy counts them as active when its idle detection fails."""
_LINE = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<stack>.*))?\s+(?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``Client._loop (client/client.py:524)`` -> ``Client._loop (client/client.py)``: lines merged."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise(text: str, top: int, calls: int | None, busy: bool) -> str:
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None or not match["stack"]:
            continue
        count = int(match["count"])
        frames = match["stack"].split(";")
        name = f"{frames[0]} ({match['tid']})" if frames and "(" not in frames[0] else f"thread {match['tid']}"
        stack = [frame_name(f) for f in frames[1:]] if not name.startswith("thread ") else frames
        if not stack or (busy and stack[-1].split(" (")[0].endswith(WAITS)):
            continue
        totals[name] += count
        threads[name][stack[-1]] += count
        for func in set(stack):
            inclusive[name][func] += count
    grand = sum(totals.values())
    out = [f"{grand:,} samples"]
    for name, total in totals.most_common():
        per_call = f", {1000 * total / calls:.0f} per 1,000 calls" if calls else ""
        out.append(f"\n## {name}: {total:,} samples ({100 * total / grand:.1f} %{per_call})")
        out.append("self:")
        for func, count in threads[name].most_common(top):
            out.append(f"  {100 * count / total:5.1f} %  {func}")
        out.append("inclusive:")
        for func, count in inclusive[name].most_common(top):
            out.append(f"  {100 * count / total:5.1f} %  {func}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output (with --threads)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--calls", type=int, help="calls made during the profile, for per-call figures")
    parser.add_argument("--busy", action="store_true", help=f"leave out samples blocked in {', '.join(WAITS)}")
    options = parser.parse_args()
    print(summarise(options.profile.read_text(encoding="utf-8"), options.top, options.calls, options.busy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
