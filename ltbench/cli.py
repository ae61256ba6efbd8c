"""Command line: ``ltbench train | bench | report | methods | datasets | data prepare``.

Every user error ends as one line ``ltbench: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations


import sys
from pathlib import Path

import click

from ltbench.errors import LtbenchError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ltbench")
def cli() -> None:
    """ltbench: a faithful, fast benchmark for long-tailed image classification."""


@cli.command("methods")
@click.option("--recipes", "show_recipes", is_flag=True,
              help="Show each method's paper recipes (a benchmark row's `recipe: NAME`) instead of its parameters.")
def methods_cmd(show_recipes: bool) -> None:
    """List the registered methods and their default hyperparameters (--recipes: their paper recipes)."""
    from ltbench.registry import get_method_class, list_methods

    for name in list_methods():
        cls = get_method_class(name)
        if show_recipes:  # one line per recipe (ltbench/recipes.py, docs/protocol.md "Paper recipes")
            for label, recipe in cls.recipes.items():
                click.echo(f"{name:14s} {label}: {recipe.describe()}")
            if not cls.recipes:
                click.echo(f"{name:14s} no recipe beyond the shared protocol")
            continue
        params = ", ".join(f"{k}={v!r}" for k, v in cls().get_params().items())
        click.echo(f"{name:14s} {params}")


@cli.command("datasets")
def datasets_cmd() -> None:
    """List the registered datasets."""
    from ltbench.data.datasets import DATASETS

    for spec in DATASETS.values():
        root = " (needs --data-root)" if spec.needs_root else ""
        protocol = " ".join(f"{k}={v}" for k, v in spec.protocol.items())
        click.echo(f"{spec.name:12s} {spec.description}{root}; default split: {spec.default_split}; "
                   f"protocol: {protocol or 'TrainConfig defaults'}; views may use: {spec.geometry.describe()}")


# Training settings left unset (None) come from the benchmark file or the dataset's default protocol
# (`ltbench datasets`); every value is converted by TrainConfig's declared types (ltbench/config.py).
_PROTOCOL_HELP = "default: the dataset's protocol"


@cli.command("train")
@click.option("--method", required=True, help="A registered method (see `ltbench methods`).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Method hyperparameter, converted by its declared type; repeatable.")
@click.option("--dataset", default="digits-lt", show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder with the dataset's official files.")
@click.option("--split", "split_kind", help="grouped | stratified | ecl | official | csv | flexsampling | flamby (default: the dataset's).")
@click.option("--split-seed", help="Seed of a 3:1:1 split (default 0).")
@click.option("--split-dir", type=click.Path(path_type=Path), help="Folder of the published split files (--split ecl | flexsampling | flamby).")
@click.option("--split-file", type=click.Path(path_type=Path), help="A split CSV (--split csv).")
@click.option("--ratio", "split_ratio", help="FlexSampling's imbalance ratio: 100 | 200 | 500 (--split flexsampling; default 100).")
@click.option("--classes", "split_classes",
              help="FlexSampling's class set: 8 | 14 (--split flexsampling; default 8; 14 needs its extra "
                   "ISIC-archive images under --data-root, see docs/data.md).")
@click.option("--backbone", help=f"resnet18 | resnet34 | resnet50 | small-cnn | small-cnn-16 | timm:MODEL | open_clip:ARCH "
                                      f"({_PROTOCOL_HELP}).")
@click.option("--pretrained", help=f"imagenet, hub, hub:TAG, hf-hub:ORG/REPO, a URL, a local .pth file, or none "
                                        f"({_PROTOCOL_HELP}).")
@click.option("--image-size", help=_PROTOCOL_HELP)
@click.option("--epochs", help=_PROTOCOL_HELP)
@click.option("--batch-size", help=_PROTOCOL_HELP)
@click.option("--lr", help=_PROTOCOL_HELP)
@click.option("--select-metric", help=f"acc | sen | pre | f1 | auc | group_acc | last ({_PROTOCOL_HELP}).")
@click.option("--seed", help="Run seed (default 0).")
@click.option("--device", help="auto, cpu, cuda, cuda:N (default auto).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any training setting (e.g. optimizer=adam, warmup_epochs=5, lr_schedule=step, "
                   "lr_milestones=[40,60]; docs/protocol.md); repeatable, wins over the options above.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Pixel cache (default ~/.cache/ltbench).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/train/DATASET).")
@click.option("--force", is_flag=True, help="Train even if a result with the same config exists.")
@click.option("--retrieval", is_flag=True, help="Also run the retrieval pass after the test (docs/retrieval.md).")
@click.option("--threads", metavar="T", help="torch threads (default: torch's own); CPU results reproduce at equal counts.")
def train_cmd(method, params, dataset, data_root, split_kind, split_seed, split_dir, split_file, split_ratio,
              split_classes, backbone, pretrained, image_size, epochs, batch_size, lr, select_metric, seed, device,
              settings, cache_dir, out, force, retrieval, threads) -> None:
    """Train and test one method with one seed; writes a result file and prints the test metrics."""
    from ltbench import config as cfg
    from ltbench import typed
    from ltbench.data.datasets import get_dataset
    from ltbench.registry import get_method_class
    from ltbench.report import leak_text
    from ltbench.runs import (DataSpec, check_cache_dir, check_methods_on_data, check_out_dir, prepare_data,
                              run_one, write_split)

    # Everything the command line says is converted and checked here, before any file is read.
    from ltbench.launchers import set_threads

    set_threads(threads)
    get_method_class(method)  # fail fast on an unknown name
    get_dataset(dataset)
    params = cfg.method_params(method, typed.key_value_pairs(params, "--param"), typed.param_flag, text=True)
    split_flags = {"kind": split_kind, "seed": split_seed, "dir": split_dir, "file": split_file, "ratio": split_ratio,
                   "classes": split_classes}
    split = typed.read(cfg.split_settings(classes=True), {k: str(v) for k, v in split_flags.items() if v is not None},
                       typed.flag({"kind": "--split", "seed": "--split-seed", "dir": "--split-dir", "file": "--split-file",
                                  "ratio": "--ratio", "classes": "--classes"}),
                       text=True)
    flags = {"backbone": backbone, "pretrained": pretrained, "image_size": image_size, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "select_metric": select_metric, "device": device, "seed": seed}
    config, sources = cfg.train_config(dataset, cfg.Layer("command line", flags, typed.flag(), text=True),
                                       cfg.set_layer(typed.key_value_pairs(settings, "--set")))
    spec = DataSpec(dataset=dataset, data_root=str(data_root) if data_root else None, split=split.get("kind"),
                    split_seed=split.get("seed", 0), split_dir=split.get("dir"), split_file=split.get("file"),
                    cache_dir=str(cache_dir) if cache_dir else None, split_ratio=split.get("ratio"),
                    split_classes=split.get("classes"))
    check_cache_dir(spec)
    out = typed.check_folder(out or Path("reports") / "train" / dataset, "--out")
    click.echo(f"{method}: " + cfg.describe_train(config, sources, seed=True))
    out = check_out_dir(out)
    prepared = prepare_data(spec, config.image_size, before_pixels=lambda image_set, sp: check_methods_on_data(
        {method: (method, params)}, config, image_set, sp))
    if prepared.split.details.get("warning"):
        click.echo(f"ltbench: warning: {prepared.split.details['warning']}", err=True)
    click.echo(f"{dataset}: {len(prepared.image_set)} images, split {prepared.split.kind} "
               f"({len(prepared.split.train)}/{len(prepared.split.val)}/{len(prepared.split.test)}); "
               f"lesion leak: {leak_text(prepared.leak)}")
    write_split(prepared, out)
    from ltbench.retrieval.run_pass import RetrievalSettings

    result, trained = run_one(method, params, config.seed, config, spec, prepared, out, progress=True, force=force,
                              retrieval=RetrievalSettings(enabled=True) if retrieval else None)
    t = result["test"]
    click.echo(("trained" if trained else "already done (use --force to retrain)")
               + f": {method} seed {config.seed}, best epoch {result['best_epoch']}, wall {result['wall_time_s']:.1f} s")
    click.echo("test " + "  ".join(f"{k.upper() if k != 'f1' else 'F1'} {t[k]:.2f}"
                                   for k in ("acc", "sen", "pre", "f1", "auc")))
    if result.get("retrieval") and result["retrieval"].get("spaces"):
        found = result["retrieval"]["spaces"]
        click.echo("retrieval (class-macro): " + "  ".join(
            f"{space} mAP@all {found[space]['map_all']['macro']:.2f} P@10 {found[space]['p_10']['macro']:.2f}"
            for space in found))
    click.echo(f"result: {out / 'runs' / method / f'seed{config.seed}.json'}")


@cli.command("bench")
@click.option("--benchmark", "benchmark_path", required=True, type=click.Path(path_type=Path),
              help="A benchmark YAML (benchmarks/NAME.yaml).")
@click.option("--methods", help="Only these rows (comma-separated): the file's rows or registered methods.")
@click.option("--seeds", help="Override the seeds, e.g. 0,1,2.")
@click.option("--epochs", help="Override the epoch budget.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Override the dataset folder.")
@click.option("--backbone", help="Override the backbone: resnet18 | resnet34 | resnet50 | small-cnn | small-cnn-16 | timm:MODEL | "
                                      "open_clip:ARCH.")
@click.option("--pretrained", help="Override the weights: imagenet, hub, hub:TAG, hf-hub:ORG/REPO, a URL, a local "
                                        ".pth file, or none.")
@click.option("--image-size", help="Override the training image size.")
@click.option("--batch-size", help="Override the batch size.")
@click.option("--lr", help="Override the base learning rate.")
@click.option("--select-metric", help="Override the checkpoint rule: acc | sen | pre | f1 | auc | group_acc | last.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any training setting (e.g. optimizer=adam, warmup_epochs=5; docs/protocol.md); repeatable, "
                   "wins over the file and the options above.")
@click.option("--tune", "tune", multiple=True, metavar="KEY=V1,V2",
              help="Tune a training setting per row on validation (first seed; replaces the file's tune:), "
                   "e.g. --tune lr=0.01,0.05,0.1; repeatable (docs/protocol.md).")
@click.option("--ratio", "split_ratio", help="FlexSampling's imbalance ratio 100 | 200 | 500 (over the file's split; "
              "the default output folder then ends in -ratioN).")
@click.option("--classes", "split_classes", help="FlexSampling's class set 8 | 14 (over the file's split).")
@click.option("--retrieval/--no-retrieval", default=None,
              help="Run the retrieval pass after each test (over the file's retrieval:; never part of a run key).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/NAME).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--force", is_flag=True, help="Retrain runs whose stored result has another configuration (stale) or is damaged.")
@click.option("--retry-failed", is_flag=True, help="Rerun the runs recorded as failed (default: report them again).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep the last checkpoints of finished runs (default: removed).")
# Scale-out (ltbench/launchers, docs/scaling.md); without them the runs train one by one in this process.
@click.option("--jobs", metavar="N", help="Runs at once, each in its own process (default 1: in this process).")
@click.option("--gpus", metavar="LIST", help="GPUs to spread the jobs over, e.g. 0,1 (default: every visible GPU, if any).")
@click.option("--runs-per-gpu", metavar="K", help="Runs sharing one GPU (default: --jobs / number of GPUs).")
@click.option("--threads", metavar="T", help="torch threads per run (default: torch's own with --jobs 1, else the cores "
                                            "split between the jobs); CPU results reproduce at equal counts.")
@click.option("--launcher", metavar="local|slurm", help="local (default: processes on this machine) or slurm (a job array via submitit).")
@click.option("--slurm", "slurm", multiple=True, metavar="KEY=VALUE",
              help="A SLURM setting (over the file's slurm: section): cluster=slurm|local, partition, account, qos, "
                   "time_min (>= 3), gpus_per_job, cpus_per_job, mem_gb, array_parallelism, setup, poll_s; "
                   "repeatable.")
def bench_cmd(benchmark_path, methods, seeds, epochs, data_root, backbone, pretrained, image_size, batch_size, lr,
              select_metric, device, settings, tune, split_ratio, split_classes, retrieval, out, quiet, force,
              retry_failed, keep_checkpoints, jobs, gpus, runs_per_gpu, threads, launcher, slurm) -> None:
    """Train every method × seed of a benchmark (skipping finished runs) and write the report.

    Interrupted runs resume from their last finished epoch; failed runs are recorded and the others
    go on (exit status 2 at the end if any failed or is stale).
    """
    from ltbench import typed
    from ltbench.bench import load_benchmark, run_benchmark, select_rows

    # Training overrides are TrainConfig fields as text: the same conversion as `train`'s flags.
    bench = load_benchmark(benchmark_path, train_flags={
        "epochs": epochs, "device": device, "backbone": backbone, "pretrained": pretrained,
        "image_size": image_size, "batch_size": batch_size, "lr": lr, "select_metric": select_metric},
        settings=typed.key_value_pairs(settings, "--set"),
        split_flags={"ratio": split_ratio, "classes": split_classes},
        tune_flags=typed.key_value_pairs(tune, "--tune") if tune else None)
    if retrieval is not None:
        import dataclasses

        bench.retrieval = dataclasses.replace(bench.retrieval, enabled=retrieval)
    if methods is not None:
        bench.methods = select_rows(bench, methods)
    if seeds is not None:
        bench.seeds = typed.seeds(seeds, f"--seeds {seeds}", text=True)
    if data_root:
        bench.data.data_root = str(data_root)
    from ltbench.launchers import make_launcher

    chosen = make_launcher(bench, launcher, jobs=jobs, gpus=gpus, runs_per_gpu=runs_per_gpu, threads=threads,
                           slurm=slurm)  # None: the sequential bench
    default_out = Path("reports") / (bench.name + (f"-ratio{bench.data.split_ratio}" if split_ratio else ""))
    run_benchmark(bench, out or default_out, progress=not quiet, echo=click.echo,
                  warn=lambda message: click.echo(message, err=True), force=force, retry_failed=retry_failed,
                  keep_checkpoints=keep_checkpoints, launcher=chosen)


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Where to write (default RUN_DIR).")
@click.option("--baseline", default="ce", show_default=True,
              help="The row the paired tests compare every other method with ('none' for no tests).")
def report_cmd(run_dir: Path, out: Path | None, baseline: str) -> None:
    """Rebuild the tables, evidence and figures of RUN_DIR from its result files alone.

    A damaged result file is one line naming it (exit 2). Runs of a row made with other settings than
    its newest run (a --force retrain of one seed) are left out of the table and listed (exit 2).
    """
    from ltbench.report import write_report
    from ltbench.report.results import mixed_settings
    from ltbench.report.summary import result_files

    if not run_dir.is_dir():
        raise LtbenchError(f"{run_dir}: no such folder")
    runs = run_dir / "runs" if (run_dir / "runs").is_dir() else run_dir
    kept, stale = mixed_settings(result_files(runs))
    for s in stale:
        click.echo(f"ltbench: warning: {s['path']}: {s['method']} seed {s['seed']} was made with other settings "
                   f"({s['why']}); left out of the table", err=True)
    files = write_report([result for _, result in kept], out or run_dir, run_dir=runs, stale=stale,
                         baseline=None if baseline.lower() == "none" else baseline)
    for name, path in files.items():
        click.echo(f"{name}: {path}")
    if stale:
        raise LtbenchError(f"{len(stale)} run(s) left out of the report, made with other settings than their row's "
                           f"newest run (listed in {files['summary.md']}); rerun the bench with --force to retrain them")


@cli.group("data")
def data_group() -> None:
    """Dataset utilities."""


@data_group.command("download")
@click.argument("dataset", type=click.Choice(["isic2018", "isic2019"]))
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="Folder to fill in the official layout (then use it as --data-root).")
@click.option("--dry-run", is_flag=True, help="Print the files, sizes and checks; download nothing.")
@click.option("--no-extract", is_flag=True, help="Download and verify only.")
def download_cmd(dataset, to, dry_run, no_extract) -> None:
    """Download, verify and extract the official ISIC challenge files (resumes an interrupted download).

    The base URL can be replaced with $LTBENCH_DOWNLOAD_URL (a mirror).
    """
    from ltbench.data.download import download, dry_run_lines

    if dry_run:
        for line in dry_run_lines(dataset, to):
            click.echo(line)
        return
    download(dataset, to, extract=not no_extract, echo=click.echo)
    click.echo(f"{dataset}: done; use --data-root {to}")


@data_group.command("prepare")
@click.option("--dataset", required=True)
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--image-size", default=224, show_default=True, help="Training size; the cache keeps ~8/7 of it.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="Hash every source image and rebuild the cache if any changed (default: size + mtime).")
def prepare_cmd(dataset, data_root, image_size, cache_dir, verify) -> None:
    """Decode and resize every image once into the pixel cache (later runs reuse it)."""
    from ltbench.config import train_flag
    from ltbench.runs import DataSpec, check_cache_dir, prepare_data

    image_size = train_flag("image_size", image_size)
    spec = DataSpec(dataset=dataset, data_root=str(data_root) if data_root else None,
                    cache_dir=str(cache_dir) if cache_dir else None)
    check_cache_dir(spec)
    prepared = prepare_data(spec, image_size, verify=verify)
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
    except OSError as exc:  # the machine's: a full disk, a read-only folder (runs convert theirs already)
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"ltbench: error: {where}{exc.strerror or exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
