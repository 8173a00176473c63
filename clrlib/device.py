"""The device policy: where and how training runs, decided once per run.

Every speed setting that depends on the hardware is resolved here, and only here:

* the device (:func:`default_device`: CUDA, then MPS, then the CPU);
* the precision (:func:`resolve_precision`): bf16 autocast on CUDA GPUs with native bf16 and
  on CPUs where it was measured to pay (:func:`cpu_has_native_bf16`), fp32 elsewhere;
* channels-last memory format (:func:`resolve_channels_last`): on CUDA and the CPU, and only
  for models with 4-d convolution weights (an MLP, a 1-d conv net or a text model never gets
  it), and for inputs, only their 4-d floating-point tensors (image batches);
* the ``torch.compile`` mode (:func:`resolve_compile`): CUDA graphs on CUDA, eager elsewhere;
* cuDNN's autotuner (``torch.backends.cudnn.benchmark``): on for a run on CUDA;
* TF32: off for matmul and cuDNN in an fp32 run, so that fp32 is true fp32; left as torch has
  it in a bf16 run.

:func:`resolve_policy` returns them as one frozen :class:`DevicePolicy`, which
:func:`clrlib.train.fit` and :func:`clrlib.train.evaluate` take and pass down; its
:meth:`~DevicePolicy.applied` context sets (and afterwards restores) the global backend flags.

Example:
    >>> import torch
    >>> mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    >>> policy = resolve_policy("cpu", "fp32", model=mlp)
    >>> policy.channels_last, policy.compile, policy.tf32
    (False, False, False)
    >>> resolve_policy("cpu", "fp32", model=torch.nn.Conv2d(3, 8, 3)).channels_last
    True
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "COMPILE_MODES", "CUDAGRAPH_MODES", "DevicePolicy", "resolve_policy",
           "default_device", "resolve_device", "cpu_flags", "cpu_vendor", "cpu_has_native_bf16", "cuda_has_native_bf16",
           "default_precision", "resolve_precision", "precision_and_amp", "autocast", "autocast_for",
           "default_channels_last", "has_conv2d_weights", "has_image_tensor", "resolve_channels_last",
           "resolve_compile", "model_device", "model_is_channels_last", "backend_flags"]

PRECISIONS = ("bf16", "fp32")
# torch.compile's modes; the first two of CUDAGRAPH_MODES replay CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device a user named (``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``; None: :func:`default_device`),
    or a ValueError naming it and the devices this machine has, when it is not one or is absent."""
    if name is None or name == "":
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r} is not a device name ({e}); {_available()}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; {_available()}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s); {_available()}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} asked for, but MPS is not available here; {_available()}")
    return device


def _available() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return f"available: {', '.join(names)} (or None for the default, {default_device()})"


def default_device() -> torch.device:
    """CUDA if available, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --- precision ---------------------------------------------------------------------------------

def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags that Linux lists in ``path`` (empty where there is no such file).

    Args:
        path: a file in the format of ``/proc/cpuinfo`` (``flags : fpu vme ...`` lines).
    """
    try:
        with open(path) as f:
            return {word for line in f if line.startswith("flags") for word in line.split(":", 1)[-1].split()}
    except OSError:
        return set()


