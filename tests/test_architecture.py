"""The house rules of src/pairforge (README, "Architecture"), checked on the code itself: every import runs
downward through the documented layers (a stage package never imports a sibling stage), there is no import
loop, no function is longer than 80 lines and no module longer than 450."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pairforge"

# bottom to top; a module imports only from lower layers, or from its own package (training.* from training.*)
LAYERS = [
    {"errors", "schema"},
    {"files", "text", "layout", "models", "edits", "folder_lock"},
    {"fingerprints", "results", "prompting"},
    {"config", "fields"},
    {"train_config"},
    {"recipe", "records", "pair_files", "memory_records"},
    {"requests", "sequences", "recipe_docs", "rounds", "work_rates"},
    {"stage_unit"},
    {"generation", "revision", "judging", "pairs", "training"},
    {"evaluation", "revision_stage", "rank_stage"},
    {"costs"},
    {"render"},
    {"reporting"},
    {"pipeline"},
    {"options"},
    {"api"},
    {"cli"},
    {"__main__"},
]


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path, module: str) -> set[str]:
    """The pairforge modules a module imports, at the top or inside functions (lazy imports count)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["pairforge", *package[: len(package) - node.level + 1], *([base] if base else [])])
            if base.startswith("pairforge"):
                for alias in node.names:
                    found.add(f"{base}.{alias.name}".removeprefix("pairforge").strip("."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("pairforge.") for a in node.names if a.name.startswith("pairforge.")}
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """`training.losses.LOSSES` -> `training.losses`; `config` -> `config`."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = {_resolve(name, modules) for name in _imports(path, module)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_module_has_a_layer() -> None:
    missing = sorted({m.split(".")[0] for m in _graph() if m} - set().union(*LAYERS))
    assert not missing, f"add these to LAYERS (and README's Architecture): {missing}"


def test_imports_run_downward_and_never_to_a_sibling_stage() -> None:
    wrong = []
    for module, targets in _graph().items():
        if not module:
            continue
        for target in targets:
            same_package = target.split(".")[0] == module.split(".")[0]
            if not same_package and _layer(target) >= _layer(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_there_is_no_import_loop() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import loop: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_functions_and_modules_stay_readable() -> None:
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 450:
            long_modules.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > 80:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.name}: {length} lines")
    assert not long_functions and not long_modules, long_functions + long_modules


def test_the_layer_rule_would_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from a higher layer is found."""
    (tmp_path / "sample.py").write_text("from pairforge.pipeline import plan\nfrom . import losses\n")
    assert _imports(tmp_path / "sample.py", "training.sample") == {"pipeline.plan", "training.losses"}
    assert _layer("pipeline") > _layer("training.sample")


def test_readme_architecture_lists_the_layers_top_first() -> None:
    """README's layer picture is the documentation of LAYERS: the same modules, the upper layers above."""
    section = (PACKAGE.parents[1] / "README.md").read_text().split("## Architecture", 1)[1].split("Where to add")[0]
    line_of: dict[str, int] = {}
    for number, line in enumerate(section.splitlines()):
        if line.startswith("    ") and not line.startswith("     "):  # a layer's line, not its detail
            for token in re.split(r"\s{2,}", line.strip())[0].split():  # the names, before the description
                line_of.setdefault(token.removesuffix("/").removesuffix(".py"), number)
    layers = [layer - {"__main__"} for layer in LAYERS if layer != {"__main__"}]  # it is named in cli's line
    assert set(line_of) == set().union(*layers)
    for lower, upper in zip(layers, layers[1:], strict=False):
        assert max(line_of[name] for name in upper) < min(line_of[name] for name in lower), (lower, upper)


def _architecture_section() -> str:
    return (PACKAGE.parents[1] / "README.md").read_text().split("## Architecture", 1)[1].split("Where to add")[0]


def test_readme_architecture_names_every_module_and_only_real_ones() -> None:
    """Every module of the package is named in README's picture (by its file name, under its package), and every
    file name the picture gives exists: a module added, renamed or removed shows up here."""
    section = _architecture_section()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", section))
    files = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(str(f) for f in files if f.name not in named and f.name != "__main__.py")
    assert not missing, f"README Architecture does not name: {missing}"
    real = {p.name for p in PACKAGE.rglob("*.py")} | {Path(__file__).name}
    assert not sorted(named - real), "README Architecture names files that do not exist"


MODEL_LIBRARIES = ("transformers", "openai", "vllm", "sentence_transformers", "llama_cpp", "peft")


def test_stages_ask_models_only_through_requests_and_the_loaders() -> None:
    """README's claim: a stage asks a model only through requests/ (answers) and models.py (loading); only training
    builds models itself. So a new backend or loader is one place, and the stages stay testable without one."""
    allowed = ("models.py", "requests/backends/", "training/")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.split(".")[0] in MODEL_LIBRARIES for n in names) and not where.startswith(allowed):
                offenders.append(f"{where}: {names}")
    assert not offenders, offenders
