"""Tests of clrlib.device: the device policy, resolved once per run."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from clrlib import device as D
from clrlib import train as T


def _conv_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))


def test_train_reexports_the_policy_names():
    for name in ("default_device", "default_precision", "resolve_precision", "default_channels_last",
                 "resolve_compile", "autocast", "autocast_for", "cpu_has_native_bf16", "model_device",
                 "model_is_channels_last", "resolve_policy", "DevicePolicy", "PRECISIONS", "COMPILE_MODES"):
        assert getattr(T, name) is getattr(D, name), name


def test_policy_is_frozen_and_resolved_once(monkeypatch):
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    policy = D.resolve_policy("cpu", model=_conv_net())
    assert policy == D.DevicePolicy(device=torch.device("cpu"), precision="bf16", channels_last=True,
                                    compile=False, cudnn_benchmark=False, tf32=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.precision = "fp32"
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    assert D.resolve_policy("cpu").precision == "fp32"
    assert D.resolve_policy("cpu", amp=True).precision == "bf16"
    assert D.resolve_policy(None).device == D.default_device()


def test_channels_last_only_for_conv_nets_on_image_batches():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    conv1d = nn.Conv1d(3, 4, 3)
    assert D.resolve_policy("cpu", "fp32", model=_conv_net()).channels_last
    assert not D.resolve_policy("cpu", "fp32", model=mlp).channels_last
    assert not D.resolve_policy("cpu", "fp32", model=conv1d).channels_last
    assert not D.resolve_policy("mps", "fp32", model=_conv_net()).channels_last
    images, tokens = torch.zeros(2, 3, 8, 8), torch.zeros(2, 7, dtype=torch.long)
    assert D.resolve_policy("cpu", "fp32", model=_conv_net(), example_input=images).channels_last
    assert D.resolve_policy("cpu", "fp32", model=_conv_net(), example_input={"x": (tokens, images)}).channels_last
    assert not D.resolve_policy("cpu", "fp32", model=_conv_net(), example_input=tokens).channels_last
    assert not D.resolve_policy("cpu", "fp32", example_input=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).channels_last
    assert D.resolve_policy("cpu", "fp32", channels_last=True, model=mlp).channels_last  # asked: kept
    with pytest.raises(ValueError, match="channels_last") as info:
        D.resolve_policy("cpu", "fp32", channels_last="yes")
    assert "'yes'" in str(info.value)


def test_compile_and_backend_settings():
    cuda = D.resolve_policy("cuda", "fp32", compile=True)
    assert cuda.compile == "reduce-overhead" and cuda.cudagraphs and cuda.cudnn_benchmark and cuda.tf32 is False
    assert D.resolve_policy("cuda", "bf16").tf32 is None  # bf16: TF32 left as torch has it
    cpu = D.resolve_policy("cpu", "fp32", compile="reduce-overhead")
    assert cpu.compile == "reduce-overhead" and not cpu.cudagraphs and not cpu.cudnn_benchmark
    with pytest.raises(ValueError, match="compile") as info:
        D.resolve_policy("cpu", compile="fast")
    assert "'fast'" in str(info.value)
    with pytest.raises(ValueError, match="precision"):
        D.resolve_policy("cpu", precision="fp16")


def test_applied_sets_and_restores_the_backend_flags():
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        policy = dataclasses.replace(D.resolve_policy("cpu", "fp32"), cudnn_benchmark=True)
        with policy.applied():
            assert torch.backends.cudnn.benchmark
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            record = policy.record()
        assert record == {"device": "cpu", "precision": "fp32", "channels_last": True, "cudnn_benchmark": True,
                          "tf32_matmul": False, "tf32_cudnn": False}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark == flags[0]
        with pytest.raises(RuntimeError):  # restored on an error too
            with policy.applied():
                raise RuntimeError
        assert torch.backends.cuda.matmul.allow_tf32
        with D.resolve_policy("cpu", "bf16").applied():  # bf16: left alone
            assert torch.backends.cuda.matmul.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags
