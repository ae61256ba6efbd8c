"""MoCo v2 (methods/moco_v2.py): InfoNCE against a naive float64 implementation (values, gradients; no
gradient into keys or queue), the queue update against the official slice write and at its boundaries
(wrap-around, a batch larger than the queue), the key encoder's momentum update against the naive rule,
one training step in the official order (momentum update, keys, logits on the queue before the enqueue,
then the enqueue), and a resumed run equal to an uninterrupted one (queue, pointer, key encoder)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from ltbench import create_method
from ltbench.method import Batch, TrainInfo
from ltbench.methods.moco_v2 import enqueue, moco_loss
from ltbench.models import build_backbone
from ltbench.store.checkpoint import CheckpointStore
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data
from tests.test_resume import CopyingStore, assert_same_run


def naive_infonce(q, k, queue, t):
    """−log(e^{q·k/T} / (e^{q·k/T} + Σ_n e^{q·n/T})) per row, mean (float64, written out)."""
    losses = []
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def test_infonce_equals_the_naive_float64_loss_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(16, 8, generator=g, dtype=torch.float64), dim=1)
    loss = moco_loss(q, k.detach(), queue, 0.2)
    assert loss.item() == pytest.approx(naive_infonce(q.detach(), k.detach(), queue, 0.2), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, q)
    # d/dq of mean_i [−q_i·k_i/T + log Σ_j e^{q_i·c_j/T}], c = [k_i; queue]: (Σ_j p_ij c_j − k_i) / (T·B)
    for i in range(5):
        c = torch.cat([k.detach()[i:i + 1], queue])
        p = torch.softmax(c @ q.detach()[i] / 0.2, dim=0)
        torch.testing.assert_close(grad[i], (p @ c - k.detach()[i]) / (0.2 * 5), rtol=1e-10, atol=1e-12)


def official_enqueue(queue_dk, ptr, keys):
    """facebookresearch/moco ``_dequeue_and_enqueue`` on a [dim, K] queue (asserts K % B == 0)."""
    batch = keys.shape[0]
    assert queue_dk.shape[1] % batch == 0
    queue_dk[:, ptr:ptr + batch] = keys.T
    return (ptr + batch) % queue_dk.shape[1]


def test_queue_update_equals_the_official_write_and_wraps():
    g = torch.Generator().manual_seed(1)
    queue, ptr = torch.randn(8, 3, generator=g), torch.zeros((), dtype=torch.long)
    official, official_ptr = queue.T.clone(), 0
    for _ in range(5):  # B = 4 divides K = 8: the official slice write, through the wrap at 8
        keys = torch.randn(4, 3, generator=g)
        enqueue(queue, ptr, keys)
        official_ptr = official_enqueue(official, official_ptr, keys)
        assert torch.equal(queue, official.T) and int(ptr) == official_ptr
    # a partial batch wraps around the end (slots 6, 7, 0)
    queue, ptr = torch.zeros(8, 1), torch.tensor(6)
    enqueue(queue, ptr, torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.flatten().tolist() == [3, 0, 0, 0, 0, 0, 1, 2] and int(ptr) == 1
    # a batch larger than the queue keeps its last K keys, in their slots
    queue, ptr = torch.zeros(4, 1), torch.tensor(0)
    enqueue(queue, ptr, torch.arange(1.0, 7.0)[:, None])
    assert queue.flatten().tolist() == [5, 6, 3, 4] and int(ptr) == 2


def _moco(queue_size: int = 16):
    torch.manual_seed(0)
    info = TrainInfo(class_counts=(6, 4, 2), class_names=("a", "b", "c"), epochs=2, steps_per_epoch=4,
                     device=torch.device("cpu"))
    method = create_method("moco_v2", dim=8, queue_size=queue_size)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    method.stages(info)
    model.train()
    return method, model


def test_a_training_step_runs_in_the_official_order():
    method, model = _moco()
    with torch.no_grad():  # a key encoder apart from the query encoder, as after some training
        for p in [*model.key_backbone.parameters(), *model.key_head.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    query = [p.detach().double().clone() for p in [*model.backbone.parameters(), *model.head.parameters()]]
    key = [p.detach().double().clone() for p in [*model.key_backbone.parameters(), *model.key_head.parameters()]]
    queue_before = method.queue.clone()
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(6, 3, 16, 16, generator=g) for _ in range(2)]
    loss = method.training_step(model, Batch(views=views, labels=torch.zeros(6, dtype=torch.long),
                                             indices=torch.arange(6)))
    # the key encoder moved first: θ_k ← m θ_k + (1 − m) θ_q
    moved = [p.detach().double() for p in [*model.key_backbone.parameters(), *model.key_head.parameters()]]
    for got, k, q in zip(moved, key, query):
        torch.testing.assert_close(got, 0.999 * k + 0.001 * q, rtol=0, atol=1e-6)
    with torch.no_grad():
        q = model.head(model.backbone(views[0]))
        k = model.key_head(model.key_backbone(views[1]))
    # the logits used the queue before this step's keys entered it
    assert loss.item() == pytest.approx(moco_loss(q, k, queue_before, 0.2).item(), rel=1e-5)
    torch.testing.assert_close(method.queue[:6], k)
    assert torch.equal(method.queue[6:], queue_before[6:]) and int(method.queue_ptr) == 6
    assert loss.requires_grad and all(not p.requires_grad for p in model.key_backbone.parameters())


def test_resuming_from_every_epoch_equals_the_uninterrupted_run(tmp_path):
    data = synthetic_data()
    config = cpu_config(epochs=2)
    params = {"queue_size": 48, "dim": 16}
    store = CopyingStore(tmp_path / "run", "key")
    plain_run = Trainer(config, progress=False).fit(create_method("moco_v2", **params), data.bundle,
                                                    checkpoint=store)
    assert plain_run.history[-1]["probe"]["converged"]
    state = torch.load(store.copies[0], weights_only=True)
    assert {"queue", "queue_ptr"} <= set(state["method"]) and any(k.startswith("key_backbone.") for k in state["model"])
    for epoch, saved in enumerate(store.copies):
        resumed_store = CheckpointStore(tmp_path / f"resume{epoch}", "key")
        shutil.copyfile(saved, resumed_store.latest)
        resumed = Trainer(config, progress=False).fit(create_method("moco_v2", **params), data.bundle,
                                                      checkpoint=resumed_store)
        assert resumed_store.resumed_from == resumed_store.latest
        assert_same_run(plain_run, resumed)
