"""The preflight, ``python -m clrlib doctor``, on this machine's CPU at smoke size (CI runs it here)."""
from __future__ import annotations

import pytest

from clrlib.lab import doctor


@pytest.fixture(scope="module")
def report():
    lines = []
    code = doctor.run_doctor(full=False, device="cpu", log=lines.append)
    return code, lines


def test_doctor_passes_every_check_on_the_cpu(report):
    code, lines = report
    assert code == 0, "\n".join(lines)
    assert lines[-1] == "all checks passed"
    for check in ("device", "data loader", "range test restores", "compiled vs eager", "seconds per epoch"):
        assert any(line.startswith("ok") and check in line for line in lines), check
    compiled = next(line for line in lines if "compiled vs eager" in line)
    assert "0 more for a new model" in compiled


def test_a_failing_check_is_named_and_exits_non_zero(monkeypatch):
    def broken(size, device):
        raise RuntimeError("augmentation differs")

    monkeypatch.setattr(doctor, "check_loader", broken)
    monkeypatch.setattr(doctor, "check_compiled", lambda *a, **k: ("skipped", 1.0, 1.0))
    monkeypatch.setattr(doctor, "check_finder_restores", lambda *a, **k: "skipped")
    lines = []
    assert doctor.run_doctor(device="cpu", log=lines.append) == 1
    assert any(line.startswith("FAIL") and "data loader" in line and "augmentation differs" in line
               for line in lines)
    assert lines[-1] == "failed: data loader"


def test_profile_epochs_counts_the_runs_of_each_profile():
    counts = {p: doctor.profile_epochs(p) for p in ("smoke", "quick", "full")}
    assert counts["smoke"] < counts["quick"] < counts["full"]
    # full, in ResNet-56 epochs on all the data: 02 3x48, 03 3 seeds x 95 + its fp32 control,
    # 04 3 seeds x (50+70+95), 05 3 seeds x three constant momenta x (95+50) (its cyclical runs are
    # 03's and 04's), 07 3 seeds x 70 (its hand-picked runs are 04's); 08's 3 x 30 epochs of ResNet-20
    assert counts["full"] == pytest.approx(3 * 48 + 4 * 95 + 3 * (50 + 70 + 95) + 3 * 3 * (95 + 50) + 3 * 70
                                           + 3 * 30 * 18 / 54)
