"""One pasteable file per stage: each numbered script with exactly the kit code it uses.

`make kaggle` (python -m common.bundle) writes, for every `NN_*.py` at the repository root,
`OUT_DIR/NN_*.py` and `OUT_DIR/NN_*.ipynb` that run in a folder (or a Kaggle kernel) where
the repository is not: the script's docstring comes first, then a short bootstrap, then the
script itself unchanged (imports, the CFG block, helpers, main). The kit modules it uses are
found by following `import` / `from ... import` statements through the AST from the script,
whatever packages and subpackages the repository holds (relative imports, imports inside
functions, parent packages' `__init__.py`, `importlib.import_module("literal")`, and the
whole package of a module that imports a computed name, as a plugin registry does); a module
no import reaches is left out.

Why a zip that is unpacked and imported, not inlined code: the house style forbids `exec` /
`eval` on strings, and the CFG block needs the kit at class definition
(`field(default_factory=paths.default_input_dir)`), so the kit must be importable before
the CFG executes while the CFG stays the first thing a reader meets. The bootstrap carries
the modules' sources as one base64 line (a deterministic zip: same kit, same bytes), unpacks
them once into `<temp dir>/sed-kit-<hash>` (beside, then renamed: a torchrun rank never sees
half a kit) and puts that folder first on `sys.path`; from there on every `import common...`
is an ordinary import of a real file, so pickling into worker processes, tracebacks and
`inspect` behave as in the repository. The temp dir, not WORK_DIR: the bootstrap runs
before the CFG names WORK_DIR, and on Kaggle /kaggle/working is the kernel's output, which
the kit's sources should not clutter. Kit modules already imported from elsewhere (another
bundle pasted into an earlier cell of the same notebook) are dropped from `sys.modules`, so
each stage runs with its own bundle's code.

The notebook has three cells: the docstring (markdown), the script up to its
`if __name__ == "__main__":` block (bootstrap, imports, CFG, helpers, main), and that block.
Inside a notebook the command line is ignored (common.cli): edit the CFG block.

Examples:
    make kaggle                                            # -> dist/kaggle/NN_*.py, .ipynb
    python -m common.bundle --scripts=01_preprocess.py,02_train_stage1.py --out_dir=/tmp/k
"""
from __future__ import annotations

import ast
import base64
import hashlib
import io
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import ConfigError, run

ROOT = Path(__file__).resolve().parents[1]
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same kit gives the same bytes

BOOTSTRAP = '''
# ---- kit bootstrap, written by `make kaggle` (python -m common.bundle): the kit modules this
# stage imports (listed at the end of this file) travel zipped on the long line below; they are
# unpacked once under the temp folder and imported as usual. The CFG block follows.
def _kit_bootstrap(blob: str, packages: tuple) -> None:
    import base64, hashlib, io, os, shutil, sys, tempfile, zipfile  # noqa: E401
    data = base64.b64decode(blob)
    kit = os.path.join(tempfile.gettempdir(), "sed-kit-" + hashlib.sha256(data).hexdigest()[:16])
    if not os.path.isdir(kit):  # unpacked beside it, then renamed: no process sees half a kit
        part = tempfile.mkdtemp(prefix=".sed-kit-", dir=os.path.dirname(kit))
        zipfile.ZipFile(io.BytesIO(data)).extractall(part)
        try:
            os.rename(part, kit)
        except OSError:  # another process (a torchrun rank) unpacked it first
            shutil.rmtree(part)
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:  # another bundle's
        if not str(getattr(sys.modules[name], "__file__", "")).startswith(kit + os.sep):
            del sys.modules[name]
    sys.path[:] = [kit] + [p for p in sys.path if p != kit]


_kit_bootstrap("{blob}", {packages})
# ---- end of the kit bootstrap
'''


@dataclass
class CFG:
    scripts: list[str] = field(default_factory=list)  # e.g. 01_preprocess.py; [] = every NN_*.py
    out_dir: str = "dist/kaggle"   # the bundled .py (and .ipynb) files go here
    notebooks: bool = True         # also write a notebook per script (needs nbformat)
    root: str = ""                 # repository root; "" = the one holding this module


# ----------------------------------------------------------------------------- imports
def module_file(root: Path, name: str) -> Path | None:
    """The file that `import name` loads from `root` (a.b -> a/b.py or a/b/__init__.py), or
    the folder of a namespace package; None when the name is not the kit's."""
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base if base.is_dir() else None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Dotted names that the module's import statements (anywhere in it, inside functions
    too) may load: `import a.b`, `from a import b` (a, and a.b in case b is a module),
    relative imports resolved against `package`, `importlib.import_module("a.b")`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(p for p in [*parts, base] if p)
            if base and base != "__future__":
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value)
    return names


def _is_import_module(func: ast.AST) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id == "import_module")


def imports_by_computed_name(tree: ast.AST) -> bool:
    """True when the module imports a name it computes (`import_module(f"{__name__}.{m}")`,
    a plugin registry): no walk can tell which modules, so its whole package goes along."""
    return any(isinstance(node, ast.Call) and _is_import_module(node.func) and node.args
               and not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))
               for node in ast.walk(tree))


