"""The compiled path of clrlib.train.fit (torch.compile, inductor on the CPU) against eager.

One compilation serves the whole module (train graph + two eval shapes), about 15-40 s on a
2-core CPU; inductor needs a C compiler (gcc). Measured on a 2-core Xeon (AVX512), torch 2.14:
the 20 step losses of compiled and eager ResNet-8 in fp32 at LR 0.05 differ by at most 4.7e-4
relatively (float reassociation, amplified by training); the test allows 2e-3.
"""
from __future__ import annotations

import shutil
from functools import partial

import pytest
import torch

from clrlib import train as T
from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.models import resnet_cifar
from clrlib.schedules import one_cycle

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="inductor on the CPU needs a C compiler")

STEPS = 20
BATCH = 32
REL_TOL = 2e-3
DATA = synthetic_cifar10(STEPS * BATCH, 80, seed=0)  # 80 test images: batches of 32, 32 and 16


def unique_graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def run(compile, model_seed: int = 0, epochs: int = 1):
    """ResNet-8 in fp32 on fresh loaders (so every run sees the same batches)."""
    x, y, xt, yt = DATA
    train = CifarLoader(x, y, batch_size=BATCH, device="cpu", seed=0)
    test = CifarLoader(xt, yt, batch_size=BATCH, train=False, device="cpu")
    fn = partial(one_cycle, total_steps=epochs * len(train), max_lr=0.05)
    torch.manual_seed(model_seed)
    model = resnet_cifar(8)
    return T.fit(model, train, epochs, fn, test_loader=test, device="cpu", precision="fp32",
                 channels_last=False, compile=compile, progress=False)


@pytest.fixture(scope="module")
def runs():
    """Graph counts after a first compiled run, after a second one on a new model instance
    (two epochs: eval twice), and the eager run of the first."""
    T.clear_compile_cache()  # also torch._dynamo.reset()
    before = unique_graphs()
    first = run(True)
    after_first = unique_graphs()
    second = run(True, model_seed=1, epochs=2)
    after_second = unique_graphs()
    eager = run(False)
    yield {"first": first, "second": second, "eager": eager,
           "graphs": (after_first - before, after_second - after_first)}
    T.clear_compile_cache()


def test_compiles_once_per_architecture(runs):
    first, again = runs["graphs"]
    assert first == 3  # the train step, and eval at batch 32 and at the last batch of 16
    assert again == 0  # a new instance, two epochs of train/eval switches: nothing recompiled
    assert len(T._COMPILED) == 1


def test_compiled_and_eager_losses_agree(runs):
    compiled, eager = runs["first"], runs["eager"]
    assert len(compiled) == len(eager) == STEPS
    assert compiled["loss"].iloc[0] == pytest.approx(eager["loss"].iloc[0], rel=1e-5)
    assert compiled["loss"].tolist() == pytest.approx(eager["loss"].tolist(), rel=REL_TOL)
    table, eager_table = T.epoch_table(compiled), T.epoch_table(eager)
    assert table["test_loss"].tolist() == pytest.approx(eager_table["test_loss"].tolist(), rel=1e-2)


def test_compiled_schedule_log_is_exact(runs):
    compiled, eager = runs["first"], runs["eager"]
    for col in ("step", "epoch", "lr", "momentum"):
        assert compiled[col].tolist() == eager[col].tolist()


def test_settings_recorded(runs):
    record = runs["first"].attrs["fit"]
    assert {k: record[k] for k in ("precision", "compile", "channels_last", "device")} == {
        "precision": "fp32", "compile": "default", "channels_last": False, "device": "cpu"}
    assert record["compile_asked"] == "default" and record["compile_fallback"] is None
    assert record["graphs_compiled"] == 3 and record["cudagraph_skips"] == 0
    assert record["cold_compile_seconds"] > 0  # the first step's compilation
    assert runs["second"].attrs["fit"]["graphs_compiled"] == 0  # reused
    assert runs["eager"].attrs["fit"]["compile"] is False
    assert runs["second"]["loss"].notna().all()


def test_evaluate_reuses_the_compiled_code(runs):
    torch.manual_seed(2)
    model = resnet_cifar(8)
    _, _, xt, yt = DATA
    test = CifarLoader(xt, yt, batch_size=BATCH, train=False, device="cpu")
    before = unique_graphs()
    compiled = T.evaluate(model, test, precision="fp32", compile=True)
    assert unique_graphs() == before
    eager = T.evaluate(model, test, precision="fp32")
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)
    assert compiled[1] == eager[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_path():
    """fit's CUDA default (mode reduce-overhead): CUDA graphs really used, compiled once per
    architecture, losses close to eager's (bf16 autocast, so a loose tolerance)."""
    from torch._dynamo.utils import counters

    x, y, xt, yt = DATA

    def cuda_run(compile, model_seed=0):
        train = CifarLoader(x, y, batch_size=BATCH, device="cuda", seed=0)
        test = CifarLoader(xt, yt, batch_size=BATCH, train=False, device="cuda")
        fn = partial(one_cycle, total_steps=len(train), max_lr=0.05)
        torch.manual_seed(model_seed)
        return T.fit(resnet_cifar(8), train, 1, fn, test_loader=test, device="cuda", compile=compile,
                     progress=False)

    T.clear_compile_cache()
    skips, before = counters["inductor"]["cudagraph_skips"], unique_graphs()
    graphed = cuda_run(None)
    first = unique_graphs() - before
    cuda_run(None, model_seed=1)
    assert graphed.attrs["fit"]["compile"] == "reduce-overhead"
    assert counters["inductor"]["cudagraph_skips"] == skips  # no fallback to non-graph code
    assert first == 3 and unique_graphs() - before == first
    eager = cuda_run(False)
    assert graphed["loss"].notna().all()
    assert graphed["loss"].tolist() == pytest.approx(eager["loss"].tolist(), rel=5e-2)
    assert graphed["lr"].tolist() == eager["lr"].tolist()
    T.clear_compile_cache()
