#!/usr/bin/env python3
"""Single-process training throughput of configs/fashion_mnist_{mlp,cnn,resnet}.yaml and
configs/char_transformer.yaml in dtrain and of the same models in PyTorch on the same data, batch
size and thread count, interleaved in one run.
Usage: bench/train_vs_pytorch.py [--threads 1] [--rounds 2] [--dtrain build/dtrain] [--kinds ...]
Run with Debian's /usr/bin/python3 (python3-torch, numpy) or --python build/bench-venv/bin/python
(the transformer needs PyTorch >= 2.0).
A sample is one image, or for the transformer one window of 128 bytes (batch 16, next-byte
cross-entropy at every position): both sides count sequences per second, not tokens (x 128).
The transformer is the config's model layer for layer (causal attention with one qkv Linear and
dropout 0.1 on its probabilities only, exact GELU, learned positions, a final LayerNorm and an
untied output Linear over the corpus's 95 distinct bytes: 635,871 parameters on both sides)
under AdamW (no decay on biases, norms and embeddings), gradient clipping at 1.0 and warm-up +
cosine. PyTorch's attention is F.scaled_dot_product_attention(is_causal=True); it trains on
random windows of the first 90% of the corpus (dtrain's train split), drawn before timing.
On a GPU (scripts/gpu_check.sh): --device cuda --pytorch-only --kinds mlp,cnn,resnet --steps N
[--data DIR] prints `pytorch <kind> samples_per_sec=<x>` per model (batches copied from the host
each step, as dtrain's loader does; the ResNet without random crops and flips).
The table also gives each model's matrix FLOPs per sample (dtrain's final line: gflops divided by
samples_per_sec; GEMMs and convolutions, 2 per multiply-add), the GFLOP/s both sides reach with
that count, and their share of the CPU's FMA peak (build/bench/fma_peak, --peak-gflops to give
it), with the share the issue's target ratio would take."""
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
TEXT = "/usr/share/games/fortunes/songs-poems"  # configs/char_transformer.yaml's corpus
# (config, steps measured by dtrain, steps measured by PyTorch)
CASES = {"mlp": ("configs/fashion_mnist_mlp.yaml", 3000, 1500),
         "cnn": ("configs/fashion_mnist_cnn.yaml", 300, 150),
         "resnet": ("configs/fashion_mnist_resnet.yaml", 100, 50),
         "transformer": ("configs/char_transformer.yaml", 40, 80)}
CONTEXT, TEXT_BATCH, WARMUP = 128, 16, 50  # configs/char_transformer.yaml
TARGETS = {"mlp": 2.5, "cnn": 2.0, "resnet": 1.5, "transformer": 1.5}  # dtrain / PyTorch


