"""TrainStream: the parallel (sharded) and overlapped (prefetching) CPU loaders give exactly the
batches of the sequential one (views, labels, indices and the generator's state), epoch after
epoch, including epochs abandoned while a batch is being made ahead."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from ltbench.data.augment import get_augmentation
from ltbench.data.loader import WORKERS_MIN_SIZE, TrainStream, available_cores
from ltbench.errors import LtbenchError

N, SIDE, OUT, BATCH = 45, 40, 32, 20  # 3 batches per epoch (20, 20, 5); 2 chunks of a 20-image batch


def _data():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(N + 3, SIDE, SIDE, 3), dtype=np.uint8)
    rows = np.arange(3, N + 3)  # not the identity: rows and positions differ
    labels = np.minimum(rng.geometric(0.4, size=N) - 1, 4)  # long-tailed, 5 classes
    sizes = np.stack([rng.integers(300, 1100, size=N + 3), rng.integers(300, 1100, size=N + 3)], axis=1)
    return pixels, rows, labels, sizes


def _stream(sampler="instance", views=("standard", "contrastive"), seed=0, **kw) -> TrainStream:
    pixels, rows, labels, sizes = _data()
    augs = [get_augmentation(v, OUT) for v in views]
    return TrainStream(pixels, rows, labels, sampler, BATCH, augs, torch.device("cpu"),
                       torch.Generator().manual_seed(seed), sizes=sizes, **kw)


def _assert_same(a, b) -> None:
    assert len(a.views) == len(b.views)
    for va, vb in zip(a.views, b.views):
        assert va.dtype == vb.dtype and va.shape == vb.shape
        assert torch.equal(va, vb)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.indices, b.indices)


def _assert_same_generators(s1: TrainStream, s2: TrainStream) -> None:
    assert torch.equal(s1.generator.get_state(), s2.generator.get_state())


@pytest.mark.parametrize("sampler", ["instance", "class_balanced"])
@pytest.mark.parametrize("prefetch", [True, False])
def test_parallel_loaders_equal_the_sequential_one_over_two_epochs(sampler, prefetch) -> None:
    seq = _stream(sampler, workers=0)
    par = _stream(sampler, workers=2, prefetch=prefetch)
    assert par.prefetch is prefetch and seq.prefetch is False
    for _ in range(2):
        got, want = list(par), list(seq)
        assert len(got) == len(want) == 3
        for a, b in zip(got, want):
            _assert_same(a, b)
        _assert_same_generators(par, seq)
    # The views really are random (a loader that drew nothing would pass the above).
    assert not torch.equal(got[0].views[0][0], got[0].views[1][0])


def test_a_view_that_cannot_be_split_keeps_its_place_in_the_draw_order() -> None:
    # randaugment's draws and compute are interleaved: it runs whole, between the others' draws.
    views = ("contrastive", "randaugment", "standard")
    seq = _stream(views=views, workers=0)
    par = _stream(views=views, workers=2, prefetch=True)
    for _ in range(2):
        for a, b in zip(par, seq):
            _assert_same(a, b)
    _assert_same_generators(par, seq)


def test_an_epoch_abandoned_mid_prefetch_restores_the_generator() -> None:
    seq = _stream(workers=0)
    par = _stream(workers=1, prefetch=True)
    # Epoch 0: stop after the first batch while batch 1 is being made ahead (its draws are undone).
    for a, b in zip(par, seq):
        _assert_same(a, b)
        break
    _assert_same_generators(par, seq)
    # An iterator left open (never closed) with a batch in flight, then a new epoch started.
    open_par, open_seq = iter(par), iter(seq)
    _assert_same(next(open_par), next(open_seq))
    for a, b in itertools.zip_longest(par, seq):  # two full epochs' worth of checks
        _assert_same(a, b)
    _assert_same_generators(par, seq)
    del open_par, open_seq  # closing them late must not touch the generator again
    _assert_same_generators(par, seq)
    for a, b in itertools.zip_longest(par, seq):
        _assert_same(a, b)
    _assert_same_generators(par, seq)


def test_zipped_streams_as_the_trainer_uses_them() -> None:
    # zip stops at the first exhausted stream: the second is left suspended after its last batch.
    seq = [_stream("instance", workers=0, seed=1), _stream("class_balanced", views=("standard",), workers=0, seed=2)]
    par = [_stream("instance", workers=1, prefetch=True, seed=1),
           _stream("class_balanced", views=("standard",), workers=1, prefetch=True, seed=2)]
    for _ in range(2):
        for got, want in zip(zip(*par), zip(*seq)):
            for a, b in zip(got, want):
                _assert_same(a, b)
    for p, s in zip(par, seq):
        _assert_same_generators(p, s)


def test_split_jobs_in_any_order_equal_the_forward_call() -> None:
    aug = get_augmentation("contrastive", OUT)
    pixels, _, _, sizes = _data()
    images, sizes = torch.from_numpy(pixels[:N]).permute(0, 3, 1, 2), sizes[:N]
    want = aug(images, torch.Generator().manual_seed(5), sizes=sizes)
    out, jobs = aug.split(images, torch.Generator().manual_seed(5), sizes=sizes)
    assert len(jobs) == 3  # 45 images: chunks of 16, 16, 13
    for job in reversed(jobs):
        job()
    assert torch.equal(out, want)


def test_prefetch_only_when_the_threads_fit_in_the_cores() -> None:
    threads, cores = torch.get_num_threads(), available_cores()
    assert _stream(workers=1).prefetch is (1 + threads <= cores)
    assert _stream(workers=cores).prefetch is False  # the consumer needs at least one thread
    # the default: worker threads only where they pay (views of at least WORKERS_MIN_SIZE px)
    assert _stream().workers == (0 if OUT < WORKERS_MIN_SIZE else threads)
    assert _stream(workers=0, prefetch=True).prefetch is False  # nothing to prefetch with


def test_default_workers_follow_the_view_size() -> None:
    pixels, rows, labels, sizes = _data()
    for size, want in ((WORKERS_MIN_SIZE - 1, 0), (WORKERS_MIN_SIZE, torch.get_num_threads())):
        stream = TrainStream(pixels, rows, labels, "instance", BATCH, [get_augmentation("standard", size)],
                             torch.device("cpu"), torch.Generator().manual_seed(0), sizes=sizes)
        assert stream.workers == want, size


def _fresh_thread_num_threads() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_worker_threads_leave_the_consumer_thread_count_alone() -> None:
    before, fresh = torch.get_num_threads(), _fresh_thread_num_threads()
    list(_stream(workers=2, prefetch=True))
    assert torch.get_num_threads() == before
    assert _fresh_thread_num_threads() == fresh  # no process-wide change either (MKL, new threads)
    assert "mkl_get_max_threads() : 1" not in torch.__config__.parallel_info() or fresh == 1


def test_cuda_streams_keep_the_on_device_path() -> None:
    # Construction touches no CUDA state: the flags alone say no CPU workers, no prefetch.
    pixels, rows, labels, sizes = _data()
    s = TrainStream(pixels, rows, labels, "instance", BATCH, [get_augmentation("standard", OUT)],
                    torch.device("cuda"), torch.Generator().manual_seed(0), sizes=sizes, workers=2, prefetch=True)
    assert s.workers == 0 and s.prefetch is False


def test_bad_worker_count_is_one_clear_error() -> None:
    with pytest.raises(LtbenchError, match="workers"):
        _stream(workers=-1)


def test_a_one_chunk_batch_keeps_the_memory_format_of_the_sequential_path() -> None:
    # The model sees the same tensor layout too (a layout change could change a conv's bits).
    pixels, rows, labels, sizes = _data()
    for view in ("standard", "contrastive"):
        kw = dict(sizes=sizes)
        seq = TrainStream(pixels, rows, labels, "instance", 16, [get_augmentation(view, OUT)], torch.device("cpu"),
                          torch.Generator().manual_seed(0), workers=0, **kw)
        par = TrainStream(pixels, rows, labels, "instance", 16, [get_augmentation(view, OUT)], torch.device("cpu"),
                          torch.Generator().manual_seed(0), workers=2, prefetch=True, **kw)
        for a, b in zip(par, seq):
            _assert_same(a, b)
            assert a.views[0].stride() == b.views[0].stride()
