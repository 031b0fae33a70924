"""The package's shape: no import cycles inside jaxfast/, models free of the training loop,
and loading an export for prediction imports no training code."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxfast"
TRAINING = ("jaxfast.learner", "jaxfast.checkpoint", "jaxfast.steps", "jaxfast.optim", "jaxfast.lr_finder",
            "jaxfast.recorder", "jaxfast.parallel", "jaxfast.tensorboard", "tqdm", "optax")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """jaxfast modules imported when `path` is imported (module-level statements only:
    imports inside functions run later, on use)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    edges = {m for m in found if m in modules and m != name}
    for m in list(edges):  # importing a.b.c imports its packages a and a.b too
        parts = m.split(".")
        edges.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules)
    # A module's own packages are being imported already when it runs (their __init__ may
    # import it): those edges are not cycles.
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    return edges - {name} - ancestors


def test_no_import_cycles_inside_the_package():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: top_level_imports(path, set(files)) for name, path in files.items()}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for child in sorted(graph[node]):
            visit(child)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert len(graph) > 40  # the walk saw the package


def test_model_files_do_not_import_the_training_loop():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for path in (PACKAGE / "models").glob("*.py"):
        imported = top_level_imports(path, set(files))
        assert not imported & set(TRAINING), (path.name, sorted(imported & set(TRAINING)))


def test_loading_an_export_imports_no_training_code():
    code = ("import sys, jaxfast.export, jaxfast.inference, jaxfast.models.resnet, jaxfast.models.heads; "
            "from jaxfast import load_learner; print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "jaxfast.inference" in loaded and "jaxfast.models.heads" in loaded
    assert not loaded & set(TRAINING), sorted(loaded & set(TRAINING))
    assert "tensorflow" not in loaded  # the image path imports TF only when it reads an image
