"""What the PyTorch comparisons share: `--python PATH` runs a bench script under another
interpreter (the venv scripts/bench_env.sh makes, with the current torch from the package index),
and every table names the PyTorch it measured."""
import os
import sys


def use_requested_python():
    """Re-runs this script under the interpreter after --python, if it is not this one already."""
    argv = sys.argv
    if "--python" not in argv:
        return
    i = argv.index("--python")
    if i + 1 >= len(argv):
        sys.exit("--python needs the path of a Python interpreter (scripts/bench_env.sh prints one)")
    python, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        if not os.access(python, os.X_OK):
            sys.exit(f"--python {python}: not an executable interpreter (run scripts/bench_env.sh)")
        os.execv(python, [python] + rest)
    sys.argv = rest


def cpu_description():
    """"AMD EPYC, 2 cores, AVX2 + FMA (no AVX-512)" for a table's heading: dtrain's kernels and
    oneDNN's pick their code by these features, so figures from different CPUs do not compare."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if "avx512f" in flags:
        isa = "AVX-512" + (" with BF16" if "avx512_bf16" in flags else "")
    elif "avx2" in flags:
        isa = "AVX2" + (" + FMA" if "fma" in flags else "") + " (no AVX-512)"
    else:
        isa = "no AVX2"
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {isa}"


def torch_description():
    """"PyTorch 2.15.0 (MKL, oneDNN 3.13) from /path/python" for a table's heading."""
    import re
    import torch
    parts = ["MKL" if torch.backends.mkl.is_available() else "no MKL"]
    onednn = re.search(r"MKL-DNN v([0-9.]+)", torch.__config__.show())
    if onednn:
        parts.append(f"oneDNN {onednn.group(1)}")
    return f"PyTorch {torch.__version__} ({', '.join(parts)}) from {sys.executable}"
