"""Time and peak memory of folding Conv+BatchNormalization, onnx-fuse beside the other tools.

Builds a plain CNN (Conv 3x3 -> BatchNormalization -> Relu, random weights, over 100 MB; ~10 MB
with --quick) in a temporary folder, runs each tool in its own process three times, interleaved,
and prints the median time and the peak RSS of each as a ratio over onnx.load + onnx.save alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

TARGET_RATIO = 1.5  # onnx-fuse should take at most this many times the load + save time
REPEATS = 3

FULL = dict(channels=384, layers=24)  # 256->384 then 23 x 384->384: about 125 MB of weights
QUICK = dict(channels=128, layers=16)  # about 10 MB
INPUT_SHAPE = (1, 256, 8, 8)

# Each tool is a command that reads the model IN and writes the model OUT.
FLOOR_CODE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
ONNXOPTIMIZER_CODE = (
    "import sys, onnx, onnxoptimizer; "
    "onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1]), ['fuse_bn_into_conv']), sys.argv[2])"
)
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
        Tool("load+save (floor)", "onnx", [python, "-c", FLOOR_CODE, "IN", "OUT"]),
        Tool("onnx-fuse", "onnx_fuse", [python, "-m", "onnx_fuse", "IN", "-o", "OUT", "-q"]),
        Tool("onnxoptimizer", "onnxoptimizer", [python, "-c", ONNXOPTIMIZER_CODE, "IN", "OUT"]),
        Tool("onnxslim", "onnxslim", [python, "-c", ONNXSLIM_CODE, "IN", "OUT"]),
        Tool("onnxruntime basic", "onnxruntime", [python, "-c", ORT_BASIC_CODE, "IN", "OUT"]),
    ]


def run_measured(argv: list, log_path: str):
    """Run argv to the end; return (exit code, wall seconds, peak RSS in KB of that process alone)."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, seconds, usage.ru_maxrss  # ru_maxrss is in KB on Linux


