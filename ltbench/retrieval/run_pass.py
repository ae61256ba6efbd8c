"""The retrieval pass of a run: after the test pass, rank the training split for every test image.

Runs once per run when the benchmark says ``retrieval: true`` (an evaluation setting: never part
of the run key), with the trained model as the best-validation checkpoint left it
(``Trainer.model``), and draws no random numbers, so the classification results and every RNG
stream are unchanged (docs/retrieval.md). Steps:

1. **Representations** (:func:`compute_representations`): ``method.representations(model, x)``
   over the training split (the database) and the test split (the queries), in order, with the
   deterministic ``eval`` preset the test pass uses, under ``inference_mode``, model and method in
   eval mode, in float32 (no autocast: bf16 would round more than the float16 storage does).
2. **Storage** (:func:`save_embeddings`): ``runs/<row>/seed<k>.emb.npz`` beside the result, written
   atomically before the result JSON. Per space ``<space>/database`` and ``<space>/queries``:
   float16 (spaces named ``*_binary``: int8 codes in {−1, 0, +1}); ``database_labels``,
   ``query_labels``, ``database_rows``, ``query_rows`` (rows of the image set), ``database_groups``,
   ``query_groups`` (lesion ids as text, "" = none); ``top/<space>`` the top-5 database positions
   of every query; ``pr/<space>/precision|recall`` the PR curve by rank; ``examples/*`` a few
   query thumbnails with their top-5 retrieved training images (uint8), so ``ltbench report``
   redraws every table and figure without data or training.
3. **Metrics** (:func:`metrics_from_arrays`) on the **stored** (float16-rounded) embeddings, so
   :func:`metrics_from_file` on the file gives exactly the numbers of the run's JSON:
   :func:`ltbench.retrieval.metrics.retrieval_metrics` per space (cosine; Hamming for ``*_binary``), with
   the query's own lesion left out of its ranking where lesion ids exist
   (``exclude_same_lesion``); for a space ``s`` with a companion ``s_binary``, the hashing paper's
   :func:`ltbench.retrieval.metrics.p10_r4_macro` with the method's ``radius``/``top_k`` if its
   ``get_params()`` has them (read by name of the parameter, never of the method).

Size: 2 bytes per value — ISIC 2019's 15,193 training images × 2,048-d ≈ 62 MB per space.
"""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write
from ltbench.retrieval.metrics import p10_r4_macro, retrieval_metrics

BINARY_SUFFIX = "_binary"  # spaces ranked by Hamming distance; every other space by cosine
TOP_STORED = 5  # retrieved images kept per query (the example figure)
THUMB_SIDE = 32  # pixels of a stored thumbnail side (a few KB per example row)
MAX_EXAMPLES = 10  # example queries: the first test image of each class, classes head -> tail
FILE_SUFFIX = ".emb.npz"


@dataclass(frozen=True)
class RetrievalSettings:
    """The benchmark's ``retrieval:`` setting: ``true``/``false`` or a mapping of these keys."""

    enabled: bool = False
    exclude_same_lesion: bool = True  # drop database images of the query's own lesion from its ranking

    @classmethod
    def parse(cls, value: object, where: str) -> "RetrievalSettings":
        """``true``/``false`` or ``{enabled: bool, exclude_same_lesion: bool}``; one line on a bad value."""
        if value is None:
            return cls()
        if isinstance(value, bool):
            return cls(enabled=value)
        if not isinstance(value, Mapping):
            raise LtbenchError(f"{where} = {value!r}: expected true, false or a mapping "
                               "(enabled, exclude_same_lesion)")
        extra = [k for k in value if k not in ("enabled", "exclude_same_lesion")]
        if extra:
            raise LtbenchError(f"{where}: unknown key(s) {', '.join(map(str, extra))}; allowed: enabled, "
                               "exclude_same_lesion")
        for key, v in value.items():
            if not isinstance(v, bool):
                raise LtbenchError(f"{where}.{key} = {v!r}: expected true or false")
        return cls(enabled=value.get("enabled", True), exclude_same_lesion=value.get("exclude_same_lesion", True))


