#!/usr/bin/env python3
"""Time the blocks of bench_backends.cpp in eager PyTorch on the CPU (fp32), for the comparison
in docs/backends-benchmarks.md (tools/bench/backends.sh runs this right after bench_backends).

Usage: python3 torch_backends.py --out torch.json [--threads 1,2] [--filter REGEX]
                                 [--budget 1.0] [--min-reps 5]

Every block is the twin of the mmfuse module it is compared with (same layers, same shapes,
same FLOPs; E 512, 8 heads, MLP 2048, L 64 tokens):

  linear           nn.Linear(512, 2048) on (B, 64, 512)
  self_attention   nn.MultiheadAttention(512, 8, batch_first=True)(x, x, x, need_weights=False)
  cross_attention  the same module, (B, 64, 512) queries, key = value = a (B, 196, 512) context
  transformer      nn.TransformerEncoderLayer(512, 8, 2048, dropout=0, batch_first=True)
                   (post-LN, ReLU: PyTorch's defaults, as nn::transformer_encoder_layer's)
  early_fusion     cat of two (B, 256) features -> Linear(512, 2048), ReLU, Linear(2048, 512),
                   ReLU, Linear(512, 10)
  late_fusion      per modality Linear(256, 1024), ReLU, Linear(1024, 256), ReLU; cat;
                   Linear(512, 10)
  hybrid_fusion    per modality Linear(256, 256), ReLU on a (B, 64, 256), b (B, 196, 256);
                   two pre-LN cross-attention blocks (8 heads, FF 1024; the twin written in
                   include/mmfuse/nn/cross_attention.hpp) y_a = A(a, ctx b), y_b = B(b, ctx a)
                   from the pre-update streams; mean over tokens; cat; Linear(512, 10)
  raw_matmul       F.linear(A (M, K), W (N, K)): PyTorch's own GEMM at the ceiling shapes

Passes: "fwd" runs under torch.inference_mode() with the module in eval() (so PyTorch's
fast paths for MultiheadAttention / TransformerEncoderLayer apply); "fwdbwd" is a training step
in train() mode: gradients reset to None (optimizer.zero_grad()), forward, backward of a fixed
Gaussian upstream gradient, with the inputs requiring grad (mmfuse's backward returns the input
gradients too). torch.set_num_threads(n) for every thread count n. Each time is the median over
max(min_reps, budget / first step) steps after two warm-up steps (wall clock and process CPU).
"""

import argparse
import datetime
import json
import os
import platform
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_timing import time_step  # noqa: E402  (benchmarks/torch_timing.py)

