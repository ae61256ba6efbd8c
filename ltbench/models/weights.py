"""Reading a state dict from torchvision's ImageNet URL, an http(s) URL or a local file (one-line errors)."""
from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ltbench.errors import InputError

if TYPE_CHECKING:
    import torchvision


def load_weights(source: str, weights: "torchvision.models.WeightsEnum | None" = None) -> dict[str, Tensor]:
    """Read a state dict from "imagenet" (torchvision's URL of ``weights``), an http(s) URL or a local file.

    Every problem is an :class:`~ltbench.errors.InputError` (one line): the user's file or network,
    never recorded as a run's failure.
    """
    url = weights.url if source == "imagenet" and weights is not None else source
    if url.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise InputError(
                f"--pretrained {source}: cannot download {url} ({_first_line(exc)}); download it elsewhere and "
                f"pass --pretrained /path/to/{Path(url).name}, or put it in {cache}"
            ) from None
        return _state_dict(state, f"--pretrained {source}")
    return read_weights_file(source)


def read_weights_file(source: str, label: str | None = None) -> dict[str, Tensor]:
    """A local weights file as a state dict, loaded with ``weights_only=True``; one line per problem.

    ``label`` names the setting in messages (default ``--pretrained <source>``). Nothing is kept
    in memory: the settings check (``ltbench.models.build.check_pretrained_file``) and the run each load it.
    """
    label = label or f"--pretrained {source}"
    path = Path(source).expanduser()
    try:
        size = path.stat().st_size
    except OSError:
        raise InputError(f"{label}: no such file (give 'imagenet', a URL or a .pth file)") from None
    if not path.is_file():
        raise InputError(f"{label}: not a file")
    if size == 0:
        raise InputError(f"{label}: an empty file (0 bytes), not a PyTorch state dict")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the line below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here; each becomes one line naming the file
        raise InputError(f"{label}: not a PyTorch state dict ({_load_problem(exc, path)})") from None
    return _state_dict(state, label)


def _state_dict(state: object, label: str) -> dict[str, Tensor]:
    """``state`` (or its ``state_dict`` entry) if it maps names to tensors."""
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"{label}: the file holds no state dict (a {type(state).__name__}"
                         f"{', empty' if isinstance(state, dict) else ''})")
    bad = next(((k, v) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise InputError(f"{label}: not a state dict: entry {bad[0]!r} is a {type(bad[1]).__name__}, not a tensor")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_problem(exc: Exception, path: Path) -> str:
    """What torch.load's exception means, in words (its own text may be a bare number or many lines)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        return err.strerror or type(err).__name__
    if magic.startswith(b"PK"):  # torch.save's zip format
        return f"a damaged or truncated torch.save archive: {_first_line(exc).split('. ')[0][:160]}"
    if not magic.startswith(b"\x80"):  # neither a zip nor a pickle (protocol >= 2 starts with 0x80)
        return f"not a file torch.save writes: it starts with {magic!r}"
    if "Weights only load failed" in str(exc):
        return "it holds Python objects besides tensors; ltbench loads weights with torch.load(weights_only=True)"
    first = _first_line(exc)
    if not any(ch.isalpha() for ch in first) or len(first) < 8:  # e.g. "(174812789)": a KeyError of a byte value
        return f"not written by torch.save ({type(exc).__name__} while unpickling)"
    return first[:200]