def embedding_path(json_path: Path) -> Path:
    """``runs/<row>/seed<k>.emb.npz`` beside ``seed<k>.json``."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + FILE_SUFFIX)


def metric_of(space: str) -> str:
    return "hamming" if space.endswith(BINARY_SUFFIX) else "cosine"


# ----------------------------------------------------------------------------- representations

@torch.inference_mode()
def compute_representations(method, model: torch.nn.Module, pixels: np.ndarray, rows: np.ndarray,
                            image_size: int, batch_size: int, device: torch.device,
                            view: str = "eval") -> dict[str, np.ndarray]:
    """``method.representations`` of ``rows`` (in order, the preset ``view``: the run's
    ``eval_view``, as its test pass), float32 [N, d] per name."""
    from ltbench.data.augment import get_augmentation
    from ltbench.data.loader import eval_batches

    model.eval()
    method.eval()
    resize = get_augmentation(view, image_size)
    parts: dict[str, list[Tensor]] = {}
    names = None
    for images in eval_batches(pixels, rows, batch_size, device):
        x = resize(images)
        reps = method.representations(model, x)
        if names is None:
            names = tuple(reps)
        elif tuple(reps) != names:
            raise LtbenchError(f"method {method.name!r}: representations() returned {tuple(reps)} for one "
                               f"batch and {names} for another")
        for name, value in reps.items():
            if value.ndim != 2 or value.shape[0] != x.shape[0]:
                raise LtbenchError(f"method {method.name!r}: representation {name!r} has shape "
                                   f"{tuple(value.shape)}; expected [batch, d]")
            parts.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def _stored(space: str, values: np.ndarray) -> np.ndarray:
    if space.endswith(BINARY_SUFFIX):
        if not np.isin(values, (-1.0, 0.0, 1.0)).all():
            raise LtbenchError(f"representation {space!r}: binary codes must lie in {{-1, 0, +1}}")
        return values.astype(np.int8)
    return values.astype(np.float16)


def _group_text(groups: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    if groups is None:
        return np.full(len(rows), "", dtype=str)
    def text(g) -> str:
        return "" if g is None or (isinstance(g, float) and np.isnan(g)) else str(g)
    return np.array([text(g) for g in np.asarray(groups, dtype=object)[rows]], dtype=str)


def _thumbnails(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """uint8 [n, t, t, 3] (t = min(32, the cached side)), antialiased resize of the cached pixels."""
    if len(rows) == 0:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(pixels[np.asarray(rows)])).permute(0, 3, 1, 2).float()
    side = min(THUMB_SIDE, x.shape[2], x.shape[3])
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def example_queries(query_labels: np.ndarray, database_labels: np.ndarray, num_classes: int,
                    limit: int = MAX_EXAMPLES) -> np.ndarray:
    """Query positions of the examples: the first query of each class, classes head → tail, at most ``limit``."""
    counts = np.bincount(database_labels, minlength=num_classes)
    order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    picks = [int(np.flatnonzero(query_labels == c)[0]) for c in order if np.any(query_labels == c)]
    return np.array(picks[:limit], dtype=np.int64)


# ----------------------------------------------------------------------------- metrics

def _spaces(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted({k[: -len("/database")] for k in arrays if k.endswith("/database")})


def metrics_from_arrays(arrays: Mapping[str, np.ndarray], num_classes: int, exclude_same_lesion: bool = True,
                        radius: int | None = None, top_k: int | None = None) -> dict[str, dict]:
    """Every space's retrieval metrics from stored arrays (as :func:`save_embeddings` writes them).

    Returns space -> ``retrieval_metrics`` dict (with ``pr_curve`` and ``top``, the first
    :data:`TOP_STORED` database positions per query) plus, for a space with a ``*_binary``
    companion and ``radius``/``top_k`` given, ``p10_r4`` (:func:`ltbench.retrieval.metrics.p10_r4_macro`).
    """
    q_labels, d_labels = arrays["query_labels"], arrays["database_labels"]
    has_groups = bool(np.any(arrays["query_groups"] != "")) and bool(np.any(arrays["database_groups"] != ""))
    groups = ({"query_groups": [g or None for g in arrays["query_groups"].tolist()],
               "database_groups": [g or None for g in arrays["database_groups"].tolist()]} if has_groups else {})
    out = {}
    spaces = _spaces(arrays)
    for space in spaces:
        out[space] = retrieval_metrics(arrays[f"{space}/queries"], q_labels, arrays[f"{space}/database"], d_labels,
                                       num_classes, metric_of(space), exclude_same_group=exclude_same_lesion,
                                       keep_top=TOP_STORED, **groups)
        binary = space + BINARY_SUFFIX
        if binary in spaces and radius is not None and top_k is not None:
            out[space]["p10_r4"] = p10_r4_macro(arrays[f"{space}/queries"], arrays[f"{binary}/queries"], q_labels,
                                                arrays[f"{space}/database"], arrays[f"{binary}/database"], d_labels,
                                                num_classes, radius=radius, top_k=top_k)
    return out


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``seed<k>.emb.npz``; an unreadable file is one LtbenchError line."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise LtbenchError(f"{path}: unreadable embedding file ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None


def metrics_from_file(path: Path, num_classes: int, exclude_same_lesion: bool = True) -> dict[str, dict]:
    """:func:`metrics_from_arrays` of a stored file (the hashing radius/top-k stored with it)."""
    arrays = load_embeddings(path)
    radius = int(arrays["p10_radius"]) if "p10_radius" in arrays else None
    top_k = int(arrays["p10_top_k"]) if "p10_top_k" in arrays else None
    return metrics_from_arrays(arrays, num_classes, exclude_same_lesion, radius, top_k)


def save_embeddings(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically, uncompressed: float16 features barely compress (69 vs 78 MiB
    for 20,000 × 2,048) and zlib would cost ~9 s per such space."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(Path(path), buffer.getvalue())


def summary_for_json(metrics: Mapping[str, dict]) -> dict[str, dict]:
    """The metrics without the per-rank curve and per-query lists (those stay in the .npz)."""
    return {space: {k: v for k, v in m.items() if k not in ("pr_curve", "top")} for space, m in metrics.items()}


# ----------------------------------------------------------------------------- the pass

def retrieval_pass(method, model: torch.nn.Module, prepared, config, path: Path,
                   settings: RetrievalSettings = RetrievalSettings(enabled=True),
                   device: torch.device | str = "cpu") -> dict:
    """Embed train and test with the trained ``model``, store them at ``path``, return the JSON section.

    ``prepared`` is :class:`ltbench.runs.PreparedData`, ``config`` the run's TrainConfig (image
    size, eval batch size). The returned dict goes into the result JSON as ``"retrieval"``.
    """
    start = time.perf_counter()
    device = torch.device(device)
    bundle, image_set = prepared.bundle, prepared.image_set
    num_classes = len(bundle.class_names)
    db_rows, q_rows = np.asarray(bundle.train), np.asarray(bundle.test)
    if not len(db_rows) or not len(q_rows):
        raise LtbenchError("retrieval: the training and test splits must both have images")
    db = compute_representations(method, model, bundle.pixels, db_rows, config.image_size,
                                 config.eval_batch_size, device, config.eval_view)
    q = compute_representations(method, model, bundle.pixels, q_rows, config.image_size,
                                config.eval_batch_size, device, config.eval_view)
    if not db:
        return {"file": None, "spaces": {}, "note": f"method {method.name!r} exposes no representation"}
    arrays: dict[str, np.ndarray] = {
        "database_labels": bundle.labels[db_rows].astype(np.int64), "query_labels": bundle.labels[q_rows].astype(np.int64),
        "database_rows": db_rows.astype(np.int64), "query_rows": q_rows.astype(np.int64),
        "database_groups": _group_text(image_set.groups, db_rows), "query_groups": _group_text(image_set.groups, q_rows),
    }
    for space in db:
        arrays[f"{space}/database"] = _stored(space, db[space])
        arrays[f"{space}/queries"] = _stored(space, q[space])
    params = method.get_params()
    radius, top_k = params.get("radius"), params.get("top_k")
    hashed = any(s + BINARY_SUFFIX in db for s in db)
    if hashed and isinstance(radius, int) and isinstance(top_k, int):
        arrays["p10_radius"], arrays["p10_top_k"] = np.array(radius), np.array(top_k)
    else:
        radius = top_k = None
    metrics = metrics_from_arrays(arrays, num_classes, settings.exclude_same_lesion, radius, top_k)
    for space, m in metrics.items():
        arrays[f"top/{space}"] = np.asarray(m["top"], dtype=np.int32).reshape(len(q_rows), -1)  # Q >= 1
        if "pr_curve" in m:
            arrays[f"pr/{space}/precision"] = np.asarray(m["pr_curve"]["precision"], dtype=np.float32)
            arrays[f"pr/{space}/recall"] = np.asarray(m["pr_curve"]["recall"], dtype=np.float32)
    headline = "feature" if "feature" in metrics else sorted(metrics)[0]
    picks = example_queries(arrays["query_labels"], arrays["database_labels"], num_classes)
    top = arrays[f"top/{headline}"][picks]
    arrays["examples/space"] = np.array(headline)
    arrays["examples/queries"] = picks
    arrays["examples/query_thumbs"] = _thumbnails(bundle.pixels, q_rows[picks])
    thumbs = _thumbnails(bundle.pixels, db_rows[top.reshape(-1)])
    arrays["examples/top_thumbs"] = thumbs.reshape(*top.shape, *thumbs.shape[1:])
    save_embeddings(path, arrays)
    return {"file": Path(path).name, "exclude_same_lesion": settings.exclude_same_lesion, "headline": headline,
            "database": len(db_rows), "queries": len(q_rows),
            "dims": {space: int(db[space].shape[1]) for space in db},
            "stored_dtype": {space: str(arrays[f"{space}/database"].dtype) for space in db},
            "spaces": summary_for_json(metrics), "time_s": round(time.perf_counter() - start, 3)}
