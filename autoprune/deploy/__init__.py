"""Deployment: saved files without pickled code (:mod:`.files`), checked exports to ONNX, ``torch.export``,
TorchScript and autoprune files (:mod:`.export`), and measured latency (:mod:`.latency`); :mod:`.inputs` shapes the
example inputs they share. Layer 5: it needs only the engine and the zoo, so budgets and fronts save through it."""
from .export import DEPLOY_HINT, FORMATS, ExportCheckError, ExportResult, export_model, require_deploy
from .files import FORMAT, load, read_checkpoint, save
from .latency import Latency, LatencyCache, LatencyRunner, measure_latency

__all__ = ["save", "load", "read_checkpoint", "FORMAT", "export_model", "ExportResult", "ExportCheckError", "FORMATS",
           "DEPLOY_HINT", "require_deploy", "measure_latency", "Latency", "LatencyCache", "LatencyRunner"]
