"""Progress of long jobs on stderr: a tqdm bar on a terminal, or plain lines (logs, CI, `nohup`), or nothing.

A `progress` argument across the package takes: `None` (a bar on a terminal, nothing otherwise), `True` (a bar),
`False` (nothing), or `"plain"` (a line every `every` steps, and at the end, with the rate: readable in a log file).

Example:
    >>> from llava_reward.progress import iterate
    >>> sum(iterate(range(4), total=4, desc="scoring", progress=False))
    6
"""

import sys
import time


PLAIN = "plain"


def iterate(iterable, *, total: int, desc: str, progress=None, unit: str = "batch", every: int = 10):
    """`iterable`, reporting progress as `progress` says (see the module docstring)."""
    if progress == PLAIN:
        return _plain(iterable, total, desc, unit, every)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if progress is None else not progress)


def _plain(iterable, total: int, desc: str, unit: str, every: int):
    start = time.perf_counter()
    done = 0
    for done, item in enumerate(iterable, start=1):
        yield item
        if done % every == 0 or done == total:
            seconds = time.perf_counter() - start
            print(f"{desc}: {done}/{total} {_plural(unit)} ({done / max(seconds, 1e-9):.2f}/s)", file=sys.stderr, flush=True)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")


def reporter(label: str, enabled: bool = True, start: float | None = None):
    """A `say(message)` that prints `[label  12.3s] message` on stderr (nothing when not `enabled`)."""
    start = time.perf_counter() if start is None else start

    def say(message: str) -> None:
        if enabled:
            print(f"[{label} {time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


__all__ = ["PLAIN", "iterate", "reporter"]
