"""The GPU fast-path options give the default's results: channels-last layout and torch.compile of the network."""

from __future__ import annotations

import pytest
import torch

from zf_lightning.cli.train import train
from zf_lightning.models import ImageClassifier

NET = {"arch": "zfnet", "num_classes": 10, "input_size": 64, "width_multiplier": 0.125}


def test_channels_last_gives_the_same_predictions_and_the_same_checkpoint_keys():
    torch.manual_seed(0)
    plain = ImageClassifier(NET).eval()
    fast = ImageClassifier(NET, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 64, 64)
    assert fast.laid_out(images).is_contiguous(memory_format=torch.channels_last) and plain.laid_out(images) is images
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-5, atol=1e-5)
    ten_crops = torch.randn(2, 10, 3, 64, 64)  # 10-crop batches are laid out after flattening
    torch.testing.assert_close(fast.predict_proba(ten_crops), plain.predict_proba(ten_crops), rtol=1e-5, atol=1e-6)
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_compile_compiles_the_network_in_place_and_keeps_results_and_names():
    torch.manual_seed(0)
    plain = ImageClassifier(NET).eval()
    compiled = ImageClassifier(NET, compile={"backend": "eager"}).eval()  # eager: the wiring, without a C compiler
    compiled.load_state_dict(plain.state_dict())
    compiled.configure_model()
    compiled.configure_model()  # Lightning may call it again (fit, then test): compiled once
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    images = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(compiled(images), plain(images))
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefixes in checkpoints


def test_a_run_with_the_fast_path_options_completes_and_its_checkpoint_loads_without_them(compose_train, tmp_path):
    summary = train(
        compose_train(
            [
                "trainer.max_epochs=1",
                "test=false",
                "logger=csv",
                "model.channels_last=true",
                "model.compile={backend: eager}",
                "trainer.benchmark=true",
            ]
        )
    )
    assert summary["status"] == "completed"
    plain = ImageClassifier.load_from_checkpoint(
        summary["best"]["checkpoint"], channels_last=False, compile=False, weights_only=True
    )
    assert plain.net._compiled_call_impl is None and plain.net.features[0].weight.is_contiguous()


def test_the_deferred_loss_check_zeroes_a_bad_steps_gradients_and_raises_once_its_flag_is_read():
    from zf_lightning.models.finite_check import DeferredFiniteCheck

    check = DeferredFiniteCheck()
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([1.0, float("nan"), 2.0])
    check.push(torch.tensor(True), lambda: "never read")
    check.guard([weight])
    assert weight.grad[0] == 1.0 and weight.grad[1].isnan()  # a finite step's gradients are left alone
    check.push(torch.tensor(False), lambda: "non-finite training loss at global step 7")
    check.guard([weight])
    assert torch.equal(weight.grad, torch.zeros(3))  # NaN included: the optimiser step writes no NaN
    with pytest.raises(FloatingPointError, match="global step 7"):
        check.raise_finished()  # the first flag passes, the second raises
    check.raise_finished(block=True)  # nothing left
