"""Backbones and pretrained weights: local files, a real HTTP server on loopback, clear failures."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from ltbench.errors import LtbenchError
from ltbench.models import NormedLinear, ProjectionHead, build_backbone


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def weight_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 with http.server; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _reference_resnet18_state(seed: int = 1) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("name,dim", [("small-cnn", 128), ("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbones_give_features(name, dim):
    backbone = build_backbone(name)
    assert backbone.out_dim == dim
    backbone.eval()
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_unknown_backbone():
    with pytest.raises(LtbenchError, match="unknown backbone 'vgg'.*resnet50"):
        build_backbone("vgg")


def test_heads():
    head = NormedLinear(8, 3)
    logits = head(torch.randn(5, 8) * 10)
    assert logits.abs().max() <= 1 + 1e-6  # cosine similarities
    z = ProjectionHead(8, 4)(torch.randn(5, 8))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_pretrained_from_a_local_file(tmp_path):
    state = _reference_resnet18_state()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    backbone = build_backbone("resnet18", str(path))
    torch.testing.assert_close(backbone.body.conv1.weight, state["conv1.weight"])


def test_pretrained_file_problems(tmp_path):
    with pytest.raises(LtbenchError, match="no such file"):
        build_backbone("resnet18", str(tmp_path / "absent.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LtbenchError, match="not a PyTorch state dict"):
        build_backbone("resnet18", str(junk))
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(LtbenchError, match="not resnet18 weights"):
        build_backbone("resnet18", str(wrong))
    with pytest.raises(LtbenchError, match="small-cnn"):
        build_backbone("small-cnn", "imagenet")


def test_pretrained_downloaded_from_a_loopback_server(weight_server, torch_home):
    root, base = weight_server
    state = _reference_resnet18_state(seed=2)
    torch.save(state, root / "resnet18-demo.pth")
    backbone = build_backbone("resnet18", f"{base}/resnet18-demo.pth")
    torch.testing.assert_close(backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert (torch_home / "hub" / "checkpoints" / "resnet18-demo.pth").is_file()  # cached for next time


def test_failed_download_is_one_clear_line(weight_server, torch_home):
    _, base = weight_server
    with pytest.raises(LtbenchError) as missing:
        build_backbone("resnet18", f"{base}/absent.pth")
    message = str(missing.value)
    assert "\n" not in message and "cannot download" in message and "--pretrained /path/to/absent.pth" in message


def test_imagenet_uses_torchvisions_cached_file(torch_home):
    """'imagenet' resolves to torchvision's URL; a file already in the hub cache needs no network."""
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _reference_resnet18_state(seed=3)
    torch.save(state, cache / Path(url).name)
    backbone = build_backbone("resnet18", "imagenet")
    torch.testing.assert_close(backbone.body.conv1.weight, state["conv1.weight"])
