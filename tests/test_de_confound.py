"""De-confound-TDE (methods/de_confound.py): the multi-head normalised classifier, the TDE logits and the
moving average against naive float64 loops written from KaihuaTang/Long-Tailed-Recognition.pytorch
classification/models/CausalNormClassifier.py and run_networks.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltbench.errors import LtbenchError
from ltbench.method import Batch, TrainInfo
from ltbench.methods.de_confound import causal_logits, tde_logits
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def norm(v):
    return torch.sqrt(sum(e * e for e in v))


def naive_logits(x, w, embed, K, tau, gamma, alpha, effect):
    """Per sample, per class, per head: scalar loops."""
    n, d = x.shape
    hd = d // K
    out = [[0.0] * w.shape[0] for _ in range(n)]
    for i in range(n):
        for c in range(w.shape[0]):
            total = 0.0
            for k in range(K):
                xs = [x[i, j] for j in range(k * hd, (k + 1) * hd)]
                ws = [w[c, j] for j in range(k * hd, (k + 1) * hd)]
                xn = [v / norm(xs) for v in xs]
                wn = [v / (norm(ws) + gamma) for v in ws]
                if effect:
                    cs = [embed[j] for j in range(k * hd, (k + 1) * hd)]
                    cn = [v / norm(cs) for v in cs]
                    cos = sum(a * b for a, b in zip(xn, cn))
                    xn = [a - alpha * cos * b for a, b in zip(xn, cn)]
                total = total + sum(a * (tau / K) * b for a, b in zip(xn, wn))
            out[i][c] = total
    return torch.stack([torch.stack([v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64)
                                     for v in row]) for row in out])


def inputs(seed=0, n=5, d=8, c=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).abs().requires_grad_()
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    embed = torch.randn(d, generator=g, dtype=torch.float64).abs() * 3
    return x, w, embed


@pytest.mark.parametrize("K, tau, gamma, alpha", [(2, 16.0, 0.03125, 3.0), (4, 16.0, 0.03125, 1.5), (1, 10.0, 0.5, 1.0)])
def test_training_logits_match_naive_float64(K, tau, gamma, alpha):
    x, w, _ = inputs()
    got = causal_logits(x, w, K, tau, gamma)
    ref = naive_logits(x, w, None, K, tau, gamma, alpha, effect=False)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    y = torch.tensor([0, 1, 1, 0, 3])  # class 2 absent
    g_got = torch.autograd.grad(F.cross_entropy(got, y), [x, w])
    g_ref = torch.autograd.grad(F.cross_entropy(ref, y), [x, w])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("K, tau, gamma, alpha", [(2, 16.0, 0.03125, 3.0), (4, 16.0, 0.03125, 1.5), (2, 16.0, 0.0, 1.0)])
def test_tde_logits_match_naive_float64(K, tau, gamma, alpha):
    x, w, embed = inputs(seed=1)
    got = tde_logits(x, w, embed, K, tau, gamma, alpha)
    ref = naive_logits(x, w, embed, K, tau, gamma, alpha, effect=True)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got.sum(), [x, w])
    g_ref = torch.autograd.grad(ref.sum(), [x, w])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_tde_with_alpha_zero_is_the_training_logits_and_scale_of_embed_is_irrelevant():
    x, w, embed = inputs(seed=2)
    torch.testing.assert_close(tde_logits(x, w, embed, alpha=0.0), causal_logits(x, w))
    torch.testing.assert_close(tde_logits(x, w, embed), tde_logits(x, w, 7.5 * embed))


def test_moving_average_is_the_official_decayed_sum_of_batch_means():
    method = create_method("de_confound", mu=0.9)
    info = TrainInfo(class_counts=(30, 10, 5, 3), class_names=tuple("abcd"), epochs=1, steps_per_epoch=1,
                     device=CPU)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    model.train()
    g = torch.Generator().manual_seed(0)
    expected = torch.zeros(128, dtype=torch.float64)
    for _ in range(3):
        images = torch.randn(4, 3, 16, 16, generator=g)
        batch = Batch(views=[images], labels=torch.tensor([0, 1, 2, 0]), indices=torch.arange(4))
        with torch.no_grad():
            state = {k: v.clone() for k, v in model.state_dict().items()}
            feats = model.backbone(images).double()
            model.load_state_dict(state)  # undo the BN statistics this extra pass moved
        method.training_step(model, batch)
        expected = 0.9 * expected + feats.mean(0)
    torch.testing.assert_close(method.embed_mean.double(), expected, rtol=1e-5, atol=1e-6)


def test_predict_uses_tde_and_use_effect_false_does_not():
    data = synthetic_data()
    method = create_method("de_confound")
    trainer = Trainer(cpu_config(epochs=2), progress=False)
    trainer.fit(method, data.bundle)
    model = trainer.model.eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        feats = model.backbone(images)
        torch.testing.assert_close(method.predict(model, images),
                                   tde_logits(feats, model.head.weight, method.embed_mean, alpha=3.0))
        method.use_effect = False
        torch.testing.assert_close(method.predict(model, images), causal_logits(feats, model.head.weight))
    assert method.embed_mean.abs().sum() > 0


def test_indivisible_feature_dimension_is_one_error():
    with pytest.raises(LtbenchError, match="not divisible by num_head 3"):
        Trainer(cpu_config(epochs=1), progress=False).fit(create_method("de_confound", num_head=3),
                                                           synthetic_data().bundle)


def test_official_forward_interface():
    from ltbench.methods.de_confound import CausalNormClassifier

    torch.manual_seed(0)
    clf = CausalNormClassifier(8, 3, num_head=2, tau=16.0, gamma=0.03125, alpha=1.5).double()
    x, _, embed = inputs(seed=4, d=8, c=3)
    with torch.no_grad():
        torch.testing.assert_close(clf(x, None, embed.numpy()), causal_logits(x, clf.weight))  # training mode
        clf.eval()
        torch.testing.assert_close(clf(x, None, embed.numpy()), tde_logits(x, clf.weight, embed, alpha=1.5))
        torch.testing.assert_close(clf(x), causal_logits(x, clf.weight))
