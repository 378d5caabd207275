#!/usr/bin/env python3
"""Turn bench_backends' Google Benchmark JSON and torch_backends.py's JSON into
docs/backends-benchmarks.md (printed to stdout as well).

    bench_backends --benchmark_out=bench.json --benchmark_out_format=json \\
                   --benchmark_repetitions=3
    python3 benchmarks/backends/torch_backends.py --out torch.json --threads 1,2
    tools/bench/backends_report.py bench.json torch.json --out docs/backends-benchmarks.md

Names are BM_<block>/<eigen|onednn>/<shape>/t<threads>/<fwd|fwdbwd> and
BM_raw_matmul/onednn/M<m>xK<k>xN<n>/t<threads>/fwd; every time is the median over the
repetitions (the iteration runs; the "median" aggregates when only aggregates were written).
One table per thread count: eigen, onednn and torch ms, the speed ratio torch / onednn (> 1:
mmfuse on oneDNN is faster), onednn vs eigen (eigen / onednn), oneDNN's GFLOP/s, and that as a
percentage of the raw oneDNN matmul at the block's big-GEMM shape (rows x 512 x 2048, rows =
B * 64 tokens for the token blocks, B for the pooled fusion models) measured in the same run.
tools/bench/backends.sh builds, runs both and calls this script.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
NAME = re.compile(r"^BM_(\w+)/(eigen|onednn)/(\w+)/t(\d+)/(fwdbwd|fwd)(?:/|$)")
BLOCKS = ("linear", "self_attention", "cross_attention", "transformer", "early_fusion",
          "late_fusion", "hybrid_fusion")
# Blocks whose time is mostly large GEMMs: the targets' "% of the raw matmul ceiling" applies.
GEMM_HEAVY = ("linear", "self_attention", "cross_attention", "transformer", "hybrid_fusion")
TOKENS, WIDTH, MLP = 64, 512, 2048
SHAPES = {  # block -> what B<n> means
    "linear": "x (B, 64, 512) -> 2048",
    "self_attention": "x (B, 64, 512), 8 heads",
    "cross_attention": "q (B, 64, 512), context (B, 196, 512), 8 heads",
    "transformer": "x (B, 64, 512), 8 heads, MLP 2048, post-LN",
    "early_fusion": "2 x (B, 256) -> concat -> MLP 2048 -> 512 -> 10",
    "late_fusion": "2 x (B, 256) -> MLP 1024 -> 256 each -> concat -> 10",
    "hybrid_fusion": "a (B, 64, 256), b (B, 196, 256), cross exchange (8 heads, FF 1024), pool, concat -> 10",
}


def batch_of(shape: str) -> int:
    return int(shape[1:]) if shape.startswith("B") and shape[1:].isdigit() else -1


def ceiling_shape(block: str, shape: str) -> str:
    """The raw-matmul shape a block is compared with: rows x 512 x 2048."""
    b = batch_of(shape)
    rows = b if block in ("early_fusion", "late_fusion") else b * TOKENS
    return "M%dxK%dxN%d" % (rows, WIDTH, MLP)


def collect(data: dict):
    """{(block, backend, shape, threads, pass): row} of medians, and {key: error}."""
    runs, medians, errors = defaultdict(list), {}, {}
    for b in data.get("benchmarks", []):
        m = NAME.match(b.get("run_name", b["name"]))
        if not m:
            continue
        key = (m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(5))
        if b.get("error_occurred"):
            errors[key] = b.get("error_message", "error")
            continue
        if b.get("run_type", "iteration") == "iteration":
            runs[key].append(b)
        elif b.get("aggregate_name") == "median":
            medians[key] = b
    table = {}
    for key in set(runs) | set(medians):
        entries = runs.get(key) or [medians[key]]
        row = {"ms": statistics.median(e["real_time"] * TO_MS[e.get("time_unit", "ns")] for e in entries),
               "cpu_ms": statistics.median(e["cpu_time"] * TO_MS[e.get("time_unit", "ns")] for e in entries),
               "reps": len(entries)}
        for counter in ("flops", "native_ops", "fallback_ops", "plans_built", "heap_allocs_per_iter",
                        "workspace_bytes", "params"):
            values = [e[counter] for e in entries if counter in e]
            if values:
                row[counter] = statistics.median(values)
        labels = [e.get("label") for e in entries if e.get("label")]
        if labels:
            row["label"] = labels[0]
        table[key] = row
    return table, errors


def fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def gflops(flops, ms):
    return None if flops is None or not ms else flops / (ms * 1e-3) / 1e9


def lscpu() -> tuple[str, str]:
    """(model name, 'N CPUs, C cores per socket x S sockets, T threads per core')."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info.setdefault(k.strip(), v.strip())
    flags = info.get("Flags", "").split()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    return (info.get("Model name", "unknown"),
            "%s CPUs (%s cores per socket x %s sockets, %s threads per core); ISA: %s" % (
                info.get("CPU(s)", "?"), info.get("Core(s) per socket", "?"),
                info.get("Socket(s)", "?"), info.get("Thread(s) per core", "?"), isa or "?"))


