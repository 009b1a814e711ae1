"""The package as a user installs it: pip install --no-build-isolation ./python into a
venv, offline, built through CMake (reusing this build tree, SLUICE_CMAKE_BUILD_DIR)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "python"


def test_pip_installs_an_importable_typed_package(tmp_path):
    """Verifies pip builds and installs sluice offline into a venv, and that the installed
    package (not the build tree's) imports, decides, and carries its stub and py.typed."""
    build_dir = os.environ.get("SLUICE_CMAKE_BUILD_DIR")
    if not build_dir:
        pytest.skip("SLUICE_CMAKE_BUILD_DIR is not set (ctest sets it)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INPUT"] = "1"
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", str(SOURCE)],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    check = (
        "import pathlib, sluice, sluice.compat, sluice.asgi\n"
        "package = pathlib.Path(sluice.__file__).parent\n"
        "print(package)\n"
        "print(sorted(p.name for p in package.iterdir() if p.suffix in ('.pyi', '.typed')))\n"
        "print(sluice.Limiter('memory://', {'p': '2/1m'}).acquire('p', 'k').remaining)\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", check], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    package, typed, remaining = out.stdout.splitlines()
    assert Path(package).is_relative_to(venv)
    assert typed == "['_sluice.pyi', 'py.typed']"
    assert remaining == "1"
