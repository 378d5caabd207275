#!/usr/bin/env python3
"""PyTorch optimiser fixtures for tests/nn/test_optim_golden.cpp.

For each configuration, runs torch.optim.{SGD, Adam, AdamW} (single-tensor path,
foreach=False) for 5 steps on one parameter vector with fixed random gradients, in
float64 and float32, and saves under tests/data/optim/<case>/<dtype>/:
  p0.npy (n,), grads.npy (steps, n), expected.npy (steps, n) = parameters after each step.
Rerun: python3 tools/golden/make_optim_fixtures.py   (needs torch and numpy from PyPI)
"""
import os
import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "optim")
N, STEPS = 37, 5

CASES = {
    "sgd_momentum": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1,
                                             weight_decay=0.01, foreach=False),
    "sgd_nesterov": lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.8, nesterov=True,
                                             weight_decay=0.02, foreach=False),
    "adam": lambda p: torch.optim.Adam([p], lr=1e-2, betas=(0.8, 0.99), eps=1e-6,
                                       weight_decay=0.1, foreach=False),
    "adam_amsgrad": lambda p: torch.optim.Adam([p], lr=3e-2, amsgrad=True, foreach=False),
    "adamw": lambda p: torch.optim.AdamW([p], lr=1e-2, betas=(0.85, 0.995), eps=1e-7,
                                         weight_decay=0.05, foreach=False),
}


def main():
    rng = np.random.default_rng(20261122)
    for name, make in CASES.items():
        p0 = rng.uniform(-1, 1, N)
        grads = rng.uniform(-2, 2, (STEPS, N)) * np.logspace(-2, 1, N)  # varied magnitudes
        for dt, tdt in (("f64", torch.float64), ("f32", torch.float32)):
            p = torch.tensor(p0, dtype=tdt, requires_grad=True)
            opt = make(p)
            expected = []
            for t in range(STEPS):
                p.grad = torch.tensor(grads[t], dtype=tdt)
                opt.step()
                expected.append(p.detach().clone().numpy())
            out = os.path.join(ROOT, name, dt)
            os.makedirs(out, exist_ok=True)
            npdt = np.float64 if dt == "f64" else np.float32
            np.save(os.path.join(out, "p0.npy"), p0.astype(npdt))
            np.save(os.path.join(out, "grads.npy"), grads.astype(npdt))
            np.save(os.path.join(out, "expected.npy"), np.stack(expected).astype(npdt))
    print("wrote", ROOT, "torch", torch.__version__)


if __name__ == "__main__":
    main()
