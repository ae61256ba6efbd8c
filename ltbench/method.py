"""The Method API: the hooks through which one trainer runs every long-tail method.

A method is an ``nn.Module`` so that everything it keeps besides the network (priors, margins,
proxies, class weights) lives in buffers and parameters and travels in its ``state_dict``.
The trainer calls the hooks in a fixed order (docs/architecture.md)::

    setup(info) -> build_model(backbone, info) -> stages(info)
    for each stage: its streams and views, its optimiser over the parts it trains
        for epoch in the stage's epochs:
            on_epoch_start(epoch)
            for each step: loss = training_step(model, *batches); backward; optimiser step
            validate with predict(model, x) -> on_epoch_end(epoch, val_metrics)
    restore the best-validation checkpoint (selectable stages only) -> calibrate(run) (default: nothing)
    test with predict(model, x)

Streams and views: each entry of ``samplers`` is a sampler name (its stream gets ``views``) or
``(sampler, (view, ...))`` with the stream's own views, e.g. Hybrid-SC's
``(("instance", ("contrastive", "contrastive")), ("class_balanced", ("standard",)))``; only the
declared views are computed. Stages (``ltbench.stages.Stage``): see :meth:`Method.stages`.

Epochs are 0-indexed in the API; a method whose paper counts from 1 converts in its own code.
Hyperparameters are the keyword arguments of ``__init__`` (scikit-learn's convention), stored
as attributes of the same name, so ``get_params()`` can be saved with every result.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.data.loader import Batch  # what a training stream yields: part of the Method API
from ltbench.data.samplers import SAMPLERS
from ltbench.losses import draw_mixup, mix_inputs, mixup_criterion, mixup_generator
from ltbench.models import Backbone, Classifier
from ltbench.recipes import Recipe
from ltbench.stages import Stage, StreamSpec

__all__ = ["Batch", "LossMethod", "Method", "RunAccess", "StepResult", "TrainInfo"]


@dataclass(frozen=True)
class TrainInfo:
    """What a method may know about the run before training starts."""

    class_counts: tuple[int, ...]  # training-split images per class
    class_names: tuple[str, ...]
    epochs: int
    steps_per_epoch: int
    device: torch.device
    lr: float = 0.002  # the shared optimiser's base learning rate (for methods with their own optimiser)
    seed: int = 0  # the run's seed, for a method's own generators (e.g. mixup's λ), apart from the streams'

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


StepResult = Tensor | tuple[Tensor, dict[str, Tensor]]


class Method(nn.Module):
    """Base class of every method. Override only the hooks you need."""

    name: ClassVar[str] = ""  # set by @register_method
    #: One augmentation preset per view (``ltbench.data.augment.PRESETS``), for every stream
    #: that does not name its own views.
    views: ClassVar[tuple[str, ...]] = ("standard",)
    #: Paper recipes as data (``ltbench.recipes.Recipe``), by name (``"paper"``); a benchmark row opts
    #: in with ``recipe: NAME``. Empty: the method has none beyond the shared protocol.
    recipes: ClassVar[dict[str, "Recipe"]] = {}
    #: True for a method built for retrieval (its classifier only shapes its codes): the report marks its
    #: accuracy row († and a line under the table) and points to retrieval.md (``rotation_hashing``).
    retrieval_method: ClassVar[bool] = False
    #: One entry per stream: "instance", "class_balanced" or "reversed", or a pair
    #: ``(sampler, (view, ...))`` giving that stream its own views. With several,
    #: ``training_step`` receives one Batch per stream, in this order.
    samplers: ClassVar[tuple[StreamSpec, ...]] = ("instance",)
    #: Backbone families the method needs (prefixes of the ``backbone`` setting, e.g. ``("open_clip",)`` for a
    #: method that uses CLIP's text tower); empty: any backbone. ``build_model`` raises ``LtbenchError`` on
    #: another, and the contract test runs the method on a tiny model of the first family instead of small-cnn.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    # --- hyperparameters -------------------------------------------------------------------
    def get_params(self) -> dict:
        """The ``__init__`` keyword arguments and their current values."""
        sig = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    # --- hooks -------------------------------------------------------------------------------
    def setup(self, info: TrainInfo) -> None:
        """Build state that depends on the data (class priors, margins, proxies...)."""

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        """The network trained by the shared optimiser. Default: backbone + linear head."""
        return Classifier(backbone, nn.Linear(backbone.out_dim, info.num_classes))

    def stages(self, info: TrainInfo) -> list[Stage]:
        """The run as consecutive stages sharing ``info.epochs`` (``ltbench.stages``).

        Default: one stage over the whole budget with the class attributes ``samplers`` and
        ``views``, training the whole model at the config's lr (the single-stage run). Override
        for multi-stage methods, e.g. representation then linear classifier::

            [Stage(epochs=e1, samplers=(("class_balanced", ("contrastive", "contrastive")),),
                   trains=("backbone", "head"), selectable=False),
             Stage(samplers=(("instance", ("standard",)),), trains=("classifier",), lr=0.1)]

        Called once, after ``setup`` and ``build_model``. The stage of an epoch follows from the
        epoch alone (``ltbench.stages.stage_bounds`` / ``stage_index``). A method with a ``view``
        keyword (ce, rotation_hashing) trains its one stream on that preset instead of ``views``.
        An empty list trains nothing (zero-shot): the model as built is validated once and tested.
        """
        view = getattr(self, "view", None)
        return [Stage(samplers=tuple(self.samplers), views=(view,) if view else tuple(self.views))]

    def on_train_start(self, run: "RunAccess") -> None:
        """Called once before the first epoch, after ``stages``, with the model still as built.

        ``run`` (:class:`RunAccess`) runs eval-mode passes over training rows and resets the
        shared optimiser; a method that selects training rows (:meth:`training_rows`) keeps it.
        On a resumed run it is called again before the saved state replaces the method's.
        """

    def training_rows(self) -> Tensor | None:
        """The training subset the next epoch draws from: a bool mask over the training split's
        rows (``Batch.indices`` order), or None for all of them (the default).

        Read before every epoch: when it changes, the stage's streams are rebuilt over the subset
        (their generators continue) and the epoch has ``steps_per_epoch(len(subset))`` steps. Keep
        the mask in a buffer so the best-checkpoint restore and a resume carry it. Set it in
        :meth:`on_train_start` (before the first epoch) and in :meth:`on_epoch_end` (after a
        validation).
        """
        return None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def training_step(self, model: nn.Module, *batches: Batch) -> StepResult:
        """Return the loss to minimise (and optionally a dict of scalar tensors to log)."""
        raise NotImplementedError

    def sample_losses(self, model: nn.Module, *batches: Batch) -> tuple[Tensor, Tensor]:
        """One step's per-sample losses ℓ [N] (float32) and each sample's class [N], with the step's loss
        ``ℓ.mean()``: what ``optimizer: imbsam`` (ltbench/trainer/sam.py) splits into head and tail
        classes, called instead of :meth:`training_step`. Implement it together with
        :meth:`has_sample_losses`; default: not available (ImbSAM refuses the method before training).
        """
        raise NotImplementedError(f"{type(self).__name__} gives no per-sample losses")

    def has_sample_losses(self) -> bool:
        """Whether :meth:`sample_losses` is available for these hyperparameters (default False)."""
        return False

    def on_epoch_end(self, epoch: int, val_metrics: dict) -> None:
        """Called after validation of ``epoch`` with the metrics of ``ltbench.metrics``."""

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Logits whose argmax is the prediction and whose softmax gives the probabilities."""
        return model(images)

    def calibrate(self, run: "RunAccess") -> dict | None:
        """A post-hoc step on the tested checkpoint: after the last stage, once the best-validation
        state is restored, before the test pass. Default: nothing (returns None; nothing else runs).

        ``run`` gives eval-mode passes over the training or validation rows (``run.infer(fn,
        split="val")``), never the test rows. Set buffers or parameters that ``predict`` reads
        (decoupling's τ-norm chooses τ on validation, NCM computes class means, LWS and DisAlign fit
        their few parameters) and return a record of plain JSON values with a finite ``loss`` (what
        the step minimised, or the validation cross-entropy of the setting it chose); a ``probe``
        entry (``ltbench.stages.Probe``'s record: ``converged``, ``iterations``, ...) is flagged by the
        report when not converged. The trainer then validates again (the run's validation metrics are
        the calibrated model's) and appends the record to the history (``stage: "calibration"``).
        """
        return None

    def probe_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-sample losses ([N], float64 in, float64 out) a probe stage (``ltbench.stages.Probe``)
        minimises; the stage's sampler becomes per-sample weights. Default: cross-entropy."""
        return F.cross_entropy(logits, labels, reduction="none")

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """Named N×d representations of ``images`` for retrieval (docs/retrieval.md).

        Called only by the retrieval pass after the test pass (``ltbench.retrieval.run_pass``), under
        ``inference_mode`` with model and method in eval mode; never changes ``predict``. Names:
        ``feature`` (the pooled penultimate feature, every method), ``embedding`` (a projection
        head's output), ``hash`` (continuous codes) and ``hash_binary`` (codes in {−1, 0, +1},
        ranked by Hamming distance; every other name by cosine). Default: ``{"feature":
        model.backbone(images)}`` when the model has a ``backbone``, else ``{}`` (no retrieval).
        """
        backbone = getattr(model, "backbone", None)
        return {} if backbone is None else {"feature": backbone(images)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())


