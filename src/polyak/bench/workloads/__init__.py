"""Workloads of the benchmark: one module per task (see base.py for the contract)."""
from .base import SIZES, Budget, Workload, WorkloadInstance, all_workloads, get_workload, register_workload

__all__ = ["SIZES", "Budget", "Workload", "WorkloadInstance", "all_workloads", "get_workload", "register_workload"]
