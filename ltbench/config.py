"""The settings of a run: ``TrainConfig`` (the shared protocol) and the rules of every value it takes.

Each value is converted by its declared type and checked against its rule (``ltbench.typed``): a
``TrainConfig`` field (:data:`TRAIN_RULES`), a split option, a SLURM setting, a dataset loader's or a
method ``__init__``'s annotated keyword. All of it runs when a file or the command line is read,
before any label file, pixel or pretrained weight is touched. Checks that need the data (a
class-weight vector of the wrong length) belong to the method's ``setup``, which
``ltbench.runs.check_methods_on_data`` runs before the pixels.

Training settings come in three layers, later ones winning: the dataset's default protocol
(``ltbench.data.datasets``), the benchmark file, the command line (:func:`train_config`).
"""
from __future__ import annotations

import functools
import math
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ltbench.errors import LtbenchError
from ltbench.typed import (Label, Setting, at_least, flag, non_negative, not_empty, one_of, positive, read,
                           seed_rule, settings_of, show)


@dataclass
class TrainConfig:
    """Everything about a run that is not the method or the data (the shared protocol)."""

    backbone: str = "resnet50"
    pretrained: str | None = None
    image_size: int = 224
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 0.002
    momentum: float = 0.9  # SGD
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # sgd | adam (torch.optim.Adam: L2 weight decay, as MONICA and FlexSampling) | sam | imbsam
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    # SAM / ImbSAM over the SGD above (ltbench/trainer/sam.py): davda54/sam's rho and adaptive (ASAM);
    # ImbSAM's tail = classes with fewer training images than the threshold (Imbalanced_SAM's --eta 20)
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    imbsam_threshold: int = 20
    lr_schedule: str = "cosine"  # cosine | step | constant, per stage (ltbench.schedules.stage_lr)
    lr_milestones: tuple[int, ...] = ()  # step: epochs of the stage where the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from warmup_start_factor · lr, then the schedule
    warmup_start_factor: float = 0.01
    select_metric: str = "acc"  # ltbench.metrics.SELECTABLE
    group_sizes: tuple[int, ...] = ()  # (head, medium) classes by training frequency; () = terciles
    eval_view: str = "eval"  # the preset of validation, test, RunAccess.infer and retrieval (e.g. plain_half)
    # Fine-tuning (issue 23; ltbench/models/finetune.py, docs/finetuning.md): which backbone parameters train
    finetune: str = "full"  # full | linear | partial | lora | adaptformer | vpt | bitfit
    finetune_blocks: int = 1  # partial: the last k blocks train
    finetune_rank: int = 8  # lora: rank r (alpha = r)
    finetune_dim: int = 64  # adaptformer: bottleneck width
    finetune_prompts: int = 10  # vpt: prompt tokens per block
    layer_decay: float = 1.0  # layer-wise lr decay (BEiT/MAE): block i of L gets lr · decay^(L + 1 − i); 1 = none
    grad_checkpointing: bool = False  # timm / open_clip transformers: recompute activations in backward
    normalise: str = "model"  # model: a hub backbone's own mean/std (ImageNet's otherwise) | imagenet
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (no loss scaling needed, unlike fp16)
    channels_last: bool = True  # CUDA only
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # Every field converted by its annotation and checked by its rule (TRAIN_RULES), so a config
        # built in Python meets the same rules as a benchmark file or the CLI.
        check_train_config(self)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------- rules


def _backbone(name: str) -> str | None:
    from ltbench.models import backbone_problem

    return backbone_problem(name)


def _metrics() -> tuple:
    from ltbench.metrics import SELECTABLE

    return tuple(SELECTABLE)


@functools.lru_cache(maxsize=None)  # every TrainConfig checks its eval_view: try each preset once
def _deterministic_preset(name: str) -> str | None:
    """An evaluation preset: registered, and drawing nothing (two generators give the same batch)."""
    import torch

    from ltbench.data.augment import get_augmentation, list_augmentations

    try:
        augment = get_augmentation(name, 8)
    except LtbenchError:
        return f"not an augmentation preset (known: {', '.join(list_augmentations())})"
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if not torch.equal(augment(images, torch.Generator().manual_seed(1)), augment(images, torch.Generator().manual_seed(2))):
        return "an evaluation preset must be deterministic (e.g. eval, plain_half)"
    return None


