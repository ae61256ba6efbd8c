"""Sharpness-aware minimisation as the optimiser of any method: ``optimizer: sam`` and ``optimizer: imbsam``.

**SAM** (Foret et al., ICLR 2021) as davda54/sam computes it (``sam.py``: ``first_step`` / ``second_step``;
``adaptive`` is ASAM, Kwon et al., ICML 2021), over the stage's SGD (the config's momentum and weight
decay) as base optimiser::

    g = ∇L(w);  e_p = ρ · T_p² g_p / (‖(T_p g_p)_p‖₂ + 1e-12),  T_p = |p| if adaptive else 1
    g' = ∇L(w + e);  w restored exactly (the code's ``old_p``);  SGD step with g'

**ImbSAM** (Zhou et al., ICCV 2023) as cool-xuan/Imbalanced_SAM computes it (``imbsam.py`` class
``ImbSAM``, ``utils/trainval.py`` ``forbackward``): classes with fewer than ``imbsam_threshold``
training images (the script's ``--eta 20``) are the tail; with per-sample losses ℓ_i of a batch of B,
``L_h = Σ_{i head} ℓ_i / B`` and ``L_t = Σ_{i tail} ℓ_i / B``::

    g_h = ∇L_h(w);  g_t = ∇L_t(w);  e = ρ g_t / (‖g_t‖₂ + 1e-16);  SGD step with g_h + ∇L_t(w + e)

(``sam_adaptive`` gives ImbSAM ASAM's perturbation too; the official ImbSAM has none.) Both restore w exactly
(davda54/sam's ``old_p``; Imbalanced_SAM subtracts e, one float rounding apart). Checked once against both
codes on a small MLP with BatchNorm (5 steps, float32): bit-identical weights and BatchNorm statistics with
davda54/sam; with Imbalanced_SAM bit-identical weights once its restore is exact (within 1.2e-7 as it is).
ImbSAM's per-sample losses come from ``Method.sample_losses``; a method without them cannot run it.

**The second pass.** The trainer calls the method's ``training_step`` (ImbSAM: ``sample_losses``) again
on the same batches at the perturbed weights (the closure of SAM's ``step``). Everything a step may
change — the method's buffers and parameters (EMA targets, queues, the mixup generator), the model's
buffers (BatchNorm running statistics) and the model parameters the optimiser does not hold
(momentum encoders), the global python/numpy/torch RNGs (dropout) — is put back to its value before
the first pass, so the second pass draws the same randomness and sees the same state, and after it
to its value after the first pass: each such update happens once per step, the first pass's.
BatchNorm running statistics therefore move once per step, as davda54/sam's ``disable_running_stats``
makes them (BN momentum 0 in the second pass; here ``num_batches_tracked`` does not count it either).
ImbSAM's code updates them in both passes: ltbench follows SAM's rule for both. The second pass's
gradient is taken for the optimiser's parameters only (``torch.autograd.grad``), so a method's own
parameters (ECL's proxies) receive the first pass's gradient alone. What a method must not do:
keep per-step state outside its buffers and parameters (a plain attribute or ``get_extra_state``
changed in ``training_step`` changes twice) — the rule checkpoints already impose.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.store.checkpoint import rng_state, set_rng_state

KINDS = ("sam", "imbsam")
_EPS = {"sam": 1e-12, "imbsam": 1e-16}  # the denominators' guards of davda54/sam and Imbalanced_SAM


def perturbation(params: list[Tensor], grads: list[Tensor | None], rho: float, adaptive: bool,
                 eps: float = 1e-12) -> list[Tensor | None]:
    """SAM's ascent step e(w) per parameter (None where the gradient is None), as ``first_step``."""
    present = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not present:
        return [None] * len(params)
    norm = torch.norm(torch.stack([((torch.abs(p) if adaptive else 1.0) * g).norm(p=2) for p, g in present]), p=2)
    scale = rho / (norm + eps)
    return [None if g is None else (torch.pow(p, 2) if adaptive else 1.0) * g * scale.to(p)
            for p, g in zip(params, grads)]


