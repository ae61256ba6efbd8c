"""Hub backbones (issue 23): ``timm:<model>`` and ``open_clip:<arch>`` by name, their weights from a file,
a URL or a Hugging Face Hub endpoint (a real HTTP server on 127.0.0.1), their input config, and the
BBN split of a transformer. Random-init tiny models only: nothing leaves the machine."""
from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import torch

from ltbench.errors import LtbenchError
from ltbench.models import build_backbone

VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vit_state(seed: int) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=32).state_dict()


def test_a_timm_vit_gives_its_features_and_input_config():
    backbone = build_backbone(VIT, None, 32).eval()
    assert backbone.out_dim == 192 and backbone.transformer and len(backbone.blocks) == 12
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 192)
    cfg = backbone.input_config  # timm's pretrained_cfg of vit_tiny_patch16_224.augreg_in21k_ft_in1k
    assert (cfg.size, cfg.mean, cfg.std, cfg.interpolation) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    ids = backbone.layer_ids()
    assert ids["body.pos_embed"] == 0 and ids["body.blocks.0.attn.qkv.weight"] == 1
    assert ids["body.blocks.11.mlp.fc2.bias"] == 12 and ids["body.norm.weight"] == 12


@pytest.mark.parametrize("name", ["timm:convnext_atto", "timm:efficientnet_b0"])
def test_other_timm_families_build_with_num_features(name):
    backbone = build_backbone(name).eval()
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, backbone.body.num_features)
    assert max(backbone.layer_ids().values()) >= 4  # timm's group_matcher: stem, stages/blocks, head


