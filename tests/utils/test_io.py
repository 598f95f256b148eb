"""Checkpoints are checked before use: missing, truncated, or needing arbitrary pickles."""

from __future__ import annotations

import pytest
import torch

from zf_lightning.utils.io import check_checkpoint, load_checkpoint


class NotAllowed:  # a class torch's weights-only unpickler refuses
    pass


def test_a_whole_checkpoint_loads(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


def test_a_truncated_checkpoint_is_named_with_its_size(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=rf"ckpt_path='.*cut.ckpt' is not a complete checkpoint \({len(data) // 2} bytes"
    ):
        check_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        check_checkpoint(tmp_path / "missing.ckpt", "model.transfer.checkpoint")


def test_a_checkpoint_needing_arbitrary_pickles_is_refused(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "extra": NotAllowed()}, path)
    with pytest.raises(ValueError, match="needs arbitrary Python objects to load, which could run code: refused"):
        load_checkpoint(path)


def test_zf_train_refuses_a_truncated_resume_checkpoint_before_training(compose_train, tmp_path):
    from zf_lightning.cli.train import train

    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(b"PK\x03\x04 only the start of a zip")
    cfg = compose_train([f"ckpt_path={cut}", "logger=csv"])
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
