#!/usr/bin/env python3
"""Turn bench_fusion's Google Benchmark JSON into docs/fusion-benchmarks.md and a bar chart.

    bench_fusion --benchmark_out=fusion.json --benchmark_out_format=json \\
                 --benchmark_repetitions=3
    tools/bench/fusion_report.py fusion.json --out-dir docs [--note "..."]

writes <out-dir>/<name>.md (how to run, the table, the chart, caveats) and <out-dir>/<name>.png
(default name: fusion-benchmarks). Benchmarks are named BM_fusion/<method>/<setting>/<mode>
(mode fwd or fwdbwd); each cell of the table is the median over the repetitions (taken from
the iteration runs; from the "median" aggregates when only aggregates were reported).
tools/bench/fusion.sh builds bench_fusion, runs it and calls this script.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

MODES = ("fwd", "fwdbwd")
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_name(run_name: str):
    """BM_fusion/<method>/<setting>/<mode>[/process_time][/real_time] -> (method, setting, mode)."""
    parts = run_name.split("/")
    if len(parts) < 4 or parts[0] != "BM_fusion" or parts[3] not in MODES:
        return None
    return parts[1], parts[2], parts[3]


def collect(data: dict):
    """{(method, setting): {mode: {"ms": .., counters..}}} of medians, plus errors and labels."""
    runs = defaultdict(list)  # (method, setting, mode) -> [benchmark entries]
    medians = {}
    errors = {}
    labels = {}
    for b in data.get("benchmarks", []):
        key = parse_name(b.get("run_name", b["name"]))
        if key is None:
            continue
        if b.get("error_occurred"):
            errors[key] = b.get("error_message", "error")
            continue
        if b.get("label"):
            labels[key[1]] = b["label"]
        if b.get("run_type", "iteration") == "iteration":
            runs[key].append(b)
        elif b.get("aggregate_name") == "median":
            medians[key] = b
    table = defaultdict(dict)
    keys = set(runs) | set(medians)
    for key in keys:
        entries = runs.get(key) or [medians[key]]
        row = {
            "ms": statistics.median(e["real_time"] * TO_MS[e.get("time_unit", "ns")] for e in entries),
            "cpu_ms": statistics.median(e["cpu_time"] * TO_MS[e.get("time_unit", "ns")] for e in entries),
            "reps": len(entries),
        }
        for counter in ("params", "flops", "workspace_bytes", "heap_allocs_per_iter", "arena_blocks",
                        "eigen_threads"):
            values = [e[counter] for e in entries if counter in e]
            if values:
                row[counter] = statistics.median(values)
        table[(key[0], key[1])][key[2]] = row
    return table, errors, labels


def fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(table, settings, methods) -> str:
    head = ("| method | setting | fwd ms | fwd+bwd ms | params | GFLOP fwd | GFLOP fwd+bwd "
            "| workspace MB fwd | workspace MB fwd+bwd |")
    lines = [head, "|" + "---|" * 9]
    for setting in settings:
        for method in methods:
            cell = table.get((method, setting))
            if not cell:
                continue
            f, b = cell.get("fwd", {}), cell.get("fwdbwd", {})
            params = f.get("params", b.get("params"))
            lines.append(
                f"| {method} | {setting} | {fmt(f.get('ms'), '.2f')} | {fmt(b.get('ms'), '.2f')} | "
                f"{fmt(params / 1e6 if params is not None else None, '.3f')} M | "
                f"{fmt(f['flops'] / 1e9 if 'flops' in f else None, '.3f')} | "
                f"{fmt(b['flops'] / 1e9 if 'flops' in b else None, '.3f')} | "
                f"{fmt(f['workspace_bytes'] / 2**20 if 'workspace_bytes' in f else None, '.1f')} | "
                f"{fmt(b['workspace_bytes'] / 2**20 if 'workspace_bytes' in b else None, '.1f')} |")
    return "\n".join(lines)


def bar_chart(table, settings, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(settings), 1, figsize=(max(6.0, 0.6 * len(methods) + 2), 4.5 * len(settings)),
                             squeeze=False)
    width = 0.4
    for ax, setting in zip(axes[:, 0], settings):
        names = [m for m in methods if (m, setting) in table]
        xs = range(len(names))
        for i, (mode, label) in enumerate((("fwd", "forward"), ("fwdbwd", "forward + backward"))):
            vals = [table[(m, setting)].get(mode, {}).get("ms", float("nan")) for m in names]
            ax.bar([x + (i - 0.5) * width for x in xs], vals, width, label=label)
        ax.set_yscale("log")
        ax.set_ylabel("ms per step (log)")
        ax.set_title(f"setting {setting}")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def document(data, table, errors, labels, settings, methods, name: str, note: str, command: str) -> str:
    ctx = data.get("context", {})
    date = ctx.get("date", _dt.datetime.now().isoformat(timespec="seconds"))
    load = ", ".join(f"{x:.1f}" for x in ctx.get("load_avg", [])) or "unknown"
    threads = sorted({int(r["eigen_threads"]) for c in table.values() for r in c.values() if "eigen_threads" in r})
    allocating = sorted({f"{m} ({int(r['heap_allocs_per_iter'])})" for (m, _), c in table.items()
                         for r in c.values() if r.get("heap_allocs_per_iter", 0) > 0})
    alloc_text = ("0 for every method" if not allocating else
                  "0 except for " + ", ".join(allocating) + " — a steady-state step should allocate "
                  "nothing, so these are defects of those methods")
    described = list(settings) + sorted(k[len("setting_"):] for k in ctx
                                        if k.startswith("setting_") and k[len("setting_"):] not in settings)
    setting_lines = "\n".join(
        f"- `{s}`: {labels.get(s, ctx.get('setting_' + s, '?'))}" + ("" if s in settings else " (not in this run)")
        for s in described)
    err_lines = "\n".join(f"- `BM_fusion/{m}/{s}/{mode}`: {msg}" for (m, s, mode), msg in sorted(errors.items()))
    out = f"""# Fusion benchmarks

