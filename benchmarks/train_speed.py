"""Training speed of clrlib.train.fit: eager against torch.compile, side by side in one run.

ResNet-(depth) with 1x1-conv shortcuts on CIFAR-shaped random uint8 images kept on the device
(:class:`clrlib.data.CifarLoader`, augmentation on, the last partial batch kept as in the full
profile), trained with the default SGD at a constant LR in each mode:

* ``eager``: no compilation;
* ``compiled``: ``torch.compile`` in its default mode (inductor, no CUDA graphs);
* ``cudagraphs``: mode ``"reduce-overhead"`` (CUDA graphs; CUDA only) -- fit's default on CUDA.

For each mode: seconds per epoch (median of the epochs after the first), compile time (first
epoch minus that), images per second, peak memory, and the projected training time of the full
profile. The table is printed and written, with the torch version, device, date and commit, to
``results/benchmarks/<device>.json``.

Defaults: on CUDA, ResNet-56, all 50,000 images, batch 512, 5 epochs; on the CPU a reduced size
(ResNet-20, 10,240 images, batch 256, 3 epochs: the quick profile's epoch; at 2,048 images compilation
looked 1.19x faster on a 2-core CPU, at 10,240 it was no faster). Examples::

    python benchmarks/train_speed.py                       # the device's defaults
    python benchmarks/train_speed.py --depth 56 --images 50000 --batch 512 --epochs 4
    python benchmarks/train_speed.py --modes eager compiled --precision fp32 --channels-last on
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from clrlib import train as T
from clrlib.data import CifarLoader
from clrlib.models import resnet_cifar

ROOT = Path(__file__).resolve().parents[1]


def full_profile_epochs() -> int:
    """The full profile's training work in ResNet-56 epochs: the sum over its plans' runs."""
    from clrlib.lab.doctor import profile_epochs
    return round(profile_epochs("full"))


FULL_PROFILE_EPOCHS = full_profile_epochs()
FULL_EPOCH_IMAGES = 50_000  # CIFAR-10's training set, the full profile's epoch
MODES = {"eager": False, "compiled": "default", "cudagraphs": "reduce-overhead"}
CPU_DEFAULTS = {"depth": 20, "images": 10240, "batch": 256, "epochs": 3}
CUDA_DEFAULTS = {"depth": 56, "images": FULL_EPOCH_IMAGES, "batch": 512, "epochs": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes left out take the device's defaults."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, cpu or mps (default: the best available)")
    p.add_argument("--depth", type=int, help="ResNet depth, 6n+2 (CUDA 56, CPU 20)")
    p.add_argument("--images", type=int, help="training images per epoch (CUDA 50000, CPU 10240)")
    p.add_argument("--batch", type=int, help="batch size (CUDA 512, CPU 256)")
    p.add_argument("--epochs", type=int, help="epochs per mode, the first one warms up (CUDA 5, CPU 3)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), help="default: all the device supports")
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: the device's")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="channels-last memory format (auto: fit's default for the device and precision)")
    p.add_argument("--total-epochs", type=int, default=FULL_PROFILE_EPOCHS,
                   help=f"epochs of the full profile, for the projection (default {FULL_PROFILE_EPOCHS})")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks", help="folder for the JSON")
    args = p.parse_args(argv)
    args.device = torch.device(args.device) if args.device else T.default_device()
    defaults = CUDA_DEFAULTS if args.device.type == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.epochs < 2:
        p.error(f"--epochs must be at least 2 (one to warm up), got {args.epochs}")
    if args.modes is None:
        args.modes = [m for m in MODES if m != "cudagraphs" or args.device.type == "cuda"]
    elif "cudagraphs" in args.modes and args.device.type != "cuda":
        p.error(f"mode cudagraphs needs CUDA, the device is {args.device}")
    return args


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} cores)"


def commit() -> str:
    """``$CLRLIB_COMMIT``, else the checkout's HEAD (``+dirty`` with uncommitted changes), else "unknown"."""
    if os.environ.get("CLRLIB_COMMIT"):
        return os.environ["CLRLIB_COMMIT"]
    try:
        git = ["git", "-C", str(ROOT)]
        sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout
        return sha.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: torch's peak allocation since the last reset; else the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def bench_mode(mode: str, args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Train a fresh model in one mode; its timings, memory and the settings fit used."""
    T.clear_compile_cache()  # each compiled mode pays its own compilation (inductor's disk cache aside)
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    loader = CifarLoader(images, labels, batch_size=args.batch, device=args.device, seed=0, drop_last=False)
    torch.manual_seed(0)
    model = resnet_cifar(args.depth, "B")
    skips = counters["inductor"]["cudagraph_skips"]
    start = time.perf_counter()
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    history = T.fit(model, loader, args.epochs, lr=0.05, device=args.device, precision=args.precision,
                    channels_last=channels_last, compile=MODES[mode], progress=False)
    wall = time.perf_counter() - start
    seconds = T.epoch_table(history)["seconds"].tolist()
    steady = statistics.median(seconds[1:])
    per_image = steady / loader.num_images
    return {"mode": mode, "compile": history.attrs["fit"]["compile"], "epoch_seconds": seconds,
            "seconds_per_epoch": steady, "compile_seconds": seconds[0] - steady,
            "images_per_second": loader.num_images / steady, "peak_memory_mib": peak_memory_mib(args.device),
            "wall_seconds": wall,
            "projected_full_profile_hours": per_image * FULL_EPOCH_IMAGES * args.total_epochs / 3600,
            "final_loss": float(history["loss"].iloc[-1]), "fit": history.attrs["fit"],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips}  # >0: graphs not used


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def print_table(results: list[dict], memory: str) -> None:
    """One line per mode."""
    head = f"{'mode':<11} {'s/epoch':>8} {'compile s':>9} {'img/s':>8} {memory:>16} {'full profile h':>14}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['mode']:<11} {r['seconds_per_epoch']:>8.3f} {r['compile_seconds']:>9.1f} "
              f"{r['images_per_second']:>8.0f} {r['peak_memory_mib']:>16.0f} "
              f"{r['projected_full_profile_hours']:>14.2f}")