def _finetune_modes() -> tuple:
    from ltbench.models.finetune import FINETUNE_MODES

    return FINETUNE_MODES


def _lr_schedules() -> tuple:
    from ltbench.schedules import LR_SCHEDULES

    return LR_SCHEDULES


def _device(v: str) -> str | None:
    if v == "auto":
        return None
    import torch

    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return "not a device (use auto, cpu, cuda or cuda:N)"
    return None


# An epoch budget beyond any recipe (the longest is 1,241): a typo like 10^29 would train forever (issue 21).
MAX_EPOCHS = 100_000

# What each TrainConfig field must satisfy beyond its type (the type comes from the dataclass).
TRAIN_RULES: dict[str, Callable[[Any], str | None]] = {
    "backbone": _backbone,
    "pretrained": not_empty,
    "image_size": at_least(1),
    "epochs": lambda v: at_least(1)(v) or (None if v <= MAX_EPOCHS else f"must be at most {MAX_EPOCHS:,}"),
    "batch_size": at_least(1),
    "eval_batch_size": at_least(1),
    "lr": positive,
    "momentum": non_negative,
    "weight_decay": non_negative,
    "select_metric": one_of(_metrics),
    "optimizer": one_of(("sgd", "adam", "sam", "imbsam")),
    "sam_rho": lambda v: None if math.isfinite(v) and v >= 0 else "must be a finite number >= 0",
    "imbsam_threshold": at_least(1),
    "betas": lambda v: None if all(0 <= b < 1 for b in v) else "each beta must be in [0, 1)",
    "lr_schedule": one_of(_lr_schedules),
    "lr_milestones": lambda v: None if all(m >= 1 for m in v) and list(v) == sorted(set(v)) else
    "must be increasing epochs of at least 1",
    "lr_gamma": positive,
    "warmup_epochs": non_negative,
    "warmup_start_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "eval_view": _deterministic_preset,
    "finetune": one_of(_finetune_modes),
    "finetune_blocks": at_least(1),
    "finetune_rank": at_least(1),
    "finetune_dim": at_least(1),
    "finetune_prompts": at_least(1),
    "layer_decay": lambda v: None if 0 < v <= 1 else "must be in (0, 1] (1: no decay)",
    "normalise": one_of(("model", "imagenet")),
    "group_sizes": lambda v: None if len(v) in (0, 2) and all(n >= 1 for n in v) else
    "give [head, medium]: the number of head and medium classes by training frequency (empty: terciles)",
    "device": _device,
    "seed": seed_rule,
}

# Backbones that have no pretrained weights: an inherited `pretrained` does not follow them.
NO_PRETRAINED = ("small-cnn", "small-cnn-16")


@functools.lru_cache(maxsize=None)
def train_settings() -> dict[str, Setting]:
    """One Setting per TrainConfig field: its annotation, default and rule."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: Setting(f.name, hints[f.name], f.default, TRAIN_RULES.get(f.name)) for f in fields(TrainConfig)}


def check_train_config(config: Any) -> None:
    """Convert and check every field of a TrainConfig in place (also for configs built in Python)."""
    label = lambda key, value: f"TrainConfig {key}={show(value)}"  # noqa: E731 - one-line label
    values = read(train_settings(), {f.name: getattr(config, f.name) for f in fields(config)}, label)
    for key, value in values.items():
        setattr(config, key, value)


def train_flag(key: str, value: object) -> object:
    """One TrainConfig field given as a command-line option (e.g. ``data prepare --image-size``)."""
    return read({key: train_settings()[key]}, {key: value}, flag(), text=isinstance(value, str))[key]


def split_settings(classes: bool = False) -> dict[str, Setting]:
    """The split options; ``classes``: also FlexSampling's class set (``--classes``, ``split: {classes: 14}``;
    ``ltbench train`` and ``ltbench/bench/file.py`` pass it on to ``DataSpec.split_classes``)."""
    from ltbench.data.splits import KINDS

    settings = {"kind": Setting("kind", str | None, None, one_of(KINDS)),
                "seed": Setting("seed", int, 0, seed_rule),
                "dir": Setting("dir", str | None, None, not_empty),
                "file": Setting("file", str | None, None, not_empty),
                # FlexSampling's imbalance ratio (--split flexsampling; ltbench/data/published_splits.py)
                "ratio": Setting("ratio", int | None, None, one_of((100, 200, 500)))}
    if classes:  # FlexSampling's 8-class (default) or 14-class split
        settings["classes"] = Setting("classes", int | None, None, one_of((8, 14)))
    return settings


def slurm_settings() -> dict[str, Setting]:
    """``--launcher slurm``: the benchmark file's ``slurm:`` section and ``--slurm KEY=VALUE`` (ltbench/launchers/slurm.py)."""
    text = str | None
    return {"cluster": Setting("cluster", text, None, one_of(("slurm", "local"))),  # local: submitit's local executor
            "partition": Setting("partition", text, None, not_empty),
            "account": Setting("account", text, None, not_empty),
            "qos": Setting("qos", text, None, not_empty),
            # per task; submitit asks for SIGUSR2 90 s before the limit, so 1-2 minutes leave no time to run
            "time_min": Setting("time_min", int | None, None,
                                lambda v: None if v >= 3 else "must be at least 3 (submitit's checkpoint signal "
                                "comes 90 s before the time limit)"),
            "gpus_per_job": Setting("gpus_per_job", int | None, None, non_negative),
            "cpus_per_job": Setting("cpus_per_job", int | None, None, at_least(1)),
            "mem_gb": Setting("mem_gb", float | None, None, positive),
            "array_parallelism": Setting("array_parallelism", int | None, None, at_least(1)),
            "poll_s": Setting("poll_s", float | None, None, positive),  # seconds between queue checks (20)
            "setup": Setting("setup", list[str] | None, None)}  # shell lines run before each task


