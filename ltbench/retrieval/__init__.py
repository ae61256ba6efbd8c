"""Retrieval: rank the training split for every test image, from a run's stored representations.

Public face: :func:`retrieval_metrics` and :func:`p10_r4_macro` (pure functions of embeddings and
labels, ``metrics``), :class:`RetrievalSettings` (the benchmark's ``retrieval:``) and
:func:`retrieval_pass` with :func:`embedding_path` (the run's pass after its test pass, ``run_pass``).
docs/retrieval.md describes the protocol.
"""
from ltbench.retrieval.metrics import p10_r4_macro, retrieval_metrics
from ltbench.retrieval.run_pass import RetrievalSettings, embedding_path, retrieval_pass

__all__ = ["RetrievalSettings", "embedding_path", "p10_r4_macro", "retrieval_metrics", "retrieval_pass"]
