"""Ships the top-level ``conf/`` inside the package (``sert/conf``) when a wheel is built, so a
non-editable install (``pip install .``, a wheel) finds its configs; metadata lives in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the repo's conf/ directly
            return
        src, dst = Path(__file__).resolve().parent / "conf", Path(self.build_lib) / "sert" / "conf"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
