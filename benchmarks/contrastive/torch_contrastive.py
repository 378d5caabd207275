#!/usr/bin/env python3
"""Compare mmfuse's contrastive heads (Eigen backend, f32) with the same computations in PyTorch.

Usage: python3 torch_contrastive.py PATH/TO/bench_contrastive [--threads 1,2] [--reps 5]
                                    [--filter REGEX] [--min-time 0.3] [--omp-wait-policy passive]

Runs the mmfuse benchmark binary (--benchmark_format=json, --benchmark_repetitions, medians),
then times the same steps in eager PyTorch on the CPU, fp32, with torch.set_num_threads(n)
for every thread count n (the binary gets the same list through MMFUSE_BENCH_THREADS and sets
Eigen's threads to it), and prints markdown tables: wall-clock and process-CPU medians, and
the ratio mmfuse / PyTorch (above 1: mmfuse is slower). The steps, at B x D in
{256 x 512, 1024 x 512, 4096 x 256}, inputs with unit rows:

  clip_loss      open_clip ClipLoss semantics: L = e^theta I @ T.T,
                 l = (CE(L, arange B) + CE(L.T, arange B)) / 2; backward to I, T and theta
                 (column "open_clip 2-GEMM": the same loss with open_clip's literal second
                 product logits_per_text = e^theta T @ I.T instead of L.T)
  siglip_loss    open_clip SigLipLoss: L = e^theta I @ T.T + b, z = 2 eye - 1,
                 l = -sum logsigmoid(z * L) / B; backward to I, T, theta and b
  clip_gemms     S = I @ T.T, dI = S @ T, dT = S.T @ I (no autograd)
  logit_loss     the B x B part alone: from S (a leaf) to the loss and dS, d theta (and db)
  l2_normalize   F.normalize(x, dim=-1) forward + backward of one (B, D) batch

Timings are taken step by step (time.perf_counter and time.process_time), medians over
repetitions after warm-up; gradients are reset to None before every step (as
optimizer.zero_grad() does). On a machine shared with other work, --omp-wait-policy passive
(OMP_WAIT_POLICY for both the binary and PyTorch, set before torch is imported) keeps idle
OpenMP threads from spinning on cores that other processes need; without it both sides spin
(the OpenMP default), which is what a dedicated machine wants.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_timing import time_step  # noqa: E402  (benchmarks/torch_timing.py)

SHAPES = ((256, 512), (1024, 512), (4096, 256))
CASES = ("clip_loss", "siglip_loss", "clip_gemms", "logit_loss/softmax", "logit_loss/sigmoid",
         "l2_normalize")
CLIP_LOG_SCALE = 2.659260036932778  # ln(1 / 0.07)
SIGLIP_LOG_SCALE = 2.302585092994046  # ln 10
SIGLIP_BIAS = -10.0
NAME = re.compile(
    r"BM_(clip_loss|siglip_loss|clip_gemms|l2_normalize|logit_loss)/eigen/"
    r"(?:(softmax|sigmoid)/)?B(\d+)(?:_D(\d+))?/threads:(\d+)")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_mmfuse(binary, threads, reps, bench_filter, min_time):
    """{(case, B, threads): (real ms, cpu ms)} medians of the benchmark's JSON, and its context."""
    cmd = [binary, "--benchmark_format=json", "--benchmark_repetitions=%d" % reps,
           "--benchmark_report_aggregates_only=true", "--benchmark_min_time=%g" % min_time]
    if bench_filter:
        cmd.append("--benchmark_filter=" + bench_filter)
    env = dict(os.environ, MMFUSE_BENCH_THREADS=",".join(str(t) for t in threads))
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    if not proc.stdout.lstrip().startswith("{"):
        sys.exit("mmfuse benchmark printed no JSON: " + proc.stdout.strip())
    report = json.loads(proc.stdout)
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    out = {}
    for b in report["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            sys.exit("mmfuse benchmark failed: %s: %s" % (b["run_name"], b.get("error_message")))
        m = NAME.match(b["run_name"])
        if not m:
            continue
        op, kind, batch, _, nthreads = m.groups()
        case = op + "/" + kind if kind else op
        k = scale[b["time_unit"]]
        out[(case, int(batch), int(nthreads))] = (b["real_time"] * k, b["cpu_time"] * k)
    return out, report.get("context", {})


def make_steps(torch, batch, dim):
    """{case: step()} running one PyTorch step of each case at (batch, dim)."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(batch * 7 + dim)

    def unit(rows, cols):
        return F.normalize(torch.randn(rows, cols, generator=gen), dim=-1)

    image = unit(batch, dim).requires_grad_(True)
    text = unit(batch, dim).requires_grad_(True)
    theta_clip = torch.tensor(CLIP_LOG_SCALE, requires_grad=True)
    theta_siglip = torch.tensor(SIGLIP_LOG_SCALE, requires_grad=True)
    bias = torch.tensor(SIGLIP_BIAS, requires_grad=True)
    arange = torch.arange(batch)
    signs = 2 * torch.eye(batch) - 1
    with torch.no_grad():
        sim = (image @ text.T).clone()
    sim.requires_grad_(True)
    x = torch.randn(batch, dim, generator=gen).requires_grad_(True)
    dy = unit(batch, dim)
    leaves = (image, text, theta_clip, theta_siglip, bias, sim, x)

    def reset():
        for t in leaves:
            t.grad = None

    def clip_loss():
        reset()
        logits = theta_clip.exp() * image @ text.T
        loss = (F.cross_entropy(logits, arange) + F.cross_entropy(logits.T, arange)) / 2
        loss.backward()

    def clip_loss_open_clip():
        reset()
        s = theta_clip.exp()
        per_image = s * image @ text.T
        per_text = s * text @ image.T
        loss = (F.cross_entropy(per_image, arange) + F.cross_entropy(per_text, arange)) / 2
        loss.backward()

    def siglip_loss():
        reset()
        logits = theta_siglip.exp() * image @ text.T + bias
        loss = -F.logsigmoid(signs * logits).sum() / batch
        loss.backward()

    def clip_gemms():
        with torch.no_grad():
            s = image @ text.T
            _ = s @ text
            _ = s.T @ image

    def logit_loss_softmax():
        reset()
        logits = theta_clip.exp() * sim
        loss = (F.cross_entropy(logits, arange) + F.cross_entropy(logits.T, arange)) / 2
        loss.backward()

    def logit_loss_sigmoid():
        reset()
        loss = -F.logsigmoid(signs * (theta_siglip.exp() * sim + bias)).sum() / batch
        loss.backward()

    def l2_normalize():
        reset()
        F.normalize(x, dim=-1).backward(dy)

    return {
        "clip_loss": clip_loss,
        "clip_loss/open_clip": clip_loss_open_clip,
        "siglip_loss": siglip_loss,
        "clip_gemms": clip_gemms,
        "logit_loss/softmax": logit_loss_softmax,
        "logit_loss/sigmoid": logit_loss_sigmoid,
        "l2_normalize": l2_normalize,
    }


def shape_label(case, batch, dim):
    return "B%d" % batch if case.startswith("logit_loss") else "B%d x D%d" % (batch, dim)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", help="path to the bench_contrastive executable")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--reps", type=int, default=5,
                    help="benchmark repetitions (mmfuse) and minimum steps (PyTorch)")
    ap.add_argument("--filter", default="", help="--benchmark_filter for the mmfuse binary")
    ap.add_argument("--min-time", type=float, default=0.3, help="--benchmark_min_time")
    ap.add_argument("--omp-wait-policy", choices=("active", "passive"),
                    help="OMP_WAIT_POLICY for both sides (default: the environment's)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    import torch  # after OMP_WAIT_POLICY: OpenMP reads it when it starts

    mm, context = run_mmfuse(args.binary, threads, args.reps, args.filter, args.min_time)
    if not mm:
        sys.exit("no mmfuse results matched")

    torch_times = {}
    for n in threads:
        torch.set_num_threads(n)
        for batch, dim in SHAPES:
            wanted = [c for c in CASES if (c, batch, n) in mm]
            if not wanted:
                continue
            steps = make_steps(torch, batch, dim)
            for case in wanted:
                torch_times[(case, batch, n)] = time_step(steps[case], args.reps, 1.5, 50)[:2]
            if "clip_loss" in wanted:
                torch_times[("clip_loss/open_clip", batch, n)] = time_step(
                    steps["clip_loss/open_clip"], args.reps, 1.5, 50)[:2]

    print("# mmfuse (Eigen backend) vs PyTorch %s (eager, CPU, fp32)\n" % torch.__version__)
    print("- date: %s" % datetime.date.today().isoformat())
    print("- CPU: %s, %d logical cores; load average at start %s" % (
        cpu_model(), os.cpu_count(), context.get("load_avg", "?")))
    print("- mmfuse binary: %s (Eigen OpenMP: %s); PyTorch threads: torch.set_num_threads" % (
        os.path.basename(args.binary), context.get("eigen_openmp", "?")))
    print("- medians: mmfuse over %d benchmark repetitions, PyTorch over >= %d steps; "
          "OMP_WAIT_POLICY=%s\n" % (args.reps, args.reps,
                                      os.environ.get("OMP_WAIT_POLICY", "unset")))
    print("| step | shape | threads | mmfuse ms | PyTorch ms | ratio | mmfuse CPU ms "
          "| PyTorch CPU ms | CPU ratio | open_clip 2-GEMM ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    dims = dict(SHAPES)
    for case in CASES:
        for batch, dim in SHAPES:
            for n in threads:
                key = (case, batch, n)
                if key not in mm or key not in torch_times:
                    continue
                (mr, mc), (tr, tc) = mm[key], torch_times[key]
                extra = ""
                if case == "clip_loss":
                    extra = "%.2f" % torch_times[("clip_loss/open_clip", batch, n)][0]
                print("| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s |" % (
                    case, shape_label(case, batch, dims[batch]), n, mr, tr, mr / tr, mc, tc,
                    mc / tc, extra))

    print("\n## Where mmfuse's step goes (wall ms, medians of the separate benchmarks)\n")
    print("| head | shape | threads | step | 3 GEMMs | logit_loss | rest | GEMM share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for head, loss in (("clip_loss", "logit_loss/softmax"), ("siglip_loss", "logit_loss/sigmoid")):
        for batch, dim in SHAPES:
            for n in threads:
                keys = [(head, batch, n), ("clip_gemms", batch, n), (loss, batch, n)]
                if not all(k in mm for k in keys):
                    continue
                step, gemms, part = (mm[k][0] for k in keys)
                print("| %s | B%d x D%d | %d | %.2f | %.2f | %.2f | %.2f | %.0f%% |" % (
                    head, batch, dim, n, step, gemms, part, step - gemms - part,
                    100 * gemms / step))


if __name__ == "__main__":
    main()