class RunAccess:
    """What a method may do to the run it is in (given to :meth:`Method.on_train_start`).

    * :meth:`infer`: an eval-mode pass over training (or, ``split="val"``, validation) rows with the
      evaluation transform — never the test rows;
    * :meth:`reset_optimizer`: clear the shared optimiser's state (SGD momentum, Adam moments)
      after the current hook; the learning rate keeps following the run's schedule.
    """

    def __init__(self, trainer, method: Method, model: nn.Module, data, info: TrainInfo) -> None:
        self._trainer, self._method, self.model, self._data, self.info = trainer, method, model, data, info
        self.train_labels = torch.as_tensor(data.labels[data.train])  # labels in training-split order
        self.val_labels = torch.as_tensor(data.labels[data.val])  # labels in validation-split order
        self._reset = False

    def infer(self, fn, positions=None, batch_size: int | None = None, split: str = "train") -> Tensor:
        """``fn(model, images)`` over training rows (``split="val"``: validation rows), on the CPU.

        ``positions``: positions in that split (default: all, in order). Model and method are in
        eval mode under ``inference_mode``; ``fn`` may switch modules to train mode itself
        (Monte-Carlo dropout) — the next epoch puts every module back. The test rows are not offered.
        """
        if split not in ("train", "val"):
            raise ValueError(f"RunAccess.infer: split must be 'train' or 'val', got {split!r}")
        split_rows = self._data.train if split == "train" else self._data.val
        rows = split_rows if positions is None else split_rows[np.asarray(positions, dtype=np.int64)]
        return self._trainer.infer(self._method, self.model, self._data, rows, fn, batch_size)

    def reset_optimizer(self) -> None:
        self._reset = True

    def take_reset(self) -> bool:
        """Whether a reset was asked for since the last call (the trainer's side)."""
        asked, self._reset = self._reset, False
        return asked


