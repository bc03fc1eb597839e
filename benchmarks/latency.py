"""Never slower: the onnxruntime latency of onnx-fuse's output against its input and the deploy form.

    python benchmarks/latency.py                     # every model, 1 thread and the default count
    python benchmarks/latency.py --quick             # a smoke run: few rounds, no verdicts
    python benchmarks/latency.py --models repvit,gelu_erf --skip bn_conv   # bisect a slowdown
    python benchmarks/latency.py --list              # the models

For each model (built here, nothing downloaded: torch_models.py exports PyTorch networks with the
TorchScript exporter, models.py builds RepVGG and MobileOne with onnx.helper) there are two forms:
train (every BatchNorm and branch kept) and deploy (re-parameterized by hand in torch, then
exported). onnx-fuse runs on both. Five onnxruntime sessions (CPU, ORT_ENABLE_ALL) then run in
rounds: each round calls each session once, one call after the other, in a fresh random order,
and every ratio below is the median over rounds of the ratio of two calls of the same round:

    fused/input    onnx-fuse(train) over train
    fused/deploy   onnx-fuse(train) over deploy
    dep.f/deploy   onnx-fuse(deploy) over deploy
    A/A            deploy over a second session of the same deploy model (the control)

At the default thread count the sessions' worker threads do not spin between runs
(session.intra_op.allow_spinning = 0): a spinning pool would take a core from the session that
runs next.

PASS: the three ratios <= 1.02 and A/A within 1.00 +- 0.01; FAIL: a ratio above 1.02 by more
than the control's distance from 1.00; NOISY: a ratio above 1.02 but within that distance, and
pass?: ratios within 1.02 but the control out of range (the machine was busy; run again). A
ratio in parentheses compares a model with itself (onnx-fuse rewrote nothing) and is not judged.
`ORT ops` lists the ops whose count in onnxruntime's optimized graph differs between a form and
its onnx-fuse output (Gelu, LayerNormalization, FusedConv, NCHWc reorders...).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # onnx_fuse from this checkout, whatever is installed
sys.path.insert(1, HERE)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnx_fuse  # noqa: E402

RATIO_LIMIT = 1.02
CONTROL_TOLERANCE = 0.01

# RepVGG and MobileOne from models.py, narrow enough to run in a few milliseconds.
HELPER_MODELS = {
    "repvgg": ("repvgg", dict(blocks=(1, 2, 4, 8, 1), widths=(16, 24, 48, 96, 256), size=96)),
    "mobileone": ("mobileone", dict(blocks=(1, 2, 4, 5, 1), widths=(16, 24, 48, 96, 256), k=4, size=96)),
}


def model_names():
    import torch_models
    return list(HELPER_MODELS) + list(torch_models.TORCH_MODELS)


@dataclass
class Forms:
    train: onnx.ModelProto
    deploy: onnx.ModelProto
    shape: tuple
    torch_diff: float  # train form against deploy form, in torch (nan for models.py builders)
    same_weights: bool = True  # False: models.py builds the deploy form with weights of its own


def build(name) -> Forms:
    if name in HELPER_MODELS:
        import models
        builder, kwargs = HELPER_MODELS[name]
        train, deploy = getattr(models, builder)(**kwargs)
        return Forms(train, deploy, (1, 3, kwargs["size"], kwargs["size"]), float("nan"), False)
    import torch_models
    train, deploy, shape, diff = torch_models.build(name)
    return Forms(onnx.load_from_string(train), onnx.load_from_string(deploy), tuple(shape), diff)


def session(model: onnx.ModelProto, threads: int, optimized_path: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    else:
        # Worker threads that spin after a run would steal the core from the next session's run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_ops(model: onnx.ModelProto) -> Counter:
    """Op histogram of onnxruntime's own optimized graph (ORT_ENABLE_ALL, 1 thread)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "optimized.onnx")
        session(model, 1, path)
        return Counter(node.op_type for node in onnx.load(path, load_external_data=False).graph.node)


def ops_difference(before: Counter, after: Counter) -> str:
    keys = sorted(k for k in set(before) | set(after) if before[k] != after[k])
    return ", ".join(f"{k} {before[k]}->{after[k]}" for k in keys)


