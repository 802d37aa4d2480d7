"""hsakd-ray stands on Ray's and MLflow's public APIs: no private module imported, no underscore method of their
classes overridden, anywhere in the package but ``hsakd_ray/ray_compat.py``; and each workaround there still finds
what it relies on in the installed Ray (so a Ray upgrade that moves it fails here, not in a user's sweep)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hsakd_ray"
COMPAT = PACKAGE / "ray_compat.py"
ENGINES = ("ray", "mlflow")


def is_private(module: str) -> bool:
    """``ray._private.state``, ``ray.train.v2._internal.x``, ``mlflow.tracking._tracking_service``: any part of a
    Ray or MLflow module path that starts with an underscore."""
    parts = module.split(".")
    return parts[0] in ENGINES and any(p.startswith("_") for p in parts[1:])


def private_uses(source: str) -> list[str]:
    """Private Ray/MLflow modules ``source`` imports or reaches by attribute (``ray._private.worker``)."""
    tree = ast.parse(source)
    found = []
    inner_chains = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # seen whole from outside
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_private(alias.name):
                    found.append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in ENGINES:
                found += [f"{node.module}.{a.name}" for a in node.names
                          if is_private(node.module) or a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and id(node) not in inner_chains:
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in ENGINES and is_private(".".join([inner.id, *chain])):
                found.append(".".join([inner.id, *reversed(chain)]))
    return found


@pytest.mark.parametrize("source, expected", [
    ("from ray._private.state import state", ["ray._private.state.state"]),
    ("import ray.train.v2._internal.util", ["ray.train.v2._internal.util"]),
    ("from ray.train._internal import utils", ["ray.train._internal.utils"]),
    ("import ray\nx = ray._private.worker._global_node", ["ray._private.worker._global_node"]),
    ("from mlflow.tracking._tracking_service import utils", ["mlflow.tracking._tracking_service.utils"]),
    ("from ray.train import _internal", ["ray.train._internal"]),
    ("from ray.train.torch import TorchTrainer\nfrom ray.train import UserCallback\n", []),
    ("import os\nos._exit(0)\n", []),
])
def test_the_check_sees_every_kind_of_private_use(source, expected):
    assert private_uses(source) == expected


def test_the_package_uses_no_private_ray_or_mlflow_api_outside_the_compat_module():
    offenders = {str(path.relative_to(PACKAGE.parent)): found for path in sorted(PACKAGE.rglob("*.py"))
                 if path != COMPAT and (found := private_uses(path.read_text()))}
    assert offenders == {}, "private Ray/MLflow API: move it to hsakd_ray/ray_compat.py with its Ray issue"


def underscore_overrides(cls: type) -> list[str]:
    """Underscore methods ``cls`` defines that a Ray or MLflow class above it already has: overrides of their
    internals. Its own private helpers (a name no engine base has) are its business."""
    engine_bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in ENGINES]
    return [f"{cls.__qualname__}.{name}" for name, value in vars(cls).items()
            if name.startswith("_") and not name.startswith("__") and callable(getattr(value, "__func__", value))
            and any(hasattr(b, name) for b in engine_bases)]


def test_the_override_check_sees_an_override_of_ray_internals():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class Overrides(DataParallelTrainer):
        def _create_default_callbacks(self):
            return []

        def _own_helper(self):
            return None

    assert underscore_overrides(Overrides) == [f"{Overrides.__qualname__}._create_default_callbacks"]


def test_no_class_in_the_package_overrides_an_underscore_method_of_ray_or_mlflow():
    import importlib
    import inspect

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name:
                found += underscore_overrides(cls)
    assert found == []


def test_every_compat_workaround_names_the_ray_version_and_issue_it_answers():
    tree = ast.parse(COMPAT.read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    for function in functions:
        doc = ast.get_docstring(function) or ""
        assert "Ray 2." in doc and "ray-project/ray#" in doc, function.name


def test_the_autoscaler_maximum_is_still_where_the_compat_module_reads_it():
    """Fails when Ray moves or renames the helper ``autoscaler_max_resources`` reads (then the warning for a
    shortfall an autoscaler can fill would silently become a refusal): port it, or drop it if Ray made it public."""
    from ray._private.state import state

    assert callable(getattr(state, "get_max_resources_from_cluster_config", None))


def test_the_autoscaler_maximum_is_read_as_floats_and_none_without_an_autoscaler(monkeypatch):
    """What ``autoscaler_max_resources`` makes of Ray's answer: an autoscaling cluster's maximum as floats (a
    shortfall within it only warns), and None when Ray knows no autoscaler (a shortfall is refused)."""
    from ray._private.state import state

    from hsakd_ray.ray_compat import autoscaler_max_resources

    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64, "GPU": 8})
    assert autoscaler_max_resources() == {"CPU": 64.0, "GPU": 8.0}
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)
    assert autoscaler_max_resources() is None
