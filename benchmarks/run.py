"""onnx-fuse's performance record: time, peak memory and inference latency beside the other tools.

    python benchmarks/run.py            # every model at full size, about 15 minutes
    python benchmarks/run.py --quick    # every model small, about a minute (a smoke test)

Builds each model in a temporary folder (nothing is downloaded; the builders are in models.py),
runs every tool on it in its own process, interleaved round by round, and prints per model the
median time and the peak RSS of each tool, both as a ratio over onnx.load + onnx.save of the same
file, the node and BatchNormalization counts of each output and, for the re-parameterizable
networks, the onnxruntime latency of each output over the same network built in deploy form.
Then the scaling of onnx-fuse from 10,000 to 100,000 nodes, and which targets are met. Nothing
is asserted: the ratios are measured side by side in one run; compare those, not absolute numbers
across runs or machines.

This process imports only the standard library and does all model work in child processes: on
Linux a child's ru_maxrss starts from its parent's peak RSS, so a large parent would inflate every
measurement.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))

# Targets (from the project's issue). Reported, never asserted.
TIME_VS_FLOOR = 1.5  # onnx-fuse time / load+save time, on the wide model
TIME_VS_ONNXSLIM = 0.5  # onnx-fuse time / onnxslim time, on the wide model
RSS_VS_FLOOR = 1.3  # onnx-fuse peak RSS / load+save peak RSS, on every model
LATENCY_VS_DEPLOY = 1.02  # latency of onnx-fuse's output / latency of the deploy-form network
SCALING = 11.0  # onnx-fuse time at 100,000 nodes / time at 10,000 nodes

STARTUP_RUNS = 5
DEFAULT_TIMEOUT = 300.0
SYNTHETIC_TIMEOUT = 180.0  # the other tools are superlinear in the node count; keeps the run ~15 min
QUICK_TIMEOUT = 20.0


# ---------------------------------------------------------------------------------------------
# The models. `build` names a function of models.py and its arguments, full size and --quick.

@dataclass
class Spec:
    key: str
    title: str
    build: str
    full: dict
    quick: dict
    repeats: int = 3  # rounds; a tool is not run again once its runs took `repeat_budget` seconds
    latency_runs: int = 0  # > 0: the builder returns (train, deploy) and latency is measured
    timeout: float = DEFAULT_TIMEOUT  # per run, unless --timeout says otherwise
    scaled_from: str = ""  # a smaller model of the same kind: skip here the tools too slow there


SPECS = [
    Spec("resnet152", "ResNet-152 shape", "resnet_bottleneck",
         dict(blocks=[3, 8, 36, 3], width=64, size=224), dict(blocks=[1, 2, 3, 1], width=16, size=64)),
    Spec("wide", "wide plain CNN", "plain_cnn",
         dict(channels=448, layers=24, input_shape=[1, 256, 8, 8]),
         dict(channels=128, layers=8, input_shape=[1, 256, 8, 8]), repeats=3),
    Spec("repvgg_a0", "RepVGG-A0", "repvgg",
         dict(blocks=[1, 2, 4, 14, 1], widths=[48, 48, 96, 192, 1280], size=224),
         dict(blocks=[1, 2, 4, 14, 1], widths=[12, 12, 24, 48, 320], size=64), latency_runs=30),
    Spec("repvgg_b1", "RepVGG-B1", "repvgg",
         dict(blocks=[1, 4, 6, 16, 1], widths=[64, 128, 256, 512, 2048], size=224),
         dict(blocks=[1, 4, 6, 16, 1], widths=[16, 32, 64, 128, 512], size=64), latency_runs=12),
    Spec("mobileone_s0", "MobileOne-S0", "mobileone",
         dict(blocks=[1, 2, 8, 10, 1], widths=[48, 48, 128, 256, 1024], k=4, size=224),
         dict(blocks=[1, 2, 8, 10, 1], widths=[12, 12, 32, 64, 256], k=4, size=64), latency_runs=30),
    Spec("synthetic_10k", "synthetic, {nodes:,} nodes", "synthetic_chain", dict(blocks=3_333), dict(blocks=33),
         timeout=SYNTHETIC_TIMEOUT),
    Spec("synthetic_100k", "synthetic, {nodes:,} nodes", "synthetic_chain", dict(blocks=33_333), dict(blocks=333),
         timeout=SYNTHETIC_TIMEOUT, scaled_from="synthetic_10k"),
]
SCALING_PAIR = ("synthetic_10k", "synthetic_100k")


def describe(spec: Spec, args: dict) -> str:
    if spec.build == "resnet_bottleneck":
        width = args["width"]
        scale = "full width" if width == 64 else f"width {width} (ResNet-152 has 64)"
        return (f"bottleneck blocks {args['blocks']}, {scale}, Conv (no bias) -> BatchNormalization -> Relu, "
                f"residual Adds, input 1x3x{args['size']}x{args['size']}")
    if spec.build == "plain_cnn":
        shape = "x".join(map(str, args["input_shape"]))
        return f"{args['layers']} x (Conv 3x3 {args['channels']} channels -> BatchNormalization -> Relu), input {shape}"
    if spec.build == "repvgg":
        return (f"train form (BN(conv3x3) + BN(conv1x1) [+ BN(x)], Relu), blocks {args['blocks']}, "
                f"widths {args['widths']}, input 1x3x{args['size']}x{args['size']}")
    if spec.build == "mobileone":
        return (f"train form (k={args['k']} branches + 1x1 + BN(x)), blocks {args['blocks']}, "
                f"widths {args['widths']}, input 1x3x{args['size']}x{args['size']}")
    if spec.build == "synthetic_chain":
        return f"{args['blocks']:,} x (Conv 1x1 on 2 channels -> BatchNormalization -> Relu), input 1x2x4x4"
    return spec.build


# ---------------------------------------------------------------------------------------------
# The tools. Each is a command that reads the model IN and writes the model OUT.

FLOOR_CODE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
ONNXOPTIMIZER_CODE = (
    "import sys, onnx, onnxoptimizer; "
    "onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1]), ['fuse_bn_into_conv']), sys.argv[2])"
)
ONNXSIM_CODE = "import sys, onnx, onnxsim; model, _ = onnxsim.simplify(onnx.load(sys.argv[1])); onnx.save(model, sys.argv[2])"
ONNXSLIM_CODE = "import sys, onnxslim; onnxslim.slim(sys.argv[1], sys.argv[2])"
ORT_BASIC_CODE = (
    "import sys, onnxruntime as ort; options = ort.SessionOptions(); "
    "options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC; "
    "options.optimized_model_filepath = sys.argv[2]; "
    "ort.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])"
)


@dataclass
class Tool:
    name: str
    key: str  # file names
    module: str  # what must be importable for the tool to count as installed
    argv: list  # the command, with "IN" and "OUT" standing for the two paths
    seconds: list = field(default_factory=list)
    rss_kb: list = field(default_factory=list)
    error: str = ""

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def tools() -> list:
    python = sys.executable
    return [
        Tool("load+save (floor)", "floor", "onnx", [python, "-c", FLOOR_CODE, "IN", "OUT"]),
        Tool("onnx-fuse", "onnx_fuse", "onnx_fuse", [python, "-m", "onnx_fuse", "IN", "-o", "OUT", "-q"]),
        Tool("onnxoptimizer", "onnxoptimizer", "onnxoptimizer", [python, "-c", ONNXOPTIMIZER_CODE, "IN", "OUT"]),
        Tool("onnxsim", "onnxsim", "onnxsim", [python, "-c", ONNXSIM_CODE, "IN", "OUT"]),
        Tool("onnxslim", "onnxslim", "onnxslim", [python, "-c", ONNXSLIM_CODE, "IN", "OUT"]),
        Tool("onnxruntime basic", "ort_basic", "onnxruntime", [python, "-c", ORT_BASIC_CODE, "IN", "OUT"]),
    ]


# ---------------------------------------------------------------------------------------------
# Running things.

def run_measured(argv: list, log_path: str, timeout: float):
    """Run argv to the end or the timeout; return (exit code or None on timeout, wall seconds,
    peak RSS in KB of that process alone)."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return (None if timed_out.is_set() else process.returncode), seconds, usage.ru_maxrss  # KB on Linux


