"""Step timing shared by the PyTorch comparison scripts (torch_backends.py,
torch_contrastive.py): the same warm-up, repetition rule and medians on both sides of every
ratio those scripts print."""

import statistics
import time


def time_step(step, min_reps, budget_s, max_reps):
    """Median (wall ms, process-CPU ms, steps) of `step`.

    Two warm-up calls, one timed call to size the run, then max(min_reps, min(max_reps,
    budget_s / first)) timed calls; wall time from time.perf_counter, CPU time (all threads
    of the process) from time.process_time.
    """
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    n = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-6))))
    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return statistics.median(wall), statistics.median(cpu), n
