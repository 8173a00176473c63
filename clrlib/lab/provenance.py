"""Where and with what a run was made: the commit, the device, the host and library versions."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["git_commit", "machine_info", "cpu_name"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """The commit of the working tree (``+dirty`` with uncommitted changes).

    Where the tree has no ``.git`` (a copy on a remote GPU machine) it is ``$CLRLIB_COMMIT``;
    "unknown" if neither tells.
    """
    if not (REPO_ROOT / ".git").exists() and os.environ.get("CLRLIB_COMMIT"):
        return os.environ["CLRLIB_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("CLRLIB_COMMIT", "unknown")


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name where Linux tells it (with the core count), else the platform's word."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """Device, host and library versions, for the record of a run."""
    import torchvision
    device = torch.device(device)
    info = {"device": str(device), "host": platform.node(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return info
