"""Peak memory and time of the retrieval pass's stored part at ISIC 2019 scale (issue 16).

What a run does after its representations are computed: float16 storage of a 15,000 × 2,048
database and 5,000 queries, every retrieval metric on the stored arrays (same-lesion exclusion on,
lesion ids for the database and queries), and the atomic save of ``seed<k>.emb.npz``. Synthetic
embeddings, labels with ISIC 2019's class proportions. Reports the wall times and the peak RSS
beyond the float32 embeddings (``VmHWM`` reset just before; see ``retrieval_scale.py``).

    .venv/bin/python benchmarks/retrieval_pass_scale.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_scale import ISIC2019_COUNTS, _reset_peak, _status_kb  # noqa: E402

from ltbench.retrieval.run_pass import _stored, metrics_from_arrays, save_embeddings  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    p = np.array(ISIC2019_COUNTS) / sum(ISIC2019_COUNTS)
    n, q, d = 15000, 5000, 2048
    db = np.abs(rng.standard_normal((n, d), dtype=np.float32))
    queries = np.abs(rng.standard_normal((q, d), dtype=np.float32))
    lesions = rng.integers(0, 9000, n + q)
    arrays = {"database_labels": rng.choice(8, n, p=p), "query_labels": rng.choice(8, q, p=p),
              "database_rows": np.arange(n), "query_rows": np.arange(n, n + q),
              "database_groups": np.array([f"L{g}" for g in lesions[:n]]),
              "query_groups": np.array([f"L{g}" for g in lesions[n:]])}
    base = _status_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    arrays["feature/database"], arrays["feature/queries"] = _stored("feature", db), _stored("feature", queries)
    metrics = metrics_from_arrays(arrays, 8, True)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed0.emb.npz"
        save_embeddings(path, arrays)
        t2 = time.perf_counter()
        size = path.stat().st_size
    peak = _status_kb("VmHWM")
    print(f"{n:,} x {d:,} database, {q:,} queries, torch threads {torch.get_num_threads()}: float16 + every metric "
          f"{t1 - t0:.1f} s, save {t2 - t1:.1f} s ({size / 2**20:.0f} MiB); peak RSS beyond the float32 embeddings "
          f"{(peak - base) / 1024:.0f} MB; same-lesion images excluded: {metrics['feature']['same_lesion_excluded']}")


if __name__ == "__main__":
    main()
