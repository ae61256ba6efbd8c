"""Cross-version golden check: CE, focal and ECL of an earlier commit vs the working tree, bit for bit.

The golden protocol (``tests/test_golden.py``: digits-lt, seed 0, three CPU epochs) runs twice on
this machine, each in its own subprocess with the same torch thread count: once on a pristine
``git archive`` export of ``--base`` (default HEAD, the last commit) and once on the working tree
(or on an export of ``--head``).
Each tree runs its own ``tests/test_golden.py`` (``digits_data``, ``golden_config``, ``fit``), so a
refactor that moves modules and updates the test's imports still compares; a tree from before the
protocol existed there (issue 25) borrows the working tree's. The protocols are printed and must
agree. The library (``ltbench`` and ``ltbench.methods``) is each tree's own. The export is laid out as
``setup.cfg``'s ``package_dir`` installs it (``methods/`` copied to ``ltbench/methods``) and put
first on ``PYTHONPATH``, so the editable install's finder, which maps ``ltbench.methods`` to this
checkout's ``methods/``, is never reached; each subprocess prints where ``ltbench`` and every
method's module came from and refuses to go on if it is outside its tree.

Prints losses, test metrics, best epoch and a SHA-256 of the test probabilities side by side and
"bit-identical: yes/no" per method. Exit status 0 when every method is bit-identical, 1 if one
differs, 2 on an error. The closing note of a core refactor quotes the output. Float results
depend on the CPU and the thread count, so only two runs on one machine compare exactly
(tests/README.md).

    .venv/bin/python benchmarks/golden.py                      # HEAD vs the working tree
    .venv/bin/python benchmarks/golden.py --base 64b98a6 --methods ce,ecl --threads 1
    .venv/bin/python benchmarks/golden.py --base HEAD~1 --head HEAD  # two commits, both exported
    .venv/bin/python benchmarks/golden.py --imports-only       # where each tree's modules resolve
"""
from __future__ import annotations

import argparse
import configparser
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = Path("tests") / "test_golden.py"  # in each tree; the working tree's for older trees
MARK = "golden-json: "
DEFAULT_METHODS = ("ce", "focal", "ecl")


# ------------------------------------------------------------------------------ the parent side

def die(message: str):
    """One line (or a short block) on stderr, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"golden: git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout.strip()


def export(rev: str, dest: Path) -> str:
    """A pristine copy of ``rev`` in ``dest``, its packages laid out as installed; returns the commit."""
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"golden: --base {rev}: not a commit of {REPO}")
    commit = proc.stdout.strip()
    archive = dest.parent / "export.tar"
    git("archive", "--format=tar", "-o", str(archive), commit)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    for package, folder in package_dirs(dest / "setup.cfg").items():
        target, source = dest.joinpath(*package.split(".")), dest / folder
        if source.resolve() != target.resolve() and source.is_dir() and not target.exists():
            shutil.copytree(source, target)  # e.g. methods/ -> ltbench/methods (ltbench.methods = methods)
    return commit


def package_dirs(setup_cfg: Path) -> dict[str, str]:
    """``[options] package_dir`` of a setup.cfg: import package -> folder (empty if none)."""
    if not setup_cfg.is_file():
        return {}
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg, encoding="utf-8")
    lines = cfg.get("options", "package_dir", fallback="").splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if k.strip()}


def run_worker(root: Path, label: str, methods: list[str], threads: int, imports_only: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--methods", ",".join(methods),
           "--threads", str(threads)] + (["--imports-only"] if imports_only else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n  ".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        die(f"golden: the {label} run failed (exit {proc.returncode}):\n  {tail}")
    out = json.loads(lines[-1][len(MARK):])
    out["seconds"] = time.perf_counter() - start
    return out


def same_bits(a, b) -> bool:
    """Equal values, NaN equal to NaN (floats went through JSON as repr: exact)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def compare(base: dict, work: dict, base_label: str, head_label: str, methods: list[str]) -> bool:
    width = max(24, len(base_label) + 2)
    identical = True
    for name in methods:
        a, b = base["results"][name], work["results"][name]
        print(f"\n{name}")
        print(f"  {'':16s}{base_label:{width}s}{head_label}")
        rows = [(f"loss epoch {i}", x, y) for i, (x, y) in enumerate(zip(a["losses"], b["losses"]))]
        if len(a["losses"]) != len(b["losses"]):
            rows.append(("epochs", len(a["losses"]), len(b["losses"])))
        rows += [(f"test {k}", a["test"].get(k), b["test"].get(k)) for k in sorted(set(a["test"]) | set(b["test"]))]
        rows += [("best epoch", a["best_epoch"], b["best_epoch"]), ("probs sha256", a["probs_sha256"][:16],
                                                                    b["probs_sha256"][:16])]
        for label, x, y in rows:
            cells = [v if isinstance(v, str) else repr(v) for v in (x, y)]  # repr: every bit of a float
            print(f"  {label:16s}{cells[0]:{width}s}{cells[1]}{'' if same_bits(x, y) else '   <- differs'}")
        same = same_bits(a, b)
        identical &= same
        print(f"  bit-identical: {'yes' if same else 'no'}")
    return identical


