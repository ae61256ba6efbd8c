"""Fine-tuning modes (issue 23, ltbench/models/finetune.py): each trains one epoch and records its trainable
parameters, checked against counts from the architecture's formulas; the inserted modules compute their
papers' formulas; frozen weights stay put; layer-wise lr decay; BBN's copied branch keeps the mode."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from ltbench import create_method
from ltbench.models import Classifier, FinetuneSpec, build_backbone, prepare_backbone
from ltbench.models.finetune import optimizer_params, parameter_counts
from ltbench.runs import DataSpec, prepare_data
from ltbench.trainer import Trainer
from tests.helpers import cpu_config

VIT = "timm:vit_tiny_patch16_224"
D, HIDDEN, L, C = 192, 768, 12, 4  # ViT-Ti/16: width, MLP width, blocks; 4 synthetic classes
HEAD = D * C + C  # the default Linear classifier


def block_params() -> int:
    """One pre-norm ViT block: 2 LayerNorms, qkv, attention output, the MLP's two Linears."""
    return 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * HIDDEN + HIDDEN) + (HIDDEN * D + D)


def bias_params() -> int:
    per_block = 2 * D + 3 * D + D + HIDDEN + D  # norm1, qkv, proj, norm2, fc1, fc2 biases
    return L * per_block + D + D  # + patch embedding bias, final norm bias


def total_params() -> int:
    embed = 3 * 16 * 16 * D + D + D + (4 + 1) * D  # patch conv + bias, class token, position embedding at 32 px
    return embed + L * block_params() + 2 * D + HEAD


def expected_trainable(mode: str, spec: FinetuneSpec) -> tuple[int, int]:
    """(trainable, total) from the architecture alone."""
    base = total_params()
    lora = L * spec.rank * ((D + 3 * D) + (D + D) + (D + HIDDEN) + (HIDDEN + D))  # r·(in + out) per Linear
    adapter = L * ((D * spec.adapter_dim + spec.adapter_dim) + (spec.adapter_dim * D + D))
    prompts = L * spec.prompts * D
    return {"full": (base, base), "linear": (HEAD, base),
            "partial": (spec.blocks * block_params() + 2 * D + HEAD, base),
            "bitfit": (bias_params() + HEAD, base), "lora": (lora + HEAD, base + lora),
            "adaptformer": (adapter + HEAD, base + adapter), "vpt": (prompts + HEAD, base + prompts)}[mode]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    spec = DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 50, "imbalance": 4.0},
                    split="grouped", split_seed=0)
    return prepare_data(spec, 32)


def _config(mode: str, **overrides):
    return cpu_config(**{"backbone": VIT, "image_size": 32, "epochs": 1, "batch_size": 22, "finetune": mode,
                         "finetune_blocks": 2, **overrides})


@pytest.mark.parametrize("mode", ["full", "linear", "partial", "lora", "adaptformer", "vpt", "bitfit"])
def test_each_mode_trains_an_epoch_and_records_its_trainable_parameters(mode, data):
    config = _config(mode)
    trainer = Trainer(config, progress=False)
    run = trainer.fit(create_method("ce"), data.bundle)
    assert math.isfinite(run.history[0]["train_loss"])
    trainable, total = expected_trainable(mode, FinetuneSpec.of(config))
    assert run.params == {"trainable": trainable, "total": total}
    # Frozen weights did not move; the head did. The trainer's seed gives the same initial backbone.
    torch.manual_seed(config.seed)
    initial = build_backbone(VIT, None, 32)
    body = trainer.model.backbone.body
    block = body.blocks[0].block if mode in ("adaptformer", "vpt") else body.blocks[0]  # wrapped blocks
    qkv = block.attn.qkv.base_layer if mode == "lora" else block.attn.qkv
    frozen = mode not in ("full",)
    assert torch.equal(qkv.weight, initial.body.blocks[0].attn.qkv.weight) == frozen
    if mode == "partial":
        assert not torch.equal(body.blocks[11].mlp.fc1.weight, initial.body.blocks[11].mlp.fc1.weight)
    assert all(p.requires_grad for p in trainer.model.head.parameters())


