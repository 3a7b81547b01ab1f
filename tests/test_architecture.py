"""The package's shape: folders by layer, lower layers never importing upper ones, no
import cycle (``TYPE_CHECKING`` imports included), imports of the package's own modules
inside functions only at the two doors, and modules that stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import lfm2_edge

PACKAGE = Path(lfm2_edge.__file__).parent
# Modules allowed past 450 lines, each one job and the reason beside it.
LONG_MODULES: dict[str, int] = {
    # the device report and its memory arithmetic (the board naming is local/device.py),
    # for one model and for several in one serve (together, keep-alive), with or without
    # llama.cpp's repacked copy (--no-repack)
    "lfm2_edge.local.doctor": 535,
    # reading an image from every source with its limits, and cutting it as transformers does
    "lfm2_edge.chat.images": 470,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, *, local: list[str] | None = None) -> set[str]:
    """The lfm2_edge modules ``path`` imports, at any depth, ``if TYPE_CHECKING:`` included
    (an import there is a cycle the day someone needs it at run time). ``local`` collects
    those made inside a function body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool = False) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function = True
        if in_function and local is not None and isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if getattr(node, "level", 0) or (mod or "").startswith("lfm2_edge"):
                local.append(f"{name}:{node.lineno}")
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lfm2_edge"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("lfm2_edge"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle through them
            if node.startswith(nxt + ".") or nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_package_imports_form_no_cycle() -> None:
    graph = _graph()
    assert "lfm2_edge.local.model" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


# Each layer imports only the layers before it (and its own folder); jobs/ sits beside
# local/ (it drives the models), testing/ beside _llama/ (it writes GGUF files); ollama/
# (a second wire format) beside openai/.
LAYERS: list[set[str]] = [
    {"errors"},
    {"chat"},
    {"prompt"},
    {"hub"},
    {"_llama", "testing"},
    {"local"},
    {"openai", "ollama", "jobs"},
    {"server"},
    {"cli"},
]


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no layer: give its folder a place in LAYERS")


def test_lower_layers_never_import_upper_ones() -> None:
    bad = []
    for module, deps in _graph().items():
        if module in ("lfm2_edge", "lfm2_edge.__main__"):
            continue  # the doors
        for dep in deps:
            if dep != "lfm2_edge" and _layer(dep) > _layer(module):
                bad.append(f"{module} -> {dep}")
    assert bad == []


def test_package_imports_inside_functions_are_only_at_the_doors() -> None:
    local: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        _imports(path, _module_name(path), local=local)
    doors = ("lfm2_edge.cli", "lfm2_edge:")
    outside = [where for where in local if not where.startswith(doors)]
    assert outside == []
    assert len(local) <= 12, local  # the bound: a dozen, all at the doors


def test_few_modules_sit_directly_in_the_package() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert len(top) <= 6, top


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_is_over_450_lines_unless_it_is_one_job() -> None:
    long = {
        _module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert {m: n for m, n in long.items() if n > LONG_MODULES.get(m, 450)} == {}
