"""FNet mixing against dense attention on the same tokens, measured side by side in one run.

For ``[batch, n, d]`` tokens (default n = 512, d = 64), the median time of ``repeats`` forward
passes (after warm-up, interleaved) of: FNet's Fourier mixing (``layers/fnet.py``), dense attention's core
``softmax(Q K^T / sqrt(d)) V`` with Q = K = V = the tokens (the part FNet replaces), the shared
``CrossAttention`` layer in self-attention use (projections included) and torch's
``nn.MultiheadAttention``. Prints each time and its ratio to FNet's; the ACMCA issue's target is
FNet <= 0.3x the time of dense attention. Usage:

    python benchmarks/bench_fnet.py [--tokens 512] [--dim 64] [--batch 8] [--repeats 50] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from adfuse.models.layers.cross_attention import CrossAttention
from adfuse.models.layers.fnet import fourier_mixing


def median_seconds(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 5
) -> dict[str, float]:
    """Median time of each candidate; the repeats are interleaved (one of each in turn), so a
    change in the machine's load falls on every candidate alike."""
    for run in candidates.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def dense_attention_core(x: torch.Tensor) -> torch.Tensor:
    scores = x @ x.transpose(-2, -1) / x.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.tokens, args.dim)
    cross = CrossAttention(args.dim, args.heads, keep_weights=False).eval()
    torch_mha = torch.nn.MultiheadAttention(args.dim, args.heads, batch_first=True).eval()
    candidates = {
        "FNet mixing Re(FFT2)": lambda: fourier_mixing(x),
        "attention core softmax(QK^T)V": lambda: dense_attention_core(x),
        "CrossAttention (self, with projections)": lambda: cross(x, x),
        "torch MultiheadAttention": lambda: torch_mha(x, x, x, need_weights=False),
    }
    with torch.inference_mode():
        seconds = median_seconds(candidates, args.repeats)
    fnet = seconds["FNet mixing Re(FFT2)"]
    print(
        f"tokens n={args.tokens}, width d={args.dim}, batch {args.batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} forward passes"
    )
    print(f"{'operation':42s} {'median ms':>10s} {'FNet / this':>12s}")
    for name, value in seconds.items():
        print(f"{name:42s} {value * 1e3:10.3f} {fnet / value:12.3f}")
    core = seconds["attention core softmax(QK^T)V"]
    verdict = "meets" if fnet <= 0.3 * core else "misses"
    print(f"FNet mixing / dense attention core = {fnet / core:.3f} ({verdict} the <= 0.3 target)")


if __name__ == "__main__":
    main()
