"""How close Explain & compare's time estimate comes to the actual time, before and after calibration.

    python benchmarks/bench_estimates.py [--rounds 2]

Quick start's setting: the zoo's shapes-cnn-torch, its first sample, Grad-CAM + Integrated Gradients +
SHAP at their defaults, through the same calls the page makes (session.plan, session.run,
workbench.calibration). shap's one-off kernel compile is paid first, as the app's warm-up does.

Round 1 is the first run (estimate from one forward pass, uncalibrated); every later round adds the
next zoo sample, so the three methods compute again, on a new image, with the estimate calibrated from
the rounds before. Printed per round and method: estimated (calibrated and uncalibrated) and actual
seconds, and the ratio estimate / actual (the page aims at [0.5, 2] after the first run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import model_zoo
    from workbench import calibration, session, warmup

    warmup.warm_up_shap()
    warmup.done.set()
    timings = calibration.Timings()
    ws = session.Workspace()
    record = session.quick_start(ws, loader=session.load_base)
    samples = model_zoo.samples()
    methods = session.DEFAULT_METHODS
    key = calibration.model_key(record.adapter)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'round':>5} {'method':<22} {'estimate s':>10} {'uncalibrated s':>15} {'actual s':>9} {'ratio':>6}")
    for n in range(args.rounds):
        if n:
            entry = session.add_sample(ws, samples[n])
            ws.left_out = {e.id for e in ws.images.values() if e.id != entry.id}
        entries = [e for e in ws.images.values() if e.id not in ws.left_out]
        totals = [0.0, 0.0, 0.0]
        for method in methods:  # one method at a time, so each one's actual time is measured alone
            work = session.plan(ws, record, entries, [method], session.params_for(record, {}), 0)
            estimated, _ = calibration.seconds(timings, key, work.estimate)
            started = time.perf_counter()
            computed = session.run(ws, record, entries, work, 0)
            actual = time.perf_counter() - started
            calibration.record_run(timings, record.adapter, work, computed, actual)
            totals = [totals[0] + estimated, totals[1] + work.seconds, totals[2] + actual]
            print(f"{n + 1:>5} {method:<22} {estimated:>10.2f} {work.seconds:>15.2f} {actual:>9.2f} {estimated / actual:>6.2f}")
        print(f"{n + 1:>5} {'all three':<22} {totals[0]:>10.2f} {totals[1]:>15.2f} {totals[2]:>9.2f} {totals[0] / totals[2]:>6.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
