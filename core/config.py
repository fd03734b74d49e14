"""Where wm keeps its files: ``$WM_HOME`` (default ``~/.wm``) and the registry URL."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_registry_url", "wm_home"]


def wm_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The wm home directory: ``explicit``, else ``$WM_HOME``, else ``~/.wm``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("WM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".wm"


def default_registry_url(home: Path, explicit: str | None = None) -> str:
    """The registry URL: ``explicit``, else ``$WM_REGISTRY_URL``, else SQLite in ``home``."""
    if explicit:
        return explicit
    env = os.environ.get("WM_REGISTRY_URL")
    if env:
        return env
    return f"sqlite:///{home / 'registry.db'}"
