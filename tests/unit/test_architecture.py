"""The import direction of DESIGN.md §4, checked on the source (no imports executed).

    errors ← oci ← registry ← cache ← layers ← store ← views → vfs ← mount ← cli

Each module may import only from its own layer or the layers to its left; only registry/
talks HTTP, only vfs/ and the mount talk FUSE, and oci/ is pure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "regfs"

# Layer of each top-level part of the package, left (low) to right (high).
LAYERS: dict[str, int] = {
    "errors": 0,
    "oci": 1,
    "registry": 2,
    "cache": 3,
    "layers": 4,
    "store": 5,
    "views": 6,
    "vfs": 6,  # beside views: views build vfs nodes; vfs knows nothing of views
    "mount": 7,
    "compose": 7,
    "dirs": 0,
    "fileio": 0,
    "cachectl": 7,
    "prefetch": 7,
    "commands": 7,  # ls/cat/cp: the tree without FUSE
    "copy": 7,
    "targets": 7,
    "status": 7,
    "cli": 8,
    "__init__": 0,
    "__main__": 8,
}
# What a part may not import even though its layer would allow it.
FORBIDDEN: dict[str, set[str]] = {
    "vfs": {"views", "store", "cache", "registry", "layers"},
    # Views see a registry only through the store's interface (views/store.py).
    "views": {"registry", "store"},
}
THIRD_PARTY_ONLY_IN = {
    "httpx": {"registry"},
    "httpcore": {"registry"},
    "pyfuse3": {"vfs", "mount"},
}
PURE = {"oci": {"httpx", "httpcore", "trio", "pyfuse3"}}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def part_of(path: Path, root: Path = PACKAGE) -> str:
    relative = path.relative_to(root)
    return relative.parts[0].removesuffix(".py")


def imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Absolute names imported by a module (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["regfs", *path.relative_to(root).parent.parts]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:
                    names += [f"{target}.{alias.name}" for alias in node.names]
                    continue
                names.append(target)
            elif node.module:
                names.append(node.module)
    return names


def regfs_part(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "regfs" or len(parts) < 2:
        return None
    return parts[1]


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    part = part_of(path, root)
    if part not in LAYERS:
        return [f"{part}: a new part of the package needs a place in LAYERS"]
    found = []
    for name in imports(path, root):
        target = regfs_part(name)
        if target is not None:
            if target not in LAYERS:
                found.append(f"imports unknown part {name}")
            elif LAYERS[target] > LAYERS[part]:
                found.append(f"{part} imports {name} (upward)")
            elif target in FORBIDDEN.get(part, set()):
                found.append(f"{part} may not import {name}")
            continue
        top = name.split(".")[0]
        allowed = THIRD_PARTY_ONLY_IN.get(top)
        if allowed is not None and part not in allowed:
            found.append(f"{part} imports {top}: only {sorted(allowed)} may")
        if top in PURE.get(part, set()):
            found.append(f"{part} is pure and imports {top}")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    assert violations(path) == []


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > 520
    }
    assert not long, f"modules over ~500 lines: {long}"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("vfs/x.py", "from ..views import image\n", "vfs may not import regfs.views"),
        ("vfs/x.py", "from ..errors import RegfsError\n", None),
        ("oci/x.py", "import trio\n", "oci is pure and imports trio"),
        ("cache/x.py", "import httpx\n", "cache imports httpx: only ['registry'] may"),
        ("registry/x.py", "from ..views.image import ImageDir\n", "upward"),
        ("views/x.py", "from ..registry.client import RegistryClient\n", "views may not import"),
        ("views/x.py", "from .nodes import Dir\n", None),
    ],
)
def test_the_checker_sees_violations(
    tmp_path: Path, module: str, source: str, expected: str | None
) -> None:
    # Relative imports must be resolved, or every check above would pass vacuously.
    path = tmp_path / module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations(path, tmp_path)
    if expected is None:
        assert found == []
    else:
        assert any(expected in v for v in found), found
