"""RiT's patch embedding: one token per ROI crop, as a 3D convolution whose kernel spans the crop or
as the equivalent linear map of the flattened crop (what ``encoders.RoiEncoder`` does).

Both compute the same numbers (checked here and in tests/models/test_rgenima.py); this measures which
is faster, forward and forward+backward, at the cpu preset's crop (16^3), 24^3 and the paper's 96^3,
side by side in one run.

    python benchmarks/bench_rit.py [--regions 82] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=82)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="16,24,96")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"{'crop':>6} {'batch':>5} {'conv fwd ms':>12} {'linear fwd ms':>14} {'ratio':>6} "
        f"{'conv f+b ms':>12} {'linear f+b ms':>14} {'ratio':>6} {'max |diff|':>11}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        batch = args.batch if size < 64 else 1  # 96^3 crops: one subject is 290 MB of float32
        conv = nn.Conv3d(1, args.dim, kernel_size=size)
        linear = nn.Linear(size**3, args.dim)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.view(args.dim, -1))
            linear.bias.copy_(conv.bias)
        crops = torch.randn(batch, args.regions, size, size, size)

        def by_conv(crops=crops, conv=conv, size=size):
            return conv(crops.view(-1, 1, size, size, size)).view(
                crops.shape[0], crops.shape[1], -1
            )

        def by_linear(crops=crops, linear=linear):
            return linear(crops.flatten(2))

        def backward(function):
            def run():
                function().sum().backward()

            return run

        with torch.no_grad():
            difference = (by_conv() - by_linear()).abs().max().item()
            conv_forward = timed(by_conv, args.repeats)
            linear_forward = timed(by_linear, args.repeats)
        conv_both = timed(backward(by_conv), args.repeats)
        linear_both = timed(backward(by_linear), args.repeats)
        print(
            f"{size:>5}^3 {batch:>5} {conv_forward * 1e3:>12.2f} {linear_forward * 1e3:>14.2f} "
            f"{conv_forward / linear_forward:>6.2f} {conv_both * 1e3:>12.2f} "
            f"{linear_both * 1e3:>14.2f} {conv_both / linear_both:>6.2f} {difference:>11.2e}"
        )
    print("ratio > 1: the linear map is faster (it is what RiT uses)")


if __name__ == "__main__":
    main()