Microbenchmarks of the fusion methods (issue 4): every method on the same inputs, at the
same settings, on the Eigen backend in f32. Source: `benchmarks/fusion/bench_fusion.cpp`
(helpers in `benchmarks/fusion/fusion_bench.hpp`); this page is generated by
`tools/bench/fusion_report.py` — do not edit the table by hand.

## How to run

```sh
tools/bench/fusion.sh                       # build, run the small setting, regenerate this page
tools/bench/fusion.sh --all                 # both settings (the large one takes much longer)
FUSION_BENCH_ARGS="--benchmark_filter=late_" tools/bench/fusion.sh   # extra benchmark flags
```

or by hand:

```sh
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMFUSE_BUILD_BENCHMARKS=ON
ninja -C build-bench bench_fusion
build-bench/benchmarks/fusion/bench_fusion --benchmark_filter=/small/ \\
    --benchmark_repetitions=3 --benchmark_out=fusion.json --benchmark_out_format=json
python3 tools/bench/fusion_report.py fusion.json --out-dir docs
```

Names are `BM_fusion/<method>/<setting>/<fwd|fwdbwd>`; `fwd` is an inference forward
(`step_context::training = false`), `fwdbwd` a training step (forward, `zero_grad`, backward
from a fixed Gaussian output gradient). `MMFUSE_BENCH_THREADS=N` sets Eigen's thread count.

## What is measured

Every model takes the same three token sequences per sample — text, image and audio —
and ends in a (B, 10) output (10 classes):

{setting_lines}

- Representation-level methods (concat, mean, tensor and low-rank fusion, gates, FiLM,
  bilinear pooling, product of experts) see per-modality encoders mean over tokens ->
  Linear(D, D) -> ReLU, then the fuser, then a linear head (`fusion::late`). The pooling
  is inside the timed step (it is O(B L D)).
- Token-level methods (the single-stream early encoder, cross-attention hybrids, MulT,
  MBT, co-attention, Flamingo, Q-Former) take the tokens; their streams are mean-pooled
  and concatenated before the head where the method itself does not pool.
- Attention blocks use 8 heads and a feed-forward width of 4 D; token-level models have two
  attention layers each.

Per method (the factories in `register_methods()`, bench_fusion.cpp):

| method | model |
|---|---|
| late_concat | `late`: encoders, `fusion::concat<3>` (3D), Linear(3D, 10) |
| late_mean | `late`: encoders + per-modality Linear(D, 10), `fusion::mean<3>` (logit average) |
| tensor_fusion | `late`: 32-wide encoders, `tensor_fusion<3>` (33^3 = 35937 wide), Linear |
| low_rank_fusion | `late`: encoders, `low_rank_fusion<3>` rank 4, output D, Linear |
| multiplicative3 | `late`: 32-wide encoders, `multiplicative_interaction3` (32, 32, 32 -> 64), Linear |
| gmu | `late`: encoders, `gated_multimodal_unit<3>` (D), Linear |
| film | `late`: encoders, `film` on the image features conditioned on [text; audio], Linear |
| product_of_experts | `late`: mean-pool -> Linear(D, 2D) ([mu; logvar]), `product_of_experts<3>` with prior, Linear(2D, 10) |
| mfb, mlb | `late`: encoders, `mfb` / `mlb` (MMF defaults: mm 1200, k 2 / 1) on image vs [text; audio], output D, Linear |
| mutan | as mfb with `mutan` at the paper's mm 510, rank 10 (MMF's 1600 x 15 has 77 M parameters) |
| early_concat | `early`: tokens concatenated on the token axis (360), 2 `transformer_encoder_layer`s, mean-pool, Linear |
| hybrid_xattn | `hybrid`: 2 stages of `nn::cross_attention_block`s (stream m attends to stream m + 1), mean-pool + concat, Linear |
| mult | `hybrid`: `fusion::mult<3>` (6 crossmodal transformers of 2 layers, causal mask as the reference), mean-pool + concat (6D), Linear |
| mbt | `hybrid`: `bottleneck_fusion<3>` 2 layers, fusion from layer 1, 4 bottleneck tokens, mean-pool + concat, Linear |
| co_attention | `late`: 2 `co_attention_layer`s, visual stream [image; audio] tokens, text stream; mean-pool + concat, Linear |
| flamingo | `late`: a 2-layer `perceiver_resampler` (64 latents) per media modality, one `gated_cross_attention` of the text over [image; audio] latents, mean-pool, Linear |
| qformer | `early`: all 360 tokens as the "image", `qformer` with 32 queries and 2 layers (both cross-attending), mean-pool, Linear |

