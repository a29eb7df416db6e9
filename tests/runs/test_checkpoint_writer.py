"""The CPU snapshot and the background checkpoint writer, and the staged best model on resume."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from sparsemtl.errors import TrainingError
from sparsemtl.runs import RunDir, load_checkpoint
from sparsemtl.runs.checkpoint_writer import CheckpointWriter, Written, snapshot
from sparsemtl.runs.run_dir import BEST, PENDING_BEST


def saved_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_snapshot_is_an_independent_copy_that_saves_to_the_same_bytes() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    base = torch.arange(12.0)
    state = {
        "model": model.state_dict(),  # an OrderedDict with _metadata
        "views": [base, base[2:8].view(2, 3)],  # two tensors of one storage
        "step": torch.tensor(3.0),
        "meta": {"epoch": 2, "betas": (0.9, 0.999), "name": None},
    }
    copy = snapshot(state)
    assert saved_bytes(copy) == saved_bytes(state)
    assert type(copy["model"]) is OrderedDict and copy["model"]._metadata == state["model"]._metadata
    view_base, view = copy["views"]
    assert view.untyped_storage().data_ptr() == view_base.untyped_storage().data_ptr()  # still one storage
    assert view_base.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()  # but not the original's
    before = saved_bytes(copy)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        base.zero_()
    assert saved_bytes(copy) == before  # training on does not reach the copy


def test_a_background_write_is_collected_once_and_commits_its_epoch(tmp_path: Path) -> None:
    release = threading.Event()
    writer = CheckpointWriter(background=True)
    writer.submit(lambda: (release.wait(), (tmp_path / "x").write_text("done")), epoch=4)
    assert writer.busy and writer.poll() is None  # still writing: nothing to collect yet
    with pytest.raises(RuntimeError, match="not collected"):
        writer.submit(lambda: None, epoch=5)  # at most one write in flight
    release.set()
    written = writer.wait()
    assert isinstance(written, Written) and written.epoch == 4 and (tmp_path / "x").read_text() == "done"
    assert writer.wait() is None  # collected once


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_write_raises_its_own_error_in_the_callers_thread(background: bool) -> None:
    error = TrainingError("could not write 'last.pt': no space left on device; the previous version is intact")

    def fail() -> None:
        raise error

    writer = CheckpointWriter(background)
    if background:
        writer.submit(fail, epoch=1)
        with pytest.raises(TrainingError) as raised:
            writer.wait()
    else:
        with pytest.raises(TrainingError) as raised:
            writer.submit(fail, epoch=1)
    assert raised.value is error
    writer.submit(lambda: None, epoch=2)  # a failure is collected with its error: the writer goes on
    assert writer.wait().epoch == 2


def test_resume_promotes_the_staged_best_of_the_best_epoch_and_drops_any_other(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for staged, best_epoch, kept in [(3, 3, 3), (3, 2, 1)]:
        run.save_checkpoint(BEST, {"epoch": 1})
        run.save_checkpoint(PENDING_BEST, {"epoch": staged})
        run.settle_pending_best(best_epoch)
        assert load_checkpoint(tmp_path / BEST)["epoch"] == kept and not run.has(PENDING_BEST)
    run.settle_pending_best(5)  # nothing staged: nothing to do
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 1
