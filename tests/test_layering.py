"""The layering of shared/DESIGN.md: app/ui -> engine.api -> engine internals -> kernels. Arrows never point up."""

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
