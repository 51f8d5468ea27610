"""The layering of shared/DESIGN.md: app/ui -> engine.api -> engine internals -> kernels. Arrows never point up.

Inside the engine the stage packages have an order too (LAYERS): a module imports its own package and earlier ones
only, and no module of engine/ or tunesmith/ takes part in an import circle (imports inside functions count)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "triton", "transformers", "peft", "trl", "bitsandbytes", "kernels"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, as written (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def ui_files():
    return [ROOT / "app.py", *sorted((ROOT / "ui").glob("*.py"))]


def test_ui_imports_only_gradio_and_engine_api():
    for f in ui_files():
        for mod in imports(f):
            top = mod.split(".")[0]
            assert top not in HEAVY, f"{f.name} imports {mod}: the UI reaches engine internals only through engine.api"
            if top == "engine":
                assert mod in ("engine", "engine.api"), f"{f.name} imports {mod}; use engine.api"


def test_kernels_import_no_engine_or_libraries():
    for f in sorted((ROOT / "kernels").rglob("*.py")):
        for mod in imports(f):
            assert mod.split(".")[0] not in {"engine", "transformers", "peft", "trl", "gradio", "ui", "app"}, (
                f"{f.name} imports {mod}"
            )


def test_engine_never_imports_the_ui():
    for f in sorted((ROOT / "engine").rglob("*.py")):
        for mod in imports(f):
            assert mod.split(".")[0] not in {"gradio", "ui", "app"}, f"{f.name} imports {mod}"


def test_notebook_api_never_imports_the_ui():
    for f in sorted((ROOT / "tunesmith").rglob("*.py")):
        for mod in imports(f):
            assert mod.split(".")[0] not in {"gradio", "ui", "app"}, f"tunesmith/{f.name} imports {mod}"


def test_importing_the_app_loads_no_torch():
    code = "import sys; import app; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# The engine's stage packages, lowest first: a module may import its own package and the ones before it, never one
# after it. Modules directly in engine/ (run, __main__, bench, calibrate) are the entry points, above everything.
LAYERS = ("core", "data", "spec", "patching", "memory", "models", "chat", "training", "export", "api")


def module_files() -> dict[str, Path]:
    """engine.* and tunesmith.* module names -> their files (a package is its __init__.py)."""
    found = {}
    for pkg in ("engine", "tunesmith"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def import_graph() -> dict[str, set[str]]:
    """Which engine/tunesmith modules each one imports (top level and inside functions). `from pkg import name` is
    an import of the submodule pkg.name where there is one, else of pkg."""
    mods = module_files()

    def resolve(mod: str) -> str:
        while mod and mod not in mods:
            mod = mod.rpartition(".")[0]
        return mod

    graph = {}
    for name, f in mods.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = found - {"", name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_engine_or_tunesmith():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def layer(module: str) -> int | None:
    """The index of `module`'s stage in LAYERS; len(LAYERS) for an entry point; None outside engine."""
    parts = module.split(".")
    if parts[0] != "engine":
        return None
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def test_every_engine_module_is_in_a_stage_package_or_an_entry_point():
    entry = {"engine", "engine.__main__", "engine.run", "engine.bench", "engine.calibrate"}
    loose = [m for m in module_files() if layer(m) == len(LAYERS) and m not in entry]
    assert not loose, f"{loose}: put each in the stage package it belongs to (LAYERS), or list it as an entry point"


def test_no_stage_package_imports_a_later_one():
    upward = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        for dep in deps
        if layer(name) is not None and layer(dep) is not None and layer(dep) > layer(name)
    ]
    assert not upward, "imports up the layering " + " < ".join(LAYERS) + ": " + "; ".join(sorted(upward))


def test_engine_never_imports_the_notebook_api():
    for f in sorted((ROOT / "engine").rglob("*.py")):
        for mod in imports(f):
            assert mod.split(".")[0] != "tunesmith", f"{f.relative_to(ROOT)} imports {mod}"


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (inside if/try blocks too)."""
    names, todo = set(), list(ast.parse(path.read_text(), str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


def test_every_engine_import_names_a_module_or_a_name_it_defines():
    mods = module_files()
    wrong = []
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module in mods and node.level == 0:
                defined = top_level_names(mods[node.module])
                wrong += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if f"{node.module}.{a.name}" not in mods and a.name not in defined
                ]
    assert not wrong, "; ".join(wrong)


def test_a_module_over_500_lines_says_why_in_its_docstring():
    long = [
        f"{f.relative_to(ROOT)} ({n} lines)"
        for f in sorted((ROOT / "engine").rglob("*.py")) + sorted((ROOT / "tunesmith").rglob("*.py"))
        if (n := len(f.read_text().splitlines())) > 520
        and "500 lines" not in (ast.get_docstring(ast.parse(f.read_text())) or "")
    ]
    assert not long, f"{long}: split it, or say in its docstring why it stays over 500 lines"


def test_every_package_opens_with_a_docstring():
    for init in sorted((ROOT / "engine").rglob("__init__.py")):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} needs a docstring"
