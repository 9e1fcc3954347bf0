"""One epoch of every baseline (or of ``--models``) on a synthetic cohort, side by side in one run.

Prints, per model: time to prepare its datasets (first call builds the cache, second reads it),
one training epoch, the share of the epoch spent assembling batches from the cached arrays,
inference subjects/s and the process's peak RSS. Usage:

    python benchmarks/bench_baselines.py [--subjects 1000] [--out /tmp/adfuse-bench]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import torch

import adfuse
from adfuse import splits
from adfuse.evaluate import predict
from adfuse.models import available, create
from adfuse.prepare import Preprocessor, dataset

BASELINES = ("unimodal", "early_fusion", "late_fusion", "logreg", "gboost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/adfuse-bench"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--models",
        default=",".join(BASELINES),
        help="Comma-separated registered models, or 'all' (default: the baselines).",
    )
    args = parser.parse_args()
    root = args.out / f"cohort-{args.subjects}"
    if not (root / "ADNIMERGE.csv").exists():
        started = time.perf_counter()
        adfuse.synth.generate(root, n_subjects=args.subjects, seed=0, force=True)
        print(f"synth {args.subjects} subjects: {time.perf_counter() - started:.1f} s")
    cache = args.out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cohort = adfuse.load_cohort(root)
    task = adfuse.tasks.get("diagnosis")
    split = splits.subject_split(cohort, task, seed=0)
    rows = []
    names = available() if args.models == "all" else args.models.split(",")
    for name in names:
        torch.manual_seed(0)
        model = create(name, cohort.spec, task)
        prepare = model.prepare_config()
        preprocessor = Preprocessor.fit(cohort, model.modalities, split.train)
        timings = []
        for _ in range(2):  # first: builds the cache; second: reads it
            started = time.perf_counter()
            train = dataset(
                cohort,
                task,
                model.modalities,
                split,
                "train",
                preprocessor=preprocessor,
                config=prepare,
                cache_dir=cache,
            )
            batch = train.batch()
            timings.append(time.perf_counter() - started)
        test = dataset(
            cohort,
            task,
            model.modalities,
            split,
            "test",
            preprocessor=preprocessor,
            config=prepare,
            cache_dir=cache,
        )
        if getattr(model, "kind", "torch") == "sklearn":
            started = time.perf_counter()
            model.fit(batch, None, 0)
            epoch, loading = time.perf_counter() - started, 0.0
        else:
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=1e-3
            )
            model.train()
            loading, started = 0.0, time.perf_counter()
            for start in range(0, len(train), args.batch_size):
                t0 = time.perf_counter()
                step = train.batch(list(range(start, min(start + args.batch_size, len(train)))))
                loading += time.perf_counter() - t0
                if len(step) < 2:
                    continue
                optimizer.zero_grad()
                model.loss(step, model(step)).backward()
                optimizer.step()
            epoch = time.perf_counter() - started
        started = time.perf_counter()
        predict(model, test, classes=list(task.classes))
        speed = len(test) / (time.perf_counter() - started)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(
            (
                name,
                "+".join(model.modalities),
                timings[0],
                timings[1],
                epoch,
                loading / max(epoch, 1e-9),
                speed,
                peak,
            )
        )
    print(
        f"\n{len(cohort.subjects)} subjects, {len(split.train)} train, batch {args.batch_size}, CPU threads {torch.get_num_threads()}"
    )
    header = f"{'model':14} {'prepare 1st s':>13} {'prepare 2nd s':>13} {'epoch s':>8} {'load share':>10} {'infer subj/s':>12} {'peak RSS MB':>11}  modalities"
    print(header)
    for name, modalities, first, second, epoch, share, speed, peak in rows:
        print(
            f"{name:14} {first:13.1f} {second:13.2f} {epoch:8.2f} {share:10.1%} {speed:12.0f} {peak:11.0f}  {modalities}"
        )


if __name__ == "__main__":
    main()