def run_helper(*args) -> str:
    """This script in a child process (building, inspecting, timing inference), so that this
    process stays small."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *args], check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout


def last_line(path: str) -> str:
    with open(path, errors="replace") as text:
        lines = [line for line in text.read().strip().splitlines() if line.strip()]
    return lines[-1].strip()[:160] if lines else "no message"


# ---------------------------------------------------------------------------------------------
# The child steps (these import numpy, onnx, onnxruntime).

def child_build(name: str, args_json: str, folder: str) -> None:
    sys.path.insert(0, HERE)
    import models

    result = getattr(models, name)(**json.loads(args_json))
    train, deploy = result if isinstance(result, tuple) else (result, None)
    models.save(train, os.path.join(folder, "input.onnx"))
    if deploy is not None:
        models.save(deploy, os.path.join(folder, "deploy.onnx"))


def child_inspect(paths: list) -> dict:
    import onnx

    found = {}
    for path in paths:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as error:  # noqa: BLE001 - a tool wrote something unreadable: say so
            found[path] = {"error": f"{type(error).__name__}: {error}"[:120]}
            continue
        op_types = [node.op_type for node in model.graph.node]
        found[path] = {"nodes": len(op_types), "batchnorm": op_types.count("BatchNormalization")}
        del model
    return found


def child_latency(runs: int, labelled_paths: list) -> dict:
    """Median latency of each model in onnxruntime (1 thread, ORT_ENABLE_ALL), interleaved run by run."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions, errors = {}, {}
    for label, path in labelled_paths:
        try:
            sessions[label] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001
            errors[label] = f"{type(error).__name__}: {error}"[:120]
    feed = None
    for session in sessions.values():
        spec = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        feed = {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        break
    times = {label: [] for label in sessions}
    for session in sessions.values():  # warm up
        session.run(None, feed)
    for _ in range(runs):
        for label, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[label].append(time.perf_counter() - started)
    result = {label: {"median": statistics.median(t), "runs": len(t)} for label, t in times.items()}
    result.update({label: {"error": message} for label, message in errors.items()})
    return result


# ---------------------------------------------------------------------------------------------
# The benchmark.

@dataclass
class Result:
    spec: Spec
    title: str
    args: dict
    megabytes: float
    tools: list
    before: dict
    outputs: dict
    latency: dict  # label -> {"median": s} or {"error": ...}; labels: tool keys, "train", "deploy"


def too_slow(smaller, nodes: int, timeout: float) -> dict:
    """Tools to skip on this model: on `smaller`, a model of the same kind, they timed out or took
    so long that this one (at least as many times longer as it has more nodes) would time out."""
    if smaller is None:
        return {}
    scale = nodes / max(1, smaller.before["nodes"])
    skip = {}
    for tool in smaller.tools[1:]:
        if tool.error.startswith("timeout"):
            skip[tool.key] = f"skipped: timed out at {smaller.before['nodes']:,} nodes"
        elif tool.seconds and statistics.median(tool.seconds) * scale > timeout:
            skip[tool.key] = (f"skipped: {statistics.median(tool.seconds):.1f} s at {smaller.before['nodes']:,} "
                              f"nodes, x{scale:.0f} nodes would pass the {timeout:.0f} s timeout")
    return skip


def benchmark_model(spec: Spec, quick: bool, folder: str, timeout: float, repeat_budget: float,
                    smaller=None) -> Result:
    args = spec.quick if quick else spec.full
    started = time.perf_counter()
    run_helper("--build", spec.build, json.dumps(args), folder)
    source = os.path.join(folder, "input.onnx")
    megabytes = os.path.getsize(source) / 1e6
    title = spec.title.format(nodes=3 * args.get("blocks", 0))
    print(f"## {title}: {describe(spec, args)}, {megabytes:.1f} MB "
          f"(built in {time.perf_counter() - started:.1f} s; timeout {timeout:.0f} s per run)", flush=True)
    candidates = tools()
    if smaller is not None:
        nodes = json.loads(run_helper("--inspect", source))[source]["nodes"]
        skip = too_slow(smaller, nodes, timeout)
        for tool in candidates:
            tool.error = skip.get(tool.key, "")
    repeats = 1 if quick else spec.repeats
    for _ in range(repeats):
        for tool in candidates:
            if not tool.installed or tool.error:
                continue
            if tool.seconds and sum(tool.seconds) >= repeat_budget:
                continue  # a slow tool runs fewer times: its time is long against the noise anyway
            out = os.path.join(folder, tool.key + ".onnx")
            if os.path.exists(out):
                os.remove(out)
            log = os.path.join(folder, tool.key + ".log")
            argv = [{"IN": source, "OUT": out}.get(arg, arg) for arg in tool.argv]
            code, seconds, rss_kb = run_measured(argv, log, timeout)
            if code is None:
                tool.error = f"timeout (killed after {timeout:.0f} s)"
            elif code != 0:
                tool.error = f"failed (exit {code}): {last_line(log)}"
            else:
                tool.seconds.append(seconds)
                tool.rss_kb.append(rss_kb)

    written = {tool.key: os.path.join(folder, tool.key + ".onnx") for tool in candidates if tool.seconds}
    found = json.loads(run_helper("--inspect", source, *written.values()))
    before = found[source]
    outputs = {key: found[path] for key, path in written.items()}

    latency = {}
    if spec.latency_runs:
        runs = 5 if quick else spec.latency_runs
        labelled = [("train", source), ("deploy", os.path.join(folder, "deploy.onnx"))]
        labelled += [(key, path) for key, path in written.items() if key != "floor"]
        flat = [item for pair in labelled for item in pair]
        latency = json.loads(run_helper("--latency", str(runs), *flat))
    result = Result(spec, title, args, megabytes, candidates, before, outputs, latency)
    print_table(result)
    return result


def fmt_ratio(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(result: Result) -> None:
    floor = result.tools[0]
    floor_s = statistics.median(floor.seconds) if floor.seconds else None
    floor_mb = max(floor.rss_kb) / 1024 if floor.rss_kb else None
    has_latency = bool(result.latency)
    deploy_ms = result.latency.get("deploy", {}).get("median")
    header = (f"{'tool':20} {'time s':>8} {'x floor':>7} {'RSS MB':>7} {'x floor':>7} {'nodes':>7} {'BN left':>7}"
              + (f" {'latency ms':>10} {'x deploy':>8}" if has_latency else "") + "  runs s")
    print(header)
    print("-" * len(header))

    def latency_cells(label):
        if not has_latency:
            return ""
        entry = result.latency.get(label)
        if entry is None:
            return f" {'-':>10} {'-':>8}"
        if "error" in entry:
            return f" {'error':>10} {'-':>8}"
        ms = entry["median"] * 1e3
        ratio = entry["median"] / deploy_ms if deploy_ms else None
        return f" {ms:>10.2f} {fmt_ratio(ratio, 3):>8}"

    before = result.before
    print(f"{'(input: train form)' if has_latency else '(input)':20} {'':>8} {'':>7} {'':>7} {'':>7} "
          f"{before['nodes']:>7} {before['batchnorm']:>7}" + latency_cells("train"))
    for tool in result.tools:
        if not tool.installed:
            print(f"{tool.name:20} not installed")
            continue
        if tool.error and not tool.seconds:
            print(f"{tool.name:20} {tool.error}")
            continue
        seconds, mb = statistics.median(tool.seconds), max(tool.rss_kb) / 1024
        time_ratio = seconds / floor_s if floor_s else None
        rss_ratio = mb / floor_mb if floor_mb else None
        out = result.outputs.get(tool.key, {})
        nodes = out.get("nodes", "?")
        bn = out.get("batchnorm", "?")
        runs = " ".join(f"{t:.2f}" for t in tool.seconds)
        if tool.error:
            runs += f"  then {tool.error}"
        if "error" in out:
            runs += f"  output unreadable: {out['error']}"
        print(f"{tool.name:20} {seconds:>8.2f} {fmt_ratio(time_ratio):>7} {mb:>7.0f} {fmt_ratio(rss_ratio):>7} "
              f"{nodes:>7} {bn:>7}" + latency_cells(tool.key) + f"  {runs}")
    if has_latency:
        deploy = result.latency.get("deploy", {})
        print(f"{'(deploy form, built)':20} {'':>8} {'':>7} {'':>7} {'':>7} {'':>7} {'':>7}" + latency_cells("deploy"))
        errors = {k: v["error"] for k, v in result.latency.items() if "error" in v}
        for label, message in errors.items():
            print(f"  latency of {label}: {message}")
        runs = next((v["runs"] for v in result.latency.values() if "runs" in v), 0)
        print(f"  latency: onnxruntime, 1 thread, ORT_ENABLE_ALL, {runs} interleaved runs, median"
              + ("" if deploy else "; the deploy form did not run"))
    print(flush=True)


def measure_startup(folder: str, timeout: float) -> list:
    argv = [sys.executable, "-m", "onnx_fuse", "--version"]
    times = []
    for _ in range(STARTUP_RUNS):
        code, seconds, _ = run_measured(argv, os.path.join(folder, "startup.log"), timeout)
        if code == 0:
            times.append(seconds)
    return times


def fuse_seconds(result: Result):
    fuse = result.tools[1]
    return statistics.median(fuse.seconds) if fuse.seconds else None


def summary(results: dict, startup: list, quick: bool) -> None:
    print("## Scaling and targets" + (" (--quick: small models, the verdicts mean little)" if quick else ""))
    lines = []  # (met or None, text)

    def verdict(value, target):
        return None if value is None else value <= target

    def ratio(result, tool_index, what):
        tool, floor = result.tools[tool_index], result.tools[0]
        if not tool.seconds or not floor.seconds:
            return None
        if what == "time":
            return statistics.median(tool.seconds) / statistics.median(floor.seconds)
        return max(tool.rss_kb) / max(floor.rss_kb)

    start_s = statistics.median(startup) if startup else None
    small, large = (results.get(key) for key in SCALING_PAIR)
    if small and large:
        t_small, t_large = fuse_seconds(small), fuse_seconds(large)
        n_small, n_large = small.before["nodes"], large.before["nodes"]
        if t_small and t_large:
            raw = t_large / t_small
            print(f"scaling: onnx-fuse {t_large:.2f} s at {n_large:,} nodes / {t_small:.2f} s at {n_small:,} nodes "
                  f"= {raw:.2f}x (nodes x{n_large / n_small:.1f})")
            lines.append((verdict(raw, SCALING), f"scaling {n_large:,}/{n_small:,} nodes {raw:.2f}x <= {SCALING:g}x"))
            if start_s is not None and t_small > start_s:
                net = (t_large - start_s) / (t_small - start_s)
                print(f"         minus start-up ({start_s:.2f} s, median of {len(startup)} runs of "
                      f"`python -m onnx_fuse --version`): {t_large - start_s:.2f} s / {t_small - start_s:.2f} s "
                      f"= {net:.2f}x")
                lines.append((verdict(net, SCALING),
                              f"scaling minus start-up {net:.2f}x <= {SCALING:g}x"))
            per_node = (t_large - (start_s or 0)) / n_large * 1e6
            print(f"         {per_node:.0f} us per node at {n_large:,} nodes (start-up excluded)")
    elif start_s is not None:
        print(f"start-up: `python -m onnx_fuse --version` {start_s:.2f} s")
    print()

    wide = results.get("wide")
    if wide:
        r = ratio(wide, 1, "time")
        lines.append((verdict(r, TIME_VS_FLOOR), f"wide model: onnx-fuse time {fmt_ratio(r)}x floor <= {TIME_VS_FLOOR}x"))
        slim = next((t for t in wide.tools if t.key == "onnxslim"), None)
        fuse = wide.tools[1]
        if slim and slim.seconds and fuse.seconds:
            r = statistics.median(fuse.seconds) / statistics.median(slim.seconds)
            lines.append((verdict(r, TIME_VS_ONNXSLIM),
                          f"wide model: onnx-fuse time {r:.2f}x onnxslim <= {TIME_VS_ONNXSLIM}x"))
        else:
            why = "not installed" if slim is None or not slim.installed else (slim.error or "did not run")
            lines.append((None, f"wide model: onnx-fuse time vs onnxslim: onnxslim {why}"))
    for key, result in results.items():
        r = ratio(result, 1, "rss")
        lines.append((verdict(r, RSS_VS_FLOOR), f"{result.title}: onnx-fuse peak RSS {fmt_ratio(r)}x floor "
                                                f"<= {RSS_VS_FLOOR}x"))
    for key, result in results.items():
        entry, deploy = result.latency.get("onnx_fuse", {}), result.latency.get("deploy", {})
        if result.spec.latency_runs:
            r = entry["median"] / deploy["median"] if "median" in entry and "median" in deploy else None
            lines.append((verdict(r, LATENCY_VS_DEPLOY),
                          f"{result.title}: latency of onnx-fuse's output {fmt_ratio(r, 3)}x deploy form "
                          f"<= {LATENCY_VS_DEPLOY}x"))
    for key, result in results.items():
        fused = result.outputs.get("onnx_fuse", {})
        if fused.get("batchnorm"):
            lines.append((False, f"{result.title}: onnx-fuse left {fused['batchnorm']} BatchNormalization"))
    for met, text in lines:
        print(f"  {'met    ' if met else 'NOT met' if met is False else 'n/a    '}  {text}")
    missed = sum(1 for met, _ in lines if met is False)
    print(f"\n{sum(1 for met, _ in lines if met)} targets met, {missed} not met, "
          f"{sum(1 for met, _ in lines if met is None)} not measured")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        with open("/proc/meminfo") as info:
            kb = int(next(line.split()[1] for line in info if line.startswith("MemTotal")))
        memory = f", {kb / 1024 ** 2:.0f} GB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {cores} cores available (of {os.cpu_count()}){memory}, {platform.system()} {platform.release()}"


def load() -> str:
    """The load average: above about 1 something else ran beside the benchmark and disturbed it."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = "  (other processes are running: the timings are disturbed)" if one > 1.5 and cores <= 4 or one > cores else ""
    return f"{one:.2f} (1 min), {five:.2f} (5 min){busy}"


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for dist in ("onnx-fuse", "onnx", "onnxruntime", "numpy", "protobuf", "onnxoptimizer", "onnxsim", "onnxslim"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} not installed")
    return ", ".join(found)


def benchmark(args) -> int:
    specs = SPECS
    if args.models:
        wanted = args.models.split(",")
        unknown = set(wanted) - {spec.key for spec in SPECS}
        if unknown:
            sys.exit(f"unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(s.key for s in SPECS)}")
        specs = [spec for spec in SPECS if spec.key in wanted]
    began = time.perf_counter()
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(f"load: {load()}")
    print(f"method: each tool in its own process, rounds interleaved ({'1 round, --quick' if args.quick else 'up to 3 rounds'}; "
          f"a tool is not run again once its runs took {args.repeat_budget:.0f} s), median time, max peak RSS "
          f"(ru_maxrss); times include starting Python and importing the tool",
          flush=True)
    print()
    results = {}
    with tempfile.TemporaryDirectory(prefix="onnx_fuse_bench_") as root:
        startup = measure_startup(root, args.timeout or DEFAULT_TIMEOUT)
        for spec in specs:
            folder = os.path.join(root, spec.key)
            os.makedirs(folder)
            timeout = args.timeout or (QUICK_TIMEOUT if args.quick else spec.timeout)
            results[spec.key] = benchmark_model(spec, args.quick, folder, timeout, args.repeat_budget,
                                                results.get(spec.scaled_from))
            shutil.rmtree(folder)
    summary(results, startup, args.quick)
    print(f"total {time.perf_counter() - began:.0f} s; load at the end: {load()}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every model small, one round: a smoke test")
    parser.add_argument("--models", metavar="A,B", help=f"only these ({', '.join(s.key for s in SPECS)})")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help=f"per tool run (default {DEFAULT_TIMEOUT:.0f}; {SYNTHETIC_TIMEOUT:.0f} on the synthetic "
                             f"models; {QUICK_TIMEOUT:.0f} with --quick)")
    parser.add_argument("--repeat-budget", type=float, default=60.0, metavar="S",
                        help="do not run a tool again on a model once its runs took this long (default 60)")
    # Internal: the steps that run in a child process, so that this one stays small.
    parser.add_argument("--build", nargs=3, metavar=("BUILDER", "ARGS", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--inspect", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--latency", nargs="+", metavar="RUNS LABEL PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        child_build(*args.build)
        return 0
    if args.inspect:
        print(json.dumps(child_inspect(args.inspect)))
        return 0
    if args.latency:
        runs, rest = int(args.latency[0]), args.latency[1:]
        print(json.dumps(child_latency(runs, list(zip(rest[::2], rest[1::2])))))
        return 0
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
