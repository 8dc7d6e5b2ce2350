"""What a user composes is importable from the package that says it exports it, and nothing more is promised."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["itersft", "itersft.loop", "itersft.sampling", "itersft.scoring", "itersft.export", "itersft.tasks"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error_naming_the_package(package):
    with pytest.raises(AttributeError, match=f"{package!r} has no attribute 'Nope'"):
        importlib.import_module(package).Nope  # noqa: B018


def test_the_loop_exports_the_objects_its_owners_define():
    from itersft.filters import BestOfK
    from itersft.loop import BestOfK as exported_best_of_k
    from itersft.loop import ExpertIteration, SamplingConfig, numeric
    from itersft.loop.expert_iteration import ExpertIteration as defined
    from itersft.sampling.sampler import SamplingConfig as defined_config
    from itersft.scoring.scorers import numeric as defined_numeric

    assert (exported_best_of_k, ExpertIteration, SamplingConfig, numeric) == (BestOfK, defined, defined_config,
                                                                              defined_numeric)


def test_importing_the_loop_package_loads_no_torch():
    """The exports are imported on use, so `import itersft.loop` (and the CLI's --help) stays instant."""
    import subprocess
    import sys

    code = ("import sys, itersft.loop, itersft.scoring, itersft.sampling, itersft.export, itersft.tasks; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
