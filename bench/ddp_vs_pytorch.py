#!/usr/bin/env python3
"""Data-parallel training throughput on this machine: dtrain's ddp strategy (mpirun, 2 processes)
and PyTorch 1.13 DistributedDataParallel (gloo, 2 processes) on the same models, per-replica batch
64 and one thread per process, plus each framework's single process and two independent dtrain
processes (no communication: the machine's ceiling for two workers), interleaved in one run.
Usage: bench/ddp_vs_pytorch.py [--rounds 2] [--dtrain build/dtrain] [--batch 64] [--models mlp,cnn]
       [--no-torch]   (--batch sets the per-replica batch; the step counts shrink with it)
Run with --python from scripts/bench_env.sh (current torch), or Debian's /usr/bin/python3 (python3-torch); needs mpirun (openmpi-bin)."""
import argparse
import os
import re
import socket
import subprocess
import tempfile
import time

import bench_python

CONFIGS = {"mlp": ("configs/synthetic_mlp.yaml", 1500), "cnn": ("configs/fashion_mnist_cnn.yaml", 60)}
BATCH = 64  # per replica; --batch changes it


def step_count(kind):
    return max(20, CONFIGS[kind][1] * 64 // BATCH)


def dtrain_rate(binary, kind, processes):
    config, steps = CONFIGS[kind][0], step_count(kind)
    args = [binary, "train", config, f"train.max_steps={steps * processes}", "train.resume=never",
            f"train.batch_size={BATCH}",
            "log.progress=off", "train.threads=1", "train.checkpoint_every_steps=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        args += [f"train.checkpoint_dir={tmp}/ck", f"log.dir={tmp}/log"]
        if processes > 1:
            args = ["mpirun", "--oversubscribe", "-n", str(processes)] + args + ["strategy.type=ddp"]
        out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"samples_per_sec=([0-9.]+)", out).group(1))


def dtrain_pair_rate(binary, kind):
    """Two independent single-process runs at once, one per core (as mpirun binds them): what two
    workers reach with no communication at all, the machine's ceiling for the DDP run."""
    config, steps = CONFIGS[kind][0], step_count(kind)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(2):
            args = [binary, "train", config, f"train.max_steps={steps}", "train.resume=never",
                    f"train.batch_size={BATCH}",
                    "log.progress=off", "train.threads=1", "train.checkpoint_every_steps=0",
                    f"train.checkpoint_dir={tmp}/ck{i}", f"log.dir={tmp}/log{i}"]
            core = {cores[i % len(cores)]}
            procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True,
                                          preexec_fn=lambda c=core: os.sched_setaffinity(0, c)))
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"an independent dtrain run failed: {[p.returncode for p in procs]}")
    return sum(float(re.search(r"samples_per_sec=([0-9.]+)", o).group(1)) for o in outs)


def torch_model(kind):
    import torch.nn as nn
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                             nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(1024, 10))


def torch_worker(rank, world, port, kind, steps, batch, queue):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    torch.manual_seed(0)
    model = torch_model(kind)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    if rank == 0:
        queue.put(batch * world * steps / (time.perf_counter() - start))
    if world > 1:
        dist.destroy_process_group()


def torch_rate(kind, processes):
    import torch.multiprocessing as mp
    with socket.socket() as s:  # a free loopback port for gloo's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=torch_worker, args=(r, processes, port, kind, step_count(kind), BATCH, queue))
             for r in range(processes)]
    for p in procs:
        p.start()
    rate = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return rate


def main():
    bench_python.use_requested_python()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the interpreter with torch (scripts/bench_env.sh)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtrain", default="build/dtrain")
    parser.add_argument("--batch", type=int, default=64, help="per-replica batch")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--no-torch", action="store_true", help="dtrain's columns only")
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch
    kinds = [k for k in args.models.split(",") if k]
    unknown = [k for k in kinds if k not in CONFIGS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = []
    for kind in kinds:
        best = {}
        for _ in range(args.rounds):
            runs = [("dtrain 1", lambda: dtrain_rate(args.dtrain, kind, 1)),
                    ("dtrain 2", lambda: dtrain_rate(args.dtrain, kind, 2)),
                    ("dtrain 2 alone", lambda: dtrain_pair_rate(args.dtrain, kind))]
            if not args.no_torch:
                runs += [("torch 1", lambda: torch_rate(kind, 1)),
                         ("torch 2", lambda: torch_rate(kind, 2))]
            for name, fn in runs:
                best[name] = max(best.get(name, 0), fn())
        rows.append((kind, best))
    print(f"samples/s, batch {BATCH} per replica, 1 thread per process, best of {args.rounds}")
    if not args.no_torch:
        print(bench_python.torch_description())
    print(f"CPU: {bench_python.cpu_description()}")
    print("| model | dtrain 1 proc | dtrain ddp 2 procs | efficiency | 2 procs without communication "
          "| their efficiency (ceiling) | PyTorch 1 proc | PyTorch DDP 2 procs | efficiency "
          "| dtrain DDP / PyTorch DDP |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, b in rows:
        torch_cells = (f"| {b['torch 1']:.0f} | {b['torch 2']:.0f} | {b['torch 2'] / (2 * b['torch 1']):.2f} "
                       f"| {b['dtrain 2'] / b['torch 2']:.2f} |") if "torch 2" in b else "| - | - | - | - |"
        print(f"| {kind} | {b['dtrain 1']:.0f} | {b['dtrain 2']:.0f} | {b['dtrain 2'] / (2 * b['dtrain 1']):.2f} "
              f"| {b['dtrain 2 alone']:.0f} | {b['dtrain 2 alone'] / (2 * b['dtrain 1']):.2f} " + torch_cells)


if __name__ == "__main__":
    main()
