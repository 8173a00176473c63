"""benchmarks/train_speed.py runs and writes its JSON (a tiny size on the CPU: no timing is asserted)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_writes_every_mode_side_by_side(tmp_path, capsys):
    bench = load_script()
    assert bench.FULL_PROFILE_EPOCHS > 1000  # the full profile with its seeds
    report = bench.main(["--device", "cpu", "--depth", "8", "--images", "256", "--batch", "64",
                         "--epochs", "2", "--modes", "eager", "--precision", "fp32", "--out", str(tmp_path)])
    [written] = list(tmp_path.glob("*.json"))
    saved = json.loads(written.read_text())
    assert saved["device"] == "cpu" and saved["settings"]["depth"] == 8
    [row] = saved["results"]
    assert row["mode"] == "eager" and row["seconds_per_epoch"] > 0 and row["images_per_second"] > 0
    assert report["results"][0]["mode"] == "eager"
    assert "eager" in capsys.readouterr().out
