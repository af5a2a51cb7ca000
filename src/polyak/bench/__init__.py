"""polyak.bench: the benchmark and reproduction harness (needs the `bench` extra)."""