("encoders": per modality mean over tokens -> Linear(D, D) -> ReLU.)

Counters (per step): `params` (scalar parameters), `flops` (2 x the multiply-adds of every
matrix product and fused attention, counted by a forwarding stream in one step; point-wise
ops, norms and softmax are not counted), `workspace_bytes` (the step's `growing_arena`
high-water mark, `high_water_bytes()`, 64-byte alignment padding included: every
activation, saved tensor and gradient the step allocates, with no reuse inside a step;
parameters and their gradients are not in it), `heap_allocs_per_iter` (operator new calls
inside the timed loop per step: {alloc_text}) and `arena_blocks` (1: the arena is one block
in the steady state). Each step resets the arena first; one step through the FLOP-counting
stream runs before timing as the warm-up, and the repetitions of a benchmark reuse that
warmed-up model and arena.

## Results

Run: {date}, host `{ctx.get('host_name', '?')}`, {ctx.get('num_cpus', '?')} CPUs at
{ctx.get('mhz_per_cpu', '?')} MHz, load average {load}, Eigen threads {', '.join(map(str, threads)) or '?'},
OpenMP {ctx.get('eigen_openmp', '?')}; medians over {max((r['reps'] for c in table.values() for r in c.values()), default=0)} repetitions.
Command: `{command}`.

{note}

{markdown_table(table, settings, methods)}

![forward and forward+backward time per method]({name}.png)
"""
    if err_lines:
        out += f"\nBenchmarks that reported an error:\n\n{err_lines}\n"
    out += """
## Caveats

- Wall-clock times on a shared machine: the absolute numbers move with the load; compare
  methods within one run, and re-run on an idle machine before quoting them.
- Few repetitions of few iterations (a step of the token-level models takes seconds on
  a small CPU): medians of three, no confidence intervals.
- FLOPs count only matrix products and fused attention; methods dominated by point-wise
  work (mean, gates, product of experts) are under-counted relative to their time.
- The adaptors that put every method on the same inputs (mean pooling, the token-axis
  concatenation of the early model, the stream-to-next-stream cross-attention hybrid) are
  benchmark scaffolding in `fusion_bench.hpp`, not library API; they take no missing
  modalities.
- Eigen's GEMM may allocate its packing buffers with malloc inside a step; those are not
  in `heap_allocs_per_iter` (which counts operator new only).
"""
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=Path, help="Google Benchmark JSON output of bench_fusion")
    ap.add_argument("--out-dir", type=Path, default=Path("docs"))
    ap.add_argument("--name", default="fusion-benchmarks", help="file stem of the .md and .png")
    ap.add_argument("--note", default="", help="paragraph placed above the table (machine state, ...)")
    ap.add_argument("--command", default="tools/bench/fusion.sh", help="command shown in the page")
    args = ap.parse_args(argv)

    data = json.loads(args.json.read_text())
    table, errors, labels = collect(data)
    if not table and not errors:
        print(f"{args.json}: no BM_fusion benchmarks found", file=sys.stderr)
        return 1
    order = ["small", "large"]
    settings = sorted({s for _, s in table}, key=lambda s: (order.index(s) if s in order else 99, s))
    methods = []  # in the order the binary registered them
    for b in data.get("benchmarks", []):
        key = parse_name(b.get("run_name", b["name"]))
        if key and key[0] not in methods:
            methods.append(key[0])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    bar_chart(table, settings, methods, args.out_dir / f"{args.name}.png")
    (args.out_dir / f"{args.name}.md").write_text(
        document(data, table, errors, labels, settings, methods, args.name, args.note, args.command))
    print(f"wrote {args.out_dir / (args.name + '.md')} and {args.out_dir / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