E, HEADS, MLP, L, LCTX = 512, 8, 2048, 64, 196
FW, FMLP, CLASSES = 256, 1024, 10
SMALL_AND_TRAINING = (1, 4, 32)
BATCHES = {
    "linear": (1, 4, 32, 128),
    "self_attention": SMALL_AND_TRAINING,
    "cross_attention": SMALL_AND_TRAINING,
    "transformer": SMALL_AND_TRAINING,
    "early_fusion": SMALL_AND_TRAINING,
    "late_fusion": SMALL_AND_TRAINING,
    "hybrid_fusion": SMALL_AND_TRAINING,
}
# (M, K, N) of bench_backends' BM_raw_matmul
RAW_SHAPES = [(m, E, MLP) for m in (1, 4, 32, L, 4 * L, 32 * L, 128 * L)] + [(1024, 1024, 1024)]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build(torch, block, batch):
    """(module, inputs) of `block` at batch size `batch`."""
    nn, F = torch.nn, torch.nn.functional
    gen = torch.Generator().manual_seed(1000 + batch)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    class CrossAttentionBlock(nn.Module):
        """nn::cross_attention_block's twin (pre-LN, ReLU, context not normalised)."""

        def __init__(self, e, h, ff):
            super().__init__()
            self.cross_attn = nn.MultiheadAttention(e, h, batch_first=True)
            self.linear1 = nn.Linear(e, ff)
            self.linear2 = nn.Linear(ff, e)
            self.norm1 = nn.LayerNorm(e)
            self.norm2 = nn.LayerNorm(e)

        def forward(self, x, ctx):
            x = x + self.cross_attn(self.norm1(x), ctx, ctx, need_weights=False)[0]
            return x + self.linear2(F.relu(self.linear1(self.norm2(x))))

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    class CrossAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)

        def forward(self, q, ctx):
            return self.attn(q, ctx, ctx, need_weights=False)[0]

    class Early(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(2 * FW, MLP), nn.ReLU(), nn.Linear(MLP, E),
                                         nn.ReLU(), nn.Linear(E, CLASSES))

        def forward(self, a, b):
            return self.encoder(torch.cat([a, b], dim=-1))

    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            enc = lambda: nn.Sequential(nn.Linear(FW, FMLP), nn.ReLU(), nn.Linear(FMLP, FW),
                                        nn.ReLU())
            self.enc_a, self.enc_b = enc(), enc()
            self.head = nn.Linear(2 * FW, CLASSES)

        def forward(self, a, b):
            return self.head(torch.cat([self.enc_a(a), self.enc_b(b)], dim=-1))

    class Hybrid(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc_a = nn.Sequential(nn.Linear(FW, FW), nn.ReLU())
            self.enc_b = nn.Sequential(nn.Linear(FW, FW), nn.ReLU())
            self.block_a = CrossAttentionBlock(FW, HEADS, FMLP)
            self.block_b = CrossAttentionBlock(FW, HEADS, FMLP)
            self.head = nn.Linear(2 * FW, CLASSES)

        def forward(self, a, b):
            a, b = self.enc_a(a), self.enc_b(b)
            ya, yb = self.block_a(a, b), self.block_b(b, a)
            return self.head(torch.cat([ya.mean(dim=1), yb.mean(dim=1)], dim=-1))

    if block == "linear":
        return nn.Linear(E, MLP), [randn(batch, L, E)]
    if block == "self_attention":
        return SelfAttention(), [randn(batch, L, E)]
    if block == "cross_attention":
        return CrossAttention(), [randn(batch, L, E), randn(batch, LCTX, E)]
    if block == "transformer":
        return (nn.TransformerEncoderLayer(E, HEADS, MLP, dropout=0.0, batch_first=True),
                [randn(batch, L, E)])
    if block == "early_fusion":
        return Early(), [randn(batch, FW), randn(batch, FW)]
    if block == "late_fusion":
        return Late(), [randn(batch, FW), randn(batch, FW)]
    if block == "hybrid_fusion":
        return Hybrid(), [randn(batch, L, FW), randn(batch, LCTX, FW)]
    raise ValueError(block)


def steps(torch, module, inputs):
    """{pass: step()} for the inference forward and the training step."""
    with torch.no_grad():
        dy = torch.randn_like(module(*inputs))
    leaves = [x.requires_grad_(True) for x in (t.clone() for t in inputs)]
    params = list(module.parameters())

    def fwd():
        with torch.inference_mode():
            module(*inputs)

    def fwdbwd():
        for p in params:
            p.grad = None
        for x in leaves:
            x.grad = None
        module(*leaves).backward(dy)

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--filter", default="", help="regex on '<block>/B<batch>/t<threads>/<pass>'")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed steps per case")
    ap.add_argument("--min-reps", type=int, default=5, help="minimum timed steps per case")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    pattern = re.compile(args.filter) if args.filter else None

    import torch

    torch.manual_seed(0)
    results = []
    for n in threads:
        torch.set_num_threads(n)
        for block, batches in BATCHES.items():
            for batch in batches:
                cases = [p for p in ("fwd", "fwdbwd")
                         if not pattern or pattern.search("%s/B%d/t%d/%s" % (block, batch, n, p))]
                if not cases:
                    continue
                module, inputs = build(torch, block, batch)
                runs = steps(torch, module, inputs)
                for p in cases:
                    module.train(p == "fwdbwd")
                    ms, cpu_ms, reps = time_step(runs[p], args.min_reps, args.budget, 200)
                    results.append({"block": block, "shape": "B%d" % batch, "threads": n,
                                    "pass": p, "ms": ms, "cpu_ms": cpu_ms, "reps": reps})
                    print("torch %-16s B%-4d t%d %-7s %9.3f ms" % (block, batch, n, p, ms),
                          file=sys.stderr)
        for m, k, nn_ in RAW_SHAPES:
            shape = "M%dxK%dxN%d" % (m, k, nn_)
            if pattern and not pattern.search("raw_matmul/%s/t%d/fwd" % (shape, n)):
                continue
            a, w = torch.randn(m, k), torch.randn(nn_, k)
            with torch.inference_mode():
                ms, cpu_ms, reps = time_step(lambda: torch.nn.functional.linear(a, w),
                                             args.min_reps, args.budget, 200)
            results.append({"block": "raw_matmul", "shape": shape, "threads": n, "pass": "fwd",
                            "ms": ms, "cpu_ms": cpu_ms, "reps": reps,
                            "flops": 2.0 * m * k * nn_})
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    context = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torch_blas": (blas.group(1) if blas else "?") + (" " + mkl.group(1) if mkl else ""),
        "torch_onednn": onednn.group(1) if onednn else "?",
        "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "budget_s": args.budget,
        "min_reps": args.min_reps,
    }
    with open(args.out, "w") as f:
        json.dump({"context": context, "results": results}, f, indent=1)
    print("wrote %s (%d cases)" % (args.out, len(results)), file=sys.stderr)


if __name__ == "__main__":
    main()
