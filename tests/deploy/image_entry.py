"""Run a module as it runs in a service image: only the image's files and its requirements.

    python image_entry.py APP_DIR ALLOWED_DISTRIBUTIONS MODULE

APP_DIR is a copy of the image's /app (what its Dockerfile copies there); ALLOWED_DISTRIBUTIONS
is a comma-separated list of canonical distribution names (the image's requirement closure).
Importing a third-party module that belongs to no allowed distribution fails as it would in the
image (ModuleNotFoundError), and the project's editable install is switched off so that nothing
outside APP_DIR is found.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class RequirementsGuard(importlib.abc.MetaPathFinder):
    def __init__(self, app_dir: str, allowed: set[str]) -> None:
        self.local = {entry.removesuffix(".py") for entry in os.listdir(app_dir)}
        self.allowed = allowed
        self.owners = importlib.metadata.packages_distributions()

    def owners_outside_the_image(self, fullname: str) -> set[str]:
        """The distributions ``fullname`` comes from when none is in the image, else nothing."""
        top = fullname.partition(".")[0]
        if top in sys.stdlib_module_names or top in self.local:
            return set()
        owners = {canonical(owner) for owner in self.owners.get(top, [])}
        # Not from a distribution, or an allowed one: the usual finders decide.
        return set() if owners & self.allowed else owners

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        owners = self.owners_outside_the_image(fullname)
        if not owners:
            return None
        raise ModuleNotFoundError(
            f"{fullname} comes from {sorted(owners)}, not in this image's requirements",
            name=fullname,
        )


def main() -> None:
    app_dir, allowed, module = sys.argv[1], sys.argv[2], sys.argv[3]
    # The editable install of the project would find services/longtail in the repository.
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if "__editable__" not in getattr(finder, "__module__", "")
    ]
    sys.path[0] = app_dir
    os.chdir(app_dir)
    guard = RequirementsGuard(app_dir, set(allowed.split(",")))
    sys.meta_path.insert(0, guard)
    # A probe for an optional package (yarl, under aiohttp, asks for pydantic_core) answers as in
    # the image, where it is not installed: None, not the guard's error.
    probe = importlib.util.find_spec

    def image_find_spec(
        name: str, package: str | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith(".") and guard.owners_outside_the_image(name):
            return None
        return probe(name, package)

    importlib.util.find_spec = image_find_spec
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
