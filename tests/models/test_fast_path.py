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


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm())


# Stated tolerances (relative L2 error of the logits against a float64 CPU reference). CUDA's fp32 convolutions use
# TF32 by default (10-bit mantissa, about 1e-3 per layer); bf16 autocast keeps 8 bits (6e-3 measured on CPU).
FP32_ON_CUDA_TOLERANCE = 1e-2
BF16_TOLERANCE = 5e-2


@pytest.mark.cuda
def test_on_cuda_channels_last_compile_and_bf16_give_the_default_logits_within_stated_tolerances():
    import copy

    torch.manual_seed(0)
    net = {"arch": "zfnet", "num_classes": 100, "input_size": 224, "width_multiplier": 0.25}
    plain = ImageClassifier(net).eval()
    for module in plain.modules():  # He init: logits that differ between images (N(0, 1e-2) gives near-zero ones)
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight)
    images = torch.randn(8, 3, 224, 224) * 60  # the scale of mean-subtracted 0-255 pixels
    with torch.no_grad():
        reference = copy.deepcopy(plain).double()(images.double())
        variants = {
            "fp32": ImageClassifier(net),
            "channels_last": ImageClassifier(net, channels_last=True),
            "compile": ImageClassifier(net, compile=True),  # inductor: Triton kernels
            "bf16+channels_last+compile": ImageClassifier(net, channels_last=True, compile=True),
        }
        errors = {}
        for name, model in variants.items():
            model.load_state_dict(plain.state_dict())
            model = model.cuda().eval()
            model.configure_model()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=name.startswith("bf16")):
                logits = model(images.cuda())
            assert logits.device.type == "cuda" and torch.isfinite(logits).all(), name
            errors[name] = _relative_error(logits, reference)
            assert (logits.argmax(1).cpu() == reference.argmax(1)).sum() >= 7, name  # measured on CPU bf16: 8 of 8
    for name, error in errors.items():
        assert error < (BF16_TOLERANCE if name.startswith("bf16") else FP32_ON_CUDA_TOLERANCE), errors


@pytest.mark.cuda
def test_on_cuda_a_bf16_channels_last_compiled_run_learns_as_the_fp32_run(compose_train, tmp_path):
    run = ["trainer=gpu", "trainer.max_epochs=3", "model.net.width_multiplier=0.25", "data.train_per_class=80"]
    run += ["data.batch_size=32", "test=false", "logger=csv"]
    fast = ["trainer.precision=bf16-mixed", "model.channels_last=true", "model.compile=true"]
    results = {}
    for name, options in {"fp32": [], "fast": fast}.items():
        summary = train(compose_train([*run, *options], output_dir=tmp_path / name))
        assert summary["status"] == "completed", name
        results[name] = summary["train"]["val/top1_err"]
    # chance is 90 % top-1 error on the 10 synthetic classes; bf16 may cost a little, not the learning
    assert results["fp32"] < 60 and results["fast"] < results["fp32"] + 15, results
