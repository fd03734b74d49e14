"""Every package's ``__all__`` is complete and exact (after httpx's tests/test_exported_members.py).

A public name that a package's ``__init__`` binds but does not list is an export
by accident; a listed name that does not resolve is a broken promise. Lazy
packages (``verifier``) resolve each listed name on first access, so both
directions are checked through ``getattr``.
"""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "attacks",
    "fingerprint",
    "guard",
    "registry",
    "verifier",
    "verifier.evidence",
    "verifier.wire",
    "watermark",
    "watermark.schemes",
]

# Names an ``__init__`` binds for its own use, not as part of its surface (helpers it
# imports from other packages, such as ``core.errors.InputError``, are skipped too).
_PLUMBING = {"annotations", "TYPE_CHECKING", "Any", "importlib"}


def _defined_in(value: object, package: str) -> bool:
    """Whether ``value`` comes from ``package``'s own modules (a constant counts as its own)."""
    module = getattr(value, "__module__", None)
    return module is None or module == package or module.startswith(package + ".")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_every_public_member_once_and_each_resolves(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for member in exported:
        assert getattr(package, member) is not None, f"{name}.{member} does not resolve"
    public = {
        member for member, value in vars(package).items()
        if not member.startswith("_") and member not in _PLUMBING
        and not isinstance(value, types.ModuleType) and _defined_in(value, name)
    }
    missing = sorted(public - set(exported))
    assert not missing, f"{name} binds public names not in __all__: {missing}"


def test_every_package_with_a_public_surface_is_checked() -> None:
    """A new package with an ``__all__`` joins PACKAGES (so none escapes this test)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    found = set()
    for init in root.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(root)
        if rel.parts[0] in {"tests", ".venv", ".venv-mlserver", "build"} or "__all__" not in init.read_text():
            continue
        found.add(".".join(rel.parts))
    assert found == set(PACKAGES)
