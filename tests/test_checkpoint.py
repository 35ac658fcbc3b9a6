"""Checkpoints: atomic writes, clear errors for truncated or foreign files, and a training run
killed (SIGKILL) in the middle of writing one resumes to the result of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from graphsam_ext.train import checkpoint
from graphsam_ext.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT
from tests.test_train import _seed_run, tiny_config, write_tiny_csv


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_round_trip_and_no_temporary_files_left(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.arange(4.0)}, path)
    save_checkpoint({"epoch": 2, "weights": torch.arange(5.0)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and torch.equal(ckpt["weights"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def failing(payload, file):
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")
    monkeypatch.setattr(checkpoint, "_write", failing)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"left by a killed write")
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    assert not stale.exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {path} cannot be read: it is truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["state dict", "text", "list"])
def test_foreign_file_names_the_file(tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "state dict":
        torch.save(torch.nn.Linear(2, 1).state_dict(), path)
        match = "is not a graphsam-ext checkpoint"
    elif content == "list":
        torch.save([1, 2, 3], path)
        match = "is not a graphsam-ext checkpoint"
    else:
        path.write_text("epoch,loss\n1,0.5\n")
        match = "cannot be read"
    with pytest.raises(ValueError, match=f"checkpoint {path} {match}"):
        load_checkpoint(path)


def test_other_format_version_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 99}, path)
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(path)


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from graphsam_ext.train import checkpoint
    from tests.test_train import _seed_run, tiny_config

    tmp = Path({tmp!r})
    real_write = checkpoint._write

    def slow_write(payload, file):
        # the epoch-2 last.pt: write half of it, say so, then hang until killed
        if payload.get("history") is not None and payload["epoch"] == 2:
            import io
            buffer = io.BytesIO()
            real_write(payload, buffer)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            print("WRITING", flush=True)
            time.sleep(600)
        real_write(payload, file)

    checkpoint._write = slow_write
    cfg = tiny_config(tmp / "tiny.csv", epochs=3, patience=10)
    _seed_run(cfg, tmp, "killed").run()
""")


def test_killed_while_writing_a_checkpoint_resumes_exactly(tmp_path, cache_dir):
    cfg = tiny_config(write_tiny_csv(tmp_path / "tiny.csv"), epochs=3, patience=10)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), tmp=str(tmp_path)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "GRAPHSAM_CACHE_DIR": str(cache_dir)})
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITING", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed"
    # the torn write is only in the temporary file; last.pt is the previous epoch's, intact
    assert list(run_dir.glob(".last.pt.*.tmp"))
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1

    resumed_run = _seed_run(cfg, tmp_path, "killed")
    resumed = resumed_run.run()
    straight_run = _seed_run(cfg, tmp_path, "straight")
    straight = straight_run.run()
    assert resumed["finished"] and resumed["epochs_run"] == 3
    for key, value in straight_run.model.state_dict().items():
        assert torch.equal(value, resumed_run.model.state_dict()[key]), key
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(straight["history"]) == strip(resumed["history"])
    assert straight["test"] == resumed["test"]
    assert not list(run_dir.glob(".last.pt.*.tmp"))
