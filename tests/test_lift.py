"""LIFT's formulas (methods/_lift_core.py) against naive float64 implementations written from the paper and
the official code's formulas (shijxcs/LIFT @ 661ead9): values and gradients, a batch missing classes."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from ltbench import LtbenchError
from ltbench.methods._lift_core import (AdaptFormer, CosineClassifier, ParallelAdapterMLP, adaptformer_dim,
                                        class_text_features, cosine_logits, lift_la_loss, lift_log_prior,
                                        prompt_texts, text_head_weight, tte_crops, tte_mean, zeroshot_logits)

COUNTS = [500, 120, 31, 7, 2]


def naive_la_loss(logits, labels, counts, tau=1.0):
    """mean_i [ -(z_iy + τ log π_y) + log Σ_c exp(z_ic + τ log π_c) ], π_c = n_c / Σn, in float64 loops."""
    total = float(sum(counts))
    prior = [math.log(n / total) for n in counts]
    out = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        adjusted = [z + tau * p for z, p in zip(row, prior)]
        top = max(adjusted)
        out += -adjusted[y] + top + math.log(sum(math.exp(a - top) for a in adjusted))
    return out / len(labels)


def naive_la_grad(logits, labels, counts, tau=1.0):
    """d/dz of the mean: (softmax(z + τ log π) − onehot(y)) / B."""
    total = float(sum(counts))
    prior = torch.tensor([math.log(n / total) for n in counts], dtype=torch.float64)
    p = torch.softmax(logits.double() + tau * prior, dim=1)
    p[torch.arange(len(labels)), labels] -= 1.0
    return p / len(labels)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_la_loss_matches_naive_float64_with_absent_classes(tau):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 5, generator=g) * 4).requires_grad_()
    labels = torch.tensor([0, 0, 1, 0, 1, 3])  # classes 2 and 4 absent from the batch
    loss = lift_la_loss(logits, labels, lift_log_prior(COUNTS), tau)
    loss.backward()
    # float32 logits and a float32 prior (as official) against float64: float32 rounding only
    assert loss.item() == pytest.approx(naive_la_loss(logits.detach(), labels, COUNTS, tau), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(logits.grad.double(), naive_la_grad(logits.detach(), labels, COUNTS, tau),
                               rtol=1e-5, atol=1e-7)


def test_la_prior_is_the_official_float32_log_without_epsilon():
    prior = lift_log_prior(COUNTS)
    assert prior.dtype == torch.float32
    expected = torch.log(torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS))
    assert torch.equal(prior, expected)  # same ops, same machine
    total = sum(COUNTS)
    for value, n in zip(prior.tolist(), COUNTS):
        assert value == pytest.approx(math.log(n / total), rel=1e-6)
    # the adjustment raises a rare class's loss: the same logits, a tail label costs more than a head label
    z = torch.zeros(1, 5)
    assert lift_la_loss(z, torch.tensor([4]), prior) > lift_la_loss(z, torch.tensor([0]), prior)


def naive_cosine(x, w, s):
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        for c in range(w.shape[0]):
            xi, wc = x[i].double(), w[c].double()
            out[i, c] = s * float(xi @ wc) / (math.sqrt(float(xi @ xi)) * math.sqrt(float(wc @ wc)))
    return out


def test_cosine_classifier_matches_naive_float64_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    head = CosineClassifier(8, 3).double()  # the official scale 25 by default
    assert head.scale == 25.0 and not any(n == "bias" for n, _ in head.named_parameters())
    logits = head(x)
    torch.testing.assert_close(logits, naive_cosine(x.detach(), head.weight.detach(), 25.0), rtol=1e-12, atol=1e-12)
    labels = torch.tensor([0, 2, 2, 0])  # class 1 absent
    prior = lift_log_prior([10, 5, 1]).double()
    lift_la_loss(logits, labels, prior).backward()

    def naive_loss(xv, wv):  # the whole composition, float64, by finite differences
        return naive_la_loss(naive_cosine(xv, wv, 25.0), labels, [10, 5, 1])

    for tensor, grad, other in ((x, x.grad, head.weight), (head.weight, head.weight.grad, x)):
        numeric = torch.zeros_like(tensor, dtype=torch.float64)
        for idx in range(tensor.numel()):
            for sign in (1, -1):
                bumped = tensor.detach().double().clone().view(-1)
                bumped[idx] += sign * 1e-6
                args = (bumped.view_as(tensor), other.detach().double())
                value = naive_loss(*(args if tensor is x else args[::-1]))
                numeric.view(-1)[idx] += sign * value / 2e-6
        torch.testing.assert_close(grad.double(), numeric, rtol=1e-5, atol=1e-7)


def test_cosine_classifier_initial_rows_are_unit_length_and_scale_free_to_row_norms():
    head = CosineClassifier(16, 5)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 16)
    torch.testing.assert_close(cosine_logits(x * 7.0, head.weight * 3.0, 25.0), head(x), rtol=1e-5, atol=1e-5)


def test_text_head_weight_matches_naive():
    g = torch.Generator().manual_seed(2)
    text = torch.randn(3, 4, generator=g, dtype=torch.float64)
    proj = torch.randn(6, 4, generator=g, dtype=torch.float64)  # open_clip / CLIP: width × embed_dim
    out = text_head_weight(text, proj)
    for c in range(3):
        t = text[c] / math.sqrt(float(text[c] @ text[c]))
        v = proj @ t  # (t @ projᵀ)ᵀ
        torch.testing.assert_close(out[c], v / math.sqrt(float(v @ v)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(text_head_weight(text, None), text / text.norm(dim=1, keepdim=True))


def test_zeroshot_logits_match_naive():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 4, generator=g, dtype=torch.float64)
    text = torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)  # CLIP's initial temperature
    out = zeroshot_logits(image, text, logit_scale)
    for i in range(2):
        for c in range(3):
            cos = float(image[i] @ text[c]) / math.sqrt(float(image[i] @ image[i]))
            assert out[i, c].item() == pytest.approx(cos / 0.07, rel=1e-12)


@pytest.mark.parametrize("classes, layers, dim", [(1000, 12, 32), (365, 12, 8), (8142, 12, 256), (100, 12, 4),
                                                  (8, 12, 1), (4, 2, 1), (1000, 24, 16)])
def test_adaptformer_dim_is_the_official_rule(classes, layers, dim):
    # ViT_Tuner: 2 ** max(0, int(log2(C / (2L)))) — ImageNet-LT 32, Places-LT 8, iNat 256, CIFAR-100 4, ISIC 1
    assert adaptformer_dim(classes, layers) == dim


def test_adaptformer_matches_naive_and_starts_as_zero():
    torch.manual_seed(0)
    adapter = AdaptFormer(6, 2).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.equal(adapter(x), torch.zeros_like(x))  # up_proj zero: the pretrained model at the start
    with torch.no_grad():
        adapter.up_proj.weight.normal_()
        adapter.up_proj.bias.normal_()
        adapter.scale.fill_(0.7)
        adapter.ln.weight.normal_()
    y = adapter(x)
    for i in range(5):
        row = x[i]
        mu = float(row.mean())
        var = float(((row - mu) ** 2).mean())
        normed = (row - mu) / math.sqrt(var + 1e-5) * adapter.ln.weight + adapter.ln.bias
        hidden = torch.clamp(adapter.down_proj.weight @ normed + adapter.down_proj.bias, min=0)
        torch.testing.assert_close(y[i], 0.7 * (adapter.up_proj.weight @ hidden + adapter.up_proj.bias))


def test_parallel_adapter_in_an_open_clip_block_is_the_official_block():
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(1)
    block = ResidualAttentionBlock(8, 2, batch_first=True).double()
    adapter = AdaptFormer(8, 2).double()
    with torch.no_grad():
        adapter.up_proj.weight.normal_()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    # models/peft_vit.py: attention residual, then x = mlp(ln_2(h)); x = x + adaptformer(h); x = x + h
    h = x + block.attention(block.ln_1(x))
    expected = (block.mlp(block.ln_2(h)) + adapter(h)) + h
    block.mlp, block.ln_2 = ParallelAdapterMLP(block.ln_2, block.mlp, adapter), torch.nn.Identity()
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_tte_crops_are_torchvision_five_and_ten_crops_of_the_grown_image():
    from torchvision.transforms.v2 import functional as TF

    images = torch.rand(2, 3, 56, 56)
    grown = TF.resize(images, [62, 62], antialias=True)  # 56 + round(24 * 56 / 224) = 62
    five = tte_crops(images, "fivecrop")
    assert five.shape == (10, 3, 56, 56)
    assert torch.equal(five[:2], grown[..., :56, :56])  # top-left
    assert torch.equal(five[2:4], grown[..., :56, 6:])  # top-right
    assert torch.equal(five[8:], grown[..., 3:59, 3:59])  # centre
    ten = tte_crops(images, "tencrop")
    assert ten.shape == (20, 3, 56, 56) and torch.equal(ten[:10], five)
    assert torch.equal(ten[10:12], grown.flip(-1)[..., :56, :56])
    assert torch.equal(tte_crops(images, "none"), images)
    logits = torch.arange(30.0).reshape(10, 3)  # 5 views × 2 images
    torch.testing.assert_close(tte_mean(logits, 5), torch.stack([logits[0::2].mean(0), logits[1::2].mean(0)]))


# --- the method on a tiny random-init open_clip ViT (tests/helpers.tiny_clip) ------------------------------
def _clip_setup(num_classes=4, names=("melanoma", "nevus", "basal_cell", "other")):
    from ltbench import create_method
    from ltbench.method import TrainInfo
    from ltbench.models import build_backbone
    from tests.helpers import tiny_clip

    torch.manual_seed(0)
    backbone = build_backbone(tiny_clip(), None, 16)
    info = TrainInfo(class_counts=(40, 12, 5, 2)[:num_classes], class_names=tuple(names[:num_classes]), epochs=1,
                     steps_per_epoch=1, device=torch.device("cpu"))
    return create_method, backbone, info


def test_lift_model_is_the_pretrained_tower_plus_zero_adapters_and_a_text_head():
    create_method, backbone, info = _clip_setup()
    reference = copy.deepcopy(backbone.body)  # the tower before LIFT touches it
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in info.class_names]
    with torch.no_grad():  # naive head: CLIP's text embedding, normalised, mapped back through proj, normalised
        text = backbone.clip_model.encode_text(backbone.tokenizer(prompts)).double()
        text = text / text.norm(dim=1, keepdim=True)
        mapped = text @ backbone.body.proj.double().t()
        expected_head = mapped / mapped.norm(dim=1, keepdim=True)
    method = create_method("lift")
    method.setup(info)
    model = method.build_model(backbone, info)
    blocks = backbone.body.transformer.resblocks
    assert all(isinstance(b.mlp, ParallelAdapterMLP) and b.mlp.adapter.down_proj.out_features == 1 for b in blocks)
    torch.testing.assert_close(model.head.weight.double(), expected_head, rtol=1e-5, atol=1e-6)
    assert model.head.scale == 25.0
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = reference.transformer(reference._embeds(x))
        pooled = reference.ln_post(tokens)[:, 0]  # class token after ln_post, before proj
        torch.testing.assert_close(model.features(x), pooled, rtol=1e-6, atol=1e-6)  # zero adapters: CLIP itself
        torch.testing.assert_close(model(x).double(), naive_cosine(pooled, model.head.weight.detach(), 25.0),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled @ reference.proj, reference(x), rtol=1e-5, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight"} | {f"backbone.body.transformer.resblocks.{i}.mlp.adapter.{k}" for i in range(2)
                                           for k in ("ln.weight", "ln.bias", "down_proj.weight", "down_proj.bias",
                                                     "up_proj.weight", "up_proj.bias", "scale")}
    assert method.stages(info)[0].trains == ("backbone.body.transformer.resblocks.0.mlp.adapter",
                                             "backbone.body.transformer.resblocks.1.mlp.adapter", "head")
    assert create_method("lift", bottleneck=3).build_model(_clip_setup()[1], info).backbone.body.transformer \
        .resblocks[0].mlp.adapter.down_proj.out_features == 3


def test_lift_loss_and_tte_predict_are_the_official_computations():
    create_method, backbone, info = _clip_setup()
    method = create_method("lift")
    method.setup(info)
    model = method.build_model(backbone, info).eval()
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 0, 1])  # classes 2 and 3 absent
    loss = method.loss(logits, labels)
    assert loss.dtype == torch.float64  # float64 logits stay float64; only the prior is float32 (as official)
    assert loss.item() == pytest.approx(naive_la_loss(logits.detach(), labels, info.class_counts), rel=1e-6)
    assert method.loss(logits.detach().bfloat16(), labels).dtype == torch.float32
    loss.backward()
    torch.testing.assert_close(logits.grad, naive_la_grad(logits.detach(), labels, info.class_counts),
                               rtol=1e-5, atol=1e-7)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        crops = tte_crops(x, "fivecrop")
        expected = sum(model(crops[2 * k:2 * k + 2]) for k in range(5)) / 5
        torch.testing.assert_close(method.predict(model, x), expected, rtol=1e-5, atol=1e-6)
        method.tte = "none"
        torch.testing.assert_close(method.predict(model, x), model(x))


def test_lift_trains_only_its_adapters_and_head():
    from ltbench import create_method
    from ltbench.trainer import Trainer
    from tests.helpers import cpu_config, synthetic_data, tiny_clip

    data = synthetic_data()
    trainer = Trainer(cpu_config(backbone=tiny_clip(), epochs=1, select_metric="last"), progress=False)
    torch.manual_seed(0)
    method = create_method("lift")
    run = trainer.fit(method, data.bundle)
    model = trainer.model
    assert math.isfinite(run.history[0]["train_loss"])
    ours = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n or n.startswith("head."))
    assert run.params == {"trainable": ours, "total": sum(p.numel() for p in model.parameters())}
    from ltbench.models import build_backbone
    from ltbench.trainer.loop import seed_everything

    seed_everything(0)  # the trainer's order: the same tower, untouched
    fresh = build_backbone(tiny_clip(), None, 16)
    for name, value in fresh.body.state_dict().items():
        torch.testing.assert_close(model.backbone.body.state_dict()[_moved(name)], value, rtol=0, atol=0)
    moved = [n for n, p in model.named_parameters() if "adapter.up_proj.weight" in n and p.abs().sum() > 0]
    assert moved  # an adapter left zero (the last block's one-unit ReLU may stay dead on the class token, as official)


def _moved(name: str) -> str:
    """A tower parameter's name once LIFT has put the block's ln_2 and MLP inside its ParallelAdapterMLP."""
    if ".ln_2." in name:
        return name.replace(".ln_2.", ".mlp.ln_2.")
    return name.replace(".mlp.", ".mlp.mlp.")


def test_lift_refuses_a_backbone_another_finetune_mode_changed():
    create_method, backbone, info = _clip_setup()
    next(backbone.parameters()).requires_grad_(False)  # as a finetune mode other than full leaves it
    method = create_method("lift")
    method.setup(info)
    with pytest.raises(LtbenchError, match="finetune"):
        method.build_model(backbone, info)


def test_prompt_ensemble_is_clips_80_templates_averaged():
    _, backbone, info = _clip_setup()
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    names = ["basal cell", "nevus"]
    with torch.no_grad():
        per = []
        for template in OPENAI_IMAGENET_TEMPLATES:
            t = backbone.clip_model.encode_text(backbone.tokenizer([template(c) for c in names])).double()
            per.append(t / t.norm(dim=1, keepdim=True))
        mean = torch.stack(per).mean(0)
        expected = mean / mean.norm(dim=1, keepdim=True)
    got = class_text_features(backbone.encode_text, ["basal_cell", "nevus"], "ensemble")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert len(prompt_texts(names, "ensemble")) == 80 and prompt_texts(["a_b"], "default") == [["a photo of a a b."]]
    assert prompt_texts(["a_b"], "classname") == [["a b"]]
