#!/usr/bin/env python3
"""Reads dtrain's output with the reference readers and prints it as JSON, one object per line.

  read_back.py tensorboard LOGDIR      -> {"tag": .., "step": .., "value": .., "wall_time": ..}
                                          per scalar event (tensorboard's EventAccumulator)
  read_back.py safetensors FILE        -> {"name": .., "dtype": .., "shape": [..], "values": [..]}
                                          per tensor (safetensors.numpy.load_file), then
                                          {"metadata": {..}}

Used by tests/train/readers_test.cpp with the venv from scripts/python_readers.sh.
"""
import json
import sys


def read_tensorboard(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    # size_guidance 0 keeps every scalar; the default samples down to 10000 per tag.
    accumulator = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    for tag in sorted(accumulator.Tags()["scalars"]):
        for event in accumulator.Scalars(tag):
            print(json.dumps({"tag": tag, "step": event.step, "value": event.value,
                              "wall_time": event.wall_time}))


def read_safetensors(path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    tensors = load_file(path)
    for name, array in tensors.items():
        # NaN/Inf are not JSON; repr them as strings so a mismatch is visible instead of invalid.
        values = [v if v == v and abs(v) != float("inf") else repr(v)
                  for v in array.astype("float64").ravel().tolist()]
        print(json.dumps({"name": name, "dtype": str(array.dtype), "shape": list(array.shape),
                          "values": values}))
    with safe_open(path, framework="numpy") as handle:
        print(json.dumps({"metadata": handle.metadata() or {}}, sort_keys=True))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("tensorboard", "safetensors"):
        sys.exit("usage: read_back.py {tensorboard LOGDIR | safetensors FILE}")
    if sys.argv[1] == "tensorboard":
        read_tensorboard(sys.argv[2])
    else:
        read_safetensors(sys.argv[2])


if __name__ == "__main__":
    main()