def test_the_result_json_records_the_parameters(data, tmp_path):
    """run_one writes ``params`` into the run's JSON."""
    import json

    from ltbench.runs import run_one

    spec = DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 50, "imbalance": 4.0},
                    split="grouped", split_seed=0)
    result, trained = run_one("ce", {}, 0, _config("linear"), spec, data, tmp_path, progress=False)
    saved = json.loads(next(tmp_path.rglob("seed0.json")).read_text())
    assert trained and saved["params"] == {"trainable": HEAD, "total": total_params()} == result["params"]
    assert saved["config"]["finetune"] == "linear"


def _prepared(mode: str, **spec) -> torch.nn.Module:
    torch.manual_seed(0)
    return prepare_backbone(build_backbone(VIT, None, 32), FinetuneSpec(mode, **spec))


def test_lora_is_w_x_plus_b_a_x_scaled_by_alpha_over_r():
    """peft's LoRA layer against the formula of Hu et al. (alpha = r: scale 1), on trained-like B != 0."""
    backbone = _prepared("lora", rank=4)
    layer = backbone.body.blocks[2].mlp.fc1
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (4, D) and b.shape == (HIDDEN, 4) and not b.any()  # B starts at zero: no change at init
    with torch.no_grad():
        b.normal_()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    w, bias = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    expected = x @ w.T + bias + (4 / 4) * (x @ a.double().T @ b.double().T)
    torch.testing.assert_close(layer.double()(x), expected)


def test_adaptformer_adds_the_scaled_bottleneck_of_the_post_attention_stream():
    """``x' = x + attn(norm1 x)``; ``out = x' + mlp(norm2 x') + 0.1 · up(relu(down(x')))`` (AdaptFormer, parallel)."""
    backbone = _prepared("adaptformer", adapter_dim=8).eval().double()
    wrapped = backbone.body.blocks[4]
    block, adapter = wrapped.block, wrapped.adapter
    with torch.no_grad():
        adapter.up_proj.weight.normal_()
        adapter.up_proj.bias.normal_()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    h = x + block.attn(block.norm1(x))
    expected = h + block.mlp(block.norm2(h)) + 0.1 * adapter.up_proj(torch.relu(adapter.down_proj(h)))
    torch.testing.assert_close(wrapped(x), expected)


def test_deep_prompts_are_inserted_after_the_class_token_and_dropped_after_each_block():
    backbone = _prepared("vpt", prompts=3).eval().double()
    wrapped = backbone.body.blocks[0]
    x = torch.randn(2, 5, D, dtype=torch.float64)
    inner = wrapped.block(torch.cat([x[:, :1], wrapped.prompt.double().expand(2, -1, -1), x[:, 1:]], dim=1))
    out = wrapped(x)
    torch.testing.assert_close(out, torch.cat([inner[:, :1], inner[:, 4:]], dim=1))
    bound = math.sqrt(6 / (3 * 16 * 16 + D))  # KMnP/vpt's init range
    assert wrapped.prompt.abs().max() <= bound and out.shape == x.shape


def test_layer_decay_scales_each_layer_and_leaves_the_heads_at_one():
    backbone = _prepared("full", layer_decay=0.5)
    model = Classifier(backbone, torch.nn.Linear(D, C))
    groups = optimizer_params(model, list(model.parameters()))
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    body = backbone.body
    assert scale[id(model.head.weight)] == 1.0
    assert scale[id(body.norm.weight)] == scale[id(body.blocks[11].attn.qkv.weight)] == 0.5  # L + 1 - 12
    assert scale[id(body.blocks[0].mlp.fc2.bias)] == 0.5 ** 12
    assert scale[id(body.pos_embed)] == scale[id(body.patch_embed.proj.weight)] == 0.5 ** 13
    optimizer = torch.optim.SGD(groups, lr=1.0)
    from ltbench.stages import Stage

    Trainer(_config("full", layer_decay=0.5), progress=False)._set_lr(optimizer, Stage(), 0.2, 0, 10)
    assert sorted(g["lr"] for g in optimizer.param_groups) == sorted(0.2 * g["lr_scale"] for g in groups)
    plain = prepare_backbone(build_backbone(VIT, None, 32), FinetuneSpec("full"))
    params = list(Classifier(plain, torch.nn.Linear(D, C)).parameters())
    assert optimizer_params(Classifier(plain, torch.nn.Linear(D, C)), params) is params  # no decay: unchanged


