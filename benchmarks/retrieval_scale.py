"""Peak memory and time of the retrieval pass (ltbench.retrieval.metrics.retrieval_metrics) at ISIC 2019 scale.

A synthetic database of 15,000 × 2,048 float32 embeddings (the ISIC 2019 training split's size
at ResNet-50's feature width) and 5,000 queries, labels drawn with ISIC 2019's class proportions,
lesion ids for 1–3 images each (so the same-lesion exclusion runs). Reported:

* wall time of one ``retrieval_metrics`` call (every metric: mAP@all/@10, P@10, MRR@10, the PR curve,
  both kNN votes);
* **peak resident memory beyond the embeddings**: the process's peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the call) minus its RSS just before the call, when the
  embeddings already exist — the torch CPU allocator is not visible to tracemalloc, RSS sees it;
* tracemalloc's peak (numpy and Python allocations only) and ``ru_maxrss`` for reference;
* on CUDA (``--device cuda``) also ``torch.cuda.max_memory_allocated`` beyond the embeddings.

    .venv/bin/python benchmarks/retrieval_scale.py                 # 15,000 × 2,048, 5,000 queries, CPU
    .venv/bin/python benchmarks/retrieval_scale.py --metric hamming --dim 16
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from ltbench.retrieval.metrics import CHUNK_SIZE, retrieval_metrics

# ISIC 2019 training counts (MEL, NV, BCC, AK, BKL, DF, VASC, SCC) — proportions only.
ISIC2019_COUNTS = (4522, 12875, 3323, 867, 2624, 239, 253, 628)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=15_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=2_048)
    parser.add_argument("--metric", choices=("cosine", "hamming"), default="cosine")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor(ISIC2019_COUNTS, dtype=torch.float64)
    db_labels = torch.multinomial(probs, args.database, replacement=True, generator=generator).numpy()
    q_labels = torch.multinomial(probs, args.queries, replacement=True, generator=generator).numpy()
    db_groups = [f"L{i // 2}" for i in range(args.database)]
    q_groups = [f"L{i * 3}" for i in range(args.queries)]  # some queries share a lesion with 2 db images
    if args.metric == "cosine":
        db = torch.randn(args.database, args.dim, generator=generator)
        queries = torch.randn(args.queries, args.dim, generator=generator)
    else:
        db = torch.randn(args.database, args.dim, generator=generator).sign()
        queries = torch.randn(args.queries, args.dim, generator=generator).sign()
    db, queries = db.to(device), queries.to(device)
    embedding_mb = (db.numel() + queries.numel()) * 4 / 2**20

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    rss_before = _status_kb("VmRSS")
    reset = _reset_peak()
    tracemalloc.start()
    start = time.perf_counter()
    out = retrieval_metrics(queries, q_labels, db, db_labels, len(ISIC2019_COUNTS), metric=args.metric,
                            query_groups=q_groups, database_groups=db_groups, chunk_size=args.chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = _status_kb("VmHWM")

    print(f"retrieval_metrics: database {args.database} x {args.dim}, {args.queries} queries, {args.metric}, "
          f"chunk {args.chunk_size}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"  embeddings: {embedding_mb:.0f} MB (float32); same-lesion exclusions: {out['same_lesion_excluded']}")
    print(f"  time: {elapsed:.1f} s")
    if reset and peak_rss is not None and rss_before is not None:
        print(f"  peak RSS beyond the embeddings: {(peak_rss - rss_before) / 1024:.0f} MB "
              f"(VmHWM {peak_rss / 1024:.0f} MB, VmRSS before {rss_before / 1024:.0f} MB)")
    else:
        print("  peak RSS: /proc/self/clear_refs unavailable; see ru_maxrss")
    print(f"  tracemalloc peak (numpy/Python only): {traced_peak / 2**20:.0f} MB; "
          f"ru_maxrss (process lifetime): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if device.type == "cuda":
        print(f"  CUDA peak beyond the embeddings: {(torch.cuda.max_memory_allocated() - cuda_base) / 2**20:.0f} MB")
    print(f"  map_all macro {out['map_all']['macro']:.2f}, p_10 macro {out['p_10']['macro']:.2f}, "
          f"knn_weighted balanced_acc {out['knn_weighted']['balanced_acc']:.2f} (random embeddings: chance level)")


if __name__ == "__main__":
    main()
