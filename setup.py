"""Build hook: ship the top-level ``search_spaces/`` and ``datasets/`` descriptors inside the package.

In a checkout they sit at the repository's top level, where users edit them. A wheel has no
top level, so the build copies their YAML files into ``pipeline/conf/search_spaces/`` and
``pipeline/conf/datasets/`` of the build (never of the checkout). ``pipeline.config``
reads the checkout's folders when it runs from a checkout, the packaged copies otherwise
(docs/scale.md, "Packaging"). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("search_spaces", "datasets")  # top-level folders whose *.yaml files ship with the package


class BuildWithDescriptors(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for group in SHIPPED:
            target = Path(self.build_lib) / "pipeline" / "conf" / group
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted((root / group).glob("*.yaml")):
                shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildWithDescriptors})
