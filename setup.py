"""Builds the wheel with sql/ inside it (as oms/sql), so an installed `oms` runs from any folder.

sql/ stays at the top of the repository, where the design names it; an editable install reads it
from there (oms/infra/db.py looks in the package first, then in the checkout).
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSql(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_tree("sql", os.path.join(self.build_lib, "oms", "sql"))


setup(cmdclass={"build_py": BuildPyWithSql})
