"""Knowledge distillation (autoprune.distill) on a tiny model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.distill import DistillOptions, Distiller, distillation_loss, kd_loss


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_kd_loss_zero_for_equal_logits_positive_otherwise():
    torch.manual_seed(0)
    s = torch.randn(6, 5)
    assert kd_loss(s, s.clone(), 4.0).abs().item() < 1e-6
    t = torch.randn(6, 5)
    assert kd_loss(s, t, 4.0).item() > 0
    # T^2 scaling: KL of the softened distributions times T^2
    p_t = F.softmax(t / 2.0, 1)
    ref = (p_t * (p_t.log() - F.log_softmax(s / 2.0, 1))).sum(1).mean() * 4.0
    assert kd_loss(s, t, 2.0).item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same classes"):
        kd_loss(s, torch.randn(6, 4))


def test_mixed_loss_weights():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce, kd = F.cross_entropy(s, y), kd_loss(s, t, 3.0)
    assert distillation_loss(s, t, y, alpha=0.0, temperature=3.0).item() == pytest.approx(ce.item())
    assert distillation_loss(s, t, y, alpha=1.0, temperature=3.0).item() == pytest.approx(kd.item())
    mixed = distillation_loss(s, t, y, alpha=0.3, temperature=3.0).item()
    assert mixed == pytest.approx(0.7 * ce.item() + 0.3 * kd.item(), rel=1e-6)
    # the teacher term pulls the student towards the teacher: its gradient is zero at s = t
    s2 = t.clone().requires_grad_(True)
    kd_loss(s2, t, 3.0).backward()
    assert s2.grad.abs().max().item() < 1e-6


def test_teacher_equal_to_student_gives_label_loss_only():
    student = tiny().train()  # train mode: dropout and batch statistics would make the outputs differ
    teacher = copy.deepcopy(student)
    kd = Distiller(teacher, alpha=0.5, temperature=4.0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    with kd.attached("cpu"):
        assert not teacher.training  # eval mode while attached
        student.eval()
        out = student(x)
        loss = kd(out, x, y)
    assert teacher.training  # modes restored
    assert kd_loss(out, kd.teacher_logits(x), 4.0).abs().item() < 1e-6
    assert loss.item() == pytest.approx(0.5 * F.cross_entropy(out, y).item(), rel=1e-5)
    loss.backward()  # the teacher's logits are plain tensors, usable in autograd
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_options_validation():
    assert DistillOptions.of(None) == DistillOptions() == DistillOptions.of(True)
    assert DistillOptions.of({"alpha": 0.9}).alpha == 0.9
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        DistillOptions(alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        DistillOptions(temperature=0)
    with pytest.raises(ValueError, match="unknown distill option"):
        DistillOptions.of({"alpah": 0.5})
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Distiller("resnet56")
