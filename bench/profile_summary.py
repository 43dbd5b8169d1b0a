#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (``--profile DIR`` of throughput.py / fanout.py).

Prints, for each file given: samples by thread kind, the functions with the most samples
inclusive (anywhere on the stack) and self (top of the stack). Output is for humans (stdout).
"""
from __future__ import annotations

import re
import sys
from collections import Counter


def thread_kind(name: str) -> str:
    name = re.sub(r"^thread \(\d+\): ", "", name)
    return "run-* (one per task)" if name.startswith("run-") else name


def category(frames: list[str]) -> str:
    """A coarse bucket for a sample, from the frame on top of the stack."""
    leaf = frames[-1]
    if "protobuf/" in leaf:
        return "protobuf, pure-Python encode/decode"
    if "grpc/" in leaf:
        return "grpc Python layer"
    if "subprocess.py" in leaf:
        return "subprocess (fork/exec)"
    if "logging/" in leaf:
        return "logging"
    if "threading.py" in leaf or "queue.py" in leaf:
        return "threading: locks, conditions, thread start"
    if "msgpack" in leaf or "codec.py" in leaf:
        return "msgpack"
    if "conductor/" in leaf:
        return "conductor's own code"
    if "pathlib.py" in leaf or "posixpath" in leaf or "<frozen os>" in leaf:
        return "paths and files"
    return "other"


def summarise(path: str, top: int = 25) -> None:
    cats: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    total = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[thread_kind(frames[0])] += n
        cats[category(frames)] += n
        seen = set()
        for f in frames[1:]:
            f = re.sub(r":\d+\)$", ")", f)
            if f not in seen:
                inclusive[f] += n
                seen.add(f)
        if len(frames) > 1:
            selfs[re.sub(r":\d+\)$", ")", frames[-1])] += n
    print(f"== {path}: {total} samples")
    print("-- by thread")
    for k, v in threads.most_common(12):
        print(f"{100 * v / total:6.1f}%  {k}")
    print("-- by kind of code (top of the stack)")
    for k, v in cats.most_common():
        print(f"{100 * v / total:6.1f}%  {k}")
    print("-- inclusive")
    for k, v in inclusive.most_common(top):
        print(f"{100 * v / total:6.1f}%  {k}")
    print("-- self")
    for k, v in selfs.most_common(top):
        print(f"{100 * v / total:6.1f}%  {k}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarise(p)
