"""Packaging invariants: the core never needs ComfyUI, the pack entry point is light, metadata is valid."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_samplers_import_with_comfy_unavailable():
    """Every core module imports and works while any `comfy*` import is made to fail."""
    code = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'comfy' or name.startswith(('comfy.', 'comfy_api', 'folder_paths')):
            raise ImportError('comfy is blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import samplers
names = [m.name for m in pkgutil.walk_packages(samplers.__path__, 'samplers.')]
for name in names:
    importlib.import_module(name)
assert not any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules), 'comfy was imported'
print(len(names))
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 20  # operators, equireg, solvers, priors, models ...


def test_no_absolute_self_imports():
    """Inside ComfyUI, `samplers` resolves to comfy/samplers.py (ComfyUI puts comfy/ on sys.path):
    the core and the nodes must import our package relatively."""
    offenders = []
    for folder in ("samplers", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.split(".")[0] in {"samplers", "nodes"}:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] in {"samplers", "nodes"}:
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"absolute imports of our own package: {offenders}"


def test_pack_entry_point_is_light():
    """Importing the pack's __init__ (as ComfyUI does) loads neither torch nor comfy, and defines no
    NODE_CLASS_MAPPINGS (which would stop ComfyUI from calling the V3 comfy_entrypoint)."""
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location('equireg_pack', {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
mod = importlib.util.module_from_spec(spec); sys.modules['equireg_pack'] = mod; spec.loader.exec_module(mod)
assert 'torch' not in sys.modules, 'torch imported eagerly'
assert not hasattr(mod, 'NODE_CLASS_MAPPINGS')
assert callable(mod.comfy_entrypoint)
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr


def test_pyproject_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert "comfyui" not in project["name"].lower()
    assert project["version"] == "0.1.0"
    assert isinstance(project["license"], dict)
    runtime = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert runtime <= {"torch", "numpy", "pillow", "safetensors"}, runtime
    assert {"test", "bench"} <= set(project["optional-dependencies"])
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert "Repository" in project["urls"]
    assert "ruff" in meta["tool"]


def test_ci_script_runs_the_readme_test_command_and_fails_on_exit_5():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest -q" in ci and "python -m pytest -q" in readme
    assert '"$rc" -eq 5' in ci
