"""Backbone.split_last_stage: trunk + tail compute the whole backbone, with its own parameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ltbench.errors import LtbenchError
from ltbench.models import Backbone, build_backbone

# (architecture, residual blocks in the last stage, the stage's parameters by name prefix)
ARCHS = [("small-cnn", 1, ("9.", "10.")), ("resnet18", 2, ("layer4.",)), ("resnet34", 3, ("layer4.",)),
         ("resnet50", 3, ("layer4.",))]


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(module: nn.Module) -> list[int]:
    return [id(p) for p in module.parameters()]


@pytest.mark.parametrize("arch,num_blocks,stage_prefixes", ARCHS)
def test_trunk_then_tail_equals_the_backbone(arch, num_blocks, stage_prefixes):
    torch.manual_seed(0)
    backbone = build_backbone(arch).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        whole = backbone(x)
        for blocks in [None, *range(1, num_blocks + 1)]:
            trunk, tail = backbone.split_last_stage(blocks)
            trunk.eval(), tail.eval()
            assert torch.equal(tail(trunk(x)), whole), blocks
            assert tail(trunk(x)).shape == (3, backbone.out_dim)

    # Shared references: the two halves hold exactly the backbone's parameters, without overlap.
    trunk, tail = backbone.split_last_stage()
    assert set(_ids(trunk)).isdisjoint(_ids(tail))
    assert sorted(_ids(trunk) + _ids(tail)) == sorted(_ids(backbone))
    # The whole-stage tail is the last stage: its parameters are those of layer4 (of the last conv block).
    stage = {id(p) for name, p in backbone.body.named_parameters() if name.startswith(stage_prefixes)}
    assert set(_ids(tail)) == stage


def test_one_block_tail_is_the_last_residual_block():
    backbone = build_backbone("resnet50")
    trunk, tail = backbone.split_last_stage(1)
    assert set(_ids(tail)) == set(_ids(backbone.body.layer4[2]))
    assert set(_ids(backbone.body.layer4[0])) | set(_ids(backbone.body.layer4[1])) <= set(_ids(trunk))
    # A change to the backbone is seen by the halves (references, not copies).
    with torch.no_grad():
        backbone.body.layer4[2].conv1.weight.add_(1.0)
    assert tail[0].conv1.weight is backbone.body.layer4[2].conv1.weight


def test_train_mode_batchnorm_is_the_same_too():
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn").train()
    x = torch.randn(4, 3, 16, 16)
    reference = backbone(x)
    trunk, tail = backbone.split_last_stage()
    torch.testing.assert_close(tail(trunk(x)), reference, rtol=0, atol=0)


def test_bad_requests():
    with pytest.raises(ValueError, match="blocks must be None or 1..2 for resnet18"):
        build_backbone("resnet18").split_last_stage(3)
    with pytest.raises(ValueError, match="1..1 for small-cnn"):
        build_backbone("small-cnn").split_last_stage(0)
    with pytest.raises(ValueError):
        build_backbone("small-cnn").split_last_stage(True)
    with pytest.raises(LtbenchError, match="backbone 'mlp'"):
        Backbone(nn.Linear(3, 2), 2, "mlp").split_last_stage()