def run_helper(*args) -> str:
    """This script in a child process (building or inspecting a model), so that this process stays
    small: a child's ru_maxrss starts from its parent's peak RSS at the fork."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *args], check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout


def build_model(path: str, channels: int, layers: int) -> None:
    """Conv(3x3, pad 1, no bias) -> BatchNormalization (random statistics) -> Relu, `layers` times."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    x, in_channels = "input", INPUT_SHAPE[1]
    for i in range(layers):
        fan_in = in_channels * 9
        weight = rng.standard_normal((channels, in_channels, 3, 3), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / fan_in))
        bn = {
            "scale": rng.uniform(0.5, 1.5, channels),
            "bias": rng.normal(0.0, 0.1, channels),
            "mean": rng.normal(0.0, 0.1, channels),
            "var": rng.uniform(0.5, 1.5, channels),
        }
        initializers.append(numpy_helper.from_array(weight, f"conv{i}.weight"))
        initializers += [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}") for k, v in bn.items()]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.weight"], [f"conv{i}"], name=f"conv{i}",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"conv{i}"] + [f"bn{i}.{k}" for k in bn], [f"bn{i}"],
                             name=f"bn{i}", epsilon=1e-5),
            helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"),
        ]
        x, in_channels = f"relu{i}", channels
    graph = helper.make_graph(
        nodes, "bench_fold_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, INPUT_SHAPE)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, (1, channels) + INPUT_SHAPE[2:])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="bench_fold")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def inspect_model(path: str) -> dict:
    import onnx

    model = onnx.load(path)
    op_types = [node.op_type for node in model.graph.node]
    return {"nodes": len(op_types), "batchnorm": op_types.count("BatchNormalization")}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {sys.version.split()[0]}"


def versions() -> str:
    found = []
    for dist in ("onnx-fuse", "onnx", "onnxruntime", "numpy", "onnxoptimizer", "onnxslim"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def benchmark(quick: bool) -> int:
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench_fold_") as folder:
        source = os.path.join(folder, "cnn.onnx")
        run_helper("--build", source, "--channels", str(size["channels"]), "--layers", str(size["layers"]))
        print(f"machine: {machine()}")
        print(f"versions: {versions()}")
        print(f"model: {size['layers']} x (Conv 3x3 {size['channels']} channels -> BatchNormalization -> Relu), "
              f"input {'x'.join(map(str, INPUT_SHAPE))}, {os.path.getsize(source) / 1e6:.1f} MB")
        print(f"runs: {REPEATS} per tool, interleaved; median time, max peak RSS\n")

        candidates = tools()
        for repeat in range(REPEATS):
            for tool in candidates:
                if not tool.installed or tool.error:
                    continue
                out = os.path.join(folder, tool.module + ".onnx")
                if os.path.exists(out):
                    os.remove(out)
                log = os.path.join(folder, tool.module + ".log")
                argv = [{"IN": source, "OUT": out}.get(arg, arg) for arg in tool.argv]
                code, seconds, rss_kb = run_measured(argv, log)
                if code != 0:
                    with open(log, errors="replace") as text:
                        lines = text.read().strip().splitlines()
                    tool.error = f"failed (exit {code}): {lines[-1] if lines else 'no message'}"
                    continue
                tool.seconds.append(seconds)
                tool.rss_kb.append(rss_kb)

        before = json.loads(run_helper("--inspect", source))
        outputs = {tool.name: json.loads(run_helper("--inspect", os.path.join(folder, tool.module + ".onnx")))
                   for tool in candidates if tool.seconds}
    return report(candidates, before, outputs)


def report(candidates: list, before: dict, outputs: dict) -> int:
    floor = candidates[0]
    floor_seconds = statistics.median(floor.seconds) if floor.seconds else None
    floor_mb = max(floor.rss_kb) / 1024 if floor.rss_kb else None
    header = f"{'tool':20} {'median s':>9} {'x floor':>8} {'peak RSS MB':>12} {'x floor':>8} {'nodes':>6} {'BN left':>8}  runs s"
    print(header)
    print("-" * len(header))
    print(f"{'(input model)':20} {'':>9} {'':>8} {'':>12} {'':>8} {before['nodes']:>6} {before['batchnorm']:>8}")
    for tool in candidates:
        if not tool.installed:
            print(f"{tool.name:20} not installed")
            continue
        if tool.error:
            print(f"{tool.name:20} {tool.error}")
            continue
        seconds, mb = statistics.median(tool.seconds), max(tool.rss_kb) / 1024
        time_ratio = f"{seconds / floor_seconds:.2f}" if floor_seconds else "-"
        rss_ratio = f"{mb / floor_mb:.2f}" if floor_mb else "-"
        out = outputs[tool.name]
        print(f"{tool.name:20} {seconds:9.2f} {time_ratio:>8} {mb:12.0f} {rss_ratio:>8} "
              f"{out['nodes']:>6} {out['batchnorm']:>8}  {' '.join(f'{t:.2f}' for t in tool.seconds)}")
    print()

    fuse = candidates[1]
    if not fuse.seconds or not floor_seconds:
        print("onnx-fuse or the floor did not run: no ratio to compare with the target")
        return 1
    fused = outputs[fuse.name]
    if fused["batchnorm"]:
        print(f"WARNING: the onnx-fuse output still has {fused['batchnorm']} BatchNormalization nodes")
    ratio = statistics.median(fuse.seconds) / floor_seconds
    verdict = "meets" if ratio <= TARGET_RATIO else "does NOT meet"
    print(f"onnx-fuse takes {ratio:.2f}x the load+save time: it {verdict} the target of at most {TARGET_RATIO}x")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~10 MB model instead of ~125 MB (smoke test)")
    # Internal: the steps that run in a child process, so that this one stays small.
    parser.add_argument("--build", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inspect", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_model(args.build, args.channels, args.layers)
        return 0
    if args.inspect:
        print(json.dumps(inspect_model(args.inspect)))
        return 0
    return benchmark(args.quick)


if __name__ == "__main__":
    sys.exit(main())
