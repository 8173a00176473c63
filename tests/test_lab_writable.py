"""A store that cannot be written is found out before a run is trained, not after its whole length."""
import pytest

from clrlib.lab.runs import Lab
from clrlib.lab.specs import DataSpec, ModelSpec, ScheduleSpec, TrainSpec
from clrlib.lab.store import StoreNotWritable


def test_an_unwritable_store_stops_the_lab_before_training(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    trained = []

    class Recording:
        def run(self, task, specs, done, **kwargs):
            trained.extend(specs)

    lab = Lab(blocker / "runs", device="cpu", executor=Recording())
    spec = TrainSpec(ScheduleSpec.make("constant", lr=0.1), 1, batch_size=64, model=ModelSpec(8), precision="fp32",
                     data=DataSpec("synthetic", synthetic_train=128, synthetic_test=64))
    with pytest.raises(StoreNotWritable, match="not writable"):
        lab.fit_many([spec])
    assert trained == []
