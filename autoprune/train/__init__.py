"""Fine-tuning, evaluation and BatchNorm recalibration: the inner loop of every search trial; distillation and polish.

One job per module: :mod:`~autoprune.train.common` (device, autocast, modes, checks), :mod:`~autoprune.train.loop`
(:func:`finetune`), :mod:`~autoprune.train.evaluation` (:func:`evaluate`, :func:`recalibrate_bn`),
:mod:`~autoprune.train.distill` (knowledge distillation) and :mod:`~autoprune.train.polish` (the final polish of a
chosen model). ``autoprune.train.distill`` and ``autoprune.train.polish`` are those modules: this package re-exports
no name equal to one of its submodules.

All take ``data`` in any form of :data:`autoprune.data.adapter.DataLike`: a :class:`~autoprune.data.DataBundle` (or
one of its splits) from :func:`autoprune.data.load_data`, a map-style ``Dataset`` of ``(image, label)``, a
``DataLoader``, or a ``(train, val)`` pair of these. Defaults favour throughput on CUDA (bf16 autocast,
channels_last) and exact reproducibility on the CPU.
"""
from .common import check_num_classes, model_device
from .evaluation import EvalResult, evaluate, recalibrate_bn
from .loop import SCHEDULES, FinetuneResult, finetune

__all__ = ["EvalResult", "FinetuneResult", "evaluate", "finetune", "recalibrate_bn"]
