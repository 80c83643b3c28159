"""Imports point one way (docs/ARCHITECTURE.md, "Layers"): every module of the package is
parsed with `ast` and each `coopnet_tf` import it makes, at any depth (function-level
imports included), must go to its own layer or a lower one; eval/ and visualize.py import
no TensorFlow/Keras at module level."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "coopnet_tf"

# Lowest first; a module may import its own layer and the layers before it.
LAYERS = (
    ("base", ("coopnet_tf", "coopnet_tf.specs", "coopnet_tf.run_layout", "coopnet_tf.images",
              "coopnet_tf.files")),
    ("geometry", ("coopnet_tf.geometry",)),
    ("data", ("coopnet_tf.data",)),
    ("models", ("coopnet_tf.models",)),
    ("losses", ("coopnet_tf.losses",)),
    ("metrics and pictures", ("coopnet_tf.eval", "coopnet_tf.visualize", "coopnet_tf.summaries")),
    ("training", ("coopnet_tf.training",)),
    ("export", ("coopnet_tf.export",)),
    ("entry points", ("coopnet_tf.train", "coopnet_tf.evaluate", "coopnet_tf.predict")),
)
NUMPY_ONLY = ("coopnet_tf.eval", "coopnet_tf.visualize")


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest matching prefix (``coopnet_tf`` alone is base)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of LAYERS")
    return rank


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, top_level_only: bool = False):
    """(line, imported module) of every import in the file (relative ones resolved);
    ``from pkg import name`` yields ``pkg.name`` when that is a module of the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                yield node.lineno, sub if is_module else target


def upward_imports(path: pathlib.Path):
    here = module_name(path)
    rank = layer_of(here)
    for line, target in imports(path):
        if target.split(".")[0] != "coopnet_tf":
            continue
        if layer_of(target) > rank:
            yield (f"{path.relative_to(PACKAGE.parent)}:{line}: {here} ({LAYERS[rank][0]}) "
                   f"imports {target} ({LAYERS[layer_of(target)][0]})")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert len(MODULES) > 30
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_back_up(path):
    assert list(upward_imports(path)) == []


def test_numpy_only_modules_import_no_tensorflow():
    for path in MODULES:
        if not module_name(path).startswith(NUMPY_ONLY):
            continue
        heavy = [(line, m) for line, m in imports(path, top_level_only=True)
                 if m.split(".")[0] in ("tensorflow", "keras")]
        assert heavy == [], path


def test_the_check_catches_an_inverted_import(tmp_path, monkeypatch):
    """A losses module importing the training step is reported (the test can fail)."""
    fake_package = tmp_path / "coopnet_tf"
    (fake_package / "losses").mkdir(parents=True)
    (fake_package / "training").mkdir()
    (fake_package / "training" / "step.py").write_text("")
    bad = fake_package / "losses" / "bad.py"
    bad.write_text("import numpy as np\nfrom coopnet_tf.training import step\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake_package)
    found = list(upward_imports(bad))
    assert len(found) == 1 and "coopnet_tf.losses.bad (losses) imports " \
        "coopnet_tf.training.step (training)" in found[0]
