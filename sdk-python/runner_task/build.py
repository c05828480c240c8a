"""`runner-task build app.py -o app.wasm`: a Python task to a component.

The component imports only what the task declares in `@task(needs=[...])`
(read from the source, not by running it) plus `context`: the builder writes
a WIT world with just those interfaces and hands it to componentize-py, with
the SDK, the app's directory and the pure-Python packages of a requirements
file on the Python path.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ._host import CAPABILITIES

WIT_PACKAGE = "runner:task@0.1.0"
ENTRY = "runner_task_entry"
# The CPython that componentize-py 0.25.1 puts in a component.
PYTHON_IN_COMPONENT = "3.14"


class BuildError(Exception):
    pass


def declared_needs(source: str, filename: str) -> list[str] | None:
    """The `needs` of the `@task(...)` decorator in `source`, or None when
    the module has no `@task`."""
    tree = ast.parse(source, filename)
    found: list[list[str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name != "task":
                continue
            needs: list[str] = []
            if isinstance(dec, ast.Call):
                for kw in dec.keywords:
                    if kw.arg != "needs":
                        continue
                    try:
                        value = ast.literal_eval(kw.value)
                    except ValueError:
                        raise BuildError(
                            f"{filename}:{kw.value.lineno}: needs=... must be a literal list of "
                            f"strings (the builder reads it without running the module), "
                            f"or pass --needs"
                        ) from None
                    if not isinstance(value, (list, tuple)) or not all(
                        isinstance(v, str) for v in value
                    ):
                        raise BuildError(
                            f"{filename}:{kw.value.lineno}: needs must be a list of strings"
                        )
                    needs = list(value)
            found.append(needs)
    if not found:
        return None
    if len(found) > 1:
        raise BuildError(f"{filename}: {len(found)} @task functions; a component has one")
    return found[0]


def world(needs: Sequence[str]) -> str:
    """A WIT world importing `context` and `needs`, exporting `run`."""
    imports = "".join(
        f"    import {WIT_PACKAGE.replace('@', '/' + n + '@')};\n"
        for n in ["context", *needs]
    )
    return (
        "package runner:app;\n\n"
        "world app {\n"
        f"{imports}"
        "    variant task-error {\n"
        "        retry(string),\n"
        "        fail(string),\n"
        "    }\n"
        "    export run: func(input: string) -> result<string, task-error>;\n"
        "}\n"
    )


def check_needs(needs: Sequence[str], where: str) -> list[str]:
    for n in needs:
        if n not in CAPABILITIES:
            raise BuildError(
                f"{where}: unknown capability {n!r}; the capabilities are {', '.join(CAPABILITIES)}"
            )
    return list(dict.fromkeys(needs))


# Standard modules newer than the oldest Python that runs the builder (3.10):
# the component's CPython has them.
_NEWER_STDLIB = frozenset({"tomllib", "annotationlib", "compression"})


def check_module_name(app: Path) -> None:
    """Refuses a file whose name the component cannot import as the app: the
    entry imports it by its stem, and a component's path has the standard
    library first, so a stem that is a standard module (`email.py`) would
    import that module instead, and the component would have no task."""
    stem = app.stem
    if not stem.isidentifier() or keyword.iskeyword(stem):
        raise BuildError(
            f"{app}: rename the file; {stem!r} is not a Python module name "
            f"(letters, digits and _, not a keyword)"
        )
    if stem in sys.stdlib_module_names or stem in _NEWER_STDLIB:
        raise BuildError(
            f"{app}: rename the file; {stem!r} is a standard library module, "
            f"which the component would import instead"
        )
    if stem == ENTRY or stem in ("wit_world", "runner_task"):
        raise BuildError(f"{app}: rename the module; {stem!r} is taken by the build")


def _wit_dir(work: Path, needs: Sequence[str]) -> Path:
    """A WIT directory with the `runner:task` package and the world `app`."""
    wit = work / "wit"
    (wit / "deps" / "runner-task").mkdir(parents=True)
    task_wit = resources.files("runner_task").joinpath("wit/task.wit").read_text("utf-8")
    (wit / "deps" / "runner-task" / "task.wit").write_text(task_wit, "utf-8")
    (wit / "app.wit").write_text(world(needs), "utf-8")
    return wit


def _componentize(args: Sequence[str]) -> None:
    cmd = [sys.executable, "-c", _RUN_COMPONENTIZE, *args]
    # componentize-py adds $VIRTUAL_ENV's packages to the path; the build
    # names its own.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(
            f"componentize-py failed (exit {done.returncode}):\n{done.stderr or done.stdout}"
        )


def bindings(out: Path) -> None:
    """Writes the bindings of a world with every capability into `out`."""
    with tempfile.TemporaryDirectory(prefix="runner-task-bindings-") as tmp:
        wit = _wit_dir(Path(tmp), CAPABILITIES)
        _componentize(["-d", str(wit), "-w", "runner:app/app", "bindings", str(out)])


def build(
    app: Path,
    output: Path,
    requirements: Path | None = None,
    needs: Sequence[str] | None = None,
    python_path: Sequence[Path] = (),
) -> list[str]:
    """Builds `app` into the component `output`; returns the capabilities it
    imports."""
    if app.suffix != ".py" or not app.is_file():
        raise BuildError(f"{app}: not a Python file")
    check_module_name(app)
    source = app.read_text(encoding="utf-8")
    try:
        found = declared_needs(source, str(app))
    except SyntaxError as e:
        raise BuildError(f"{app}:{e.lineno}: {e.msg}") from None
    if found is None:
        raise BuildError(f"{app}: no @task function (from runner_task import task)")
    caps = check_needs(needs if needs is not None else found, str(app))

    with tempfile.TemporaryDirectory(prefix="runner-task-build-") as tmp:
        work = Path(tmp)
        wit = _wit_dir(work, caps)
        entry = work / "entry"
        entry.mkdir()
        # Only what is imported at build time is in the component's snapshot:
        # the bindings of the declared capabilities are imported here so
        # that the SDK's calls can import them at run time.
        bound = ", ".join(["context", *caps])
        (entry / f"{ENTRY}.py").write_text(
            f"from wit_world.imports import {bound}  # noqa: F401\n"
            f"import {app.stem}  # noqa: F401  (defines the @task)\n"
            "from runner_task._world import WitWorld as WitWorld\n"
            "from runner_task import _task\n"
            "import gc\n"
            "_task.warm_up()\n"
            "_task.resolve()\n"
            # What the module made at import is in the snapshot: the
            # collector need not walk it during a job.
            "gc.collect()\n"
            "gc.freeze()\n",
            "utf-8",
        )
        # The SDK's package alone: the directory it is installed in may be a
        # whole site-packages, which would be bundled, ahead of the deps.
        sdk = work / "sdk"
        shutil.copytree(
            Path(__file__).resolve().parent,
            sdk / "runner_task",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        paths = [entry, app.resolve().parent, sdk]
        paths += [p.resolve() for p in python_path]
        if requirements is not None:
            deps = work / "deps"
            install(requirements, deps)
            paths.append(deps)
        output.parent.mkdir(parents=True, exist_ok=True)
        args = ["-d", str(wit), "-w", "runner:app/app", "componentize", ENTRY, "-o", str(output)]
        for p in paths:
            args += ["-p", str(p)]
        _componentize(args)
    return caps


_RUN_COMPONENTIZE = (
    "import sys\n"
    "try:\n"
    "    from componentize_py import script\n"
    "except ImportError:\n"
    "    sys.exit('componentize-py is not installed: pip install componentize-py==0.25.1')\n"
    "sys.argv[0] = 'componentize-py'\n"
    "sys.exit(script())\n"
)


def install(requirements: Path, target: Path) -> None:
    """Installs the requirements' pure-Python wheels into `target`."""
    if not requirements.is_file():
        raise BuildError(f"{requirements}: no such requirements file")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--target", str(target), "--platform", "any",
           "--implementation", "py", "--python-version", PYTHON_IN_COMPONENT,
           "--only-binary=:all:", "-r", str(requirements.resolve())]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=requirements.resolve().parent)
    if done.returncode != 0:
        raise BuildError(
            f"installing {requirements} failed (only pure-Python wheels can be bundled):\n"
            f"{done.stderr or done.stdout}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runner-task", description="Builds a Python task into a runner component."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build app.py into a component")
    b.add_argument("app", type=Path, help="the module with the @task function")
    b.add_argument("-o", "--output", type=Path, help="the component (default: APP.wasm)")
    b.add_argument("-r", "--requirements", type=Path,
                   help="pure-Python packages to bundle (a pip requirements file)")
    b.add_argument("--needs", help="comma-separated capabilities, instead of @task(needs=...)")
    b.add_argument("-p", "--python-path", type=Path, action="append", default=[],
                   help="another directory of modules to bundle (repeatable)")
    w = sub.add_parser("wit", help="print the WIT world a task with these needs targets")
    w.add_argument("needs", nargs="*")
    g = sub.add_parser(
        "bindings",
        help="write the generated bindings of every capability into DIR "
        "(for an editor or mypy: MYPYPATH=DIR)",
    )
    g.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "wit":
            print(world(check_needs(args.needs, "needs")), end="")
            return 0
        if args.command == "bindings":
            bindings(args.dir)
            print(f"{args.dir}: bindings of context, {', '.join(CAPABILITIES)}")
            return 0
        needs = None if args.needs is None else [n.strip() for n in args.needs.split(",") if n.strip()]
        output = args.output or args.app.with_suffix(".wasm")
        caps = build(args.app, output, args.requirements, needs, args.python_path)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = output.stat().st_size
    print(f"{output}: {size / 1e6:.1f} MB, imports context{''.join(', ' + c for c in caps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