def kit_files(script: Path, root: Path = ROOT) -> list[Path]:
    """Every kit file that running `script` from `root` can import, parent packages'
    `__init__.py` included, sorted; the script itself is not in the list."""
    root, script = root.resolve(), script.resolve()
    todo, seen = [(script, "")], set()
    while todo:
        path, package = todo.pop()
        tree = ast.parse(path.read_text(), filename=str(path))
        names = imported_names(tree, package)
        if package and imports_by_computed_name(tree):
            folder = root.joinpath(*package.split("."))
            names |= {module_name(root, f) for f in folder.rglob("*.py")
                      if "__pycache__" not in f.parts}
        for name in names:
            parts = name.split(".")
            if module_file(root, parts[0]) is None:
                continue  # not the kit's: the standard library or an installed package
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/ and a/b/ first
                found = module_file(root, ".".join(parts[:depth]))
                if found is None or found in seen:
                    continue
                seen.add(found)
                if found.is_file():
                    mod = module_name(root, found)
                    todo.append((found, mod if found.name == "__init__.py" else mod.rpartition(".")[0]))
    return sorted(p for p in seen if p.is_file())


def kit_zip(files: list[Path], root: Path) -> bytes:
    """The files as a deflated zip, paths relative to root, fixed order and entry times."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the bundle
@dataclass
class Bundle:
    """A bundled script: `head` (docstring and `from __future__` lines), `bootstrap`,
    `body` (the script up to its main block), `main_block`, `footer`; `files` are the kit
    files it carries."""
    script: Path
    head: str
    bootstrap: str
    body: str
    main_block: str
    footer: str
    files: list[Path]

    @property
    def source(self) -> str:
        return self.head + self.bootstrap + self.body + self.main_block + self.footer


def split_script(text: str, path: Path) -> tuple[str, str, str]:
    """(docstring and `from __future__` imports, the rest up to the main block, the
    `if __name__ == "__main__":` block to the end); line-exact slices of `text`."""
    tree = ast.parse(text, filename=str(path))
    body = tree.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        raise ConfigError(f"{path}: a stage opens with its docstring; none found")
    cut = body[0].end_lineno
    for node in body[1:]:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            cut = node.end_lineno
        else:
            break
    mains = [n for n in body if isinstance(n, ast.If) and "__name__" in ast.unparse(n.test)
             and "__main__" in ast.unparse(n.test)]
    lines = text.splitlines(keepends=True)
    start = mains[-1].lineno - 1 if mains else len(lines)
    while start > cut and lines[start - 1].strip() == "":  # blank lines stay with the body
        start -= 1
    return "".join(lines[:cut]), "".join(lines[cut:start]), "".join(lines[start:])


def bundle_script(script: Path, root: Path = ROOT) -> Bundle:
    root, script = root.resolve(), script.resolve()
    files = kit_files(script, root)
    head, body, main_block = split_script(script.read_text(), script)
    packages = tuple(sorted({f.relative_to(root).parts[0].removesuffix(".py") for f in files}))
    data = kit_zip(files, root)
    blob = base64.b64encode(data).decode("ascii")
    bootstrap = BOOTSTRAP.replace("{blob}", blob).replace("{packages}", repr(packages))
    listing = ", ".join(f.relative_to(root).as_posix() for f in files)
    footer = "\n" + textwrap.fill(
        f"Kit modules in this bundle (unpacked to <temp dir>/sed-kit-"
        f"{hashlib.sha256(data).hexdigest()[:16]}): "
        f"{listing}", width=95, initial_indent="# ", subsequent_indent="# ",
        break_on_hyphens=False) + "\n"
    if not main_block.endswith("\n"):
        main_block += "\n"
    return Bundle(script, head, bootstrap, body, main_block, footer, files)


def notebook(bundle: Bundle):
    """The bundle as a notebook: docstring (markdown), the script up to its main block, the
    main block. Cell ids are fixed so the same bundle gives the same file."""
    import nbformat
    from nbformat import v4

    tree = ast.parse(bundle.head)
    doc = ast.get_docstring(tree, clean=True) or bundle.script.stem
    title, _, rest = doc.partition("\n")
    markdown = f"# {bundle.script.name}: {title}\n\n```text\n{rest.strip()}\n```\n" \
        "\nEdit the CFG block in the next cell (the command line is ignored in a notebook), " \
        "then run all cells."
    future = "".join(line for line in bundle.head.splitlines(keepends=True)
                     if line.startswith("from __future__"))
    code = (future + bundle.bootstrap + bundle.body).strip("\n")
    cells = [v4.new_markdown_cell(markdown, id="docstring"),
             v4.new_code_cell(code, id="stage"),
             v4.new_code_cell((bundle.main_block + bundle.footer).strip("\n"), id="run")]
    book = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nbformat.validate(book)
    return book


def numbered_scripts(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("[0-9][0-9]_*.py") if p.is_file())


def write_bundles(cfg: CFG) -> list[Path]:
    """Write the bundled script (and notebook) of each selected script; returns the paths."""
    root = Path(cfg.root).resolve() if cfg.root else ROOT
    scripts = [root / s for s in cfg.scripts] if cfg.scripts else numbered_scripts(root)
    missing = [str(s) for s in scripts if not s.is_file()]
    if missing:
        raise ConfigError(f"--scripts: {', '.join(missing)} not found; choose among "
                          f"{', '.join(p.name for p in numbered_scripts(root))}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for script in scripts:
        bundle = bundle_script(script, root)
        target = out_dir / script.name
        target.write_text(bundle.source)
        written.append(target)
        if cfg.notebooks:
            import nbformat
            book = target.with_suffix(".ipynb")
            nbformat.write(notebook(bundle), str(book))
            written.append(book)
        print(f"{target}: {len(bundle.files)} kit modules, {len(bundle.source) / 1024:.0f} KiB"
              + (" (+ .ipynb)" if cfg.notebooks else ""), flush=True)
    return written


def main(cfg: CFG) -> list[Path]:
    return write_bundles(cfg)


if __name__ == "__main__":
    run(main, CFG, "bundle")
