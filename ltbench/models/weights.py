"""Reading a state dict from torchvision's ImageNet URL, an http(s) URL or a local file (one-line errors)."""
from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ltbench.errors import LtbenchError

if TYPE_CHECKING:
    import torchvision


def load_weights(source: str, weights: "torchvision.models.WeightsEnum | None" = None) -> dict[str, Tensor]:
    """Read a state dict from "imagenet" (torchvision's URL of ``weights``), an http(s) URL or a local file."""
    url = weights.url if source == "imagenet" and weights is not None else source
    if url.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise LtbenchError(
                f"--pretrained {source}: cannot download {url} ({exc}); download it elsewhere and "
                f"pass --pretrained /path/to/{Path(url).name}, or put it in {cache}"
            ) from None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise LtbenchError(f"--pretrained {source}: no such file (give 'imagenet', a URL or a .pth file)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LtbenchError(f"--pretrained {source}: not a PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LtbenchError(f"--pretrained {source}: the file holds no state dict")
    return state
