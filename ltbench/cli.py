"""Command line: ``ltbench train | bench | report | methods | datasets | data prepare``.

Every user error ends as one line ``ltbench: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations


import sys
from pathlib import Path

import click
import yaml

from ltbench.errors import LtbenchError


def _parse_params(pairs: tuple[str, ...]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LtbenchError(f"--param {pair!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)  # numbers, booleans, lists as YAML scalars
    return params


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise LtbenchError(f"{option} {text!r}: expected integers like 0,1,2") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ltbench")
def cli() -> None:
    """ltbench: a faithful, fast benchmark for long-tailed image classification."""


@cli.command("methods")
def methods_cmd() -> None:
    """List the registered methods and their default hyperparameters."""
    from ltbench.registry import get_method_class, list_methods

    for name in list_methods():
        cls = get_method_class(name)
        params = ", ".join(f"{k}={v!r}" for k, v in cls().get_params().items())
        click.echo(f"{name:14s} {params}")


@cli.command("datasets")
def datasets_cmd() -> None:
    """List the registered datasets."""
    from ltbench.data.datasets import DATASETS

    for spec in DATASETS.values():
        root = " (needs --data-root)" if spec.needs_root else ""
        click.echo(f"{spec.name:12s} {spec.description}{root}; default split: {spec.default_split}")


@cli.command("train")
@click.option("--method", required=True, help="A registered method (see `ltbench methods`).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method hyperparameter; repeatable.")
@click.option("--dataset", default="digits-lt", show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder with the dataset's official files.")
@click.option("--split", "split_kind", help="grouped | stratified | ecl | official | csv (default: the dataset's).")
@click.option("--split-seed", default=0, show_default=True)
@click.option("--split-dir", type=click.Path(path_type=Path), help="Folder of the ECL split CSVs (--split ecl).")
@click.option("--split-file", type=click.Path(path_type=Path), help="A split CSV (--split csv).")
@click.option("--backbone", default="small-cnn", show_default=True)
@click.option("--pretrained", help="'imagenet', a URL or a local .pth file.")
@click.option("--image-size", default=32, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=0.002, show_default=True)
@click.option("--select-metric", default="acc", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Pixel cache (default ~/.cache/ltbench).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/train/DATASET).")
@click.option("--force", is_flag=True, help="Train even if a result with the same config exists.")
def train_cmd(method, params, dataset, data_root, split_kind, split_seed, split_dir, split_file, backbone,
              pretrained, image_size, epochs, batch_size, lr, select_metric, seed, device, cache_dir, out,
              force) -> None:
    """Train and test one method with one seed; writes a result file and prints the test metrics."""
    from ltbench.registry import get_method_class
    from ltbench.runs import DataSpec, check_out_dir, prepare_data, run_one, write_split
    from ltbench.trainer import TrainConfig

    get_method_class(method)  # fail fast on an unknown name
    params = _parse_params(params)
    config = TrainConfig(backbone=backbone, pretrained=pretrained, image_size=image_size, epochs=epochs,
                         batch_size=batch_size, lr=lr, select_metric=select_metric, device=device, seed=seed)
    spec = DataSpec(dataset=dataset, data_root=str(data_root) if data_root else None, split=split_kind,
                    split_seed=split_seed, split_dir=str(split_dir) if split_dir else None,
                    split_file=str(split_file) if split_file else None,
                    cache_dir=str(cache_dir) if cache_dir else None)
    out = check_out_dir(out or Path("reports") / "train" / dataset)
    prepared = prepare_data(spec, image_size)
    write_split(prepared, out)
    result, trained = run_one(method, params, seed, config, spec, prepared, out, progress=True, force=force)
    t = result["test"]
    click.echo(("trained" if trained else "already done (use --force to retrain)")
               + f": {method} seed {seed}, best epoch {result['best_epoch']}, wall {result['wall_time_s']:.1f} s")
    click.echo("test " + "  ".join(f"{k.upper() if k != 'f1' else 'F1'} {t[k]:.2f}"
                                   for k in ("acc", "sen", "pre", "f1", "auc")))
    click.echo(f"result: {out / 'runs' / method / f'seed{seed}.json'}")


@cli.command("bench")
@click.option("--benchmark", "benchmark_path", required=True, type=click.Path(path_type=Path),
              help="A benchmark YAML (benchmarks/NAME.yaml).")
@click.option("--methods", help="Only these methods (comma-separated).")
@click.option("--seeds", help="Override the seeds, e.g. 0,1,2.")
@click.option("--epochs", type=int, help="Override the epoch budget.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Override the dataset folder.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/NAME).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_cmd(benchmark_path, methods, seeds, epochs, data_root, device, out, quiet) -> None:
    """Train every method × seed of a benchmark (skipping finished runs) and write the report."""
    from ltbench.bench import load_benchmark, run_benchmark
    from ltbench.registry import get_method_class

    bench = load_benchmark(benchmark_path)
    if methods:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        for name in names:
            get_method_class(name)
        bench.methods = {name: bench.methods.get(name, {}) for name in names}
    if seeds:
        bench.seeds = _int_list(seeds, "--seeds")
    if epochs is not None:
        if epochs < 1:
            raise LtbenchError(f"--epochs {epochs}: must be at least 1")
        bench.train.epochs = epochs
    if data_root:
        bench.data.data_root = str(data_root)
    if device:
        bench.train.device = device
    run_benchmark(bench, out or Path("reports") / bench.name, progress=not quiet, echo=click.echo)


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Where to write (default RUN_DIR).")
def report_cmd(run_dir: Path, out: Path | None) -> None:
    """Rebuild the tables and figures of RUN_DIR from its result files alone."""
    from ltbench.report import load_results, write_report

    if not run_dir.is_dir():
        raise LtbenchError(f"{run_dir}: no such folder")
    runs = run_dir / "runs" if (run_dir / "runs").is_dir() else run_dir
    files = write_report(load_results(runs), out or run_dir)
    for name, path in files.items():
        click.echo(f"{name}: {path}")


@cli.group("data")
def data_group() -> None:
    """Dataset utilities."""


@data_group.command("prepare")
@click.option("--dataset", required=True)
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--image-size", default=224, show_default=True, help="Training size; the cache keeps ~8/7 of it.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
def prepare_cmd(dataset, data_root, image_size, cache_dir) -> None:
    """Decode and resize every image once into the pixel cache (later runs reuse it)."""
    from ltbench.runs import DataSpec, prepare_data

    spec = DataSpec(dataset=dataset, data_root=str(data_root) if data_root else None,
                    cache_dir=str(cache_dir) if cache_dir else None)
    prepared = prepare_data(spec, image_size)
    px = prepared.bundle.pixels
    click.echo(f"{dataset}: {px.shape[0]} images cached as {px.shape[1]}x{px.shape[2]} uint8 "
               f"({px.nbytes / 2**20:.1f} MiB); split {prepared.split.kind} hash {prepared.split_hash}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and exit 2 for user errors, never a traceback for them."""
    try:
        cli.main(args=argv, prog_name="ltbench", standalone_mode=False)
    except LtbenchError as exc:
        click.echo(f"ltbench: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("ltbench: interrupted; finished runs are saved, rerun to resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ltbench: interrupted; finished runs are saved, rerun to resume", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"ltbench: error: {exc.format_message()}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
