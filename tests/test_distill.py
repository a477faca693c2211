"""Knowledge distillation (autoprune.train.distill) on a tiny model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.train.distill import DistillOptions, Distiller, distillation_loss, kd_loss


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


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from autoprune.data import load_data

    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", num_classes=5,
                     train_per_class=40, test_per_class=10, val_fraction=0.2, image_size=16)


def test_finetune_with_teacher(bundle):
    from autoprune.train import evaluate, finetune

    # A teacher that knows the task, with its classes rotated (class c predicted as c+1): a student that learns
    # from it agrees with its wrong answers, one that learns from the labels does not.
    teacher = tiny(seed=1)
    finetune(teacher, bundle, epochs=8, lr=0.1, batch_size=32, progress=False)
    with torch.no_grad():
        perm = torch.tensor([1, 2, 3, 4, 0])
        teacher[-1].weight.copy_(teacher[-1].weight[perm])
        teacher[-1].bias.copy_(teacher[-1].bias[perm])
    teacher.train()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x_val = next(iter(bundle.val.batches(40)))[0]

    def agreement(student):
        with torch.no_grad():
            return (student.eval()(x_val).argmax(1) == copy.deepcopy(teacher).eval()(x_val).argmax(1)).float().mean()

    runs = []
    for _ in range(2):
        student = tiny(seed=2)
        res = finetune(student, bundle, epochs=4, lr=0.1, batch_size=32, progress=False, teacher=teacher,
                       distill={"alpha": 1.0, "temperature": 2.0})
        runs.append((res.losses, student.state_dict()))
    assert res.steps == 4 * (160 // 32) and res.losses[-1] < res.losses[0]
    assert runs[0][0] == runs[1][0]  # deterministic on the CPU
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].values(), runs[1][1].values()))
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert teacher.training  # its mode restored
    labels_only = tiny(seed=2)
    finetune(labels_only, bundle, epochs=4, lr=0.1, batch_size=32, progress=False)
    assert agreement(student) > agreement(labels_only) + 0.3  # measured: 0.75 vs 0.15
    assert evaluate(student, bundle).n == 40
    with pytest.raises(ValueError, match="teacher is the model being fine-tuned"):
        finetune(student, bundle, progress=False, teacher=student)
    with pytest.raises(ValueError, match="without a teacher"):
        finetune(student, bundle, progress=False, distill={"alpha": 0.5})


def test_finetune_callback_sees_every_step_and_can_stop(bundle):
    from autoprune.train import finetune

    calls = []
    finetune(tiny(), bundle, epochs=2, batch_size=32, max_batches=3, progress=False,
             callback=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 6) for k in range(7)]

    class Stop(Exception):
        pass

    def stop_at_2(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        finetune(tiny(), bundle, epochs=1, batch_size=32, progress=False, callback=stop_at_2)
