"""The one training loop shared by every method (it never names one).

Loop order (docs/architecture.md): setup -> build_model -> stages; per stage: its optimiser over
the parts it trains (the rest frozen), its streams and views; per epoch: on_epoch_start, batches
(training_step, backward, SGD step), validate, on_epoch_end, keep the best-validation state
(selectable stages only), and, given a ``CheckpointStore``, save a checkpoint (ltbench/store/checkpoint.py);
finally test once with that state. A run given a store with a checkpoint resumes after its epoch: setup,
model and stages are rebuilt as in the first attempt, then the saved state replaces theirs (the
stage's fresh optimiser and streams included), so the CPU result is bit-identical.
Protocol of the ECL paper (Table 1): SGD with momentum, weight decay, per-epoch cosine learning
rate, best-validation-Acc checkpoint.
"""
from __future__ import annotations

import copy
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ltbench.config import TrainConfig
from ltbench.data.augment import get_augmentation, renormalised
from ltbench.data.geometry import ANY_GEOMETRY, ViewGeometry
from ltbench.data.loader import TrainStream, eval_batches
from ltbench.data.samplers import steps_per_epoch
from ltbench.errors import LtbenchError
from ltbench.method import Method, RunAccess, TrainInfo
from ltbench.metrics import HEADLINE, compute_metrics
from ltbench.models import build_backbone
from ltbench.models.finetune import (FinetuneSpec, freeze_norm_statistics, optimizer_params, parameter_counts,
                                     prepare_backbone)
from ltbench.schedules import stage_lr
from ltbench.stages import Stage, stage_bounds, stream_specs
from ltbench.store.checkpoint import CheckpointStore, hook, plain, rng_state, set_rng_state, unplain
from ltbench.trainer.probe import fit_linear_probe, linear_inputs
from ltbench.trainer.sam import SharpnessAware, sharpness_aware
from ltbench.trainer.selection import Candidates, selection_score


@dataclass
class DataBundle:
    """Pixels of every image (uint8 N×H×W×3), labels, class names and the split's rows."""

    pixels: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    # Each image's original (height, width), int [N, 2]: random resized crops are drawn on it.
    # None: the pixels are the images' own size (in-memory datasets).
    original_sizes: np.ndarray | None = None
    # The flips and rotations its labels survive (a property of the dataset, ltbench.data.geometry):
    # training views drop the others. The default allows everything (the presets unchanged).
    geometry: ViewGeometry = ANY_GEOMETRY

    def counts(self, rows: np.ndarray) -> list[int]:
        return np.bincount(self.labels[rows], minlength=len(self.class_names)).tolist()


@dataclass
class RunOutput:
    history: list[dict]
    best_epoch: int
    val: dict
    test: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # labels and probabilities
    wall_time_s: float = 0.0
    params: dict[str, int] = field(default_factory=dict)  # trainable and total parameter counts (issue 23)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LtbenchError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LtbenchError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _same_rows(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _state_copy(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v)
            for k, v in module.state_dict().items()}


@dataclass
class _Run:
    """The state of one ``Trainer.fit``, shared by the steps it is made of."""

    method: Method
    model: torch.nn.Module
    step_model: torch.nn.Module  # the compiled model when compile=True: training steps use it
    data: DataBundle
    info: TrainInfo
    stages: list[Stage]
    bounds: list[tuple[int, int]]  # stage k covers epochs [start, end)
    access: RunAccess
    requires_grad: list[bool]  # every parameter's flag before the run, restored after it
    checkpoint: CheckpointStore | None
    start_time: float
    train_labels: np.ndarray
    candidates: Candidates  # every rule's choice and its test pass, for the report only
    test_probs: Callable[[], np.ndarray]
    augmentations: dict[str, torch.nn.Module] = field(default_factory=dict)  # one module per preset, shared
    history: list[dict] = field(default_factory=list)
    best: tuple = (-math.inf, -1, None, None, None)  # score, epoch, model state, method state, val output
    resume: dict | None = None  # a checkpoint's state, until the stage it was saved in takes it
    first_epoch: int = 0
    elapsed: float = 0.0  # wall time of the attempts before a resume