def dataset_option_settings(dataset: str) -> tuple[dict[str, Setting], bool]:
    """The dataset loader's keywords (``data_root`` is its own option)."""
    from ltbench.data.datasets import get_dataset

    spec = get_dataset(dataset)
    settings, open_ended = settings_of(spec.load, ("self", "data_root"))
    return {k: replace(s, rule=spec.option_rules.get(k, s.rule)) for k, s in settings.items()}, open_ended


def method_params(method: str, params: Mapping, label: Label, text: bool = False) -> dict:
    """A registered method's hyperparameters converted by its ``__init__`` annotations."""
    from ltbench.registry import get_method_class

    settings, open_ended = settings_of(get_method_class(method).__init__)
    return read(settings, params, label, text=text, unknown=f"method {method!r} has no such parameter",
                open_ended=open_ended)


# ------------------------------------------------------------------------------ training layers


@dataclass
class Layer:
    """One source of training settings: its name, its values and how to label them in errors."""

    source: str
    values: Mapping
    label: Label
    text: bool = False


def set_layer(settings: Mapping[str, str]) -> Layer:
    """``--set KEY=VALUE`` text (:func:`key_value_pairs`) as the last layer of training settings."""
    return Layer("command line", dict(settings), lambda k, v: f"--set {k}={v}", text=True)


def train_config(dataset: str, *layers: Layer) -> tuple[Any, dict[str, Layer]]:
    """The effective TrainConfig: dataset default protocol < each layer in order (later wins).

    Returns the config and, per field set by a layer, the layer it came from (for messages and the
    one-line summary). Inherited ``pretrained`` weights do not follow a later layer's switch to a
    backbone that has none (``--backbone small-cnn`` on ISIC trains from scratch).
    """
    from ltbench.data.datasets import get_dataset

    settings = train_settings()
    default = Layer(f"{dataset} protocol", get_dataset(dataset).protocol,
                    lambda k, v: f"dataset {dataset!r} default protocol {k}={show(v)}")
    values: dict = {}
    sources: dict[str, Layer] = {}
    for layer in (default, *layers):
        given = {k: v for k, v in layer.values.items() if v is not None or not layer.text}
        for key, value in read(settings, given, layer.label, text=layer.text,
                               unknown="not a training setting").items():
            values[key], sources[key] = value, layer
    rank = {id(layer): k for k, layer in enumerate((default, *layers))}
    if (values.get("backbone") in NO_PRETRAINED and values.get("pretrained") is not None
            and rank[id(sources["pretrained"])] < rank[id(sources["backbone"])]):
        values["pretrained"], sources["pretrained"] = None, sources["backbone"]
    if (str(values.get("backbone", "")).startswith("timm:") and values.get("pretrained") == "imagenet"
            and rank[id(sources["pretrained"])] < rank[id(sources["backbone"])]):
        # an inherited "imagenet" (the ISIC protocol's ResNet weights) means the timm model's own pretrained weights
        values["pretrained"], sources["pretrained"] = "hub", sources["backbone"]
    if str(values.get("backbone", "")).startswith(("timm:", "open_clip:")) and (
            "image_size" not in sources or rank[id(sources["image_size"])] == 0):
        # A hub model's own input size, unless a benchmark file or the command line set one (issue 23)
        from ltbench.models.build import model_input_size

        size = model_input_size(values["backbone"])
        if size is not None:
            values["image_size"] = size
            sources["image_size"] = Layer(f"{values['backbone']} config", {"image_size": size},
                                          lambda k, v: f"{values['backbone']}'s pretrained config {k}={show(v)}")
    config = TrainConfig(**values)
    check_environment(config, sources)
    return config, sources