def block_table(table, torch_ms, threads: int) -> tuple[str, list]:
    """The markdown table at `threads`, and per-row verdicts for the summary."""
    head = ("| block | shape | pass | eigen ms | onednn ms | torch ms | torch/onednn | eigen/onednn "
            "| onednn GFLOP/s | % of raw matmul | oneDNN ops native/fallback |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    shapes = sorted({k[2] for k in table if k[3] == threads and k[0] in BLOCKS}, key=batch_of)
    for block in BLOCKS:
        for shape in shapes:
            for p in ("fwd", "fwdbwd"):
                e = table.get((block, "eigen", shape, threads, p))
                o = table.get((block, "onednn", shape, threads, p))
                t = torch_ms.get((block, shape, threads, p))
                if not (e or o or t):
                    continue
                ems, oms = (e or {}).get("ms"), (o or {}).get("ms")
                ratio = t / oms if t and oms else None
                vs_eigen = ems / oms if ems and oms else None
                flops = (o or e or {}).get("flops")
                g = gflops(flops, oms)
                raw = table.get(("raw_matmul", "onednn", ceiling_shape(block, shape), threads, "fwd"))
                ceil = gflops(raw.get("flops"), raw.get("ms")) if raw else None
                pct = 100.0 * g / ceil if g and ceil else None
                ops = ("%.0f/%.0f" % (o["native_ops"], o["fallback_ops"])
                       if o and "native_ops" in o else "–")
                lines.append(
                    f"| {block} | {shape} | {p} | {fmt(ems, '.3f')} | {fmt(oms, '.3f')} | {fmt(t, '.3f')} | "
                    f"{fmt(ratio, '.2f')} | {fmt(vs_eigen, '.2f')} | {fmt(g, '.1f')} | "
                    f"{fmt(pct, '.0f')} | {ops} |")
                verdicts.append({"block": block, "shape": shape, "pass": p, "threads": threads,
                                 "ratio": ratio, "pct": pct, "batch": batch_of(shape)})
    return "\n".join(lines), verdicts


def ceiling_table(table, torch_raw, thread_counts) -> str:
    lines = ["| GEMM (C = A W^T) | threads | oneDNN ms | oneDNN GFLOP/s | oneDNN impl | PyTorch F.linear ms "
             "| PyTorch GFLOP/s |", "|---|---:|---:|---:|---|---:|---:|"]
    shapes = sorted({k[2] for k in table if k[0] == "raw_matmul"},
                    key=lambda s: [int(x) for x in re.findall(r"\d+", s)])
    for threads in thread_counts:
        for shape in shapes:
            r = table.get(("raw_matmul", "onednn", shape, threads, "fwd"))
            t = torch_raw.get((shape, threads))
            if not r and not t:
                continue
            flops = (r or {}).get("flops") or (t or {}).get("flops")
            lines.append(
                f"| {shape} | {threads} | {fmt((r or {}).get('ms'), '.3f')} | "
                f"{fmt(gflops(flops, (r or {}).get('ms')), '.1f')} | {(r or {}).get('label', '–')} | "
                f"{fmt((t or {}).get('ms'), '.3f')} | {fmt(gflops(flops, (t or {}).get('ms')), '.1f')} |")
    return "\n".join(lines)


def summary(verdicts) -> str:
    """The lead's three targets, checked row by row."""
    have = [v for v in verdicts if v["ratio"] is not None]
    slower = [v for v in have if v["ratio"] < 1.0]
    small = [v for v in have if 1 <= v["batch"] <= 4]
    small_short = [v for v in small if v["ratio"] < 1.5]
    heavy = [v for v in verdicts if v["block"] in GEMM_HEAVY and v["batch"] >= 32 and v["pct"] is not None]
    heavy_short = [v for v in heavy if v["pct"] < 70.0]

    def names(vs, key, spec):
        return ", ".join("%s %s %s t%d (%s)" % (v["block"], v["shape"], v["pass"], v["threads"],
                                                format(v[key], spec)) for v in vs) or "none"

    return "\n".join([
        f"- oneDNN >= PyTorch on every block at equal threads: {len(have) - len(slower)} of {len(have)} rows; "
        f"slower: {names(slower, 'ratio', '.2f')}",
        f"- >= 1.5x faster than PyTorch at batch 1-4: {len(small) - len(small_short)} of {len(small)} rows; "
        f"short: {names(small_short, 'ratio', '.2f')}",
        f"- GEMM-heavy blocks at training sizes >= 70 % of the raw matmul: {len(heavy) - len(heavy_short)} of "
        f"{len(heavy)} rows; short: {names(heavy_short, 'pct', '.0f')} (%)",
    ])


def document(bench, torch_data, table, errors, torch_ms, torch_raw, command, note) -> str:
    ctx = bench.get("context", {})
    tctx = (torch_data or {}).get("context", {})
    model, cores = lscpu()
    thread_counts = sorted({k[3] for k in table} | {k[2] for k in torch_ms})
    load = ", ".join(f"{x:.2f}" for x in ctx.get("load_avg", [])) or "unknown"
    reps = max((r["reps"] for r in table.values()), default=0)
    parts = [f"""# Backend benchmarks: Eigen vs oneDNN vs PyTorch

Generated by `tools/bench/backends_report.py` from one run of `tools/bench/backends.sh` — do
not edit the tables by hand. Sources: `benchmarks/backends/bench_backends.cpp` (mmfuse, Google
Benchmark) and `benchmarks/backends/torch_backends.py` (the PyTorch twins).

- date: {ctx.get('date', _dt.datetime.now().isoformat(timespec='seconds'))}
- machine: {model}; {cores}; load average at start {load}
- versions: oneDNN {ctx.get('onednn_version', '?')} (CPU runtime {ctx.get('onednn_cpu_runtime', '?')}),
  PyTorch {tctx.get('torch_version', 'not run')} (GEMM: BLAS {tctx.get('torch_blas', '?')}; its own oneDNN
  {tctx.get('torch_onednn', '?')}); mmfuse built Release,
  -march=native, OpenMP {ctx.get('openmp', '?')}
- command: `{command}`
- medians: mmfuse over {reps} benchmark repetitions; PyTorch over >= {tctx.get('min_reps', '?')} steps
  (budget {tctx.get('budget_s', '?')} s per case); OMP_WAIT_POLICY={tctx.get('omp_wait_policy', '?')}

{note}

## What is measured

Each block is the library's own module on a given backend stream (`registry::global().get("eigen"
| "onednn").default_stream()`), with an arena planned by a warm-up step and reset before each
step (no allocation per step on the mmfuse side), f32; `fwd` is an inference forward
(`training = false`; PyTorch: `eval()` under `torch.inference_mode()`), `fwdbwd` a training step
(forward, zero_grad, backward from a fixed upstream gradient, input gradients included).
Threads: `omp_set_num_threads` + `Eigen::setNbThreads` (mmfuse), `torch.set_num_threads` (PyTorch).

| block | shapes (B = batch) |
|---|---|
""" + "\n".join(f"| {b} | {SHAPES[b]} |" for b in BLOCKS) + """

Columns: `torch/onednn` = PyTorch time / oneDNN time (> 1: mmfuse on oneDNN is faster);
`eigen/onednn` = the oneDNN backend's speed-up over Eigen; `onednn GFLOP/s` = 2 x the
multiply-adds of the step's matrix products per second (point-wise ops not counted);
`% of raw matmul` = that against the raw oneDNN matmul at the block's big-GEMM shape, rows x 512 x
2048 with rows = B x 64 tokens (B for the pooled early/late fusion models), same threads, same
run (the practical ceiling of this CPU; see the last table); `native/fallback` = ops per step the
oneDNN stream ran as primitives / handed to its Eigen fallback (`onednn_stream::stats()`).
"""]
    all_verdicts = []
    for threads in thread_counts:
        text, verdicts = block_table(table, torch_ms, threads)
        all_verdicts += verdicts
        parts.append(f"## {threads} thread{'s' if threads != 1 else ''}\n\n{text}\n")
    parts.append("## Targets\n\n" + summary(all_verdicts) + "\n")
    parts.append("## Raw matmul (the ceiling)\n\nOne cached `dnnl::matmul` primitive, f32, "
                 "C (M, N) = A (M, K) W^T with W stored (N, K) as `nn.Linear`; PyTorch's "
                 "`F.linear` (its BLAS sgemm) at the same shapes for reference.\n\n"
                 + ceiling_table(table, torch_raw, thread_counts) + "\n")
    # Fallbacks do not depend on the thread count: one line per block, shape and pass.
    hot = sorted({(k[0], batch_of(k[2]), k[2], k[4], r.get("fallback_ops"), r.get("label", ""))
                  for k, r in table.items() if k[1] == "onednn" and k[0] in BLOCKS
                  and r.get("fallback_ops", 0) > 0}, key=lambda h: (BLOCKS.index(h[0]), h[1], h[3]))
    if hot:
        parts.append("## oneDNN fallbacks\n\nOps per step the oneDNN stream handed to its Eigen "
                     "fallback (op names from one traced step):\n\n" + "\n".join(
                         f"- `{b}` {s} {p}: {f:.0f}" + (f" ({lab[len('fallback: '):]})"
                                                         if lab.startswith("fallback: ") else "")
                         for b, _, s, p, f, lab in hot) + "\n")
    if errors:
        parts.append("## Errors\n\n" + "\n".join(
            f"- `BM_{k[0]}/{k[1]}/{k[2]}/t{k[3]}/{k[4]}`: {msg}" for k, msg in sorted(errors.items())) + "\n")
    parts.append(f"""## Caveats

- Wall-clock medians on whatever else the machine was doing (see the load average): compare
  columns within one run; re-run on an idle machine before quoting absolute numbers.
- Few repetitions ({reps}) of short runs; no confidence intervals.
- PyTorch's `fwd` uses its inference fast paths (the fused `_native_multi_head_attention` /
  `_transformer_encoder_layer_fwd`); mmfuse runs its general layers.
- oneDNN 2.6 allocates a small argument map inside every primitive execution (see
  `heap_allocs_per_iter` in the JSON); the mmfuse side allocates nothing per step.
""")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", type=Path, help="Google Benchmark JSON of bench_backends")
    ap.add_argument("torch_json", type=Path, nargs="?", help="JSON of torch_backends.py")
    ap.add_argument("--out", type=Path, default=Path("docs/backends-benchmarks.md"))
    ap.add_argument("--command", default="tools/bench/backends.sh", help="command shown in the page")
    ap.add_argument("--note", default="", help="paragraph placed above the tables")
    args = ap.parse_args(argv)

    bench = json.loads(args.bench_json.read_text())
    table, errors = collect(bench)
    torch_data = json.loads(args.torch_json.read_text()) if args.torch_json else None
    torch_ms, torch_raw = {}, {}
    for r in (torch_data or {}).get("results", []):
        if r["block"] == "raw_matmul":
            torch_raw[(r["shape"], r["threads"])] = r
        else:
            torch_ms[(r["block"], r["shape"], r["threads"], r["pass"])] = r["ms"]
    if not table and not errors:
        print(f"{args.bench_json}: no bench_backends results", file=sys.stderr)
        return 1
    text = document(bench, torch_data, table, errors, torch_ms, torch_raw, args.command, args.note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