class Trainer:
    def __init__(self, config: TrainConfig, progress: bool = True, desc: str = "") -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.progress = progress
        self.desc = desc
        cuda = self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and config.amp else nullcontext
        self.channels_last = cuda and config.channels_last
        self.finetune = FinetuneSpec.of(config)
        self.input_config = None  # the backbone's InputConfig when its mean/std normalise (set by fit)

    # ----------------------------------------------------------------------------------------
    def fit(self, method: Method, data: DataBundle, checkpoint: CheckpointStore | None = None) -> RunOutput:
        """Train and test ``method``; with ``checkpoint``, resume from its last epoch and save every epoch.

        Reads as the loop of docs/architecture.md. ``self.epoch`` is the epoch being trained (None
        before the first), for failure records.
        """
        self.epoch: int | None = None
        run = self._start(method, data, checkpoint)  # seed, setup, build_model, stages, on_train_start
        self._resume(run)  # a checkpoint's state replaces what the epochs so far produced
        bar = self._progress_bar(run)
        if not run.stages:  # a method that trains nothing (zero-shot): the model as built is the checkpoint
            self._untrained(run)
        for k, (stage, (start, end)) in enumerate(zip(run.stages, run.bounds)):
            if stage.probe is not None:  # the last stage: a closed-form fit, no epochs
                self._probe_stage(run, k, stage, end)
            elif end > max(start, run.first_epoch):  # a stage of length 0, or finished before a resume: skipped
                self._train_stage(run, k, stage, start, end, bar)
        bar.close()
        return self._test(run)

    def _start(self, method: Method, data: DataBundle, checkpoint: CheckpointStore | None) -> _Run:
        """Everything before the first epoch, in the loop's order; a resumed run repeats it exactly."""
        cfg, device = self.config, self.device
        run_start = time.perf_counter()
        seed_everything(cfg.seed)
        info = TrainInfo(
            class_counts=tuple(data.counts(data.train)), class_names=tuple(data.class_names),
            epochs=cfg.epochs, steps_per_epoch=steps_per_epoch(len(data.train), cfg.batch_size), device=device,
            lr=cfg.lr, seed=cfg.seed,
        )
        if min(info.class_counts) == 0:
            raise LtbenchError("the training split has an empty class")
        method.setup(info)
        # The fine-tuning mode acts on the backbone before build_model: copies a method makes of its
        # parts (BBN's second branch) carry the inserted modules and frozen flags; heads stay trainable.
        backbone = prepare_backbone(build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size), self.finetune)
        self.input_config = backbone.input_config if cfg.normalise == "model" else None
        model = method.build_model(backbone, info).to(device)
        method.to(device)  # after build_model, so state a method creates there moves too
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if cfg.compile else model
        stages = method.stages(info)
        bounds = stage_bounds(stages, cfg.epochs) if stages else [(0, 0)]  # no stages: the run ends at epoch 0
        if stages and not any(stage.selectable and (end > start or stage.probe is not None)
                   for stage, (start, end) in zip(stages, bounds)):
            raise LtbenchError(f"method {method.name!r}: no stage with epochs is selectable as the "
                               "best-validation checkpoint")
        requires_grad = [p.requires_grad for p in model.parameters()]  # restored after the run
        self.param_counts = parameter_counts(model)  # under the fine-tuning mode, before stages narrow it
        access = RunAccess(self, method, model, data, info)
        method.on_train_start(access)  # before a resume's state is loaded: a first attempt's draws
        access.take_reset()  # no optimiser exists yet: a reset asked for here has nothing to clear
        return _Run(method=method, model=model, step_model=step_model, data=data, info=info, stages=stages,
                    bounds=bounds, access=access, requires_grad=requires_grad, checkpoint=checkpoint,
                    start_time=run_start, train_labels=data.labels[data.train],
                    candidates=Candidates(cfg.select_metric),
                    test_probs=lambda: self.evaluate(method, model, data, data.test)["probs"])

    @staticmethod
    def _resume(run: _Run) -> None:
        """Resumption (ltbench/store/checkpoint.py): everything before the first epoch ran as in the first
        attempt (same RNG draws); now the saved state replaces what the epochs so far produced. The stage
        being trained takes its optimiser, streams and RNG states when it starts (:meth:`_train_stage`)."""
        resume = run.checkpoint.load() if run.checkpoint is not None else None
        if resume is not None:
            run.model.load_state_dict(resume["model"])
            run.method.load_state_dict(resume["method"])
            run.history = unplain(resume["history"])
            run.best = tuple(unplain(resume["best"]))
            run.candidates.load(unplain(resume.get("candidates")))
            run.first_epoch, run.elapsed = resume["epoch"] + 1, resume["wall_time_s"]
        run.resume = resume

    def _progress_bar(self, run: _Run) -> tqdm:
        steps = run.info.steps_per_epoch
        total = run.bounds[-1][1]  # the budget E plus the epochs of stages beyond it
        return tqdm(total=total * steps, initial=run.first_epoch * steps, desc=self.desc or run.method.name,
                    unit="step", disable=None if self.progress else True, leave=False,
                    dynamic_ncols=True)  # None: bar only on a terminal

    def _untrained(self, run: _Run) -> None:
        """A method without stages: validate the model as built once; that is the tested checkpoint."""
        self.epoch = 0
        val = self.evaluate(run.method, run.model, run.data, run.data.val, train_counts=self._val_counts(run.info))
        run.history.append({"epoch": 0, "lr": 0.0, "train_time_s": 0.0, "stage": "untrained",
                            "val": {key: val["metrics"][key] for key in HEADLINE}})
        self._select(run, 0, val, Stage(name="untrained"))

    def _probe_stage(self, run: _Run, k: int, stage: Stage, end: int) -> None:
        """The probe stage (the last): fit its Linear layer to convergence, validate, offer it for selection."""
        self.epoch = end
        trained = self._trained_modules(run.model, stage, k)
        val, record = self._fit_probe(run.method, run.model, run.data, stage, trained[0], run.info)
        run.history.append(record)
        self._select(run, end, val, stage)

    def _train_stage(self, run: _Run, k: int, stage: Stage, start: int, end: int, bar: tqdm) -> None:
        """Stage ``k``'s epochs ``start`` .. ``end - 1``: its optimiser over the parts it trains, its streams."""
        cfg = self.config
        inside = start < run.first_epoch  # resuming in the middle of this stage
        if run.resume is not None and not inside:  # resuming at the start of this stage
            set_rng_state(run.resume["rng"])
            run.resume = None
        trained = self._trained_modules(run.model, stage, k)
        params = self._trainable_parameters(run.model, trained, run.requires_grad)
        base_lr = cfg.lr if stage.lr is None else stage.lr
        optimizer = self._optimizer(optimizer_params(run.model, params), stage, base_lr)
        sharpness = sharpness_aware(cfg, stage, optimizer, run.model, run.method, run.info.class_counts)
        active = self._active_positions(run.method, len(run.data.train))
        streams = self._streams(run.method, stage, k, run.data, run.train_labels, run.augmentations, active)
        if run.resume is not None and inside:  # the stage's fresh optimiser and streams take their saved state
            optimizer.load_state_dict(run.resume["optimizer"])
            for stream, state in zip(streams, run.resume["streams"]):
                stream.generator.set_state(state)
            set_rng_state(run.resume["rng"])  # last: building the stage may draw from the global RNGs
            run.resume = None
        for epoch in range(max(start, run.first_epoch), end):
            self.epoch = epoch
            streams, active = self._follow_training_rows(run, stage, k, streams, active)
            lr = self._set_lr(optimizer, stage, base_lr, epoch - start, end - start)
            self._train_mode(run, trained, self.finetune)
            run.method.on_epoch_start(epoch)
            train_loss, logs, steps, train_time = self._train_epoch(run, k, stage, streams, optimizer, bar, epoch,
                                                                    sharpness)
            val = self.evaluate(run.method, run.model, run.data, run.data.val, train_counts=self._val_counts(run.info))
            run.method.on_epoch_end(epoch, val["metrics"])
            if run.access.take_reset():  # asked for by the hook: momentum / Adam moments cleared
                optimizer.state.clear()
            record = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_time_s": round(train_time, 4),
                      **logs, "val": {key: val["metrics"][key] for key in HEADLINE}}
            if steps != run.info.steps_per_epoch:  # a training subset: histories of full epochs keep their shape
                record["steps"] = steps
            if len(run.stages) > 1:  # single-stage histories keep their exact former shape
                record["stage"] = stage.name or k
            run.history.append(record)
            score = self._select(run, epoch, val, stage)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{score:.1f}", best=f"{run.best[0]:.1f}@{run.best[1]}")
            if run.checkpoint is not None:  # after the epoch's last state change: the unit of resumption
                self._save_checkpoint(run, epoch, k, optimizer, streams)
            hook("epoch")

    def _follow_training_rows(self, run: _Run, stage: Stage, k: int, streams: list[TrainStream],
                              active: np.ndarray | None) -> tuple[list[TrainStream], np.ndarray | None]:
        """The streams over the method's training subset: rebuilt (same generators) when it changed."""
        now_active = self._active_positions(run.method, len(run.data.train))
        if _same_rows(now_active, active):
            return streams, active
        for stream in streams:
            stream.close()
        return self._streams(run.method, stage, k, run.data, run.train_labels, run.augmentations, now_active,
                             generators=[s.generator for s in streams]), now_active

    def _set_lr(self, optimizer: torch.optim.Optimizer, stage: Stage, base_lr: float, epoch: int,
                length: int) -> float:
        """The stage's schedule at its ``epoch`` (0-indexed within the stage), set on every param group."""
        cfg = self.config
        lr = stage_lr(base_lr, epoch, length, stage.lr_schedule or cfg.lr_schedule,
                      cfg.lr_milestones if stage.lr_milestones is None else stage.lr_milestones,
                      cfg.lr_gamma if stage.lr_gamma is None else stage.lr_gamma,
                      cfg.warmup_epochs if stage.warmup_epochs is None else stage.warmup_epochs,
                      cfg.warmup_start_factor)
        for group in optimizer.param_groups:  # lr_scale: layer-wise lr decay (ltbench.models.finetune)
            group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        return lr

    @staticmethod
    def _train_mode(run: _Run, trained: list[torch.nn.Module] | None, finetune: FinetuneSpec) -> None:
        run.model.train()
        if trained is not None:  # frozen parts in eval mode: BatchNorm statistics stay put
            run.model.eval()
            for module in trained:
                module.train()
        freeze_norm_statistics(run.model, finetune)  # a fine-tuning mode's frozen BatchNorms too
        run.method.train()

    def _train_epoch(self, run: _Run, k: int, stage: Stage, streams: list[TrainStream],
                     optimizer: torch.optim.Optimizer, bar: tqdm, epoch: int,
                     sharpness: SharpnessAware | None = None) -> tuple[float, dict, int, float]:
        """One epoch's steps: (mean training loss, mean of each logged value, steps, seconds)."""
        method = run.method
        loss_sum = torch.zeros((), device=self.device)
        log_sums: dict[str, torch.Tensor] = {}
        epoch_start = time.perf_counter()
        steps = min(len(stream) for stream in streams)  # zip stops at the shortest stream
        for batches in zip(*streams):
            if sharpness is not None:  # the method's step twice, the second at the perturbed weights
                loss, logs = sharpness.step(lambda per_sample: self._step_loss(run, k, stage, batches, bar, per_sample))
            else:
                loss, logs = self._step_loss(run, k, stage, batches, bar)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            # Accumulate on the device: no .item() sync per step.
            loss_sum += loss.detach().float()
            for key, value in logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + value.detach().float()
            bar.update()
            hook("step")
        train_loss = loss_sum.item() / steps
        if not math.isfinite(train_loss):
            bar.close()
            raise LtbenchError(f"method {method.name!r}: the training loss became {train_loss} in epoch {epoch}")
        train_time = time.perf_counter() - epoch_start
        return train_loss, {key: (value / steps).item() for key, value in log_sums.items()}, steps, train_time

    def _step_loss(self, run: _Run, k: int, stage: Stage, batches: tuple, bar: tqdm,
                   per_sample: bool = False) -> tuple:
        """The method's loss on one step's batches and its logs; ``per_sample``: ``((losses, labels), {})``
        from ``Method.sample_losses`` (ImbSAM's head/tail split)."""
        method = run.method
        with self.autocast():
            out = (method.sample_losses(run.step_model, *batches) if per_sample
                   else method.training_step(run.step_model, *batches))
        loss, logs = (out, {}) if per_sample else out if isinstance(out, tuple) else (out, {})
        if not (loss[0] if per_sample else loss).requires_grad:
            bar.close()
            raise LtbenchError(f"method {method.name!r}: the loss of stage {k} ({stage.name or 'unnamed'}) "
                               f"depends on no parameter it trains ({stage.trains or 'the whole model'})")
        return loss, logs

    def _select(self, run: _Run, epoch: int, val: dict, stage: Stage) -> float:
        """The checkpoint rule (strictly better; ties keep the earlier epoch) and every rule's candidate.

        The best state is copied after ``on_epoch_end``; the candidates' test passes are for the report only.
        """
        score = selection_score(val["metrics"], self.config.select_metric, epoch)
        if stage.selectable and (score > run.best[0] or run.best[2] is None):
            run.best = (score, epoch, _state_copy(run.model), _state_copy(run.method), val)
        run.candidates.offer(epoch, val["metrics"], stage.selectable, run.test_probs)
        return score

    @staticmethod
    def _save_checkpoint(run: _Run, epoch: int, k: int, optimizer: torch.optim.Optimizer,
                         streams: list[TrainStream]) -> None:
        run.checkpoint.save({
            "epoch": epoch, "stage": k, "model": _state_copy(run.model), "method": _state_copy(run.method),
            "optimizer": optimizer.state_dict(), "streams": [s.generator.get_state() for s in streams],
            "rng": rng_state(), "history": plain(run.history), "best": plain(list(run.best)),
            "candidates": plain(run.candidates.state()),
            "wall_time_s": run.elapsed + time.perf_counter() - run.start_time})

    def _test(self, run: _Run) -> RunOutput:
        """Restore the best checkpoint and test once."""
        run.candidates.finish(run.test_probs)  # the model is still the last epoch's
        for param, flag in zip(run.model.parameters(), run.requires_grad):
            param.requires_grad_(flag)
        _, best_epoch, model_state, method_state, best_val = run.best
        run.model.load_state_dict(model_state)
        run.method.load_state_dict(method_state)
        best_val = self._calibrate(run, best_val)
        self.model = run.model  # the tested model, for passes after the test (retrieval)
        test = self.evaluate(run.method, run.model, run.data, run.data.test, train_counts=run.info.class_counts)
        arrays = {"val_labels": best_val["labels"], "val_probs": best_val["probs"],
                  "test_labels": test["labels"], "test_probs": test["probs"], **run.candidates.arrays()}
        return RunOutput(history=run.history, best_epoch=best_epoch, val=best_val["metrics"], test=test["metrics"],
                         arrays=arrays, wall_time_s=run.elapsed + time.perf_counter() - run.start_time,
                         params=self.param_counts)

    def _calibrate(self, run: _Run, best_val: dict) -> dict:
        """``Method.calibrate`` on the restored checkpoint; when it returns a record, validate again and
        append the record to the history (the run's validation output is then the calibrated one)."""
        self.epoch = run.bounds[-1][1]
        start = time.perf_counter()
        record = run.method.calibrate(run.access)
        if record is None:
            return best_val
        loss = record.get("loss") if isinstance(record, dict) else None
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise LtbenchError(f"method {run.method.name!r}: calibrate must return a dict with a finite 'loss', "
                               f"got {record!r}")
        train_time = time.perf_counter() - start
        val = self.evaluate(run.method, run.model, run.data, run.data.val, train_counts=self._val_counts(run.info))
        entry = {"epoch": self.epoch, "lr": 0.0, "train_loss": float(loss), "train_time_s": round(train_time, 4),
                 "val": {key: val["metrics"][key] for key in HEADLINE}, "stage": "calibration",
                 "calibration": {k: v for k, v in record.items() if k not in ("loss", "probe")}}
        if "probe" in record:
            entry["probe"] = record["probe"]
        run.history.append(entry)
        return val

    # ----------------------------------------------------------------------------------------
    def _fit_probe(self, method: Method, model: torch.nn.Module, data: DataBundle, stage: Stage,
                   layer: torch.nn.Module, info: TrainInfo) -> tuple[dict, dict]:
        """Fit ``layer`` (an ``nn.Linear``) to convergence on the eval view's frozen inputs (``ltbench.stages.Probe``).

        Returns the validation output and the history record (``probe``: loss, iterations, gradient
        norm, tolerance, converged). Nothing random is drawn: a resumed run fits the same layer.
        """
        if not isinstance(layer, torch.nn.Linear):
            raise LtbenchError(f"method {method.name!r}: probe stage {stage.name or 'unnamed'} trains "
                               f"{stage.trains[0]!r}, a {type(layer).__name__}, not an nn.Linear")
        start = time.perf_counter()
        features = self.infer(method, model, data, data.train, linear_inputs(method, layer))
        labels = torch.as_tensor(data.labels[data.train], dtype=torch.long)
        fit = fit_linear_probe(features, labels, info.num_classes, method.probe_loss, stage.probe, self.device)
        with torch.no_grad():
            layer.weight.copy_(fit.weight.to(layer.weight))
            layer.bias.copy_(fit.bias.to(layer.bias))
        train_time = time.perf_counter() - start
        val = self.evaluate(method, model, data, data.val, train_counts=self._val_counts(info))
        record = {"epoch": self.epoch, "lr": 0.0, "train_loss": fit.loss, "train_time_s": round(train_time, 4),
                  "val": {k: val["metrics"][k] for k in HEADLINE}, "stage": stage.name or "probe",
                  "probe": fit.record()}
        return val, record

    def _optimizer(self, params: list[torch.nn.Parameter], stage: Stage, lr: float) -> torch.optim.Optimizer:
        """The stage's fresh optimiser: the config's (or the stage's own) SGD or Adam (SGD under SAM / ImbSAM)."""
        cfg = self.config
        weight_decay = cfg.weight_decay if stage.weight_decay is None else stage.weight_decay
        kind = stage.optimizer or cfg.optimizer
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=weight_decay)

    def _val_counts(self, info: TrainInfo) -> tuple[int, ...] | None:
        """Training counts for validation metrics when selection needs the groups (``group_acc``)."""
        return info.class_counts if self.config.select_metric == "group_acc" else None

    @staticmethod
    def _active_positions(method: Method, num_train: int) -> np.ndarray | None:
        """Positions in the training split the method's next epoch draws from (None: all of them)."""
        mask = method.training_rows()
        if mask is None:
            return None
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.dtype != torch.bool or mask.shape != (num_train,):
            raise LtbenchError(f"method {method.name!r}: training_rows() must be a bool mask of the {num_train} "
                               f"training rows, got {tuple(mask.shape)} {mask.dtype}")
        if not bool(mask.any()):
            raise LtbenchError(f"method {method.name!r}: training_rows() selects no training row")
        return np.flatnonzero(mask.numpy())

    @staticmethod
    def _trained_modules(model: torch.nn.Module, stage: Stage, k: int) -> list[torch.nn.Module] | None:
        """The modules a stage trains (None: the whole model, as a single-stage run)."""
        if stage.trains is None:
            return None
        modules = []
        for path in stage.trains:
            try:
                modules.append(model.get_submodule(path))
            except AttributeError:
                names = ", ".join(name for name, _ in model.named_children())
                raise LtbenchError(f"stage {k} ({stage.name or 'unnamed'}) trains {path!r}, which the model does "
                                   f"not have (its parts: {names})") from None
        return modules

    @staticmethod
    def _trainable_parameters(model: torch.nn.Module, trained: list[torch.nn.Module] | None,
                              requires_grad: list[bool]) -> list[torch.nn.Parameter]:
        """The stage optimiser's parameters; every other one is frozen (``requires_grad=False``).

        Parameters keep the model's own ``requires_grad`` otherwise (``requires_grad`` lists the
        values at the start of the run, in ``model.parameters()`` order).
        """
        if trained is None:
            for param, flag in zip(model.parameters(), requires_grad):
                param.requires_grad_(flag)
            return list(model.parameters())
        ids = {id(p) for module in trained for p in module.parameters()}
        params = []
        for param, flag in zip(model.parameters(), requires_grad):
            param.requires_grad_(flag and id(param) in ids)
            if id(param) in ids:
                params.append(param)
        return params

    def _streams(self, method: Method, stage: Stage, k: int, data: DataBundle, train_labels: np.ndarray,
                 augmentations: dict, active: np.ndarray | None = None,
                 generators: list[torch.Generator] | None = None) -> list[TrainStream]:
        """One stream per sampler entry of the stage, each with only its own views.

        Generators: stream j of stage k is seeded ``seed*1000 + 100*k + j`` (stage 0: ``seed*1000 + j``);
        a stream rebuilt for a new training subset (``active``: positions in the training split)
        keeps drawing from its generator (``generators``).
        """
        cfg = self.config
        samplers = method.samplers if stage.samplers is None else stage.samplers
        views = method.views if stage.views is None else stage.views
        streams = []
        for j, (sampler, stream_views) in enumerate(stream_specs(samplers, views)):
            for view in stream_views:
                if view not in augmentations:
                    augmentations[view] = self._normalised(get_augmentation(view, cfg.image_size, data.geometry))
            generator = (torch.Generator().manual_seed(cfg.seed * 1000 + 100 * k + j) if generators is None
                         else generators[j])
            rows, labels = (data.train, train_labels) if active is None else (data.train[active], train_labels[active])
            streams.append(TrainStream(data.pixels, rows, labels, sampler, cfg.batch_size,
                                       [augmentations[v] for v in stream_views], self.device, generator,
                                       self.channels_last, sizes=data.original_sizes, positions=active))
        return streams

    # ----------------------------------------------------------------------------------------
    def eval_transform(self) -> torch.nn.Module:
        """The deterministic preset every evaluation pass uses (``TrainConfig.eval_view``)."""
        return self._normalised(get_augmentation(self.config.eval_view, self.config.image_size))

    def _normalised(self, augment: torch.nn.Module) -> torch.nn.Module:
        """A preset with the backbone's own mean/std where it uses ImageNet's (``normalise: model``)."""
        cfg = self.input_config
        return augment if cfg is None else renormalised(augment, cfg.mean, cfg.std)

    @torch.inference_mode()
    def infer(self, method: Method, model: torch.nn.Module, data: DataBundle, rows: np.ndarray, fn,
              batch_size: int | None = None) -> torch.Tensor:
        """``fn(model, x)`` over ``rows`` with the evaluation transform, in eval mode (RunAccess.infer)."""
        model.eval()
        method.eval()
        resize = self.eval_transform()
        outputs = []
        for images in eval_batches(data.pixels, rows, batch_size or self.config.eval_batch_size, self.device):
            x = resize(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                outputs.append(fn(model, x).float().cpu())
        return torch.cat(outputs)

    @torch.inference_mode()
    def evaluate(self, method: Method, model: torch.nn.Module, data: DataBundle, rows: np.ndarray,
                 train_counts: Sequence[int] | None = None) -> dict:
        """Probabilities of ``rows`` in large batches, and their metrics."""
        model.eval()
        method.eval()
        resize = self.eval_transform()
        probs = []
        for images in eval_batches(data.pixels, rows, self.config.eval_batch_size, self.device):
            x = resize(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = method.predict(model, x)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        probs = torch.cat(probs).numpy()
        labels = data.labels[rows]
        metrics = compute_metrics(labels, probs, data.class_names, train_counts, self.config.group_sizes)
        return {"metrics": metrics, "labels": labels, "probs": probs.astype(np.float32)}
