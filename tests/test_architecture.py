"""The import direction of the library (docs/architecture.md): every module imports only its own layer's
package or lower layers, never upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adadsr_jax"

# Low to high. A module may import modules of its own package and of lower layers.
LAYERS: list[tuple[str, ...]] = [
    ("lazy_imports",),
    ("cli", "masks", "metrics", "data", "torch_checkpoint"),
    ("kernels",),
    ("models",),
    ("macs", "losses"),
    ("checkpoint",),
    ("conversion",),
    ("convert",),
    ("evaluation",),
    ("training",),
    ("upscale", "export"),
]


def unit_of(module: str) -> str:
    """The first component below adadsr_jax: 'adadsr_jax.models.edsr' -> 'models'."""
    return module.split(".")[1]


def layer_of(unit: str) -> int:
    for level, units in enumerate(LAYERS):
        if unit in units:
            return level
    raise AssertionError(f"adadsr_jax.{unit} is in no layer of tests/test_architecture.py: add it")


def library_modules(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, module: str) -> set[str]:
    """Every adadsr_jax module `path` imports (absolute or relative, at any depth of the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            # `from adadsr_jax import metrics` imports the module adadsr_jax.metrics.
            found |= {f"{name}.{alias.name}" for alias in node.names if name == "adadsr_jax"}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            # A package's lazy re-exports (adadsr_jax.lazy_imports) import their modules on first use.
            found |= {key.value for key in node.args[1].keys if isinstance(key, ast.Constant)}
    return {name for name in found if name.startswith("adadsr_jax.")}


def upward_imports(package: Path = PACKAGE) -> list[str]:
    problems = []
    for module, path in library_modules(package).items():
        if module == "adadsr_jax":  # the package root re-exports the public API of every layer
            continue
        unit = unit_of(module)
        for target in sorted(imported_modules(path, module)):
            target_unit = unit_of(target)
            if target_unit != unit and layer_of(target_unit) >= layer_of(unit):
                problems.append(
                    f"{module} imports {target} (layer {layer_of(target_unit)} >= {layer_of(unit)})"
                )
    return problems


def test_imports_point_down_only():
    assert upward_imports() == []


def test_kernels_never_import_models():
    for module, path in library_modules().items():
        if module.startswith("adadsr_jax.kernels"):
            assert not any(unit_of(t) == "models" for t in imported_modules(path, module)), module


def test_checker_sees_an_upward_import(tmp_path):
    """The checker itself: upward imports, absolute and relative, are reported; a same-package one is not."""
    fake = tmp_path / "adadsr_jax"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("from adadsr_jax.training import loop\n")
    (fake / "models" / "net.py").write_text("from ..macs import model_macs\nfrom . import layers\n")
    (fake / "data").mkdir()
    exports = '{"adadsr_jax.data.images": ("load_image",), "adadsr_jax.models": ("AdaDSR",)}'
    (fake / "data" / "__init__.py").write_text(f"lazy_exports(globals(), {exports})\n")
    assert upward_imports(fake) == [
        "adadsr_jax.data imports adadsr_jax.models (layer 3 >= 1)",
        "adadsr_jax.models imports adadsr_jax.training (layer 9 >= 3)",
        "adadsr_jax.models.net imports adadsr_jax.macs (layer 4 >= 3)",
    ]


@pytest.mark.parametrize("module", sorted(library_modules()))
def test_every_module_has_a_layer(module):
    if module != "adadsr_jax":
        layer_of(unit_of(module))
