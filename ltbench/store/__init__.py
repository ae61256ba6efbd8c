"""What a run leaves on disk, and how it is written: ``files`` (atomic writes and their file mode),
``claims`` (per-run claims, so two benches on one folder never train the same run) and
``checkpoint`` (per-epoch checkpoints of an unfinished run, RNG states, the test kill points)."""