def main(argv: list[str] | None = None) -> dict:
    """Run the modes, print the table, write the JSON; returns what was written."""
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    results = [bench_mode(mode, args, images, labels) for mode in args.modes]
    name = device_name(args.device)
    report = {
        "benchmark": "train_speed", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(args.device), "device_name": name, "torch_threads": torch.get_num_threads(),
        "inductor_caches_disabled": os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1",
        "settings": {"depth": args.depth, "shortcut": "B", "images": args.images, "batch": args.batch,
                     "epochs": args.epochs, "precision": results[0]["fit"]["precision"],
                     "channels_last": results[0]["fit"]["channels_last"],
                     "augment": True, "drop_last": False, "total_epochs": args.total_epochs},
        "notes": ("seconds_per_epoch: median over the epochs after the first (training only, no "
                  "evaluation); compile_seconds: first epoch minus that; projected_full_profile_hours: "
                  f"seconds per image x {FULL_EPOCH_IMAGES} images x total_epochs, at this run's depth; "
                  "peak_memory_mib: torch.cuda.max_memory_allocated on CUDA, else the process's peak RSS "
                  "so far (cumulative over the modes, in the order run)"),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.device.type}-{slug(name)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{name}, torch {torch.__version__}, ResNet-{args.depth}, {args.images} images, "
          f"batch {args.batch}, {report['settings']['precision']}, channels-last "
          f"{report['settings']['channels_last']}, {args.epochs} epochs per mode")
    print_table(results, "peak MiB (CUDA)" if args.device.type == "cuda" else "peak RSS MiB")
    print(f"written to {path}")
    return report


if __name__ == "__main__":
    main()
