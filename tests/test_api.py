"""The public API in Optuna's manner: ``autoprune.__all__`` is complete, documented, typed, and never hides a module."""
import importlib
import inspect
import pkgutil
import re

import autoprune


def _documented() -> set[str]:
    """Names the package docstring refers to with a Sphinx role (:func:`x`, :class:`x`, :data:`x`)."""
    return set(re.findall(r":(?:func|class|data):`~?([\w.]+)`", autoprune.__doc__))


def test_every_exported_name_exists_and_is_documented():
    assert len(set(autoprune.__all__)) == len(autoprune.__all__), "a name is listed twice in __all__"
    missing = [n for n in autoprune.__all__ if not hasattr(autoprune, n)]
    assert not missing, f"in __all__ but not defined: {missing}"
    undocumented = sorted(set(autoprune.__all__) - _documented())
    assert not undocumented, f"exported but not named in the package docstring: {undocumented}"
    not_exported = sorted(_documented() - set(autoprune.__all__))
    assert not not_exported, f"named in the package docstring but not in __all__: {not_exported}"


def test_the_names_the_issue_promises_are_exported():
    promised = {"ChannelGraph", "ChannelGroup", "TraceError", "PruneError", "count_macs", "count_params", "get_model",
                "save", "load", "score", "get_criterion", "register_criterion", "available_criteria", "load_data",
                "finetune", "evaluate", "recalibrate_bn", "sensitivity", "SensitivityTable", "allocate", "Allocation",
                "prune_to_budget", "BudgetResult", "compare_criteria", "search", "load_front", "ParetoFront",
                "__version__"}
    assert promised <= set(autoprune.__all__)


def test_star_import_gives_exactly_all():
    ns: dict = {}
    exec("from autoprune import *", ns)
    assert set(ns) - {"__builtins__"} == set(autoprune.__all__)


def test_no_export_hides_a_submodule_even_after_importing_every_module():
    # Importing a submodule sets it as an attribute of its package: a function with the module's name would be
    # replaced by the module (the old `autoprune.search` and `autoprune.sensitivity`).
    before = {n: getattr(autoprune, n) for n in autoprune.__all__}
    modules = [m.name for m in pkgutil.walk_packages(autoprune.__path__, "autoprune.")
               if not m.name.endswith("__main__")]  # cli/__main__ runs the CLI when imported
    for name in modules:
        importlib.import_module(name)
    submodules = {m.split(".")[1] for m in modules}
    clash = sorted(set(autoprune.__all__) & submodules)
    assert not clash, f"exported names equal to submodules of autoprune: {clash}"
    changed = [n for n in autoprune.__all__ if getattr(autoprune, n) is not before[n]]
    assert not changed, f"importing the submodules replaced: {changed}"
    public_functions = [n for n in dir(autoprune) if not n.startswith("_") and inspect.isroutine(getattr(autoprune, n))]
    assert not sorted(set(public_functions) & submodules)
    importlib.import_module("autoprune.study.local")  # `import autoprune.study.local` works beside ap.search
    assert callable(autoprune.search) and inspect.ismodule(autoprune.study.local)
    assert callable(autoprune.sensitivity) and inspect.ismodule(autoprune.allocation.sensitivity_analysis)


def test_public_functions_have_typed_signatures():
    untyped = {}
    for name in autoprune.__all__:
        obj = getattr(autoprune, name)
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        bare = [p.name for p in sig.parameters.values()
                if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if bare or sig.return_annotation is inspect.Signature.empty:
            untyped[name] = bare or ["return"]
    assert not untyped, f"public functions without annotations: {untyped}"


def test_one_version_source():
    from importlib.metadata import version

    from autoprune._version import __version__

    assert autoprune.__version__ == __version__ == version("autoprune")
