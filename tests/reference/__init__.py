"""Reference code the tests compare the current code with in the same process (never run by ltbench).

``augment_1210f97`` / ``randaugment_1210f97``: the CPU augmentation presets before issue 11's
speed-ups (commit 1210f97); tests/test_augment_exact.py checks that today's presets give the same
bits. A pinned hash of their output would hold on one CPU only (tests/README.md).
"""
