# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.deploy.export`."""
from .deploy.export import *  # noqa: F401,F403
from .deploy.export import (DEPLOY_HINT, FORMATS, ExportCheckError, ExportResult, export_model,  # noqa: F401
                            require_deploy)
from .deploy.inputs import as_input_tuple as _as_tuple, inputs_at_batch as _at_batch  # noqa: F401
