import pytest
import torch

from sparsemtl.errors import CheckpointError
from sparsemtl.runs import load_checkpoint, save_checkpoint


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt. could not be read") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="missing.pt. does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
