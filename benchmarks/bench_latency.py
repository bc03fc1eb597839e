"""Inference latency of merged train-form networks over the same networks built in deploy form.

    python benchmarks/bench_latency.py [--runs 30] [--size 224]

Builds RepVGG-A0 and MobileOne-S0 in train form (every BN and branch kept) and in deploy form,
runs onnx-fuse on the train form, then times onnxruntime (1 thread, all optimizations on) on the
merged and the deploy model, interleaved run by run, and prints median latencies and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import Counter

import numpy as np
import onnxruntime as ort

import onnx_fuse
from models import mobileone, repvgg


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def interleaved(sessions, feed, runs):
    times = [[] for _ in sessions]
    for s in sessions:  # warm up
        s.run(None, feed)
    for _ in range(runs):
        for i, s in enumerate(sessions):
            started = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, 1 thread, ORT_ENABLE_ALL; {platform.processor() or platform.machine()}")
    print(f"{'network':14} {'train nodes':>11} {'merged':>7} {'deploy':>7} {'train ms':>9} {'merged ms':>9} "
          f"{'deploy ms':>9} {'merged/deploy':>13}")
    for name, build in (("RepVGG-A0", repvgg), ("MobileOne-S0", mobileone)):
        train, deploy = build(size=args.size)
        merged, report = onnx_fuse.optimize_with_report(train)
        feed = {"input": np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
        t_train, t_merged, t_deploy = interleaved([session(train), session(merged), session(deploy)], feed, args.runs)
        print(f"{name:14} {len(train.graph.node):>11} {len(merged.graph.node):>7} {len(deploy.graph.node):>7} "
              f"{t_train * 1e3:>9.2f} {t_merged * 1e3:>9.2f} {t_deploy * 1e3:>9.2f} {t_merged / t_deploy:>13.3f}")
        if Counter(n.op_type for n in merged.graph.node) != Counter(n.op_type for n in deploy.graph.node):
            print(f"  note: merged ops {dict(Counter(n.op_type for n in merged.graph.node))} differ from deploy")
    print("target: merged/deploy <= 1.02")


if __name__ == "__main__":
    main()