class SharpnessAware:
    """One stage's SAM / ImbSAM step around its base optimiser (module docstring)."""

    def __init__(self, kind: str, optimizer: torch.optim.Optimizer, model: nn.Module, method: nn.Module,
                 rho: float, adaptive: bool, tail: Tensor | None = None) -> None:
        if kind not in KINDS:
            raise LtbenchError(f"optimizer {kind!r}: not a sharpness-aware optimiser ({', '.join(KINDS)})")
        self.kind, self.optimizer, self.model, self.method = kind, optimizer, model, method
        self.rho, self.adaptive, self.tail = rho, adaptive, tail
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        held = {id(p) for p in self.params}
        self._model_params = [name for name, p in model.named_parameters() if id(p) not in held]

    # --- the state a step may change -------------------------------------------------------------
    def _named(self) -> dict[str, Tensor]:
        tensors = {f"method.{n}": t for n, t in self.method.named_buffers()}
        tensors.update({f"method.{n}": t for n, t in self.method.named_parameters()})
        tensors.update({f"model.{n}": t for n, t in self.model.named_buffers()})
        params = dict(self.model.named_parameters())
        tensors.update({f"model.{n}": params[n] for n in self._model_params})
        return tensors

    def _snapshot(self) -> tuple[dict[str, Tensor], dict]:
        return {n: t.detach().clone() for n, t in self._named().items()}, rng_state()

    def _restore(self, snapshot: tuple[dict[str, Tensor], dict]) -> None:
        saved, rng = snapshot
        with torch.no_grad():
            for name, tensor in self._named().items():
                tensor.copy_(saved[name])
        set_rng_state(rng)

    # --- the step --------------------------------------------------------------------------------
    def step(self, compute: Callable[[bool], tuple]) -> tuple[Tensor, dict]:
        """One SAM / ImbSAM update. ``compute(per_sample)``: the method's step on the same batches,
        ``(loss, logs)``, or with ``per_sample`` ``((losses [N], labels [N]), logs)``. Returns the first
        pass's loss (at w) and logs."""
        before = self._snapshot()
        self.optimizer.zero_grad(set_to_none=True)
        if self.kind == "sam":
            loss, logs = compute(False)
            loss.backward()
            ascent = [p.grad for p in self.params]
            keep = None
        else:
            (losses, labels), logs = compute(True)
            tail = self.tail.to(labels.device)[labels]
            head_loss = losses[~tail].sum() / losses.shape[0]
            tail_loss = losses[tail].sum() / losses.shape[0]
            head_loss.backward(retain_graph=True)
            keep = [p.grad for p in self.params]  # the head gradient, added to the final one
            for p in self.params:
                p.grad = None
            tail_loss.backward()  # a method's own parameters end with the whole first-pass gradient
            ascent = [p.grad for p in self.params]
            loss = (head_loss + tail_loss).detach()
        if all(g is None for g in ascent):  # no gradient reaches the optimiser's parameters: nothing to perturb
            for p, h in zip(self.params, keep or []):
                p.grad = h
            self.optimizer.step()
            return loss, logs
        after = self._snapshot()
        with torch.no_grad():
            e = perturbation(self.params, ascent, self.rho, self.adaptive, _EPS[self.kind])
            moved = [(p, p.detach().clone()) for p, e_p in zip(self.params, e) if e_p is not None]
            for p, e_p in zip(self.params, e):
                if e_p is not None:
                    p.add_(e_p)  # climb to w + e(w)
        self._restore(before)  # the second pass sees the state and draws the randomness of the first
        if self.kind == "sam":
            second, _ = compute(False)
        else:
            (losses, labels), _ = compute(True)
            second = losses[self.tail.to(labels.device)[labels]].sum() / losses.shape[0]
        grads = torch.autograd.grad(second, [p for p, _ in moved], allow_unused=True)
        self._restore(after)  # every update of the step is the first pass's
        with torch.no_grad():
            for (p, old), g in zip(moved, grads):
                p.copy_(old)  # back to w, exactly
                p.grad = g
            if keep is not None:
                for p, h in zip(self.params, keep):
                    if h is not None:
                        p.grad = h if p.grad is None else p.grad.add_(h)
        self.optimizer.step()
        return loss, logs


def tail_classes(class_counts: tuple[int, ...], threshold: int) -> Tensor:
    """ImbSAM's tail: a bool mask of the classes with fewer than ``threshold`` training images."""
    return torch.as_tensor(class_counts) < threshold


def sharpness_aware(config, stage, optimizer: torch.optim.Optimizer, model: nn.Module, method,
                    class_counts: tuple[int, ...]) -> SharpnessAware | None:
    """SAM / ImbSAM around a stage's SGD when the config asks for it (``optimizer: sam | imbsam``) and the
    stage names no optimiser of its own; None otherwise (the plain step)."""
    if stage.optimizer is not None or config.optimizer not in KINDS:
        return None
    tail = None
    if config.optimizer == "imbsam":
        if not method.has_sample_losses():
            raise LtbenchError(f"optimizer imbsam: method {method.name!r} gives no per-sample losses "
                               "(Method.sample_losses), which ImbSAM splits into head and tail classes")
        tail = tail_classes(class_counts, config.imbsam_threshold)
    return SharpnessAware(config.optimizer, optimizer, model, method, config.sam_rho, config.sam_adaptive, tail)
