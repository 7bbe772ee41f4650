"""Classes named as the command line names them: `module.Class`, importable from the working directory, or
`path/to/file.py:Class`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# Modules imported from a file by path: a class of theirs is named by that path, which any folder can import.
FILE_MODULES: dict[str, Path] = {}


def import_file(path: Path) -> ModuleType:
    """Import a Python file as the module named after it, as `import` would from its folder."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # as `import` does: pickle and typing look up a class's module there
    spec.loader.exec_module(module)
    FILE_MODULES[path.stem] = path.resolve()
    return module


def import_named(spelling: str) -> object:
    """What `module.Name` or `path/to/file.py:Name` names (ImportError, AttributeError or FileNotFoundError if
    nothing; whatever the file raises if it fails)."""
    in_file = ":" in spelling
    location, _, name = spelling.rpartition(":" if in_file else ".")
    module = import_file(Path(location)) if in_file else importlib.import_module(location)
    return getattr(module, name)


def class_spelling(cls: type) -> str:
    """The spelling that `import_named` takes back to `cls`."""
    if cls.__module__ in FILE_MODULES:
        return f"{FILE_MODULES[cls.__module__]}:{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"
