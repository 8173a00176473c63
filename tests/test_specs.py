"""Run specifications: the post's defaults, the content hash, validation, serialisation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from clrlib.lab import specs
from clrlib.lab.specs import (DataSpec, FinderSpec, ModelSpec, ScheduleSpec, SpecError, TrainSpec,
                          spec_from_dict)

ONE_CYCLE = ScheduleSpec.make("one_cycle", max_lr=0.8, annihilate=0.1368)


def bound(**changes) -> TrainSpec:
    """The post's 1cycle run, bound (fp32, a made-up data fingerprint), with ``changes``."""
    spec = TrainSpec(ONE_CYCLE, 95, precision="fp32", data=DataSpec(fingerprint="0123456789abcdef"))
    return spec.replace(**changes)


# --- defaults ------------------------------------------------------------------------------------

def test_defaults_are_the_posts_settings():
    spec = TrainSpec(ONE_CYCLE, epochs=95)
    assert spec.model == ModelSpec(56, "B", "post")
    assert spec.data.dataset == "cifar10" and spec.data.n_train == 50_000 and spec.data.n_test == 10_000
    assert spec.batch_size == 512 and spec.weight_decay == 1e-4 and spec.momentum == 0.9
    assert spec.drop_last is False and spec.seed == 0
    assert spec.steps_per_epoch == 98 and spec.total_steps == 9310  # last partial batch kept
    fn = spec.schedule_fn()
    assert [round(fn(s)[0], 4) for s in (0, 4018, 9310)] == [0.08, 0.8, 0.0008]  # the peak is at 4018.1
    finder = FinderSpec()
    assert (finder.model, finder.batch_size, finder.weight_decay) == (ModelSpec(), 512, 1e-4)
    assert (finder.start_lr, finder.end_lr, finder.endpoint) == (1e-5, 100.0, False)


def test_drop_last_changes_the_steps_per_epoch():
    assert bound(drop_last=True).steps_per_epoch == 97
    assert bound(data={"train_subset": 10240}, batch_size=256).steps_per_epoch == 40


def test_cyclic_step_epochs_become_a_step_size():
    sched = ScheduleSpec.make("cyclic", base_lr=0.08, max_lr=0.8, step_epochs=4, mode="triangular2")
    spec = TrainSpec(sched, 48)
    fn = spec.schedule_fn()
    assert fn(0) == pytest.approx(0.08)
    assert fn(4 * 98) == pytest.approx(0.8)          # the top of the first cycle, 4 epochs in
    assert fn(8 * 98) == pytest.approx(0.08)
    assert fn(2 * 98) == pytest.approx(0.44)
    # the same spec at another batch size: still 4 epochs per half cycle
    fn256 = spec.replace(batch_size=256).schedule_fn()
    assert fn256(4 * 196) == pytest.approx(0.8)
    # half an epoch of 98 steps: 49 steps
    half = ScheduleSpec.make("cyclic", base_lr=0.1, max_lr=1.0, step_epochs=0.5)
    assert half.function(98, 4)(49) == pytest.approx(1.0)


def test_cyclic_step_size_in_steps_is_accepted():
    sched = ScheduleSpec.make("cyclic", base_lr=0.08, max_lr=0.8, step_size=392)
    assert TrainSpec(sched, 48).schedule_fn()(392) == pytest.approx(0.8)
    assert sched == ScheduleSpec.make("cyclic", base_lr=0.08, max_lr=0.8, step_size=392.0)


# --- key -----------------------------------------------------------------------------------------