class LossMethod(Method):
    """A method that is a loss on the logits of one view: override :meth:`loss`.

    Two tricks of FlexSampling's repository (issue 15) for every loss, each a keyword a subclass
    declares in its own ``__init__`` (so ``get_params`` sees it) and passes on here:

    * ``sampler``: the one training stream's sampler (``ltbench.data.samplers.SAMPLERS``: ``instance``,
      ``class_balanced``, ``reversed``, ``class_aware``); ``"instance"`` runs :meth:`Method.stages`
      unchanged.
    * ``mixup_alpha``: mixup of the first view with λ ~ Beta(α, α) once per batch
      (``ltbench.losses``), loss ``λ·loss(z, y) + (1 − λ)·loss(z, y[perm])``. Its generator is
      seeded from ``TrainInfo.seed`` in :meth:`setup` (a subclass overriding ``setup`` calls
      ``super().setup(info)``) and kept in the buffer ``mixup_generator_state``. α = 0 registers
      and draws nothing: the step is the plain loss, bit for bit.
    """

    def __init__(self, sampler: str = "instance", mixup_alpha: float = 0.0) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if not (isinstance(mixup_alpha, (int, float)) and 0.0 <= mixup_alpha < float("inf")):
            raise ValueError(f"mixup_alpha must be a number >= 0, got {mixup_alpha!r}")
        self.sampler = sampler
        self.mixup_alpha = mixup_alpha

    def setup(self, info: TrainInfo) -> None:
        if getattr(self, "mixup_alpha", 0.0) > 0:
            self.register_buffer("mixup_generator_state", mixup_generator(info.seed).get_state())

    def stages(self, info: TrainInfo) -> list[Stage]:
        (stage,) = super().stages(info)
        sampler = getattr(self, "sampler", "instance")
        return [stage if sampler == "instance" else dataclasses.replace(stage, samplers=(sampler,))]

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if not getattr(self, "mixup_alpha", 0.0) > 0:
            logits = model(batch.views[0])
            return self.loss(logits.float(), batch.labels)
        state = getattr(self, "mixup_generator_state", None)
        if state is None:
            raise RuntimeError(f"{type(self).__name__}: mixup_alpha > 0 but LossMethod.setup was not called "
                               "(an overriding setup must call super().setup(info))")
        # The buffer is the generator's only state (checkpoints and resumes carry it).
        generator = torch.Generator().set_state(state.cpu())
        lam, perm = draw_mixup(self.mixup_alpha, batch.labels.shape[0], generator)
        state.copy_(generator.get_state())
        logits = model(mix_inputs(batch.views[0], lam, perm)).float()
        return mixup_criterion(self.loss, logits, batch.labels, batch.labels[perm.to(batch.labels.device)], lam)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """:meth:`loss` per sample ([N], its mean the loss), for ImbSAM; a subclass that overrides it has
        :meth:`sample_losses`."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-sample losses")

    def has_sample_losses(self) -> bool:
        # Only when the class that defines `loss` defines `sample_loss` too (a subclass that changes the loss
        # alone would inherit per-sample losses of another loss); mixed pairs have two classes each, so
        # ImbSAM's head/tail split is undefined under mixup.
        owner = lambda name: next(c for c in type(self).__mro__ if name in vars(c))  # noqa: E731
        return (owner("sample_loss") is owner("loss") is not LossMethod
                and not getattr(self, "mixup_alpha", 0.0) > 0)

    def sample_losses(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.sample_loss(model(batch.views[0]).float(), batch.labels), batch.labels
