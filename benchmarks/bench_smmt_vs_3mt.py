"""SMMT vs 3MT: training time per epoch and estimated energy, same data, cpu preset, one run.

    .venv/bin/python benchmarks/bench_smmt_vs_3mt.py [--epochs 3 --subjects 300 --data DIR]

Generates a synthetic cohort (``adfuse.synth.generate(..., n_subjects=300)``) unless ``--data`` is
given, then trains each model on the same train split, modalities (all but notes) and inputs
(volumes as mid-sagittal slices, SMMT's view, for both) with the paper's optimiser (Adam, lr 1e-3,
batch 8) for ``--epochs`` epochs, the models taking turns epoch by epoch (so that load from
other processes falls on all alike). Reported per model: parameters, median seconds per epoch, energy
per epoch from ``adfuse.evaluate.EnergyMeter`` (codecarbon when installed, else CPU time × an
assumed power; the method is printed), and the ratios to 3MT. SMMT's dense-attention ablation is
run too, to separate what the clustering costs or saves from the rest of the architecture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from adfuse.data.cohort import load_cohort
from adfuse.evaluate import EnergyMeter
from adfuse.train import TrainConfig, open_session

MODELS = {
    "3mt": ("3mt", {}),
    "smmt": ("smmt", {}),
    "smmt (dense attention)": ("smmt", {"attention": "dense"}),
}


class Trainer:
    """One model's session and optimiser, trained an epoch at a time."""

    def __init__(self, session, batch_size: int):
        self.session, self.batch_size = session, batch_size
        self.train = session.train.batch()
        self.optimizer = torch.optim.Adam(session.model.parameters(), lr=1e-3)
        self.seconds: list[float] = []
        self.kwh: list[float] = []

    def epoch(self, seed: int) -> None:
        model = self.session.model
        torch.manual_seed(seed)
        order = torch.randperm(len(self.train))
        with EnergyMeter() as meter:
            model.train()
            for start in range(0, len(order) - 1, self.batch_size):
                batch = self.train.select(order[start : start + self.batch_size])
                self.optimizer.zero_grad(set_to_none=True)
                model.loss(batch, model(batch)).backward()
                self.optimizer.step()
        self.seconds.append(meter.result["seconds"])
        self.kwh.append(meter.result["kwh"])
        self.method = meter.result["method"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="an existing dataset folder")
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-smmt-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    data = args.data
    if data is None:
        from adfuse import synth

        data = synth.generate(work / "data", n_subjects=args.subjects, seed=0)
    modalities = [m for m in load_cohort(data).modalities if m != "notes"]
    trainers = {}
    for label, (name, overrides) in MODELS.items():
        config = TrainConfig.build(
            model=name,
            modalities=modalities,
            overrides={"volume_view": "slice", **overrides},
            batch_size=args.batch_size,
        )
        session = open_session(Path(data), config, work / label.replace(" ", "_"), work / "cache")
        trainers[label] = Trainer(session, args.batch_size)
    labels = list(trainers)
    for epoch in range(args.epochs):  # the models take turns, in a rotating order
        for turn in range(len(labels)):
            trainers[labels[(epoch + turn) % len(labels)]].epoch(seed=epoch)
    rows = [
        {
            "model": label,
            "parameters": sum(p.numel() for p in trainer.session.model.parameters()),
            "train subjects": len(trainer.session.train),
            "s/epoch": statistics.median(trainer.seconds),
            "kWh/epoch": statistics.mean(trainer.kwh),
            "method": trainer.method,
        }
        for label, trainer in trainers.items()
    ]
    reference = next(row for row in rows if row["model"] == "3mt")
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f}; {args.epochs} epochs, batch {args.batch_size}; data {data}"
    )
    print(
        f"{'model':<24} {'params':>9} {'train n':>8} {'s/epoch':>9} {'Wh/epoch':>9} "
        f"{'time vs 3mt':>12} {'energy vs 3mt':>14}"
    )
    for row in rows:
        print(
            f"{row['model']:<24} {row['parameters']:>9,} {row['train subjects']:>8} "
            f"{row['s/epoch']:>9.2f} {1000 * row['kWh/epoch']:>9.3f} "
            f"{row['s/epoch'] / reference['s/epoch']:>11.2f}x "
            f"{row['kWh/epoch'] / max(reference['kWh/epoch'], 1e-12):>13.2f}x"
        )
    print(f"energy method: {rows[0]['method']}")


if __name__ == "__main__":
    main()
