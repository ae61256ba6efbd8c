"""The probe stage's L-BFGS fit at ISIC 2019 scale (ltbench.trainer.probe): time and iterations.

ResNet-50 features of the ISIC 2019 training split are ~15-25 k x 2,048 with 8 classes. Real
features are not available offline, so this draws class-structured features (a random mean per
class plus Gaussian noise, ReLU'd like pooled activations) at that shape and fits the default
probe (l2 1e-3, tolerance 1e-5) with the cross-entropy loss. Prints the wall time, iterations and
whether it converged, next to a 64-d small-CNN-sized problem for scale.

    python benchmarks/probe_scale.py [--rows 25000] [--dim 2048] [--classes 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ltbench.trainer.probe import fit_linear_probe
from ltbench.stages import Probe


def features(rows: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prior = torch.linspace(1.0, 0.05, classes)  # long-tailed
    labels = torch.multinomial(prior / prior.sum(), rows, replacement=True, generator=g)
    means = torch.randn(classes, dim, generator=g) * 0.3
    noise = torch.randn(rows, dim, generator=g)
    return torch.relu(means[labels] + noise), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ce = lambda z, y: F.cross_entropy(z, y, reduction="none")  # noqa: E731
    fit_linear_probe(*features(64, 8, args.classes), args.classes, ce, Probe())  # torch's first-call set-up
    print(f"{'problem':>22} {'seconds':>8} {'iterations':>10} {'grad':>9} converged")
    for rows, dim in [(600, 64), (args.rows, args.dim)]:
        x, y = features(rows, dim, args.classes)
        start = time.perf_counter()
        fit = fit_linear_probe(x, y, args.classes, ce, Probe())
        seconds = time.perf_counter() - start
        print(f"{rows:>9} x {dim:<5} C={args.classes:<3} {seconds:8.2f} {fit.iterations:10d} {fit.grad_norm:9.1e} "
              f"{fit.converged}")


if __name__ == "__main__":
    main()