def load_train_images(data=DATA):
    with gzip.open(f"{data}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{data}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return ((x / 255.0 - 0.2860) / 0.3530).astype(np.float32), y.astype(np.int64)


def load_train_tokens(path=TEXT):
    """dtrain's train split of the text data set: a byte's id is its rank among the corpus's
    distinct bytes, and the first 90% of the tokens train (data.test_fraction 0.1)."""
    text = np.fromfile(path, np.uint8)
    vocab, ids = np.unique(text, return_inverse=True)
    return ids[:int(0.9 * len(ids))].astype(np.int64), len(vocab)


def torch_transformer(vocab, dim=128, heads=4, blocks=3, mlp_ratio=4, dropout=0.1):
    """configs/char_transformer.yaml's model, named as nn/attention.h names its parts."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    if not hasattr(F, "scaled_dot_product_attention"):
        raise SystemExit(f"--kinds transformer needs PyTorch >= 2.0 (this is {torch.__version__}); "
                         "run with --python build/bench-venv/bin/python (scripts/bench_env.sh)")

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):  # [N, T, D]; dropout on the attention probabilities only
            n, t, _ = x.shape
            q, k, v = self.qkv(x).view(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout if self.training else 0.0,
                                               is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(n, t, dim))

    class TransformerBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.attn = nn.LayerNorm(dim), CausalSelfAttention()
            self.ln2 = nn.LayerNorm(dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class PositionalEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(CONTEXT, dim) * 0.02)

        def forward(self, x):
            return x + self.weight[:x.shape[1]]

    return nn.Sequential(nn.Embedding(vocab, dim), PositionalEmbedding(),
                         *[TransformerBlock() for _ in range(blocks)], nn.LayerNorm(dim),
                         nn.Linear(dim, vocab))


def torch_transformer_step(model, tokens, steps, device):
    """The optimiser, schedule and batches of configs/char_transformer.yaml; returns step(i)."""
    import math
    import torch
    import torch.nn as nn
    # optimizer.no_decay [bias, norm, embedding]: every bias, the LayerNorms and both embeddings
    no_decay = {id(p) for m in model.modules() for p in m.parameters(recurse=False)
                if isinstance(m, (nn.LayerNorm, nn.Embedding))
                or type(m).__name__ == "PositionalEmbedding"}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in no_decay]},
                             {"params": [p for p in params if id(p) in no_decay],
                              "weight_decay": 0.0}],
                            lr=0.002, betas=(0.9, 0.99), weight_decay=0.1)
    after = max(1, steps - WARMUP)  # dtrain's LinearWarmup over CosineLR, total = the steps run
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / WARMUP if s < WARMUP else
        (1 + math.cos(math.pi * (s - WARMUP) / after)) / 2 if s - WARMUP < after else 0.0)
    loss_fn = nn.CrossEntropyLoss()
    starts = torch.randint(0, len(tokens) - CONTEXT, (steps, TEXT_BATCH, 1))
    windows = torch.from_numpy(tokens)[starts + torch.arange(CONTEXT + 1)]  # [steps, B, T + 1]
    xs, ys = windows[..., :-1].contiguous(), windows[..., 1:].reshape(steps, -1).contiguous()

    def step(i):
        opt.zero_grad(set_to_none=True)
        out = model(xs[i].to(device))
        loss_fn(out.view(-1, out.shape[-1]), ys[i].to(device)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()

    return step


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


def torch_image_step(kind, data, device):
    """Model, optimiser and batches of configs/fashion_mnist_<kind>.yaml; returns (step, batch)."""
    import torch
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

    return step, batch


def torch_samples_per_sec(kind, steps, threads, data, device="cpu"):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "transformer":
        model = torch_transformer(data[1]).to(device)
        step, batch = torch_transformer_step(model, data[0], 10 + steps, device), TEXT_BATCH
    else:
        step, batch = torch_image_step(kind, data, device)

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
    """(samples/s, matrix GFLOP/s) of the final line. data: the Fashion-MNIST folder, or for the
    transformer the text corpus."""
    config = CASES[kind][0]
    with tempfile.TemporaryDirectory() as tmp:
        # The transformer's config trains with ddp (dtrain launch) and caches its tokens.
        text = [f"data.cache_dir={tmp}/cache", "strategy.type=single"]
        if kind != "transformer":
            text = []
        out = subprocess.run(
            [binary, "train", config, f"train.max_steps={steps}", "train.resume=never",
             f"train.checkpoint_dir={tmp}/ck", f"log.dir={tmp}/log", "log.progress=off",
             f"train.threads={threads}", "train.checkpoint_every_steps=0",
             f"train.device={device}", f"data.path={data}"] + text,
            env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True, capture_output=True,
            text=True).stdout
    final = re.search(r"samples_per_sec=([0-9.]+) .*gflops=([0-9.]+)", out)
    return float(final.group(1)), float(final.group(2))


def fma_peak_gflops(dtrain, threads):
    """build/bench/fma_peak next to the dtrain binary, or None when it is not built."""
    binary = os.path.join(os.path.dirname(os.path.abspath(dtrain)), "bench", "fma_peak")
    if not os.path.exists(binary):
        return None
    out = subprocess.run([binary, "--threads", str(threads)], check=True, capture_output=True,
                         text=True).stdout
    return float(re.search(r"fma_peak_gflops=([0-9.]+)", out).group(1))


def main():
    bench_python.use_requested_python()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the interpreter with torch (scripts/bench_env.sh)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtrain", default="build/dtrain")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch's model and batches)")
    parser.add_argument("--data", default=DATA, help="Fashion-MNIST gzip IDX folder")
    parser.add_argument("--text", default=TEXT, help="the transformer's corpus")
    parser.add_argument("--kinds", default="mlp,cnn",
                        help="comma-separated: mlp, cnn, resnet, transformer")
    parser.add_argument("--steps", type=int, default=0, help="PyTorch steps per model (0: CASES)")
    parser.add_argument("--pytorch-only", action="store_true", help="measure PyTorch alone")
    parser.add_argument("--peak-gflops", type=float, default=0,
                        help="the CPU's FMA peak for --threads (0: run build/bench/fma_peak)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    # OpenBLAS sizes its pool from the environment when torch is imported.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    images = load_train_images(args.data) if set(kinds) - {"transformer"} else None
    data = {kind: load_train_tokens(args.text) if kind == "transformer" else images
            for kind in kinds}
    source = {kind: args.text if kind == "transformer" else args.data for kind in kinds}
    if args.pytorch_only:
        for kind in kinds:
            rate = max(torch_samples_per_sec(kind, args.steps or CASES[kind][2], args.threads,
                                             data[kind], args.device) for _ in range(args.rounds))
            print(f"pytorch {kind} samples_per_sec={rate:.1f}", flush=True)
        return
    results = {kind: ([], []) for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            _, ours_steps, torch_steps = CASES[kind]
            results[kind][0].append(dtrain_samples_per_sec(args.dtrain, kind, ours_steps, args.threads,
                                                           args.device, source[kind]))
            results[kind][1].append(torch_samples_per_sec(kind, torch_steps, args.threads,
                                                          data[kind], args.device))
    print(f"training throughput, each config's batch size, {args.threads} thread(s), best of "
          f"{args.rounds} rounds; {bench_python.torch_description()}")
    print(f"CPU: {bench_python.cpu_description()}")
    if "transformer" in kinds:
        print(f"(char_transformer: a sample is a sequence of {CONTEXT} tokens, batch {TEXT_BATCH})")
    peak = args.peak_gflops or (fma_peak_gflops(args.dtrain, args.threads)
                                if args.device == "cpu" else None)
    if peak:
        print(f"FMA peak: {peak:.1f} GFLOP/s on {args.threads} thread(s); GFLOP/s count dtrain's "
              f"matrix FLOPs per sample on both sides")
    print(f"{'config':<29} {'dtrain samples/s':>17} {'pytorch samples/s':>18} {'ratio':>6} "
          f"{'MFLOP/sample':>13} {'dtrain GFLOP/s':>15} {'pytorch GFLOP/s':>16} "
          f"{'target':>7} {'target GFLOP/s':>15}")
    for kind, (ours, theirs) in results.items():
        rate, gflops = max(ours)
        flop_per_sample = gflops * 1e9 / rate
        torch_gflops = flop_per_sample * max(theirs) / 1e9
        needed = TARGETS[kind] * torch_gflops

        def of_peak(value):
            return f"{value:.1f} ({100 * value / peak:.0f}%)" if peak else f"{value:.1f}"

        print(f"{CASES[kind][0]:<29} {rate:>17.0f} {max(theirs):>18.0f} "
              f"{rate / max(theirs):>6.2f} {flop_per_sample / 1e6:>13.3f} {of_peak(gflops):>15} "
              f"{of_peak(torch_gflops):>16} {TARGETS[kind]:>6.1f}x {of_peak(needed):>15}")


if __name__ == "__main__":
    main()