def cpu_vendor(path: str = "/proc/cpuinfo") -> str:
    """The CPU's ``vendor_id`` as Linux lists it (e.g. "AuthenticAMD", "GenuineIntel"), or "".

    Args:
        path: a file in the format of ``/proc/cpuinfo``.
    """
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: AMX-BF16, or AVX512_BF16 on an AMD CPU.

    Measured on this project's 2-core machines (ResNet-20, batch 128 to 256, one training step):
    an AMD EPYC with AVX512_BF16 trained 2.4x faster in bf16 + channels-last than in fp32; an
    Intel Xeon with AVX512_BF16 but no AMX trained at 563 img/s in bf16 + channels-last against
    693 in fp32 + channels-last, so there bf16 is no gain and fp32 stays the default. AMX
    (Intel's matrix units) is where oneDNN's bf16 kernels are fastest. Reads the flags of
    ``/proc/cpuinfo`` (Linux) and torch's CPU capability string; False where neither tells.
    """
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    flags = cpu_flags()
    if "AMX" in capability or "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD"


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (Ampere and later)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation
        return torch.cuda.is_bf16_supported()


def default_precision(device: str | torch.device) -> str:
    """``"bf16"`` on a CUDA GPU with bf16 (Ampere and later) or a CPU with native bf16, else ``"fp32"``.

    Args:
        device: the device training runs on (MPS gets ``"fp32"``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """The precision to train in: ``precision`` checked, or the device's default.

    Args:
        precision: ``"bf16"`` (bf16 autocast), ``"fp32"``, or None / ``"auto"`` for
            :func:`default_precision` of ``device``.
        device: the device training runs on.

    Raises:
        ValueError: for any other value.
    """
    if precision is None or precision == "auto":
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, 'auto' or None, got {precision!r}")
    return precision


def precision_and_amp(precision: str | None, amp: bool | None, device: str | torch.device) -> str:
    """Resolve ``precision`` with the older ``amp`` flag as an alias (True: bf16, False: fp32).

    Args:
        precision: as for :func:`resolve_precision`.
        amp: None (use ``precision``), True (``"bf16"``) or False (``"fp32"``).
        device: the device training runs on.

    Raises:
        ValueError: for a bad value, or a ``precision`` that contradicts ``amp``.
    """
    if amp is None:
        return resolve_precision(precision, device)
    if not isinstance(amp, bool):
        raise ValueError(f"amp must be True, False or None, got {amp!r}")
    from_amp = "bf16" if amp else "fp32"
    if precision not in (None, "auto") and resolve_precision(precision, device) != from_amp:
        raise ValueError(f"precision={precision!r} contradicts amp={amp!r} (amp=True means 'bf16', "
                         "amp=False 'fp32'); pass only precision")
    return from_amp


def autocast(device: str | torch.device, enabled: bool | None = None):
    """bf16 autocast on CUDA (default), nothing elsewhere unless ``enabled`` is True.

    Args:
        device: the device the forward pass runs on.
        enabled: None: on for CUDA only.
    """
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def autocast_for(precision: str | None, device: str | torch.device):
    """The autocast context of a precision: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``.

    Args:
        precision: as for :func:`resolve_precision` (None: the device's default).
        device: the device the forward pass runs on.
    """
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# --- channels-last -----------------------------------------------------------------------------

def default_channels_last(device: str | torch.device, precision: str) -> bool:
    """Whether channels-last pays on a device, for a conv net on image batches: on CUDA and on
    the CPU (oneDNN's fast layout: ResNet-20 trained at 693 img/s channels-last against 548 in
    NCHW, fp32, on this project's Intel Xeon). See :func:`resolve_channels_last` for the model.

    Args:
        device: the training device.
        precision: the resolved precision, ``"bf16"`` or ``"fp32"``.
    """
    return torch.device(device).type in ("cuda", "cpu")


def has_conv2d_weights(model: nn.Module) -> bool:
    """Whether ``model`` has a 4-d weight (a 2-d convolution's), the only kind channels-last changes."""
    return any(p.dim() == 4 for p in model.parameters())


def has_image_tensor(inputs) -> bool:
    """Whether ``inputs`` (a tensor, or nested tuples, lists, dicts) holds a 4-d floating-point tensor."""
    if isinstance(inputs, torch.Tensor):
        return inputs.dim() == 4 and inputs.is_floating_point()
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else ()
    return any(has_image_tensor(v) for v in values)


def resolve_channels_last(channels_last: bool | None, device: str | torch.device, precision: str,
                          model: nn.Module | None = None, example_input=None) -> bool:
    """Whether to use channels-last: ``channels_last`` if given, else where it applies and pays.

    Args:
        channels_last: True / False to decide; None: :func:`default_channels_last` of the device,
            and only for a model with 4-d conv weights (if ``model`` is given) and inputs with a
            4-d floating-point tensor (if ``example_input`` is given).
        device, precision: the training device and the resolved precision.
        model: the network, if known.
        example_input: a batch's inputs, if known.

    Raises:
        ValueError: for a ``channels_last`` that is not None or a bool.
    """
    if channels_last is not None:
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be True, False or None, got {channels_last!r}")
        return channels_last
    if not default_channels_last(device, precision):
        return False
    if model is not None and not has_conv2d_weights(model):
        return False
    return example_input is None or has_image_tensor(example_input)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d weights are in channels-last memory format (False without any)."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


# --- compile -----------------------------------------------------------------------------------

def resolve_compile(compile: bool | str | None, device: str | torch.device) -> str | bool:
    """The ``torch.compile`` mode to use, or False for eager.

    Args:
        compile: None: ``"reduce-overhead"`` (CUDA graphs) on CUDA where Triton is installed,
            eager elsewhere; True: the device's mode (``"reduce-overhead"`` on CUDA,
            ``"default"`` elsewhere); False: eager; or one of :data:`COMPILE_MODES`.
        device: the training device.

    Raises:
        ValueError: for any other value.
    """
    device = torch.device(device)
    if compile is None:
        on = device.type == "cuda" and importlib.util.find_spec("triton") is not None
        return "reduce-overhead" if on else False
    if compile is False:
        return False
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise ValueError(f"compile must be None, True, False or one of {COMPILE_MODES}, got {compile!r}")


# --- the policy --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePolicy:
    """How one run uses its device, resolved once by :func:`resolve_policy`.

    Attributes:
        device: the training device.
        precision: ``"bf16"`` (bf16 autocast) or ``"fp32"``.
        channels_last: the model's weights, and the inputs' 4-d floating-point tensors, in
            channels-last memory format.
        compile: the ``torch.compile`` mode, or False for eager.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` during the run.
        tf32: TF32 for matmul and cuDNN during the run: False (off: true fp32), True (on), or
            None (left as torch has it).
    """

    device: torch.device
    precision: str
    channels_last: bool
    compile: str | bool
    cudnn_benchmark: bool
    tf32: bool | None

    def autocast(self):
        """The autocast context of the run's precision (nothing for fp32)."""
        return autocast_for(self.precision, self.device)

    @property
    def cudagraphs(self) -> bool:
        """Whether the compile mode replays CUDA graphs on this device."""
        return self.device.type == "cuda" and self.compile in CUDAGRAPH_MODES

    def applied(self) -> contextlib.AbstractContextManager:
        """A context that sets cuDNN's autotuner and TF32 as the policy says, and restores them."""
        return backend_flags(cudnn_benchmark=self.cudnn_benchmark, tf32=self.tf32)

    def record(self) -> dict:
        """The policy as plain values (for a run's record), with the TF32 flags in effect now."""
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


@contextlib.contextmanager
def backend_flags(cudnn_benchmark: bool | None = None, tf32: bool | None = None) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` and the TF32 flags (matmul and cuDNN) for a block.

    Args:
        cudnn_benchmark: the autotuner's flag, or None to leave it.
        tf32: ``allow_tf32`` of ``torch.backends.cuda.matmul`` and ``torch.backends.cudnn``, or
            None to leave them.
    """
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def resolve_policy(device: str | torch.device | None = None, precision: str | None = None,
                   channels_last: bool | None = None, compile: bool | str | None = None,
                   model: nn.Module | None = None, example_input=None, *,
                   amp: bool | None = None) -> DevicePolicy:
    """Resolve every device-dependent setting of a run at once.

    Args:
        device: default :func:`default_device`.
        precision: see :func:`resolve_precision` (None: the device's default).
        channels_last: see :func:`resolve_channels_last` (None: where it applies and pays).
        compile: see :func:`resolve_compile` (None: CUDA graphs on CUDA, eager elsewhere).
        model: the network, so that channels-last goes only to a model with 4-d conv weights.
        example_input: a batch's inputs, so that channels-last goes only to image batches.
        amp: older alias of ``precision`` (True: ``"bf16"``, False: ``"fp32"``).

    Raises:
        ValueError: for a bad setting (the message names it and its value).
    """
    device = torch.device(device) if device is not None else default_device()
    precision = precision_and_amp(precision, amp, device)
    return DevicePolicy(
        device=device, precision=precision,
        channels_last=resolve_channels_last(channels_last, device, precision, model, example_input),
        compile=resolve_compile(compile, device), cudnn_benchmark=device.type == "cuda",
        tf32=False if precision == "fp32" else None)
