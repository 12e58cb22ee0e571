#!/usr/bin/env python3
"""Where ONNX Runtime spends its time on a model, by kind of node.

    .venv/bin/python scripts/profile_ort.py MODEL [MODEL ...] [--batch 8] [--threads 2] [--runs 30]

Runs each model on random input with ORT's profiler on (CPU provider, the
optimisation ORT applies at load, so a QDQ model shows the integer kernels it
was fused into), and prints milliseconds per run for each kind of node, with
convolutions split into depthwise, 1x1 and the rest (the first conv, kxk).
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort


def conv_kind(op, node):
    if node is None or "Conv" not in op:
        return op
    attrs = {a.name: a for a in node.attribute}
    group = attrs["group"].i if "group" in attrs else 1
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else None
    if group > 1:
        return op + " depthwise"
    if kernel == [1, 1]:
        return op + " 1x1"
    return op + " kxk"


def profile(path, batch, threads, runs):
    work = tempfile.mkdtemp(prefix="ort-profile-")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(work, "profile")
    so.optimized_model_filepath = os.path.join(work, "optimized.onnx")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = inp.shape[2] if isinstance(inp.shape[2], int) else 224
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    events = json.load(open(sess.end_profiling()))
    nodes = {n.name: n for n in onnx.load(so.optimized_model_filepath).graph.node}
    total, count, n_runs = collections.Counter(), collections.Counter(), 0
    for e in events:
        if e.get("cat") == "Session" and e["name"] == "model_run":
            n_runs += 1
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            args = e["args"]
            name = args.get("node_name", e["name"][: -len("_kernel_time")])
            kind = conv_kind(args["op_name"], nodes.get(name))
            total[kind] += e["dur"]
            count[kind] += 1
    all_us = sum(total.values())
    print(f"{path}: batch {batch}, {threads} threads, {n_runs} runs")
    for kind, us in total.most_common():
        print(f"  {kind:32s} {us / n_runs / 1000:7.2f} ms/run {100 * us / all_us:5.1f}%  ({count[kind] // n_runs} nodes)")
    print(f"  {'all kernels':32s} {all_us / n_runs / 1000:7.2f} ms/run = {batch / (all_us / n_runs / 1e6):.0f} img/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    for m in a.models:
        profile(m, a.batch, a.threads, a.runs)


if __name__ == "__main__":
    main()