def paired_ratios(models: dict, threads: int, feed, epochs: int, rounds: int, pairs, seed=0):
    """Per pair (a, b), the median over all rounds of time(a) / time(b), and each model's median
    time. Each epoch makes fresh sessions (in a balanced order) and runs `rounds` rounds, each
    session once per round in a random order: a session's memory placement can make it a few
    per cent faster or slower than a twin for its whole life (about 2.5% standard deviation on
    this VM), so that bias is averaged over many epochs, as the A/A control shows."""
    rng = random.Random(seed)
    names = list(models)
    times = {name: [] for name in names}
    for epoch in range(epochs):
        # Sessions are made and warmed up (the first runs allocate and pack weights) in an order
        # that rotates every epoch and reverses every len(names) epochs, so that each model is
        # made in each position equally often: where a session lands in memory depends on when it
        # is made, and a random order left one model unlucky by 1-1.5% over 40 epochs.
        turn = epoch % len(names)
        order = names[turn:] + names[:turn]
        if (epoch // len(names)) % 2:
            order.reverse()
        sessions = {name: session(models[name], threads) for name in order}
        for name in order:
            for _ in range(3):
                sessions[name].run(None, feed)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                run = sessions[name].run
                started = time.perf_counter()
                run(None, feed)
                times[name].append(time.perf_counter() - started)
        del sessions
    ratios = {(a, b): statistics.median(x / y for x, y in zip(times[a], times[b])) for a, b in pairs}
    return ratios, {name: statistics.median(t) for name, t in times.items()}


PAIRS = (("fused", "train"), ("fused", "deploy"), ("deploy_fused", "deploy"), ("deploy_copy", "deploy"))


def verdict(ratios, unchanged=()) -> str:
    """PASS: every ratio <= 1.02 and the control within 1.00 +- 0.01. FAIL: a ratio above 1.02 by
    more than the control's own distance from 1.00. Otherwise NOISY (a ratio above 1.02 within
    the noise) or pass? (the ratios are fine but the control is out of its range). Pairs in
    `unchanged` compare a model with itself (onnx-fuse rewrote nothing) and are not judged."""
    noise = abs(ratios[("deploy_copy", "deploy")] - 1.0)
    judged = [ratios[p] for p in PAIRS[:3] if p not in unchanged]
    worst = max(judged, default=1.0)
    if worst > RATIO_LIMIT + noise:
        return "FAIL"
    if worst > RATIO_LIMIT:
        return "NOISY"
    return "PASS" if noise <= CONTROL_TOLERANCE else "pass?"


def shown(ratios, pair, unchanged) -> str:
    """A ratio with 3 decimals; in parentheses when onnx-fuse changed nothing (not judged)."""
    return f"({ratios[pair]:.3f})" if pair in unchanged else f"{ratios[pair]:.3f}"


def max_relative_error(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (see --list); default all")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs of 10 rounds, no verdicts")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per model and thread count (default 4)")
    parser.add_argument("--epochs", type=int, default=40, help="fresh sessions this many times (default 40)")
    parser.add_argument("--threads", default="1,0", help="intra-op thread counts, 0 = onnxruntime's default")
    parser.add_argument("--skip", default="", help="onnx-fuse passes to skip (comma-separated)")
    parser.add_argument("--passes", default="", help="run only these onnx-fuse passes (comma-separated)")
    parser.add_argument("--infer-shapes", action="store_true",
                        help="run onnx shape inference on both forms first (as onnxsim's output carries)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)

    names = model_names()
    if args.list:
        print("\n".join(names))
        return 0
    wanted = args.models.split(",") if args.models else names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(names)}")
    threads = [int(t) for t in args.threads.split(",")]
    options = {}
    if args.skip:
        options["skip"] = args.skip.split(",")
    if args.passes:
        options["passes"] = args.passes.split(",")

    import torch
    print(f"python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
          f"torch {torch.__version__}, onnx-fuse {onnx_fuse.__version__} from {os.path.dirname(onnx_fuse.__file__)}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; ORT_ENABLE_ALL, CPUExecutionProvider")
    print("command: python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"target: ratios <= {RATIO_LIMIT:.2f} with the A/A control within 1.00 +- {CONTROL_TOLERANCE:.2f}\n")

    header = (f"{'model':17} {'thr':>3} {'nodes t/f/d/df':>15} {'deploy ms':>9} {'fused/input':>11} "
              f"{'fused/deploy':>12} {'dep.f/deploy':>12} {'A/A':>6} {'runs':>6}  verdict")
    print(header)
    print("-" * len(header))
    results = []
    for name in wanted:
        forms = build(name)
        if args.infer_shapes:
            forms.train = onnx.shape_inference.infer_shapes(forms.train)
            forms.deploy = onnx.shape_inference.infer_shapes(forms.deploy)
        fused, fused_report = onnx_fuse.optimize_with_report(forms.train, **options)
        deploy_fused, deploy_report = onnx_fuse.optimize_with_report(forms.deploy, **options)
        # onnx-fuse rewrote nothing: that ratio compares a model with itself, a second control
        unchanged = {pair for pair, report in ((PAIRS[0], fused_report), (PAIRS[2], deploy_report))
                     if not report.rewrites}
        models = {"train": forms.train, "fused": fused, "deploy": forms.deploy, "deploy_copy": forms.deploy,
                  "deploy_fused": deploy_fused}
        feed = {forms.train.graph.input[0].name:
                np.random.default_rng(0).standard_normal(forms.shape).astype(np.float32)}
        nodes = "/".join(str(len(models[k].graph.node)) for k in ("train", "fused", "deploy", "deploy_fused"))
        notes = []
        if forms.torch_diff > 1e-4:  # nan (models.py) compares false
            notes.append(f"the deploy form differs from the train form in torch by {forms.torch_diff:.1e}")
        for count in threads:
            sessions = {key: session(model, count) for key, model in models.items()}
            outputs = {key: s.run(None, feed)[0] for key, s in sessions.items()}
            started = time.perf_counter()
            for s in sessions.values():
                s.run(None, feed)
            per_round = time.perf_counter() - started
            del sessions
            if count == threads[0]:
                # deploy forms from models.py have weights of their own: compare them with each other
                reference = {k: "train" if k in ("train", "fused") or forms.same_weights else "deploy"
                             for k in outputs}
                errors = {k: max_relative_error(outputs[k], outputs[reference[k]]) for k in outputs}
                if max(errors.values()) > 1e-4:
                    notes.append("outputs differ: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
            epochs = 2 if args.quick else args.epochs
            rounds = 10 if args.quick else max(20, min(1000, int(args.seconds / epochs / max(per_round, 1e-6))))
            ratios, medians = paired_ratios(models, count, feed, epochs, rounds, PAIRS)
            result = "-" if args.quick else verdict(ratios, unchanged)
            results.append((name, count, result))
            print(f"{name:17} {count or 'def':>3} {nodes:>15} {medians['deploy'] * 1e3:>9.2f} "
                  f"{shown(ratios, PAIRS[0], unchanged):>11} {shown(ratios, PAIRS[1], unchanged):>12} "
                  f"{shown(ratios, PAIRS[2], unchanged):>12} "
                  f"{ratios[PAIRS[3]]:>6.3f} {epochs * rounds:>6}  {result}", flush=True)
        before, after = ort_ops(forms.train), ort_ops(fused)
        dep_before, dep_after = ort_ops(forms.deploy), ort_ops(deploy_fused)
        if before != after:
            notes.append("ORT ops train->fused: " + ops_difference(before, after))
        if dep_before != dep_after:
            notes.append("ORT ops deploy->fused: " + ops_difference(dep_before, dep_after))
        if after != dep_before:
            notes.append("ORT ops deploy vs fused: " + ops_difference(dep_before, after))
        for note in notes:
            print(f"  {note}")

    if args.quick:
        print("\n--quick: too few runs to judge; no verdicts")
        return 0
    counts = Counter(result for _, _, result in results)
    print("\n" + ", ".join(f"{k} {counts[k]}" for k in ("PASS", "FAIL", "NOISY", "pass?") if counts[k]))
    failed = [f"{name}@{count or 'def'}" for name, count, result in results if result in ("FAIL", "NOISY")]
    if failed:
        print("not met: " + ", ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