def label_of(rev: str, commit: str) -> str:
    return commit[:7] if commit.startswith(rev) else f"{rev} {commit[:7]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="the earlier commit (default HEAD, the last commit)")
    p.add_argument("--head", default=None, help="compare with this commit's export instead of the working tree")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated (default ce,focal,ecl)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of both runs (default: torch's)")
    p.add_argument("--imports-only", action="store_true", help="only print where each tree's modules resolve")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        die(f"golden: --methods {args.methods!r}: no method given")
    if args.worker is not None:
        return worker(args.worker.resolve(), methods, args.threads, args.imports_only)
    if args.threads is None:
        import torch
        args.threads = torch.get_num_threads()
    if args.threads < 1:
        die(f"golden: --threads {args.threads}: must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ltbench-golden-") as tmp:
        trees = []  # (label, root): the earlier one first
        for side, rev in (("base", args.base), ("head", args.head)):
            if rev is None:
                trees.append(("working tree", REPO))
            else:
                root = Path(tmp) / side / "tree"
                root.parent.mkdir()
                trees.append((label_of(rev, export(rev, root)), root))
        runs = [run_worker(root, label, methods, args.threads, args.imports_only) for label, root in trees]
    (base_label, _), (head_label, head_root) = trees
    print(f"golden: {base_label} (pristine export) vs {head_label} ({head_root}), on this machine")
    print(f"  {runs[1]['machine']}; both runs with {args.threads} torch thread(s)")
    for (label, _), run in zip(trees, runs):
        print(f"  {label}: ltbench = {run['ltbench']}" + ("" if args.imports_only else f"  ({run['seconds']:.0f} s)"))
        for name, path in run["method_files"].items():
            print(f"  {'':{len(label)}s}  {name} = {path}")
        print(f"  {'':{len(label)}s}  protocol from {run['protocol_file']}")
    if args.imports_only:
        return 0
    print(f"\nprotocol: {runs[1]['protocol']}")
    if runs[0]["protocol"] != runs[1]["protocol"]:
        print(f"  (NOT the same: {base_label} ran {runs[0]['protocol']}; the results are not comparable)")
    identical = compare(runs[0], runs[1], base_label, head_label, methods) and runs[0]["protocol"] == runs[1]["protocol"]
    print(f"\n{'all bit-identical' if identical else 'NOT bit-identical'}: {', '.join(methods)} "
          f"({base_label} vs {head_label})")
    return 0 if identical else 1


# ------------------------------------------------------------------------------ the worker side

def worker(root: Path, methods: list[str], threads: int, imports_only: bool) -> int:
    """Runs in ``root`` with ``PYTHONPATH=root``: the protocol on that tree's library, as JSON."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    protocol = None
    for source in (root / PROTOCOL, REPO / PROTOCOL):  # the tree's own, else the working tree's
        spec = importlib.util.spec_from_file_location("ltbench_golden_protocol", source)
        protocol = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(protocol)  # imports ltbench: from root (first on sys.path)
        except Exception:
            if source == REPO / PROTOCOL:
                raise
            continue  # an older test file that does not import here
        if all(hasattr(protocol, f) for f in ("digits_data", "golden_config", "fit", "machine", "HEADLINE")):
            break
    import ltbench
    from ltbench import create_method

    def inside(path: str) -> str:
        if not Path(path).resolve().is_relative_to(root):
            die(f"golden: {path} is outside {root}: the tree's own package did not load")
        return path

    out = {"root": str(root), "ltbench": inside(ltbench.__file__), "machine": protocol.machine(),
           "protocol_file": str(source),
           "method_files": {}, "results": {}}
    for name in methods:
        module = sys.modules[type(create_method(name)).__module__]
        out["method_files"][name] = inside(module.__file__)
    if not imports_only:
        data = protocol.digits_data()
        cfg = protocol.golden_config()
        out["protocol"] = (f"{protocol.DIGITS.dataset} {protocol.DIGITS.options}, {cfg.backbone} at "
                           f"{cfg.image_size} px, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, "
                           f"seed {cfg.seed}, {cfg.device}")
        for name in methods:
            run = protocol.fit(name, data)
            probs = np.ascontiguousarray(run.arrays["test_probs"], dtype=np.float32)
            out["results"][name] = {"losses": [h["train_loss"] for h in run.history],
                                    "test": {k: float(run.test[k]) for k in protocol.HEADLINE},
                                    "best_epoch": run.best_epoch,
                                    "probs_sha256": hashlib.sha256(probs.tobytes()).hexdigest()}
    print(MARK + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
