"""Making sims importable on Dask workers.

A Dask worker puts its scratch directory first on ``sys.path`` and spills data to a ``storage``
folder inside it, which Python then imports as a namespace package in place of sims' ``storage``
package ("cannot import name 'ArtifactStore' from 'storage' (unknown location)"), even from the
end of ``sys.path`` when sims is an editable install (its finder comes after the path finder).
The plugin imports sims' packages on every worker with the scratch directory off ``sys.path``,
before any shard arrives; once imported they stay in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["SimsImportPath", "fix_import_path"]

PACKAGES = ("storage", "tasks", "flows", "sims_core")


def fix_import_path(local_directory: str | None) -> None:
    """Import sims' packages with ``local_directory`` off sys.path (dropping any namespace package
    it shadowed them with), then put it back where it was."""
    position = sys.path.index(local_directory) if local_directory in sys.path else None
    if position is not None:
        sys.path.pop(position)
    try:
        for name in PACKAGES:
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__file__", None) is None:  # a namespace package
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[key]
        importlib.invalidate_caches()
        for name in PACKAGES:
            importlib.import_module(name)
    finally:
        if position is not None and local_directory is not None:
            sys.path.insert(position, local_directory)


class SimsImportPath(WorkerPlugin):
    """Registered by the flow on every worker of a Dask engine (local cluster or scheduler)."""

    name = "sims-import-path"

    def setup(self, worker: Any) -> None:
        fix_import_path(getattr(worker, "local_directory", None))
