"""Test processes: one BLAS/OpenMP thread each when pytest-xdist runs several (the default, see pyproject.toml), so
two test processes on two cores do not spin four threads against each other."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (children inherit it)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
