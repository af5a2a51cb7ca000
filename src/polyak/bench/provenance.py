"""Where a trial ran: seeds, the git SHA, the device, package versions, timestamps
(what a record says about its own provenance)."""
from __future__ import annotations

import datetime as _dt
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import torch

import polyak

__all__ = ["seed_everything", "git_sha", "DeviceUnavailable", "check_device", "describe_device",
           "package_versions", "utcnow"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


_GIT_SHA: Dict[str, Optional[str]] = {}


def git_sha() -> Optional[str]:
    """SHA of the checkout polyak is imported from (None outside a git checkout)."""
    if "sha" not in _GIT_SHA:
        source_dir = Path(polyak.__file__).resolve().parent
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, timeout=10)
            _GIT_SHA["sha"] = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _GIT_SHA["sha"] = None
    return _GIT_SHA["sha"]


class DeviceUnavailable(ValueError):
    """The requested torch device cannot be used in this process."""


def check_device(device: Optional[str]) -> None:
    """Raise DeviceUnavailable unless ``device`` (None: the default) can hold a tensor here;
    sweeps call it before their first trial, so a wrong --device fails at once."""
    if device is None:
        return
    try:
        torch.empty(1, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as error:
        cuda = "" if torch.cuda.is_available() else f"; this torch {torch.__version__} sees no CUDA device"
        raise DeviceUnavailable(f"device {device!r} is not usable here ({str(error).splitlines()[0]}){cuda}. "
                                "Pass --device cpu, or omit --device to use CUDA when available, else the CPU") from None


def describe_device(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def package_versions(source: str, version: Optional[str]) -> Dict[str, Optional[str]]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "polyak": polyak.__version__}
    if source not in ("polyak", "torch"):
        versions[source] = version
    return versions


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