@pytest.mark.parametrize("name", [VIT, pytest.param("open_clip:ViT-B-32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("blocks", [None, 2])
def test_the_last_transformer_blocks_split_off_exactly(name, blocks):
    backbone = build_backbone(name, None, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    trunk, tail = backbone.split_last_stage(blocks)
    torch.testing.assert_close(tail(trunk(x)), backbone(x), rtol=0, atol=0)
    k = 1 if blocks is None else blocks
    assert len(tail.blocks) == k and len(trunk.blocks) == len(backbone.blocks) - k
    ids = {id(p) for p in backbone.parameters()}
    shared = [id(p) for p in trunk.parameters()] + [id(p) for p in tail.parameters()]
    assert len(shared) == len(set(shared)) and set(shared) <= ids  # the backbone's own, no overlap


def test_resnet_specific_parts_say_so_in_one_line():
    from ltbench.models import add_spatial_attention

    with pytest.raises(LtbenchError) as error:
        add_spatial_attention(build_backbone(VIT, None, 32))
    assert "\n" not in str(error.value) and "ResNet-specific" in str(error.value)
    with pytest.raises(LtbenchError, match="split_last_stage knows"):
        build_backbone("timm:resnet10t").split_last_stage()  # timm's own ResNet: not one of the split families


def test_pretrained_file_loads_a_timm_state_dict(tmp_path):
    state = _vit_state(seed=1)
    path = tmp_path / "vit_tiny.pth"
    torch.save(state, path)  # with its 1000-class head, as timm saves it: the head is dropped
    backbone = build_backbone(VIT, str(path), 32)
    torch.testing.assert_close(backbone.body.blocks[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    torch.testing.assert_close(backbone.body.pos_embed, state["pos_embed"])


def test_a_wrong_state_dict_is_one_line(tmp_path):
    state = _vit_state(seed=1)
    del state["blocks.5.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(LtbenchError) as error:
        build_backbone(VIT, str(path), 32)
    assert "\n" not in str(error.value) and "missing ['blocks.5.attn.qkv.weight']" in str(error.value)
    import timm

    other = tmp_path / "small.pth"
    torch.save(timm.create_model("vit_small_patch16_224", img_size=32).state_dict(), other)
    with pytest.raises(LtbenchError, match=r"^--pretrained .*small.pth: not timm:vit_tiny_patch16_224 weights"):
        build_backbone(VIT, str(other), 32)
    with pytest.raises(LtbenchError, match="no such file"):
        build_backbone(VIT, str(tmp_path / "absent.pth"), 32)


def test_the_command_line_checks_pretrained_before_any_pixel(tmp_path):
    from ltbench.config import TrainConfig, check_environment

    with pytest.raises(LtbenchError, match="imagenet names torchvision's ResNet weights"):
        check_environment(TrainConfig(backbone=VIT, pretrained="imagenet"))
    with pytest.raises(LtbenchError, match="hub weights are for timm: and open_clip: backbones"):
        check_environment(TrainConfig(backbone="resnet18", pretrained="hub"))
    with pytest.raises(LtbenchError, match="finetune lora: needs a transformer backbone"):
        check_environment(TrainConfig(backbone="resnet18", finetune="lora"))
    with pytest.raises(LtbenchError, match="backbone='vit': choose one of"):
        TrainConfig(backbone="vit")
    check_environment(TrainConfig(backbone=VIT, pretrained="hub"))  # a hub tag: no file to look for


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The two requests huggingface_hub makes for a file: HEAD (commit, ETag, size) and GET."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802 - http.server's names
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A Hugging Face Hub endpoint on 127.0.0.1 (huggingface_hub reads ENDPOINT and the cache per call)."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FakeHub.files, _FakeHub.requests = {}, []
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets when huggingface_hub is imported
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield _FakeHub
    server.shutdown()
    server.server_close()


def test_hub_weights_download_once_from_the_endpoint(fake_hub, tmp_path):
    from safetensors.torch import save

    state = _vit_state(seed=2)
    repo = "/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/resolve/main/model.safetensors"
    fake_hub.files[repo] = save(state)
    backbone = build_backbone(VIT, "hub", 32)  # timm's pretrained=True: the model name's default tag
    torch.testing.assert_close(backbone.body.blocks[7].attn.proj.weight, state["blocks.7.attn.proj.weight"])
    assert f"GET {repo}" in fake_hub.requests
    assert list((tmp_path / "hf_cache").rglob("model.safetensors"))  # cached for the next run
    gets = sum(r.startswith("GET") for r in fake_hub.requests)
    build_backbone(VIT, "hub", 32)
    assert sum(r.startswith("GET") for r in fake_hub.requests) == gets  # not downloaded again


def test_hub_weights_the_endpoint_lacks_are_one_clear_line(fake_hub):
    """No weights behind the endpoint (a mirror without them; offline, huggingface_hub first retries
    five times with backoff, then fails the same way)."""
    with pytest.raises(LtbenchError) as error:
        build_backbone(VIT, "hub", 32)
    message = str(error.value)
    assert "\n" not in message and message.startswith("--pretrained hub: cannot get the weights of timm:")
    assert "127.0.0.1" in message and "--pretrained /path/to/weights.pth" in message
    assert any("model.safetensors" in r for r in fake_hub.requests)  # it did ask the endpoint


@pytest.mark.slow  # ViT-B/32's 151 M random-init parameters: ~5 s to build on an idle core
def test_open_clip_vit_b32_trains_one_step_and_keeps_its_text_tower_aside():
    from ltbench.models import Classifier

    backbone = build_backbone("open_clip:ViT-B-32", None, 32)
    assert backbone.out_dim == 512 and backbone.input_config.mean[0] == pytest.approx(0.48145466)
    text = backbone.encode_text(["a dermoscopic image of a nevus", "of a melanoma"])
    assert text.shape == (2, 512) and torch.allclose(text.norm(dim=1), torch.ones(2))
    assert not any(p is q for p in backbone.parameters() for q in backbone.clip_model.transformer.parameters())
    model = Classifier(backbone, torch.nn.Linear(512, 3))
    tower = backbone.clip_model.token_embedding.weight.detach().clone()
    before = backbone.body.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert not torch.equal(backbone.body.conv1.weight, before)  # the image tower trains
    assert torch.equal(backbone.clip_model.token_embedding.weight, tower)  # the text tower does not


def test_the_trainer_normalises_with_the_models_own_mean_and_std():
    """timm's ViT-Ti/16 (augreg) was trained on (x − 0.5) / 0.5; ltbench's own backbones keep ImageNet's.
    Checked on the training batches a method receives and on the evaluation transform."""
    from ltbench import get_method_class
    from ltbench.runs import DataSpec, prepare_data
    from ltbench.trainer import Trainer
    from tests.helpers import cpu_config

    class Recording(get_method_class("ce")):
        views = ("eval",)  # deterministic: the extremes are those of the pixels

        def training_step(self, model, batch):
            self.seen = getattr(self, "seen", []) + [batch.views[0].min().item(), batch.views[0].max().item()]
            return super().training_step(model, batch)

    data = prepare_data(DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 50, "imbalance": 4.0},
                                 split="grouped", split_seed=0), 32)
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    imagenet_white = (1 - 0.406) / 0.225  # the largest value of ImageNet normalisation (blue channel)
    for backbone, normalise, top in ((VIT, "model", 1.0), (VIT, "imagenet", imagenet_white),
                                     ("small-cnn", "model", imagenet_white)):
        trainer = Trainer(cpu_config(backbone=backbone, image_size=32, epochs=1, batch_size=22, normalise=normalise),
                          progress=False)
        method = Recording()
        trainer.fit(method, data.bundle)
        assert trainer.eval_transform()(white).max().item() == pytest.approx(top, rel=1e-5)
        assert min(method.seen) >= -top - 1e-5 and max(method.seen) <= top + 1e-5
        if top == 1.0:
            assert min(method.seen) < -0.9 and max(method.seen) > 0.9  # the range is used: (x - 0.5) / 0.5
        else:
            assert max(method.seen) > 1.5  # beyond what (x - 0.5) / 0.5 can give


def test_ltbench_train_pretrained_file_on_the_command_line(tmp_path, capsys, monkeypatch):
    """``ltbench train --backbone timm:... --pretrained FILE`` end to end; a wrong file is one line, exit 2."""
    import json

    from tests.test_cli import run_inline

    path = tmp_path / "vit_tiny.pth"
    torch.save(_vit_state(seed=1), path)
    args = ("train", "--method", "ce", "--dataset", "synthetic", "--backbone", VIT, "--image-size", "32",
            "--epochs", "1", "--device", "cpu", "--threads", "1", "--set", "finetune=linear")
    proc = run_inline(*args, "--pretrained", str(path), "--out", str(tmp_path / "out"), capsys=capsys,
                      monkeypatch=monkeypatch, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next((tmp_path / "out").rglob("seed0.json")).read_text())
    assert result["config"]["pretrained"] == str(path) and result["config"]["finetune"] == "linear"
    classes = len(result["dataset"]["class_names"])
    assert result["params"]["trainable"] == 192 * classes + classes  # linear: the head only
    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pth")
    proc = run_inline(*args, "--pretrained", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "out2"),
                      capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not timm:vit_tiny_patch16_224 weights" in proc.stderr


def test_a_hub_models_own_input_size_unless_a_file_or_flag_sets_one(tmp_path):
    """The dataset's default protocol (ISIC: 224 px, ImageNet ResNet weights) yields to a hub model's
    config; a benchmark file or the command line wins over both."""
    from ltbench.config import Layer, set_layer, train_config

    dino = "timm:vit_small_patch14_dinov2.lvd142m"
    config, sources = train_config("isic2019", set_layer({"backbone": dino}))
    assert config.image_size == 518 and sources["image_size"].source == f"{dino} config"  # DINOv2's pretrained size
    assert config.pretrained == "hub"  # the protocol's inherited "imagenet" becomes the timm model's own weights
    config, _ = train_config("isic2019", set_layer({"backbone": dino, "image_size": "224"}))
    assert config.image_size == 224
    file = Layer("benchmark file", {"backbone": "open_clip:ViT-B-16", "pretrained": "hub:openai", "image_size": 336},
                 lambda k, v: f"b.yaml train.{k}={v}")
    assert train_config("isic2019", file)[0].image_size == 336
    assert train_config("isic2019")[0].image_size == 224  # ltbench's own backbones: unchanged
    with pytest.raises(LtbenchError, match="imagenet names torchvision's ResNet weights; for open_clip:ViT-B-16"):
        train_config("isic2019", set_layer({"backbone": "open_clip:ViT-B-16"}))  # several CLIP weights: name one


@pytest.mark.parametrize("name", ["timm:convnext_atto", "timm:efficientnet_b0"])
@pytest.mark.parametrize("blocks", [None, 1])
def test_timm_cnns_split_their_last_stage_exactly(name, blocks):
    """ConvNeXt and EfficientNet: the last stage's last block(s) and the model's own head form the tail (BBN, SADE)."""
    backbone = build_backbone(name).eval()
    x = torch.randn(2, 3, 64, 64)
    trunk, tail = backbone.split_last_stage(blocks)
    torch.testing.assert_close(tail(trunk(x)), backbone(x), rtol=0, atol=0)
    shared = [id(p) for p in trunk.parameters()] + [id(p) for p in tail.parameters()]
    assert len(shared) == len(set(shared)) == len(list(backbone.parameters()))
