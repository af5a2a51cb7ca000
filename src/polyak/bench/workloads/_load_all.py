"""Importing this module registers every workload (the workloads helper lists its modules here)."""
