"""The README's "On your own model" examples run as written (a torchvision model on an image folder,
a dict-batch text model returning its own loss, a plain loop with Scheduler)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def own_model_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("### On your own model", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_its_three_examples():
    blocks = own_model_blocks()
    assert len(blocks) == 3
    assert "ImageFolder" in blocks[0] and '"model"' in blocks[1] and "Scheduler(" in blocks[2]


@pytest.mark.parametrize("index", range(3))
def test_each_example_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(own_model_blocks()[index], f"README.md (On your own model, example {index + 1})", "exec"), namespace)
    if index == 0:
        assert len(namespace["history"]) == 8 and namespace["history"].attrs["fit"]["channels_last"]
    elif index == 1:
        assert len(namespace["history"]) == 10 and len(namespace["result"]) >= 2
    else:
        assert max(namespace["log"]) == (0.5, 0.85)  # the peak LR with the lowest momentum
