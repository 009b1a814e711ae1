"""Builds the extension module sluice._sluice with the project's CMake, for the Python that
runs this (docs/DESIGN.md, "Python"): pip install --no-build-isolation ./python.

SLUICE_CMAKE_BUILD_DIR names a build tree to reuse (configured for this Python with
SLUICE_BUILD_PYTHON=ON, such as build/release): only the module's target is built there.
Otherwise a release tree of its own is configured under setuptools' build_temp, with ccache
when it is installed. SLUICE_BUILD_JOBS caps the compiler jobs (default 2).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent.parent


def version() -> str:
    """Returns the project's version, as CMakeLists.txt's project() declares it."""
    found = re.search(r"project\(sluice VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text())
    if found is None:
        sys.exit("setup.py: no `project(sluice VERSION x.y.z` in " + str(ROOT / "CMakeLists.txt"))
    return found.group(1)


class CMakeBuild(build_ext):
    """Builds the target sluice_python and copies the module where setuptools wants it."""

    def build_extension(self, ext: Extension) -> None:
        reused = os.environ.get("SLUICE_CMAKE_BUILD_DIR")
        tree = Path(reused) if reused else Path(self.build_temp).resolve() / "cmake"
        if not reused and not (tree / "CMakeCache.txt").exists():
            configure = ["cmake", "-S", str(ROOT), "-B", str(tree), "-DCMAKE_BUILD_TYPE=Release",
                         "-DSLUICE_BUILD_PYTHON=ON", "-DSLUICE_BUILD_TESTS=OFF",
                         "-DSLUICE_BUILD_CLI=OFF", "-DSLUICE_BUILD_BENCHMARKS=OFF",
                         "-DSLUICE_INSTALL=OFF", f"-DPython3_EXECUTABLE={sys.executable}"]
            if shutil.which("ninja"):
                configure += ["-G", "Ninja"]
            if shutil.which("ccache"):
                configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
            subprocess.run(configure, check=True)
        jobs = os.environ.get("SLUICE_BUILD_JOBS", "2")
        subprocess.run(["cmake", "--build", str(tree), "--target", "sluice_python", "-j", jobs],
                       check=True)
        built = sorted((tree / "python" / "sluice").glob("_sluice*.so"))
        if len(built) != 1:
            sys.exit(f"setup.py: expected one _sluice*.so in {tree / 'python' / 'sluice'}, "
                     f"found {[p.name for p in built]}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target)


setup(
    version=version(),
    ext_modules=[Extension("sluice._sluice", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
