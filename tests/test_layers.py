"""The package's structure: imports point down the layers only, with no import cycle (imports inside
functions included), and no source file is over 500 lines."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "videofusion"

# Lower numbers are lower layers; a module may import its own package and anything of a lower rank.
RANKS = {
    "errors": 0, "noise": 0, "outputs": 0, "version": 0,
    "io": 1, "runtime": 1, "long_video": 1,
    "models": 2, "schedulers": 2, "settings": 2,
    "convert": 2.5,  # beside models, above them: foreign layouts -> models' keys; pipelines import it
    "adapters": 2.7,  # LoRA files (their layouts, the original release's names) on our models
    "pipelines": 3,
    "demo": 4,
    "training": 5,
    "apps": 6,
    "": 7, "utils": 7,  # the public API: videofusion/__init__.py and the diffusers-compatible utils
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every videofusion module ``path`` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.split(".")[0] != "videofusion":
                continue
            for alias in node.names:  # `from . import cli` names a module; `from .x import f` a name
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_path(candidate) else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "videofusion")
    return found - {name}


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def layer(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down_a_layer():
    wrong = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                   if layer(a) != layer(b) and RANKS[layer(a)] <= RANKS[layer(b)])
    assert not wrong, wrong
    assert set(map(layer, GRAPH)) <= set(RANKS)  # a new top-level module needs a rank here


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of module names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep in graph and dep not in state and (cycle := visit(dep)):
                return cycle
        state[name] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_checks_see_imports_inside_functions_and_cycles():
    assert "videofusion.pipelines.folders" in GRAPH["videofusion.apps.common"]  # imported inside check_size
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
