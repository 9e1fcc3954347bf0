"""Cluster attention (K-Means included) vs dense SDPA, same n, dim, heads and batch, in one run.

    .venv/bin/python benchmarks/bench_cluster_attention.py [--dim 256 --heads 4 --batch 2 --threads 1]

Times the attention core on the same q, k, v (the q/k/v/out projections are identical in both and
left out): ``dense`` is ``torch.nn.functional.scaled_dot_product_attention``; ``cluster`` is the
clustered path (K-Means on the queries, block layout, blocked SDPA) forced at every n; ``auto`` is
what ``ClusterAttention`` runs by default (dense below ``CROSSOVER``, clustered from it). Median
of ``--repeats`` calls after a warm-up, forward only and forward + backward. Ratios > 1 mean faster
than dense. The smallest n from which ``cluster`` beats dense in both tables is printed as the
crossover to write into ``adfuse/models/layers/cluster_attention.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from adfuse.models.layers.cluster_attention import (
    CROSSOVER,
    block_layout,
    blocked_attention,
    cluster_count,
    dense_attention,
    kmeans_clusters,
)

LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)


def clustered(q, k, v, heads):
    ids, counts = kmeans_clusters(q)
    return blocked_attention(q, k, v, heads, block_layout(ids, counts))[0]


def dense(q, k, v, heads):
    return dense_attention(q, k, v, heads)


def auto(q, k, v, heads, crossover=CROSSOVER):
    return dense(q, k, v, heads) if q.shape[1] < crossover else clustered(q, k, v, heads)


def median_times(functions: dict, inputs, heads: int, backward: bool, repeats: int) -> dict:
    """Median ms per function; the functions take turns in each round (in a rotating order), so
    that load from other processes and the allocator's state fall on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for attempt in range(repeats + 1):
        for turn in range(len(names)):  # the order rotates: no function always runs after another
            name = names[(attempt + turn) % len(names)]
            function = functions[name]
            tensors = [t.detach().requires_grad_(backward) for t in inputs]
            started = time.perf_counter()
            if backward:
                function(*tensors, heads).sum().backward()
            else:
                with torch.no_grad():
                    function(*tensors, heads)
            if attempt:  # the first round is a warm-up
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def keep_heap() -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not give freed memory back to the OS
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve large blocks from the heap, not mmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 by default, since on a shared machine other "
        "processes make multi-threaded kernels wait for their slowest thread",
    )
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="glibc: keep freed memory in the heap (mallopt), as jemalloc/tcmalloc would; on VMs "
        "where page faults are slow, fresh allocations otherwise dominate small kernels",
    )
    args = parser.parse_args()
    if args.keep_heap:
        keep_heap()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
        f"dim {args.dim}, heads {args.heads}; CROSSOVER in the module = {CROSSOVER}; "
        f"keep-heap {args.keep_heap}; load average {os.getloadavg()[0]:.1f}"
    )
    wins: dict[bool, list[int]] = {False: [], True: []}
    for backward in (False, True):
        print(f"\n{'forward + backward' if backward else 'forward'} (median ms)")
        header = f"{'n':>5} {'k':>3} {'dense':>9} {'cluster':>9} {'auto':>9} {'dense/cluster':>14} {'dense/auto':>11}"
        print(header)
        for n in args.lengths:
            inputs = [torch.randn(args.batch, n, args.dim) for _ in range(3)]
            functions = {"dense": dense, "cluster": clustered, "auto": auto}
            times = median_times(functions, inputs, args.heads, backward, args.repeats)
            k = int(cluster_count(torch.tensor([n]))[0])
            if times["cluster"] < times["dense"]:
                wins[backward].append(n)
            print(
                f"{n:>5} {k:>3} {times['dense']:>9.2f} {times['cluster']:>9.2f} "
                f"{times['auto']:>9.2f} {times['dense'] / times['cluster']:>13.2f}x "
                f"{times['dense'] / times['auto']:>10.2f}x"
            )
    faster = [n in wins[False] and n in wins[True] for n in args.lengths]
    crossover = next((n for i, n in enumerate(args.lengths) if all(faster[i:])), None)
    print(
        f"\nmeasured crossover (cluster faster than dense from here on, both tables): {crossover}"
    )


if __name__ == "__main__":
    main()
