#!/usr/bin/env python3
"""Compare mmfuse's fused CUDA attention with PyTorch's scaled_dot_product_attention.

Usage: python3 sdpa_compare.py PATH/TO/bench_cuda_attention [--reps N] [--filter REGEX]

Times torch.nn.functional.scaled_dot_product_attention (bf16, CUDA, whatever backend PyTorch
picks: FlashAttention-2 or cuDNN) at the shapes of bench_cuda_attention -- B = 8, H = 16,
D in {64, 128}, L in {1024, 2048, 4096}, non-causal and causal, forward and forward+backward
-- with CUDA events (median of many repetitions after warm-up), runs the mmfuse benchmark
binary with --benchmark_format=json in the same run, and prints a markdown table: shape,
mmfuse TFLOP/s, SDPA TFLOP/s, ratio. FLOPs follow the benchmark: forward 4 B H L^2 D (halved
when causal), forward+backward 3.5 times that.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys

BATCH, HEADS = 8, 16
DIMS = (64, 128)
LENGTHS = (1024, 2048, 4096)
NAME = re.compile(r"BM_attention/cuda/(fwd|fwd_bwd)/B(\d+)_H(\d+)_L(\d+)_D(\d+)(_causal)?(?:/manual_time)?$")


def flops(length, dim, causal, with_backward):
    f = 4.0 * BATCH * HEADS * length * length * dim
    if causal:
        f *= 0.5
    if with_backward:
        f *= 3.5
    return f


def time_sdpa(torch, length, dim, causal, with_backward, reps):
    """Median milliseconds of one SDPA forward (and backward) call."""
    fn = torch.nn.functional.scaled_dot_product_attention
    shape = (BATCH, HEADS, length, dim)
    gen = torch.Generator(device="cuda").manual_seed(length * 1000 + dim)
    q, k, v = (
        (torch.rand(shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 2 - 1)
        .requires_grad_(with_backward)
        for _ in range(3)
    )
    dout = torch.rand(shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 2 - 1

    def step():
        if with_backward:
            out = fn(q, k, v, is_causal=causal)
            q.grad = k.grad = v.grad = None
            out.backward(dout)
        else:
            with torch.no_grad():
                fn(q, k, v, is_causal=causal)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def run_mmfuse(binary, bench_filter):
    """{(mode, L, D, causal): TFLOP/s} from the mmfuse benchmark's JSON output."""
    cmd = [binary, "--benchmark_format=json", "--benchmark_min_time=0.5"]
    if bench_filter:
        cmd.append("--benchmark_filter=" + bench_filter)
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    if not proc.stdout.lstrip().startswith("{"):
        sys.exit("mmfuse benchmark printed no JSON: " + proc.stdout.strip())
    results = {}
    for b in json.loads(proc.stdout)["benchmarks"]:
        m = NAME.match(b["name"])
        if not m or b.get("run_type", "iteration") != "iteration":
            continue
        mode, _, _, length, dim, causal = m.groups()
        results[(mode, int(length), int(dim), causal is not None)] = b["TFLOP/s"]
    if not results:
        sys.exit("no BM_attention results in the mmfuse benchmark's output:\n" + proc.stdout)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", help="path to the bench_cuda_attention executable")
    parser.add_argument("--reps", type=int, default=50, help="timed SDPA calls per shape")
    parser.add_argument("--filter", default="", help="--benchmark_filter for the mmfuse binary")
    args = parser.parse_args()

    import torch  # imported here so that --help works without PyTorch

    if not torch.cuda.is_available():
        sys.exit("sdpa_compare: PyTorch sees no CUDA GPU")
    mmfuse = run_mmfuse(args.binary, args.filter)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| mode | shape | causal | mmfuse TFLOP/s | SDPA TFLOP/s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for mode in ("fwd", "fwd_bwd"):
        for dim in DIMS:
            for causal in (False, True):
                for length in LENGTHS:
                    key = (mode, length, dim, causal)
                    if key not in mmfuse:
                        continue
                    ms = time_sdpa(torch, length, dim, causal, mode == "fwd_bwd", args.reps)
                    sdpa = flops(length, dim, causal, mode == "fwd_bwd") / (ms * 1e-3) * 1e-12
                    ours = mmfuse[key]
                    shape = f"B{BATCH} H{HEADS} L{length} D{dim}"
                    print(f"| {mode} | {shape} | {'yes' if causal else 'no'} | {ours:.1f} | "
                          f"{sdpa:.1f} | {ours / sdpa:.2f} |", flush=True)


if __name__ == "__main__":
    main()
