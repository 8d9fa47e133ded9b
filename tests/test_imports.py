"""No import cycles inside llmprune: no module imports (at module level or inside a function) one that
imports it back, directly or through others. Read from the source with `ast`, nothing imported."""
import ast
from pathlib import Path

import llmprune

ROOT = Path(llmprune.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for f in ROOT.rglob("*.py"):
        parts = ("llmprune", *f.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (f, package)
    graph = {m: set() for m in modules}
    for m, (f, package) in modules.items():
        here = m.split(".") if package else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:  # `import a.b.c` of a non-module attribute: its module
                    name = name.rpartition(".")[0]
                parts = name.split(".")
                for i in range(2, len(parts) + 1):  # importing a.b.c runs the packages a.b and a.b.c too
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != m and not m.startswith(dep + "."):
                        graph[m].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_graph_sees_imports():
    graph = import_graph()
    assert "llmprune.engine" in graph["llmprune.prune"]  # a function-level import counts
    assert "llmprune.methods" in graph["llmprune.config"] and "llmprune.methods.wanda" in graph["llmprune.methods"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
