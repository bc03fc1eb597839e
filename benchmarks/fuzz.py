"""Run the property-based fuzz test (tests/test_fuzz.py) with many more examples than CI does.

    python benchmarks/fuzz.py --examples 100000 [--jobs 2] [--seed 0] [--keep-going] [--save DIR]
    python benchmarks/fuzz.py --replay DIR/fail_*.onnx

Uses the same strategy and the same checks as the test. By default the first failure is shrunk by
hypothesis and printed with its node list. With --keep-going every failing example is recorded
(and written to DIR with --save) and the run goes on; the summary groups failures by message.
--replay checks saved models again, for instance after a fix.
Prints how many examples ran, the rewrites each pass made and the most common refusals, so that
a run also shows what the generator exercised; each process reports its progress on stderr every
1000 examples.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from test_fuzz import ELEM_TYPES, Case, check_optimization, describe, fuzz_models  # noqa: E402


PROGRESS_EVERY = 1000  # examples between a job's progress lines (on stderr)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def failure_kind(message: str) -> str:
    """A message with its numbers and tensor names blurred, to group failures."""
    return re.sub(r"'[^']*'|\d+(\.\d+)?(e[-+]?\d+)?", "#", message)


def worker(job: tuple) -> dict:
    """Run `examples` examples from hypothesis seed `job_seed` in this process."""
    job_seed, examples, keep_going, save_dir = job
    stats = {"examples": 0, "rewrites": Counter(), "refusals": Counter(), "failures": []}
    started = time.perf_counter()

    def progress():
        if stats["examples"] % PROGRESS_EVERY == 0:
            rate = stats["examples"] / (time.perf_counter() - started)
            print(f"seed {job_seed}: {stats['examples']} of {examples} examples, {len(stats['failures'])} failures, "
                  f"{rate:.1f}/s", file=sys.stderr, flush=True)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @seed(job_seed)
    @given(fuzz_models())
    def run(case):
        stats["examples"] += 1
        progress()
        try:
            report = check_optimization(case)
        except Exception as error:
            if not keep_going:
                raise
            record = {"message": first_line(error), "model": describe(case.model),
                      "trace": traceback.format_exc(limit=-3)}
            if save_dir:
                path = Path(save_dir) / f"fail_{job_seed}_{len(stats['failures'])}.onnx"
                saved = onnx.ModelProto()
                saved.CopyFrom(case.model)
                onnx.helper.set_model_props(saved, {"fuzz_input_seed": str(case.seed)})
                onnx.save(saved, path)
                record["path"] = str(path)
            stats["failures"].append(record)
            return
        for p in report.passes.values():
            stats["rewrites"][p.name] += p.rewrites
        for refusal in report.refused:
            stats["refusals"][f"{refusal.pass_name}: {failure_kind(refusal.reason)}"] += 1

    try:
        run()
    except Exception:
        stats["failures"].append({"message": "hypothesis found a failure (shrunk example above)",
                                  "model": "", "trace": traceback.format_exc()})
        print(traceback.format_exc(), file=sys.stderr)
    return stats


def replay(paths) -> int:
    """Check saved failing models again; prints each one's verdict."""
    failed = 0
    for path in paths:
        model = onnx.load(path)
        props = {p.key: p.value for p in model.metadata_props}
        elem = model.graph.input[0].type.tensor_type.elem_type
        dtype = {elem_type: dtype for dtype, elem_type in ELEM_TYPES.items()}.get(elem, np.float32)
        case = Case(model, dtype, int(props.get("fuzz_input_seed", 0)))
        try:
            check_optimization(case, log=lambda text: None)
            print(f"ok    {path}")
        except Exception as error:
            failed += 1
            print(f"FAIL  {path}: {first_line(error)}")
    print(f"{failed} of {len(paths)} fail")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples in all (default 2000)")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count(), help="processes (default: CPUs)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="first hypothesis seed")
    parser.add_argument("--keep-going", action="store_true", help="record every failure, do not stop and shrink")
    parser.add_argument("--save", metavar="DIR", help="with --keep-going, write failing models here")
    parser.add_argument("--replay", nargs="+", metavar="MODEL", help="check these saved models again, and stop")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(args.jobs, args.examples))
    per_job = [args.examples // jobs + (1 if i < args.examples % jobs else 0) for i in range(jobs)]
    work = [(args.seed + i, n, args.keep_going, args.save) for i, n in enumerate(per_job)]
    # SIGTERM ends the run as Ctrl-C does: leaving the Pool's block terminates its workers, which
    # would otherwise go on fuzzing as orphans.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"fuzz: {args.examples} examples in {jobs} processes, seeds {args.seed}..{args.seed + jobs - 1}")
    started = time.perf_counter()
    if jobs == 1:
        results = [worker(work[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            results = pool.map(worker, work)
    seconds = time.perf_counter() - started
    examples = sum(r["examples"] for r in results)
    rewrites = sum((r["rewrites"] for r in results), Counter())
    refusals = sum((r["refusals"] for r in results), Counter())
    failures = [f for r in results for f in r["failures"]]
    print(f"examples run: {examples} in {seconds:.0f} s")
    print("rewrites: " + ", ".join(f"{name} {n}" for name, n in rewrites.most_common()))
    print("most common refusals:")
    for reason, n in refusals.most_common(15):
        print(f"  {n:6}  {reason}")
    groups: dict = {}
    for failure in failures:
        groups.setdefault(failure_kind(failure["message"]), []).append(failure)
    print(f"failures: {len(failures)} ({len(groups)} kinds)")
    for kind, members in groups.items():
        smallest = min(members, key=lambda f: f["model"].count("\n"))
        print(f"\n=== {len(members)} x {smallest['message']}")
        if smallest.get("path"):
            print(f"saved: {smallest['path']}")
        print(smallest["model"])
        print(smallest["trace"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