def test_bbn_copied_branch_keeps_the_adapters_and_the_frozen_weights():
    from ltbench.method import TrainInfo

    backbone = _prepared("adaptformer")
    info = TrainInfo(class_counts=(9, 3, 2, 1), class_names=("a", "b", "c", "d"), epochs=1, steps_per_epoch=1,
                     device=torch.device("cpu"))
    model = create_method("bbn").build_model(backbone, info)
    tails = (model.conventional, model.rebalancing)
    for tail in tails:
        trainable = {n for n, p in tail.named_parameters() if p.requires_grad}
        assert trainable and all(".adapter." in n for n in trainable)
    assert not any(p is q for p in tails[0].parameters() for q in tails[1].parameters())
    counts = parameter_counts(model)
    adapter = (D * 64 + 64) + (64 * D + D)
    assert counts["trainable"] == (L + 1) * adapter + 2 * D * C + C  # 11 shared blocks + 2 branch copies of one


def test_frozen_batchnorm_keeps_its_statistics_in_linear_mode(data):
    trainer = Trainer(cpu_config(backbone="small-cnn", image_size=32, epochs=1, finetune="linear"), progress=False)
    torch.manual_seed(0)
    initial = copy.deepcopy(build_backbone("small-cnn").body[1].running_mean)
    trainer.fit(create_method("ce"), data.bundle)
    assert torch.equal(trainer.model.backbone.body[1].running_mean, initial)
    # after the run every flag is back to the mode's: the backbone frozen, the head trainable
    assert not trainer.model.backbone.body[0].weight.requires_grad and trainer.model.head.weight.requires_grad


def test_gradient_checkpointing_trains_the_same_model(data):
    """Recomputing activations in the backward pass changes memory, not the arithmetic."""
    runs = [Trainer(_config("lora", grad_checkpointing=flag), progress=False).fit(create_method("ce"), data.bundle)
            for flag in (False, True)]
    assert runs[0].history[0]["train_loss"] == pytest.approx(runs[1].history[0]["train_loss"], rel=1e-6)
    from ltbench.config import check_environment
    from ltbench.errors import LtbenchError

    with pytest.raises(LtbenchError, match="grad_checkpointing.*only timm: and open_clip:"):
        check_environment(cpu_config(grad_checkpointing=True))  # small-cnn: one line before any pixel
    with pytest.raises(LtbenchError, match="backbone 'small-cnn' does not support gradient checkpointing"):
        Trainer(cpu_config(grad_checkpointing=True), progress=False).fit(create_method("ce"), data.bundle)


def test_stages_narrow_the_mode_and_never_unfreeze_it(data):
    """SCL: representation stage (backbone + projection head) then a classifier stage; under lora the
    pretrained weights stay frozen in both, the LoRA matrices move in the first only."""
    trainer = Trainer(_config("lora", epochs=2), progress=False)
    run = trainer.fit(create_method("scl"), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    torch.manual_seed(0)
    initial = build_backbone(VIT, None, 32)
    fc1 = trainer.model.backbone.body.blocks[5].mlp.fc1
    assert torch.equal(fc1.base_layer.weight, initial.body.blocks[5].mlp.fc1.weight)
    assert fc1.lora_B["default"].weight.abs().sum() > 0  # started at zero, trained in the representation stage
    assert run.params["trainable"] < run.params["total"] // 10


@pytest.mark.parametrize("mode", ["lora", "adaptformer", "vpt", "partial", "bitfit"])
def test_every_trainable_parameter_of_an_open_clip_tower_gets_a_gradient(mode):
    """open_clip's blocks use nn.MultiheadAttention, which reads its projections' weights directly:
    LoRA adapts it as a whole (peft's layer), so no adapter sits where the forward pass never goes."""
    from tests.helpers import tiny_clip

    torch.manual_seed(0)
    backbone = prepare_backbone(build_backbone(tiny_clip(), None, 32), FinetuneSpec(mode, prompts=2, adapter_dim=4))
    model = Classifier(backbone, torch.nn.Linear(backbone.out_dim, 3))
    for name, param in model.named_parameters():
        if "lora_B" in name or "up_proj.weight" in name:
            torch.nn.init.normal_(param)  # zero at init (no change to the model), which would zero the rest's gradient
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 2
    assert [n for n, p in trainable if p.grad is None or not p.grad.any()] == []
    if mode == "lora":
        assert any(".attn." in n and "lora" in n for n, _ in trainable)  # the attention is adapted too
