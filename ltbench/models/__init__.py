"""Backbones and the heads methods put on them (the Method API's ``ltbench.models``).

backbone.py (``Backbone``, ``InputConfig``), resnet.py (torchvision ResNet-18/34/50, small-cnn),
timm_models.py (``timm:<model>``), clip.py (``open_clip:<arch>``: image tower + text tower),
build.py (``build_backbone``), heads.py, attention.py (HDCSA, ResNet-only), weights.py (state-dict
files and URLs), finetune.py (fine-tuning modes, applied by the trainer). timm and open_clip are
imported only when such a backbone is built.
"""
from ltbench.models.attention import AttendedNorm, DilatedSpatialAttention, add_spatial_attention
from ltbench.models.backbone import Backbone, InputConfig
from ltbench.models.build import BACKBONES, HUB_PREFIXES, backbone_problem, build_backbone
from ltbench.models.finetune import (FINETUNE_MODES, AdaptFormer, AdaptFormerBlock, FinetuneSpec, PromptedBlock,
                                     prepare_backbone)
from ltbench.models.heads import Classifier, NormedLinear, ProjectionHead
from ltbench.models.weights import load_weights

__all__ = ["BACKBONES", "FINETUNE_MODES", "HUB_PREFIXES", "AdaptFormer", "AdaptFormerBlock", "AttendedNorm", "Backbone",
           "Classifier", "DilatedSpatialAttention", "FinetuneSpec", "InputConfig", "NormedLinear", "ProjectionHead",
           "PromptedBlock", "add_spatial_attention", "backbone_problem", "build_backbone", "load_weights",
           "prepare_backbone"]
