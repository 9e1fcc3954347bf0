"""The sparse MoE layer against a dense FFN of the same active width, and one training epoch of
PerM-MoE and Flex-MoE, measured side by side in one run.

1. ``SparseMoE`` (E experts of ``dim -> hidden -> dim``, top-k, eval mode: no noise) against a dense
   FFN ``dim -> k * hidden -> dim`` (the width the k chosen experts add up to) on the same tokens:
   forward passes interleaved (MoE, dense, MoE, ...), the ratio of each pair, median and quartiles.
   Target: the MoE at most 1.5x the dense FFN.
2. One training epoch (cpu preset, task progression, batch 16, AdamW) of ``permoe`` and ``flexmoe``,
   both on clinical (baseline CDR-SB) + T1, FLAIR, amyloid and tau, on a synthetic cohort (``adfuse.synth``, small 3 mm grid, prepared to 32^3 volumes), after the
   preprocessing cache is built (its time is printed apart).

Usage:

    python benchmarks/bench_moe.py [--subjects 1000] [--out /tmp/adfuse-bench-moe] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import adfuse
from adfuse import splits
from adfuse.models import create
from adfuse.models.layers.moe import SparseMoE
from adfuse.prepare import Preprocessor, dataset

MODALITIES = ("clinical", "t1", "flair", "amyloid", "tau")  # the 15-combination setting
FLEXMOE_SIZES = {"dim": 128, "hidden": 256, "experts": 16, "top_k": 4}  # Flex-MoE's layer


def dense_ffn(dim: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim)
    )


def layer_ratio(tokens: int, repeats: int, dim, hidden, experts, top_k) -> dict:
    torch.manual_seed(0)
    moe = SparseMoE(dim, hidden, experts, top_k).eval()
    dense = dense_ffn(dim, top_k * hidden).eval()
    x = torch.randn(tokens, dim)
    moe_times, dense_times = [], []
    with torch.no_grad():
        for _ in range(5):  # warm-up
            moe(x), dense(x)
        for _ in range(repeats):
            for module, times in ((moe, moe_times), (dense, dense_times)):
                started = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - started)
    ratios = sorted(m / d for m, d in zip(moe_times, dense_times, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    counts = moe.last_routing.counts(experts)
    return {
        "tokens": tokens,
        "moe_ms": 1e3 * statistics.median(moe_times),
        "dense_ms": 1e3 * statistics.median(dense_times),
        "ratio": statistics.median(ratios),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "busiest_over_mean": float(counts.max() / counts.float().mean()),
    }


def training_epoch(root: Path, cache: Path, name: str, batch_size: int) -> dict:
    cohort = adfuse.load_cohort(root)
    task = adfuse.tasks.get("progression")
    split = splits.subject_split(cohort, task, seed=0)
    torch.manual_seed(0)
    model = create(name, cohort.spec, task, modalities=[m for m in MODALITIES if m in cohort.spec])
    preprocessor = Preprocessor.fit(cohort, model.modalities, split.train)
    started = time.perf_counter()
    train = dataset(
        cohort,
        task,
        model.modalities,
        split,
        "train",
        preprocessor=preprocessor,
        config=model.prepare_config(),
        cache_dir=cache,
    ).batch()
    prepare_seconds = time.perf_counter() - started
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = model.epoch_order(0, train.present, torch.randperm(len(train)))
    model.train()
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = train.select(order[start : start + batch_size])
        if len(batch) < 2:
            continue
        optimizer.zero_grad()
        model.loss(batch, model(batch)).backward()
        optimizer.step()
    return {
        "model": name,
        "subjects": len(train),
        "modalities": "+".join(model.modalities),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prepare_s": prepare_seconds,
        "epoch_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/adfuse-bench-moe"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")

    sizes = FLEXMOE_SIZES
    print(
        f"\n1. SparseMoE ({sizes['experts']} experts {sizes['dim']}->{sizes['hidden']}->"
        f"{sizes['dim']}, top-{sizes['top_k']}) vs dense FFN {sizes['dim']}->"
        f"{sizes['top_k'] * sizes['hidden']}->{sizes['dim']}, forward, median of {args.repeats}"
    )
    print(
        f"{'tokens':>7} {'MoE ms':>8} {'dense ms':>9} {'ratio':>6} {'IQR':>13} {'max/mean load':>14}"
    )
    for tokens in (640, 4096, 16384):  # 640: one Flex-MoE batch (8 subjects x 5 x 16 tokens)
        row = layer_ratio(tokens, args.repeats, **sizes)
        print(
            f"{row['tokens']:>7} {row['moe_ms']:>8.2f} {row['dense_ms']:>9.2f} {row['ratio']:>6.2f}"
            f" {row['q1']:>6.2f}-{row['q3']:<6.2f} {row['busiest_over_mean']:>14.2f}"
        )

    root = args.out / f"cohort-{args.subjects}"
    if not (root / "ADNIMERGE.csv").exists():
        started = time.perf_counter()
        adfuse.synth.generate(root, n_subjects=args.subjects, seed=0, force=True)
        print(f"\nsynth {args.subjects} subjects: {time.perf_counter() - started:.1f} s")
    print(f"\n2. one training epoch, cpu preset, progression, batch {args.batch_size}: {root}")
    print(
        f"{'model':>8} {'train subj':>10} {'params':>9} {'prepare s':>10} {'epoch s':>8}  modalities"
    )
    for name in ("permoe", "flexmoe"):
        row = training_epoch(root, args.out / "cache", name, args.batch_size)
        print(
            f"{row['model']:>8} {row['subjects']:>10} {row['parameters']:>9} "
            f"{row['prepare_s']:>10.1f} {row['epoch_s']:>8.1f}  {row['modalities']}"
        )


if __name__ == "__main__":
    main()
