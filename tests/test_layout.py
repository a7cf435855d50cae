"""The package's layout is its architecture: areas form layers, services know no Gradio, the app never imports test doubles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlx_gradio"

# Lowest first: a module may import its own area and the areas before it, never one after it.
LAYERS = ["errors", "files", "logs", "net", "models", "engine", "chats", "store", "hub", "serving", "api", "controller",
          "ui", "app_factory"]
SERVICES = {"errors", "files", "logs", "net", "models", "engine", "chats", "store", "hub", "serving", "api"}


def area(module: str) -> str:
    """The first part after `mlx_gradio.`: a subpackage or a top-level module ("" for the package itself)."""
    return (module.split(".") + [""])[1]


def imports() -> dict[str, set[str]]:
    """Each module of the package and every module it imports (absolute names, relative imports resolved)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names if not node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[".".join(parts)] = names
    return found


def test_each_area_imports_only_the_areas_below_it():
    upward = []
    for module, names in imports().items():
        if area(module) in ("", "testing"):
            continue
        own = LAYERS.index(area(module))
        for name in names:
            if name.startswith("mlx_gradio.") and area(name) in LAYERS and LAYERS.index(area(name)) > own:
                upward.append(f"{module} imports {name}")
    assert not upward, "imports that point up a layer: " + "; ".join(sorted(upward))


def test_the_app_never_imports_the_test_doubles():
    leaks = [f"{module} imports {name}" for module, names in imports().items() if area(module) != "testing"
             for name in names if name.startswith("mlx_gradio.testing")]
    assert not leaks, "; ".join(leaks)


def test_services_know_nothing_of_gradio_and_each_subpackage_says_what_it_is_for():
    gradio = [module for module, names in imports().items() if area(module) in SERVICES
              and any(name == "gradio" or name.startswith("gradio.") for name in names)]
    assert not gradio, f"services that import Gradio: {gradio}"
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and doc.splitlines()[0].endswith("."), f"{init.parent.name}/__init__.py: say in one line what it is for"