def check_environment(config: Any, sources: Mapping[str, Layer] | None = None) -> None:
    """What the machine must provide for this config: the device, a local weights file."""
    sources = sources or {}

    def where(key: str) -> str:
        value = getattr(config, key)
        layer = sources.get(key)
        return layer.label(key, value) if layer else f"{key} {value}"

    if config.backbone in NO_PRETRAINED and config.pretrained is not None:
        raise LtbenchError(f"{where('pretrained')}: the {config.backbone} backbone has no pretrained weights "
                           "(set pretrained to none)")
    weights = config.pretrained
    hub_backbone = config.backbone.startswith(("timm:", "open_clip:"))
    if weights == "imagenet" and hub_backbone:
        raise LtbenchError(f"{where('pretrained')}: imagenet names torchvision's ResNet weights; for {config.backbone} "
                           "give hub, hub:<tag>, hf-hub:<org>/<repo>, a URL or a file")
    if weights and (weights == "hub" or weights.startswith(("hub:", "hf-hub:"))) and not hub_backbone:
        raise LtbenchError(f"{where('pretrained')}: hub weights are for timm: and open_clip: backbones "
                           f"(give imagenet, a URL or a .pth file for {config.backbone})")
    if (weights and weights not in ("imagenet", "hub") and not weights.startswith(("http://", "https://", "hub:", "hf-hub:"))):
        if not Path(weights).expanduser().is_file():
            raise LtbenchError(f"{where('pretrained')}: no such file (give imagenet, hub, hub:<tag>, hf-hub:<org>/<repo>, "
                               "a URL or a .pth file)")
        from ltbench.models.build import check_pretrained_file

        check_pretrained_file(config.backbone, weights, where("pretrained"))  # loads (weights_only) and fits, now
    if config.finetune in ("lora", "adaptformer", "vpt") and not config.backbone.startswith(("timm:", "open_clip:")):
        raise LtbenchError(f"{where('finetune')}: needs a transformer backbone (timm: or open_clip:), "
                           f"not {config.backbone}")
    if config.grad_checkpointing and not config.backbone.startswith(("timm:", "open_clip:")):
        raise LtbenchError(f"{where('grad_checkpointing')}: only timm: and open_clip: backbones support it, "
                           f"not {config.backbone}")
    if config.device != "auto":
        import torch

        device = torch.device(config.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise LtbenchError(f"{where('device')}: CUDA is not available on this machine")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise LtbenchError(f"{where('device')}: this machine has {torch.cuda.device_count()} CUDA device(s)")


SUMMARY_KEYS = ("backbone", "pretrained", "image_size", "epochs", "batch_size", "lr", "momentum",
                "weight_decay", "select_metric", "device")


def describe_train(config: Any, sources: Mapping[str, Layer], seed: bool = False) -> str:
    """One line: the effective training settings and which layer set what."""
    settings = train_settings()
    keys = [*SUMMARY_KEYS, *(k for k in settings if k not in SUMMARY_KEYS and k != "seed"
                             and getattr(config, k) != settings[k].default)]
    if seed:
        keys.append("seed")
    shown = " ".join(f"{k}={'none' if getattr(config, k) is None else getattr(config, k)}" for k in keys)
    by_source: dict[str, list[str]] = {}
    for key, layer in sources.items():
        by_source.setdefault(layer.source, []).append(key)
    origin = "; ".join(f"{source}: {', '.join(keys)}" for source, keys in by_source.items())
    return f"settings: {shown} ({origin or 'built-in defaults'}; the rest built-in defaults)"
