"""Scale: synthesise N subjects (tabular + genotype + small T1 images), then prepare + predict over
them, each step a separate ``adfuse`` process whose peak RSS is measured (``os.wait4``).

Usage: ``python benchmarks/bench_scale.py [--subjects 20000] [--workdir DIR] [--keep]``.
The model is trained on a small cohort of the same layout (``--train-subjects``); prediction on
the large one builds the preprocessing cache (every T1 volume resampled, memory-mapped) and then
streams batches through the model. The bound to hold: peak RSS <= 4 GB for every step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADFUSE = Path(sys.executable).with_name("adfuse")
MODALITIES = "clinical,genotype,t1"
LIMIT_GB = 4.0


def measured(step: str, args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of one ``adfuse`` process; stops the script if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: progress bars never block
        process = subprocess.Popen(
            [str(ADFUSE), *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            sys.exit(f"{step} failed: {errors.read().decode()[-2000:]}")
    peak = usage.ru_maxrss / 1024**2  # kB on Linux
    print(f"{step:<34} {seconds:>9.1f} {peak:>12.2f}", flush=True)
    return seconds, peak


def folder_gigabytes(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--train-subjects", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the files afterwards.")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="adfuse-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / "big", work / "small"
    run, cache = work / "run", work / "cache"
    print(f"{args.subjects} subjects ({MODALITIES}, small 3 mm images) in {work}")
    print(f"{'step':<34} {'seconds':>9} {'peak RSS GB':>12}")
    peaks = []
    for folder in (big, small, run, cache):
        shutil.rmtree(folder, ignore_errors=True)
    common = ["--modalities", MODALITIES, "--seed", "0", "--size", "small"]
    _, peak = measured(
        f"synth {args.subjects}", ["synth", big, "--subjects", args.subjects, *common]
    )
    peaks.append(peak)
    gigabytes = folder_gigabytes(big)
    files = sum(1 for p in big.rglob("*") if p.is_file())
    measured(
        f"synth {args.train_subjects} (training)",
        ["synth", small, "--subjects", args.train_subjects, *common],
    )
    measured(
        "train early_fusion (1 epoch)",
        ["train", small, "--model", "early_fusion", "--modalities", MODALITIES, "--epochs", "1",
         "--out", run, "--cache", cache],
    )  # fmt: skip
    _, peak = measured(
        "prepare + predict (cold cache)",
        ["predict", run, big, "--out", work / "predictions.csv", "--cache", cache],
    )
    peaks.append(peak)
    _, peak = measured(
        "predict (warm cache)",
        ["predict", run, big, "--out", work / "predictions.csv", "--cache", cache, "--force"],
    )
    peaks.append(peak)
    cache_gb = folder_gigabytes(cache)
    print(f"dataset: {gigabytes:.2f} GB in {files} files; cache: {cache_gb:.2f} GB")
    print(f"largest peak RSS {max(peaks):.2f} GB (bound {LIMIT_GB:.0f} GB)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if max(peaks) > LIMIT_GB:
        sys.exit(f"peak RSS {max(peaks):.2f} GB is above {LIMIT_GB} GB")


if __name__ == "__main__":
    main()