def test_key_is_stable_across_processes():
    spec = bound(seed=3, schedule=ScheduleSpec.make("one_cycle", max_lr=3, div=20, moms=[0.95, 0.85]))
    code = ("import json, sys; from clrlib.lab.specs import spec_from_dict; "
            "print(spec_from_dict(json.loads(sys.argv[1])).key())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec.to_dict())], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == spec.key()
    assert len(spec.key()) == 16 and int(spec.key(), 16) >= 0


def test_key_does_not_see_3_versus_3_point_0_nor_lists_versus_tuples():
    a = bound(schedule=ScheduleSpec.make("one_cycle", max_lr=3, div=20, moms=[0.95, 0.85]))
    b = bound(schedule=ScheduleSpec.make("one_cycle", max_lr=3.0, div=20.0, moms=(0.95, 0.85)))
    assert a == b and a.key() == b.key()
    assert bound(weight_decay=0).key() == bound(weight_decay=0.0).key()


def test_key_does_not_see_paths_or_devices(tmp_path):
    from clrlib.lab.runs import Lab
    spec = TrainSpec(ONE_CYCLE, 1, precision="fp32", model=ModelSpec(8), batch_size=32,
                     data=DataSpec("synthetic", synthetic_train=64, synthetic_test=32))
    one = Lab(tmp_path / "a", device="cpu").bind(spec)
    two = Lab(tmp_path / "elsewhere" / "b", data_root=tmp_path / "data", device=torch.device("cpu")).bind(spec)
    assert one.key() == two.key()
    assert str(tmp_path) not in json.dumps(one.to_dict())


@pytest.mark.parametrize("changes", [
    dict(seed=1),
    dict(model={"init": "kaiming"}),
    dict(model={"shortcut": "A"}),
    dict(model={"depth": 20}),
    dict(precision="bf16"),
    dict(data={"fingerprint": "fedcba9876543210"}),
    dict(data={"train_subset": 10000}),
    dict(schedule=ScheduleSpec.make("one_cycle", max_lr=0.8, annihilate=0.1)),
    dict(schedule=ScheduleSpec.make("one_cycle_cosine", max_lr=0.8)),
    dict(drop_last=True),
    dict(batch_size=256),
    dict(weight_decay=5e-4),
    dict(momentum=0.95),
    dict(epochs=50),
])
def test_key_changes_with_every_outcome_setting(changes):
    assert bound(**changes).key() != bound().key()


def test_key_changes_with_the_semantics_version(monkeypatch):
    before = bound().key()
    monkeypatch.setattr(specs, "SEMANTICS_VERSION", specs.SEMANTICS_VERSION + 1)
    assert bound().key() != before


def test_training_and_finder_specs_never_share_a_key():
    data = DataSpec(fingerprint="0123456789abcdef")
    finder = FinderSpec(precision="fp32", data=data)
    assert finder.key() != bound().key()
    assert finder.replace(num_it=50).key() != finder.key()
    assert finder.replace(stop_factor=None).key() != finder.key()


def test_key_refuses_an_unbound_spec():
    with pytest.raises(SpecError, match="precision='auto'.*Lab.bind"):
        bound(precision="auto").key()
    with pytest.raises(SpecError, match="fingerprint=''"):
        bound(data={"fingerprint": ""}).key()
    with pytest.raises(SpecError, match="bound"):
        FinderSpec(precision="fp32").key()


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, names", [
    (lambda: TrainSpec(ONE_CYCLE, 95, weight_decay="5e-4"), ["weight_decay", "'5e-4'"]),
    (lambda: TrainSpec(ONE_CYCLE, "ten"), ["epochs", "'ten'"]),
    (lambda: TrainSpec(ONE_CYCLE, 0), ["epochs", "0"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, model=ModelSpec(57)), ["depth", "57"]),
    (lambda: ModelSpec(56, "C"), ["shortcut", "'C'"]),
    (lambda: ModelSpec(56, "B", "xavier"), ["init", "'xavier'"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, precision="fp16"), ["precision", "'fp16'"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, batch_size=512.0), ["batch_size", "512.0"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, momentum=1.0), ["momentum", "1.0"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, seed=-1), ["seed", "-1"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, seed=True), ["seed", "True"]),
    (lambda: TrainSpec(ONE_CYCLE, 1, drop_last="no"), ["drop_last", "'no'"]),
    (lambda: TrainSpec("one_cycle", 1), ["schedule", "'one_cycle'"]),
    (lambda: DataSpec("imagenet"), ["dataset", "'imagenet'"]),
    (lambda: DataSpec(train_subset=60_000), ["train_subset", "60000"]),
    (lambda: DataSpec(fingerprint=5), ["fingerprint", "5"]),
    (lambda: ScheduleSpec.make("warmup"), ["name", "'warmup'"]),
    (lambda: ScheduleSpec.make("one_cycle", max_lr=0.8, total_steps=100), ["total_steps"]),
    (lambda: ScheduleSpec("one_cycle", (("max_lr", float("nan")),)), ["max_lr", "nan"]),
    (lambda: FinderSpec(start_lr=10.0, end_lr=1.0), ["start_lr", "end_lr"]),
    (lambda: FinderSpec(num_it=1), ["num_it", "1"]),
    (lambda: FinderSpec(stop_factor=1.0), ["stop_factor", "1.0"]),
    (lambda: FinderSpec(accuracy="yes"), ["accuracy", "'yes'"]),
])
def test_bad_values_raise_a_spec_error_naming_them(make, names):
    with pytest.raises(SpecError) as info:
        make()
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_a_schedule_argument_the_schedule_refuses_fails_when_made():
    with pytest.raises(ValueError, match="max_lr"):
        ScheduleSpec.make("one_cycle", max_lr=-1.0)


# --- serialisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    bound(),
    bound(schedule=ScheduleSpec.make("one_cycle", max_lr=3, div=20, moms=[0.95, 0.85]), seed=2,
          model={"init": "kaiming", "depth": 20}, drop_last=True),
    bound(schedule=ScheduleSpec.make("cyclic", base_lr=0.08, max_lr=0.8, step_epochs=4, mode="exp_range",
                                     gamma=0.9995)),
    bound(schedule=ScheduleSpec.make("constant", lr=0.1), data={"train_subset": 1000, "test_subset": 500}),
    FinderSpec(precision="bf16", data=DataSpec("synthetic", fingerprint="ab"), stop_factor=None, num_it=50),
    FinderSpec(),
])
def test_to_dict_and_spec_from_dict_round_trip(spec):
    d = spec.to_dict()
    again = spec_from_dict(json.loads(json.dumps(d)))
    assert again == spec and type(again) is type(spec)
    assert again.to_dict() == d
    if spec.precision != "auto" and spec.data.fingerprint:
        assert again.key() == spec.key()


def test_spec_from_dict_refuses_an_unknown_kind():
    with pytest.raises(SpecError, match="'train'"):
        spec_from_dict({**bound().to_dict(), "kind": "train"})


def test_replace_takes_dicts_of_changes_for_model_and_data():
    spec = bound(model={"depth": 8}, data={"dataset": "synthetic"})
    assert spec.model == ModelSpec(8) and spec.data.synthetic and spec.data.fingerprint == "0123456789abcdef"
    with pytest.raises(SpecError, match="depth"):
        bound(model={"depth": 9})
