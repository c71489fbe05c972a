"""Layering (issue 23): only mechbench.core and mechbench.models reach into what a model wraps.

Analyses, tasks, the CLI and the store use the model interface (:mod:`mechbench.core.model`): no ``.bridge``
attribute (the TransformerBridge of a HookedModel) outside ``mechbench/core/`` and ``mechbench/models/``, and
no ``transformer_lens`` import under ``mechbench/analyses/``. Ruff's banned-api rule (TID251, pyproject.toml)
also bans the import, but it matches imported names only, so the attribute rule lives here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mechbench

PACKAGE = Path(mechbench.__file__).parent
#: Packages that may touch the wrapped model (``model.bridge``) and TransformerLens.
INNER = ("core", "models")


def modules(under: Path) -> list[Path]:
    return sorted(path for path in under.rglob("*.py") if "__pycache__" not in path.parts)


def outer_modules() -> list[Path]:
    return [path for path in modules(PACKAGE) if path.relative_to(PACKAGE).parts[0] not in INNER]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_only_core_and_models_touch_the_wrapped_model() -> None:
    offenders = [where(path, node) for path in outer_modules()
                 for node in ast.walk(ast.parse(path.read_text(), str(path)))
                 if isinstance(node, ast.Attribute) and node.attr == "bridge"]
    assert not offenders, ("`.bridge` outside mechbench/core and mechbench/models (use a HookedModel method or "
                           f"property, mechbench.core.model): {', '.join(offenders)}")


def imported_modules(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node, node.module))
    return found


def test_no_analysis_imports_transformer_lens() -> None:
    offenders = [where(path, node) for path in modules(PACKAGE / "analyses")
                 for node, name in imported_modules(ast.parse(path.read_text(), str(path)))
                 if name == "transformer_lens" or name.startswith("transformer_lens.")]
    assert not offenders, f"analyses import transformer_lens (use mechbench.core.model): {', '.join(offenders)}"


def test_the_checks_see_an_offence() -> None:
    """The two checks find what they look for (so an empty result means a clean tree, not a blind check)."""
    tree = ast.parse("import transformer_lens.config\nfrom transformer_lens import HookedTransformer\n"
                     "def f(model):\n    return model.bridge.cfg\n")
    assert [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "bridge"]
    assert [name for _, name in imported_modules(tree)] == ["transformer_lens.config", "transformer_lens"]
    assert outer_modules() and all("core" not in p.relative_to(PACKAGE).parts[:1] for p in outer_modules())
