"""Export of pruned models to every format, loaded back with the deployment runtime and compared with the model.

Models: a pruned CIFAR ResNet-20 (zero-padding shortcuts) and a pruned torchvision MobileNetV3-Small at 64 px
(squeeze-excitation, hardswish, depthwise convs), with realistic activations (BatchNorm statistics re-estimated on
random batches, classifier weights scaled to give logits of a few units), so the comparison is not between near-zero
outputs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import autoprune as ap
from autoprune.deploy import export as export_mod
from autoprune.deploy.export import ExportCheckError, export_model


def _realistic(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Linear):  # logits of a trained classifier's size (a few units), not ~0.01
            nn.init.normal_(m.weight, std=2.0 * m.in_features ** -0.5)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape))
    return model.eval()


def _pruned(name: str, size: int, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    ex = torch.zeros(1, 3, size, size)
    base = _realistic(ap.get_model(name, **kwargs), (3, size, size))
    pruned = ap.ChannelGraph(base, ex).prune(0.4, criterion="l1")
    return _realistic(pruned, (3, size, size)), ex  # BN statistics of the pruned model, as after fine-tuning


@pytest.fixture(scope="module")
def resnet():
    return _pruned("resnet20", 32)


@pytest.fixture(scope="module")
def mobilenet():
    return _pruned("mobilenet_v3_small", 64, num_classes=10)


def _load_and_run(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """Load the file the way a deployment would, independently of export_model's own check."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].shape[0] == "batch"  # dynamic batch dimension
        return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if fmt == "exported":
        return torch.export.load(str(path)).module()(x).detach().numpy()
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x).detach().numpy()
    return ap.load(path)(x).detach().numpy()


SUFFIX = {"onnx": ".onnx", "exported": ".pt2", "torchscript": ".ts", "autoprune": ".pt"}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "exported", "torchscript", "autoprune"])
@pytest.mark.parametrize("which", ["resnet", "mobilenet"])
def test_export_loads_back_and_matches(request, tmp_path, which, fmt):
    model, ex = request.getfixturevalue(which)
    path = tmp_path / f"model{SUFFIX[fmt]}"
    res = export_model(model, ex, path, format=fmt)
    assert path.exists() and res.path == str(path) and res.format == fmt
    assert res.checked_batches == (1, 3) and res.max_abs_diff <= 1e-4
    if fmt == "onnx":
        assert res.exporter == "dynamo" and res.fallback_reason is None and res.opset
    x = torch.randn(5, *ex.shape[1:], generator=torch.Generator().manual_seed(7))  # a batch size never exported
    with torch.no_grad():
        ref = model(x).numpy()
    assert ref.std() > 0.1  # a meaningful comparison
    got = _load_and_run(fmt, path, x)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_onnx_falls_back_to_torchscript_exporter_and_says_why(resnet, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(export_mod, "_onnx_dynamo", broken)
    model, ex = resnet
    res = export_model(model, ex, tmp_path / "m.onnx")
    assert res.exporter == "torchscript" and "frobnicate" in res.fallback_reason
    assert "torchscript exporter" in str(res) and "dynamo exporter failed" in str(res)
    assert res.max_abs_diff <= 1e-4
    with pytest.raises(RuntimeError, match="frobnicate"):  # no fallback when the dynamo exporter is asked for
        export_model(model, ex, tmp_path / "n.onnx", onnx_exporter="dynamo")


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_onnx_packages_name_the_extra(resnet, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    model, ex = resnet
    with pytest.raises(ImportError, match=r'pip install "autoprune\[deploy\]"'):
        export_model(model, ex, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_a_file_that_does_not_reproduce_the_model_is_not_written(resnet, tmp_path, monkeypatch):
    model, ex = resnet
    real = export_mod._max_diff
    monkeypatch.setattr(export_mod, "_max_diff", lambda ref, got: (real(ref, got)[0] + 1.0, real(ref, got)[1]))
    with pytest.raises(ExportCheckError, match="does not reproduce"):
        export_model(model, ex, tmp_path / "m.ts", format="torchscript")
    assert not list(tmp_path.iterdir())


def test_bad_arguments(resnet, tmp_path):
    model, ex = resnet
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, ex, tmp_path / "m.x", format="tflite")
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_model(model, ex, tmp_path / "m.pt", format="exported")
    with pytest.raises(TypeError, match="example_inputs"):
        export_model(model, [1, 2], tmp_path / "m.ts", format="torchscript")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # not built by get_model: no architecture name
    with pytest.raises(ValueError, match="autoprune.get_model"):
        export_model(plain, ex, tmp_path / "m.pt", format="autoprune")


def test_model_mode_is_restored(resnet, tmp_path):
    model, ex = resnet
    model.train()
    try:
        export_model(model, ex, tmp_path / "m.ts", format="torchscript")
        assert model.training
    finally:
        model.eval()
