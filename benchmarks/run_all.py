"""Run every benchmark (what `make bench` does), each in its own process, and report how long each took.

Arguments after the options are passed to every script (e.g. `--quick`, `--models tiny`, `--repeats 3`).
Sets `OMP_WAIT_POLICY=PASSIVE` unless it is set (see benchmarks/RESULTS.md, item 7).

    python benchmarks/run_all.py                        # the full suite: tiny model and the default backbone
    python benchmarks/run_all.py --quick                # smoke run: tiny model, smallest settings
    python benchmarks/run_all.py --only published_design generative_judge
    python benchmarks/run_all.py --in-process --quick   # one process for all (imports paid once: the smoke test)
    python benchmarks/run_all.py --only serving         # the reward service and Ray Data (not in the default run)
"""

import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path


BENCHMARKS_DIR = Path(__file__).resolve().parent
# In the order of the items 1-7.
SCRIPTS = (
    "scoring_overhead",
    "published_design",
    "generative_judge",
    "early_exit",
    "multi_perspective",
    "training",
    "throughput",
    "differentiable",  # issue 19: rewards with gradients to the pixels
)
# Run only when named (`--only serving`): the reward service and Ray Data start a local Ray cluster (minutes of
# start-up on a small machine, outside `make bench`'s 15-minute budget), and the issue's serving targets are meant
# for a serving node with an accelerator. Not in the smoke test either.
OPTIONAL = ("serving",)


def run(name: str, script_args: list[str], in_process: bool) -> dict:
    """Run `bench_<name>.py` with `script_args`; returns its wall and CPU seconds (raises if it failed)."""
    script = BENCHMARKS_DIR / f"bench_{name}.py"
    print(f"=== {name}: {script.name} {' '.join(script_args)}", flush=True)
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    if in_process:
        saved_argv, sys.argv = sys.argv, [str(script), *script_args]
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = saved_argv
    else:
        subprocess.run([sys.executable, str(script), *script_args], check=True)
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(_cpu_seconds() - start_cpu, 1)}


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (user + system, all threads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS + OPTIONAL, default=SCRIPTS,
                        help="run these benchmarks only (the default: all but serving)")
    parser.add_argument("--in-process", action="store_true", help="run the scripts in this process")
    args, script_args = parser.parse_known_args()
    # OpenMP threads that spin while waiting collapse when another process holds a core (2 threads measured up to
    # 17x slower than 1 on a busy 2-core machine): passive waiting keeps the numbers meaningful on shared machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(BENCHMARKS_DIR))  # the scripts import `common`
    durations = {}
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    for name in args.only:
        durations[name] = run(name, script_args, args.in_process)
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "total_wall_s": round(time.perf_counter() - start, 1),
        "total_cpu_s": round(_cpu_seconds() - start_cpu, 1),
        "load_average_at_end": list(os.getloadavg()),
        "scripts": durations,
    }
    print(json.dumps(summary, indent=2), flush=True)
    if "--quick" not in script_args and set(args.only) == set(SCRIPTS):
        (BENCHMARKS_DIR / "results" / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
