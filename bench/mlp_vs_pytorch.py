#!/usr/bin/env python3
"""One training step of MLP 784-256-128-10 (forward, cross-entropy, backward, SGD with momentum)
in dtrain and in PyTorch, on the same number of threads, interleaved in one run; prints samples/s
and the ratio. Usage: bench/mlp_vs_pytorch.py [--threads 1] [--rounds 3] [--bench build/bench/step_bench]
Run with --python from scripts/bench_env.sh (current torch), or Debian's /usr/bin/python3 (python3-torch)."""
import argparse
import json
import os
import subprocess
import time

import bench_python


def torch_samples_per_sec(batch, threads, seconds):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 784)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(20):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return batch * steps / (time.perf_counter() - start)


def dtrain_samples_per_sec(bench, threads, seconds):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([bench, "--benchmark_filter=BM_MlpTrainStep", "--benchmark_format=json",
                          f"--benchmark_min_time={seconds}"], env=env, check=True,
                         capture_output=True, text=True).stdout
    result = {}
    for b in json.loads(out)["benchmarks"]:
        batch = int(b["name"].split("batch:")[1])
        result[batch] = batch * 1e9 / b["real_time"] if b["time_unit"] == "ns" else None
    return result


def main():
    bench_python.use_requested_python()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the interpreter with torch (scripts/bench_env.sh)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--bench", default="build/bench/step_bench")
    args = parser.parse_args()
    # OpenBLAS ignores torch.set_num_threads: its pool is sized from the environment at import.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    runs = {64: ([], []), 256: ([], [])}
    for _ in range(args.rounds):  # interleaved, so both see the same machine state
        ours = dtrain_samples_per_sec(args.bench, args.threads, args.seconds)
        for batch in runs:
            runs[batch][0].append(ours[batch])
            runs[batch][1].append(torch_samples_per_sec(batch, args.threads, args.seconds))
    print(f"MLP 784-256-128-10 train step, {args.threads} thread(s), best of {args.rounds} rounds; "
          f"{bench_python.torch_description()}")
    print(f"{'batch':>6} {'dtrain samples/s':>18} {'pytorch samples/s':>18} {'ratio':>7}")
    for batch, (ours, theirs) in runs.items():
        print(f"{batch:>6} {max(ours):>18.0f} {max(theirs):>18.0f} {max(ours) / max(theirs):>7.2f}")


if __name__ == "__main__":
    main()
