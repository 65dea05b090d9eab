#!/usr/bin/env python3
"""Runs every shell command block of README.md and docs/tutorial.md, so the commands they show work.

Usage: run_doc_blocks.py REPO_DIR BUILD_DIR [DOC ...]   (DOC relative to REPO_DIR; default both)

Rules:
- A block is a fenced block whose info string is `sh` or `bash`. A block whose fence has
  `<!-- not run by tests: REASON -->` on the line just before it is skipped, and REASON printed.
- The blocks of one doc run in order, each with `bash -e` and a timeout, in one scratch directory
  of that doc holding the links build -> BUILD_DIR and configs, examples, scripts -> REPO_DIR's, so
  the docs' relative paths work and everything a block writes lands in the scratch directory.
- Short runs: a command line that runs `train` or `launch` of dtrain (or of a program built on
  its command line, e.g. build/examples/custom_model/spirals) with a YAML config, directly or
  after `mpirun -n N`, gets ` train.max_steps=20 log.progress=off` appended, unless it already
  sets train.max_steps. Nothing else is rewritten.
- Environment: OMP_NUM_THREADS=1, Open MPI allowed to run as root and to oversubscribe, and no
  DTRAIN_* variables from the caller.
Prints file:line, ran/skipped (reason) and seconds per block, and the output tail of a failed
block; exits 1 when any block failed (its scratch directory is kept).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BLOCK_TIMEOUT_S = 300
SHORT_RUN = "train.max_steps=20 log.progress=off"
SKIP_RE = re.compile(r"^\s*<!--\s*not run by tests:\s*(.*?)\s*-->\s*$")
FENCE_RE = re.compile(r"^(\s*)(```+)\s*([^`\s]*)")
LINKS = {"configs": None, "examples": None, "scripts": None}  # -> REPO_DIR/<name>


def blocks(path):
    """(line of the opening fence, info, skip reason or None, body lines) for every fenced block."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3)
        skip = SKIP_RE.match(lines[i - 1]) if i > 0 else None
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        yield i + 1, info, (skip.group(1) if skip else None), body
        i = j + 1


def end_of_command(line, start):
    """Index in `line` where the simple command starting at `start` ends: the first unquoted
    `|`, `;`, `&`, `<`, `>` (with a file-descriptor digit before it), `)` or ` #`."""
    quote = None
    i = start
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c in "|;&<>)" or (c == "#" and line[i - 1].isspace()):
            if c in "<>" and i > 0 and line[i - 1].isdigit() and line[i - 2:i - 1].isspace():
                i -= 1
            return len(line[:i].rstrip())
        i += 1
    return len(line.rstrip())


# dtrain, or a program on its command line (examples/custom_model's spirals), then train or launch,
# then a config on the same command.
RUNS_CONFIG = re.compile(r"(?:^|[\s/])(?:dtrain|spirals)\s+(?:train|launch)\s[^|;&#]*\.ya?ml\b")


def shorten(body):
    """The block's lines with SHORT_RUN appended to each training or launching command."""
    out, logical = [], []
    for line in body:
        logical.append(line)
        if line.rstrip().endswith("\\"):
            continue
        text = " ".join(l.rstrip().rstrip("\\") for l in logical)
        m = RUNS_CONFIG.search(text)
        if m and "train.max_steps=" not in text and not text.lstrip().startswith("#"):
            last = logical[-1]
            start = m.start() if len(logical) == 1 else 0
            end = end_of_command(last, start)
            logical[-1] = last[:end] + " " + SHORT_RUN + last[end:]
        out.extend(logical)
        logical = []
    return out + logical


def environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTRAIN_")}
    env.update(OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    return env


def run_block(script, cwd, env):
    """(exit status or None on timeout, output) of `bash -e script` in its own process group. The
    output goes to a file, not a pipe, so a background process the block left behind cannot hold
    the runner; it is killed with the group when the block ends."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["bash", "-e", script], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        out.seek(0)
        return rc, out.read().decode(errors="replace")


def run_doc(repo, build, doc, env):
    scratch = tempfile.mkdtemp(prefix="dtrain-docs-")
    os.symlink(build, os.path.join(scratch, "build"))
    for name in LINKS:
        os.symlink(os.path.join(repo, name), os.path.join(scratch, name))
    failed = 0
    for n, (line, info, skip, body) in enumerate(blocks(os.path.join(repo, doc))):
        if info not in ("sh", "bash"):
            continue
        where = f"{doc}:{line}"
        if skip is not None:
            print(f"{where}: skipped ({skip})", flush=True)
            continue
        script = os.path.join(scratch, f".block-{n}.sh")
        with open(script, "w", encoding="utf-8") as f:
            f.write("\n".join(shorten(body)) + "\n")
        t0 = time.monotonic()
        rc, out = run_block(script, scratch, env)
        secs = time.monotonic() - t0
        if rc == 0:
            print(f"{where}: ran, {secs:.1f} s", flush=True)
            continue
        failed += 1
        why = f"timed out after {BLOCK_TIMEOUT_S} s" if rc is None else f"exit status {rc}"
        tail = "\n".join("    " + l for l in out.rstrip().split("\n")[-40:])
        print(f"{where}: FAILED ({why}), {secs:.1f} s; the block as run is {script}; "
              f"output tail:\n{tail}", flush=True)
    if failed:
        print(f"{doc}: scratch directory kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return failed


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    repo, build = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    docs = sys.argv[3:] or ["README.md", "docs/tutorial.md"]
    env = environment()
    t0 = time.monotonic()
    failed = sum(run_doc(repo, build, doc, env) for doc in docs)
    print(f"{'FAILED: ' + str(failed) + ' block(s)' if failed else 'all blocks passed'}, "
          f"{time.monotonic() - t0:.1f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
