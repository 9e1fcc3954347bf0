"""Time ``adfuse.synth.generate`` for the default cohort and report its size on disk.

Usage: ``python benchmarks/bench_synth.py [--subjects 600] [--size small] [--seed 0]``.
Also times ``sample_latents`` for 20,000 subjects (the calibration tests' table).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from adfuse.data import synth


def folder_megabytes(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=600)
    parser.add_argument("--size", default="small", choices=["small", "medium", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    synth.sample_latents(n_subjects=20_000, seed=args.seed)
    latents_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cohort"
        start = time.perf_counter()
        synth.generate(out, n_subjects=args.subjects, seed=args.seed, size=args.size)
        seconds = time.perf_counter() - start
        megabytes = folder_megabytes(out)
        files = sum(1 for p in out.rglob("*") if p.is_file())

    print(f"{'what':<44} {'seconds':>8} {'MB':>8} {'files':>6}")
    print(f"{'sample_latents, 20000 subjects':<44} {latents_seconds:>8.2f} {'-':>8} {'-':>6}")
    label = f"generate, {args.subjects} subjects, size={args.size}"
    print(f"{label:<44} {seconds:>8.2f} {megabytes:>8.1f} {files:>6}")


if __name__ == "__main__":
    main()
