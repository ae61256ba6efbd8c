"""``build_backbone``: a backbone by name — ltbench's own, ``timm:<model>`` or ``open_clip:<arch>``."""
from __future__ import annotations

from ltbench.errors import LtbenchError
from ltbench.models.backbone import Backbone
from ltbench.models.resnet import OWN_BACKBONES, RESNETS, build_own_backbone, check_resnet_weights
from ltbench.models.weights import read_weights_file

#: Name prefixes of hub backbones: any timm model, the image tower of any open_clip model.
HUB_PREFIXES = ("timm:", "open_clip:")
BACKBONES = (*OWN_BACKBONES, "timm:<model>", "open_clip:<arch>")


def backbone_problem(name: str) -> str | None:
    """Why ``name`` is not a backbone name (None: it is); checked without importing timm or open_clip."""
    if name in OWN_BACKBONES:
        return None
    for prefix in HUB_PREFIXES:
        if name.startswith(prefix):
            return None if name[len(prefix):].strip() else f"give the model after {prefix} (e.g. {prefix}" \
                f"{'vit_base_patch16_224' if prefix == 'timm:' else 'ViT-B-16'})"
    return f"choose one of {', '.join(BACKBONES)}"


def check_pretrained_file(backbone: str, source: str, label: str) -> None:
    """A local ``pretrained`` file, checked when the settings are read (before any data is prepared).

    It must load as a state dict with ``weights_only=True``; for ltbench's own ResNets its names and
    shapes must fit the architecture (a hub model's are checked when it is built). Each distinct
    (backbone, file, size, mtime) is checked once per process. Problems: one ``InputError`` line.
    """
    from pathlib import Path

    path = Path(source).expanduser()
    try:
        st = path.stat()
    except OSError:
        return  # the caller says "no such file"
    key = (backbone, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    if backbone in RESNETS:
        check_resnet_weights(backbone, source, label)
    else:
        read_weights_file(source, label)
    _CHECKED.add(key)


_CHECKED: set[tuple] = set()


def build_backbone(name: str, pretrained: str | None = None, image_size: int | None = None) -> Backbone:
    """Create a backbone by name.

    ``pretrained``: None (random init), "imagenet" (torchvision's ResNet weights), ``hub`` /
    ``hub:<tag>`` / ``hf-hub:<org>/<repo>`` (hub models), an http(s) URL or a local file.
    ``image_size``: the benchmark's; transformers build their position embeddings for it.
    """
    if name.startswith("timm:"):
        from ltbench.models.timm_models import build_timm_backbone

        return build_timm_backbone(name[len("timm:"):], pretrained, image_size)
    if name.startswith("open_clip:"):
        from ltbench.models.clip import build_clip_backbone

        return build_clip_backbone(name[len("open_clip:"):], pretrained, image_size)
    if name not in OWN_BACKBONES:
        raise LtbenchError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return build_own_backbone(name, pretrained)


def model_input_size(name: str) -> int | None:
    """The square input size a hub model's weights were trained at (timm's ``pretrained_cfg``, open_clip's
    ``vision_cfg``), read without building it; None for ltbench's own backbones or an unknown model."""
    if name.startswith("timm:"):
        import timm

        cfg = timm.get_pretrained_cfg(name[len("timm:"):])
        return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
    if name.startswith("open_clip:"):
        import open_clip

        cfg = open_clip.get_model_config(name[len("open_clip:"):]) or {}
        size = cfg.get("vision_cfg", {}).get("image_size")
        return int(size[-1] if isinstance(size, (tuple, list)) else size) if size else None
    return None
