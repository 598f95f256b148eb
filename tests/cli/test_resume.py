"""A run resumed from any of its checkpoints ends as the run that went on: checkpoints written at the end of an
epoch (with the plateau schedule stepping every epoch) and at the end of a mid-epoch validation, read back with
the default loader settings and with persistent workers. Stops by signal at random moments are in test_chaos.py."""

from __future__ import annotations

import re

import pytest
import torch

from zf_lightning.cli.train import train

# The plateau schedule divides the lr by 10 after every epoch (no epoch beats the best by 1000 %, not even the first):
# a resume that missed a step of it would go on with another lr.
EVERY_EPOCH_ANNEALED = ["model.lr_scheduler.patience=0", "+model.lr_scheduler.threshold=10"]
KEEP_EVERY_CHECKPOINT = [
    "+callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.model_checkpoint.filename='e{epoch}-s{step}'",
]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def step_of(path) -> int:
    return int(re.search(r"-s(\d+)\.ckpt$", path.name).group(1))


@pytest.mark.parametrize(
    ("settings", "resume_at_step"),
    [
        (["trainer.max_epochs=3", "data.num_workers=1", *EVERY_EPOCH_ANNEALED], 10),  # the end of the first epoch
        (
            [
                "trainer.max_epochs=2",
                "data.num_workers=2",
                "+data.persistent_workers=true",
                "+trainer.val_check_interval=0.5",
            ],
            5,
        ),
    ],
    ids=["epoch-end-workers1-annealed", "mid-epoch-validation-persistent-workers2"],
)
def test_a_run_resumed_from_its_checkpoint_ends_as_the_run_that_went_on(
    compose_train, tmp_path, settings, resume_at_step
):
    common = [*settings, *KEEP_EVERY_CHECKPOINT, "logger=csv"]
    reference = train(compose_train(common, tmp_path / "reference"))
    checkpoints = {step_of(path): path for path in (tmp_path / "reference" / "checkpoints").glob("e*-s*.ckpt")}
    start = checkpoints[resume_at_step]
    assert load(start)["global_step"] == resume_at_step

    resumed = train(compose_train([*common, f"ckpt_path={start}"], tmp_path / "resumed"))
    ours, theirs = (load(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("resumed", "reference"))
    assert ours["global_step"] == theirs["global_step"] > resume_at_step
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), name
    assert (
        ours["optimizer_states"][0]["param_groups"][0]["lr"] == theirs["optimizer_states"][0]["param_groups"][0]["lr"]
    )
    if EVERY_EPOCH_ANNEALED[0] in settings:
        assert theirs["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
            5e-3 / 1000
        )  # after each of the 3 epochs
    assert resumed["test"] == reference["test"] and resumed["train"] == reference["train"]
