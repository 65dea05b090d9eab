#!/usr/bin/env python3
"""Single-process training throughput of configs/fashion_mnist_{mlp,cnn}.yaml in dtrain and of the
same models in PyTorch 1.13 on the same data, batch size and thread count, interleaved in one run.
Usage: bench/train_vs_pytorch.py [--threads 1] [--rounds 2] [--dtrain build/dtrain]
Run with Debian's /usr/bin/python3 (python3-torch, numpy).
On a GPU (scripts/gpu_check.sh): --device cuda --pytorch-only --kinds mlp,cnn,resnet --steps N
[--data DIR] prints `pytorch <kind> samples_per_sec=<x>` per model (batches copied from the host
each step, as dtrain's loader does; the ResNet without random crops and flips)."""
import argparse
import gzip
import os
import re
import subprocess
import tempfile
import time

import bench_python

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"
# (config, steps measured by dtrain, steps measured by PyTorch)
CASES = {"mlp": ("configs/fashion_mnist_mlp.yaml", 3000, 1500),
         "cnn": ("configs/fashion_mnist_cnn.yaml", 300, 150),
         "resnet": ("configs/fashion_mnist_resnet.yaml", 100, 50)}


def load_train_images(data=DATA):
    with gzip.open(f"{data}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{data}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return ((x / 255.0 - 0.2860) / 0.3530).astype(np.float32), y.astype(np.int64)


def torch_model(kind):
    import torch.nn as nn
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    if kind == "resnet":  # configs/fashion_mnist_resnet.yaml's layers
        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)]

        class Residual(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.body = nn.Sequential(*conv(c, c), nn.ReLU(), *conv(c, c))

            def forward(self, x):
                return x + self.body(x)

        return nn.Sequential(*conv(1, 32), nn.ReLU(), Residual(32), nn.ReLU(), nn.MaxPool2d(2),
                             *conv(32, 64), nn.ReLU(), Residual(64), nn.ReLU(), nn.MaxPool2d(2),
                             *conv(64, 128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(1024, 10))


def torch_samples_per_sec(kind, steps, threads, data, device="cpu"):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_model(kind).to(device)
    wd = 0.0001 if kind == "mlp" else 0.0005
    resnet = kind == "resnet"
    opt = torch.optim.SGD(model.parameters(), lr=0.1 if resnet else 0.05, momentum=0.9,
                          weight_decay=wd, nesterov=resnet)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1 if resnet else 0.0)
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    order = torch.randperm(len(y))
    batch = 128 if resnet else 64

    def step(i):
        idx = order[(i * batch) % (len(y) - batch):][:batch]
        opt.zero_grad()
        loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
        opt.step()

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for i in range(10):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return batch * steps / (time.perf_counter() - start)


def dtrain_samples_per_sec(binary, kind, steps, threads, device="cpu", data=DATA):
    config = CASES[kind][0]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [binary, "train", config, f"train.max_steps={steps}", "train.resume=never",
             f"train.checkpoint_dir={tmp}/ck", f"log.dir={tmp}/log", "log.progress=off",
             f"train.threads={threads}", "train.checkpoint_every_steps=0",
             f"train.device={device}", f"data.path={data}"],
            env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True, capture_output=True,
            text=True).stdout
    return float(re.search(r"samples_per_sec=([0-9.]+)", out).group(1))


def main():
    bench_python.use_requested_python()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the interpreter with torch (scripts/bench_env.sh)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtrain", default="build/dtrain")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch's model and batches)")
    parser.add_argument("--data", default=DATA, help="Fashion-MNIST gzip IDX folder")
    parser.add_argument("--kinds", default="mlp,cnn", help="comma-separated: mlp, cnn, resnet")
    parser.add_argument("--steps", type=int, default=0, help="PyTorch steps per model (0: CASES)")
    parser.add_argument("--pytorch-only", action="store_true", help="measure PyTorch alone")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    # OpenBLAS sizes its pool from the environment when torch is imported.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    data = load_train_images(args.data)
    if args.pytorch_only:
        for kind in kinds:
            rate = max(torch_samples_per_sec(kind, args.steps or CASES[kind][2], args.threads, data,
                                             args.device) for _ in range(args.rounds))
            print(f"pytorch {kind} samples_per_sec={rate:.1f}", flush=True)
        return
    results = {kind: ([], []) for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            _, ours_steps, torch_steps = CASES[kind]
            results[kind][0].append(dtrain_samples_per_sec(args.dtrain, kind, ours_steps, args.threads,
                                                           args.device, args.data))
            results[kind][1].append(torch_samples_per_sec(kind, torch_steps, args.threads, data,
                                                          args.device))
    print(f"training throughput, batch 64, {args.threads} thread(s), best of {args.rounds} rounds; "
          f"{bench_python.torch_description()}")
    print(f"{'config':<26} {'dtrain samples/s':>17} {'pytorch samples/s':>18} {'ratio':>6}")
    for kind, (ours, theirs) in results.items():
        print(f"{CASES[kind][0]:<26} {max(ours):>17.0f} {max(theirs):>18.0f} "
              f"{max(ours) / max(theirs):>6.2f}")


if __name__ == "__main__":
    main()
