"""Unit tests of the SDK's host-side logic: converting inputs and outputs,
the run's outcomes, and the builder's reading of `needs`. They run without
componentize-py: the bindings are not needed for any of this."""

from __future__ import annotations

import sys
import tempfile
import types
import unittest
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from unittest import mock

from runner_task import _task, context, errors, http, jobs, pdf
from runner_task._convert import InputError, decode, decoder, from_json, to_json
from runner_task._host import call, to_ms
from runner_task.build import BuildError, build, declared_needs, world
from runner_task.http import Response


class Colour(Enum):
    RED = "red"


@dataclass
class Line:
    item: str
    quantity: int
    price: float = 0.0


@dataclass
class Order:
    lines: list[Line]
    note: str | None = None
    tags: dict[str, int] = field(default_factory=dict)
    colour: Colour = Colour.RED
    mode: Literal["fast", "slow"] = "fast"


@dataclass
class Node:
    name: str
    children: list[Node] = field(default_factory=list)


@dataclass
class Folder:
    name: str
    files: list[File] = field(default_factory=list)


@dataclass
class File:
    name: str
    parent: Folder | None = None


@dataclass
class Stock:
    by_id: dict[int, Line]
    by_colour: dict[Colour, int] = field(default_factory=dict)


class ConvertTest(unittest.TestCase):
    def test_nested_dataclasses(self) -> None:
        o = from_json(
            {"lines": [{"item": "a", "quantity": 2, "price": 3}], "tags": {"x": 1}, "colour": "red"},
            Order,
            "input",
        )
        self.assertEqual(o, Order([Line("a", 2, 3.0)], tags={"x": 1}))
        self.assertIsInstance(o.lines[0].price, float)

    def test_errors_name_the_place(self) -> None:
        cases: list[tuple[Any, str]] = [
            ({"lines": [{"item": "a", "quantity": "2"}]}, "input.lines[0].quantity: expected an integer, got a string"),
            ({"lines": [{"item": "a"}]}, "input.lines[0].quantity: missing"),
            ({"lines": [], "extra": 1}, "input: unknown field 'extra' (expected colour, lines, mode, note, tags)"),
            ({"lines": {}}, "input.lines: expected a list, got an object"),
            ({"lines": [], "note": 5}, "input.note: expected a string, got a number"),
            ({"lines": [], "colour": "blue"}, "input.colour: expected one of ['red'], got 'blue'"),
            ({"lines": [], "mode": "warp"}, "input.mode: expected one of ['fast', 'slow'], got 'warp'"),
            ([], "input: expected an object, got a list"),
            ({"lines": [{"item": "a", "quantity": True}]}, "input.lines[0].quantity: expected an integer, got a boolean"),
        ]
        dec = decoder(Order)
        for value, expected in cases:
            with self.subTest(value=value):
                with self.assertRaises(InputError) as e:
                    from_json(value, Order, "input")
                self.assertEqual(str(e.exception), expected)
                with self.assertRaises(InputError) as e:
                    decode(value, dec, "input")
                self.assertEqual(str(e.exception), expected)

    def test_decoded_values_and_nested_paths(self) -> None:
        values: list[Any] = [
            {"lines": [{"item": "a", "quantity": 2, "price": 3}], "tags": {"x": 1}, "colour": "red"},
            {"lines": [{"item": "b", "quantity": 2.0}], "note": None, "mode": "slow"},
        ]
        expected = [
            Order([Line("a", 2, 3.0)], tags={"x": 1}),
            Order([Line("b", 2, 0.0)], mode="slow"),
        ]
        for value, order in zip(values, expected):
            self.assertEqual(decode(value, decoder(Order), "input"), order)
            self.assertEqual(from_json(value, Order, "input"), order)
        self.assertEqual(decode([1, 2], decoder(list[int]), "input"), [1, 2])
        self.assertEqual(decode({"a": None}, decoder(dict[str, int | None]), "input"), {"a": None})
        self.assertEqual(from_json([1, "x"], tuple[int, str], "input"), (1, "x"))
        with self.assertRaises(InputError) as e:
            from_json([1, 2], tuple[int, str], "input")
        self.assertEqual(str(e.exception), "input[1]: expected a string, got a number")
        with self.assertRaises(InputError) as e:
            from_json({"a": {"b": [1, "x"]}}, dict[str, dict[str, list[int]]], "input")
        self.assertEqual(str(e.exception), "input.a.b[1]: expected an integer, got a string")
        with self.assertRaises(InputError) as e:
            from_json(1.5, int | str, "input")
        self.assertEqual(str(e.exception), "input: a number fits none of int | str")

    def test_recursive_dataclasses(self) -> None:
        self.assertEqual(from_json({"name": "a", "children": [{"name": "b"}]}, Node, "input"),
                         Node("a", [Node("b")]))
        with self.assertRaises(InputError) as e:
            from_json({"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]},
                      Node, "input")
        self.assertEqual(str(e.exception),
                         "input.children[0].children[0].name: expected a string, got a number")
        # Mutually recursive, entered from either side.
        f = from_json({"name": "d", "files": [{"name": "x", "parent": {"name": "e"}}]}, Folder, "input")
        self.assertEqual(f, Folder("d", [File("x", Folder("e"))]))
        self.assertEqual(from_json({"name": "x", "parent": {"name": "d", "files": [{"name": "y"}]}},
                                   File, "input"), File("x", Folder("d", [File("y")])))
        with self.assertRaises(InputError) as e:
            from_json({"name": "d", "files": [{"name": "x", "parent": {"name": "e", "files": 1}}]},
                      Folder, "input")
        self.assertEqual(str(e.exception), "input.files[0].parent.files: expected a list, got a number")

    def test_dict_keys_are_converted_to_the_key_type(self) -> None:
        s = from_json({"by_id": {"1": {"item": "a", "quantity": 2}, "-20": {"item": "b", "quantity": 1}},
                       "by_colour": {"red": 3}}, Stock, "input")
        self.assertEqual(s, Stock({1: Line("a", 2), -20: Line("b", 1)}, {Colour.RED: 3}))
        # What `to_json` writes comes back as it was.
        self.assertEqual(from_json(to_json(s), Stock, "input"), s)
        self.assertEqual(from_json({"0": "z", "-0": "z"}, dict[int, str], "input"), {0: "z"})
        self.assertEqual(from_json({"1": 1}, dict[str, int], "input"), {"1": 1})
        # An integer key is written as JSON writes an integer, as serde_json
        # reads it for the Rust SDK.
        for key in ("x", "1.5", "1e3", " 1", "1 ", "+1", "01", "1_000", "١", "", "-"):
            with self.subTest(key=key):
                with self.assertRaises(InputError) as e:
                    from_json({"by_id": {key: {"item": "a", "quantity": 1}}}, Stock, "input")
                self.assertEqual(str(e.exception),
                                 f"input.by_id.{key}: expected an integer key, got {key!r}")
        with self.assertRaises(InputError) as e:
            from_json({"by_id": {}, "by_colour": {"blue": 1}}, Stock, "input")
        self.assertEqual(str(e.exception), "input.by_colour.blue: expected one of ['red'], got 'blue'")
        with self.assertRaises(InputError) as e:
            from_json({"2": {"item": "a"}}, dict[int, Line], "input")
        self.assertEqual(str(e.exception), "input.2.quantity: missing")

    def test_dict_keys_that_json_cannot_give_are_refused_up_front(self) -> None:
        class Level(Enum):
            LOW = 1

        for tp in (dict[float, int], dict[bool, int], dict[Line, int], dict[tuple[int, int], int],
                   dict[Level, int], dict[int | str, int]):
            with self.subTest(tp=tp):
                with self.assertRaises(TypeError) as e:
                    decoder(tp)
                self.assertIn("dict key", str(e.exception))
        try:
            with self.assertRaises(TypeError):
                @_task.task
                def run(x: dict[str, dict[float, int]]) -> None: ...
        finally:
            _task._TASK = None
        self.assertEqual(from_json({"a": 1}, dict[Literal["a", "b"], int], "input"), {"a": 1})

    def test_output(self) -> None:
        self.assertEqual(
            to_json(Order([Line("a", 1)], colour=Colour.RED)),
            {"lines": [{"item": "a", "quantity": 1, "price": 0.0}], "note": None, "tags": {},
             "colour": "red", "mode": "fast"},
        )
        with self.assertRaises(TypeError):
            to_json({"data": b"x"})

    def test_dict_keys_are_written_as_json_writes_them(self) -> None:
        self.assertEqual(to_json({Colour.RED: 3, "s": {None: 1}}), {"red": 3, "s": {"null": 1}})
        self.assertEqual(to_json({True: 1, False: 0}), {"true": 1, "false": 0})
        self.assertEqual(to_json({1: "a", 1.5: "b", -2: "c"}), {"1": "a", "1.5": "b", "-2": "c"})
        with self.assertRaises(TypeError) as e:
            to_json({(1, 2): "pair"})
        self.assertIn("tuple", str(e.exception))
        with self.assertRaises(ValueError):
            to_json({float("nan"): 1})


class HostTest(unittest.TestCase):
    def test_ttl(self) -> None:
        self.assertEqual(to_ms("ttl", 1.5), 1500)
        self.assertIsNone(to_ms("ttl", None))
        for bad in (-1, float("nan"), float("inf"), 1e30):
            with self.assertRaises(ValueError):
                to_ms("ttl", bad)

    def test_host_errors_are_mapped(self) -> None:
        @dataclass
        class HostError_Transient:
            value: str

        class Err(Exception):
            def __init__(self, value: Any) -> None:
                self.value = value

        with self.assertRaises(errors.Transient) as e:
            with call("kv", "get"):
                raise Err(HostError_Transient("connection refused"))
        self.assertEqual(str(e.exception), "kv.get: transient: connection refused")
        self.assertTrue(e.exception.is_transient)
        with self.assertRaises(errors.NotDeclared) as n:
            with call("http", "send"):
                raise ImportError("no", name="wit_world.imports.http")
        self.assertIn('@task(needs=["http", ...])', str(n.exception))


class HttpTest(unittest.TestCase):
    def test_raise_for_status_follows_the_rust_sdk(self) -> None:
        for status in (200, 204, 304):
            with self.subTest(status=status):
                r = Response(status, [], b"")
                self.assertIs(r.raise_for_status(), r)
        for status in (408, 425, 429, 500, 503):
            with self.subTest(status=status):
                with self.assertRaises(errors.Transient):
                    Response(status, [], b"").raise_for_status()
        for status in (400, 404, 410):
            with self.subTest(status=status):
                with self.assertRaises(errors.Permanent):
                    Response(status, [], b"not here").raise_for_status()


class _Bindings(types.ModuleType):
    """A stand-in for a generated `wit_world.imports` module: each function
    or record made through it is recorded as (name, args, kwargs)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.Paper = types.SimpleNamespace(A4="A4", LETTER="LETTER")
        self.Level = {n: n for n in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")}

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def make(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((attr, args, kwargs))
            return b"%PDF" if attr == "render" else (attr, args, kwargs)

        return make


@contextmanager
def bindings(name: str) -> Iterator[_Bindings]:
    """`wit_world.imports.<name>`, as the SDK imports it, for the block."""
    module = _Bindings(f"wit_world.imports.{name}")
    imports = types.ModuleType("wit_world.imports")
    setattr(imports, name, module)
    world = types.ModuleType("wit_world")
    setattr(world, "imports", imports)
    fake = {"wit_world": world, "wit_world.imports": imports, module.__name__: module}
    with mock.patch.dict(sys.modules, fake):
        yield module


class ArgumentsTest(unittest.TestCase):
    """Values the generated bindings cannot take (they would end the run with
    a trap) are converted or refused before the host call."""

    def test_pdf_cells_and_values(self) -> None:
        rows: list[list[Any]] = [["a", 3, 1.5, True, Decimal("2.50")]]
        with bindings("pdf") as wit:
            pdf.render("t", [pdf.Table(rows, header=["品目", 1]), pdf.KeyValues([("Total", 42)])])
        made = {name: (args, kwargs) for name, args, kwargs in wit.calls}
        self.assertEqual(made["Table"], ((), {"header": ["品目", "1"],
                                              "rows": [["a", "3", "1.5", "True", "2.50"]]}))
        self.assertEqual(made["Block_KeyValues"], (([("Total", "42")],), {}))

    def test_pdf_refuses_what_it_cannot_write(self) -> None:
        bad: Any = [None, ["h"], b"2", {"text": "y"}]
        cases: list[tuple[list[Any], str]] = [
            ([pdf.Table([["a"], ["b", bad[0]]])], "blocks[0].rows[1][1] is a NoneType"),
            (["x", pdf.Table([], header=[bad[1]])], "blocks[1].header[0] is a list"),
            ([pdf.KeyValues([("a", "1"), ("b", bad[2])])], "blocks[0].pairs[1][1] is a bytes"),
            (["x", bad[3]], "blocks[1] is a dict; a block is a Heading"),
        ]
        for blocks, expected in cases:
            with self.subTest(expected=expected):
                with bindings("pdf") as wit:
                    with self.assertRaises(TypeError) as e:
                        pdf.render("t", blocks)
                self.assertIn(expected, str(e.exception))
                self.assertEqual([c for c in wit.calls if c[0] == "render"], [])

    def test_pdf_text_fields_and_options_are_checked(self) -> None:
        bad: Any = [42, 5, 1.0, True, b"t", 7, 1, None, "x"]
        cases: list[tuple[list[Any], dict[str, Any], type[Exception], str]] = [
            ([pdf.Paragraph(bad[0])], {}, TypeError, "blocks[0].text is a int; it must be a str"),
            (["x", pdf.Heading(text=bad[1])], {}, TypeError, "blocks[1].text is a int"),
            ([pdf.Heading("h", level=bad[2])], {}, TypeError, "blocks[0].level is a float"),
            ([pdf.Heading("h", level=bad[3])], {}, TypeError, "blocks[0].level is a bool"),
            ([pdf.Heading("h", level=5)], {}, ValueError, "blocks[0].level is 1 to 4, not 5"),
            (["x"], {"title": bad[4]}, TypeError, "title is a bytes; it must be a str"),
            (["x"], {"author": bad[5]}, TypeError, "author is a int; it must be a str or None"),
            (["x"], {"landscape": bad[6]}, TypeError, "landscape is a int; it must be a bool"),
            (["x"], {"landscape": bad[7]}, TypeError, "landscape is a NoneType"),
            (["x"], {"paper": bad[2]}, TypeError, "paper is a float; it must be a str"),
        ]
        for blocks, kwargs, error, expected in cases:
            with self.subTest(expected=expected):
                title = kwargs.pop("title", "t")
                with bindings("pdf") as wit:
                    with self.assertRaises(error) as e:
                        pdf.render(title, blocks, **kwargs)
                self.assertIn(expected, str(e.exception))
                self.assertEqual([c for c in wit.calls if c[0] == "render"], [])
        with bindings("pdf") as wit:
            pdf.render("t", [pdf.Heading("h", level=4), pdf.Paragraph("p")],
                       author=None, landscape=True)
            pdf.render("t", ["p"], author="a", paper="letter")
        made = [(name, kwargs) for name, _, kwargs in wit.calls if name == "Document"]
        self.assertEqual([(k["title"], k["author"], k["landscape"]) for _, k in made],
                         [("t", None, True), ("t", "a", False)])

    def test_log_takes_a_str_message_and_a_level(self) -> None:
        with bindings("context") as wit:
            context.info("started")
            context.log("WARN", "careful")
            bad: Any = [42, None, b"x", 3]
            cases: list[tuple[Callable[[], None], str]] = [
                (lambda: context.info(bad[0]), "log's message is a str, not a int"),
                (lambda: context.error(bad[1]), "log's message is a str, not a NoneType"),
                (lambda: context.log(context.Level.DEBUG, bad[2]), "not a bytes"),
                (lambda: context.log(bad[3], "m"), "log's level is a Level or str, not a int"),
            ]
            for f, expected in cases:
                with self.subTest(expected=expected):
                    with self.assertRaises(TypeError) as e:
                        f()
                    self.assertIn(expected, str(e.exception))
            with self.assertRaises(ValueError):
                context.log("loud", "m")
        self.assertEqual([(n, args[1]) for n, args, _ in wit.calls if n == "log"],
                         [("log", "started"), ("log", "careful")])

    def test_progress_counts_are_ints(self) -> None:
        with bindings("context") as wit:
            context.progress(50, 100)
            context.progress(1, 2, "half")
            cases: list[tuple[Any, Any, Any]] = [(50.0, 100, None), (1, 2.0, None),
                                                 (True, 1, None), (1, 2, 3)]
            for done, total, message in cases:
                with self.subTest(done=done, total=total, message=message):
                    with self.assertRaises(TypeError):
                        context.progress(done, total, message)
        self.assertEqual(wit.calls, [("progress", (50, 100, None), {}),
                                     ("progress", (1, 2, "half"), {})])


class JsonArgumentsTest(unittest.TestCase):
    """`jobs` and `http` write a value as JSON as a task's output is written."""

    def test_jobs_input(self) -> None:
        with bindings("jobs") as wit:
            jobs.enqueue("t", Node("a", [Node("b")]))
            jobs.enqueue("t", {Colour.RED: (1, Line("a", 1))})
            step = jobs.Step.task("t", input=Line("b", 2))
        self.assertEqual([args[:2] for name, args, _ in wit.calls if name == "enqueue"],
                         [("t", '{"name":"a","children":[{"name":"b","children":[]}]}'),
                          ("t", '{"red":[1,{"item":"a","quantity":1,"price":0.0}]}')])
        self.assertEqual(step.to_json(), '{"task":"t","input":{"item":"b","quantity":2,"price":0.0}}')

    def test_jobs_input_without_nan(self) -> None:
        for bad in (float("nan"), float("inf"), [Line("a", 1, float("-inf"))]):
            with self.subTest(bad=bad):
                with bindings("jobs") as wit:
                    with self.assertRaises(ValueError) as e:
                        jobs.enqueue("t", bad)
                    self.assertTrue(str(e.exception).startswith("input is not JSON: "), str(e.exception))
                    with self.assertRaises(ValueError) as e:
                        jobs.start_workflow(jobs.Step.task("t", input=bad))
                    self.assertTrue(str(e.exception).startswith("a step's input is not JSON: "))
                self.assertEqual([c for c in wit.calls if c[0] in ("enqueue", "start_workflow")], [])

    def test_http_json_body(self) -> None:
        with bindings("http") as wit:
            setattr(wit, "send", lambda request: types.SimpleNamespace(status=200, headers=[], body=b""))
            http.post("https://example.com/", json=Line("りんご", 1))
        sent = [kwargs for name, _, kwargs in wit.calls if name == "Request"]
        self.assertEqual(len(sent), 1)
        self.assertEqual(sent[0]["body"], '{"item":"りんご","quantity":1,"price":0.0}'.encode())
        self.assertIn(("content-type", "application/json"), sent[0]["headers"])

    def test_http_json_body_without_nan(self) -> None:
        with bindings("http") as wit:
            setattr(wit, "send", lambda request: types.SimpleNamespace(status=200, headers=[], body=b""))
            with self.assertRaises(ValueError) as e:
                http.post("https://example.com/", json={"x": float("nan")})
            self.assertTrue(str(e.exception).startswith("json is not JSON: "), str(e.exception))
        self.assertEqual(wit.calls, [])


class RunTest(unittest.TestCase):
    def tearDown(self) -> None:
        _task._TASK = None

    def test_outcomes(self) -> None:
        state = {"mode": "ok"}

        @_task.task(needs=["kv"])
        def run(order: Order) -> Any:
            if state["mode"] == "retry":
                raise errors.Retry("later")
            if state["mode"] == "fail":
                raise errors.Fail("never")
            if state["mode"] == "host":
                raise errors.Transient("down", "kv.get")
            if state["mode"] == "boom":
                raise KeyError("k")
            if state["mode"] == "oom":
                raise MemoryError()
            return {"n": len(order.lines)}

        ok = '{"lines": [{"item": "a", "quantity": 1}]}'
        self.assertEqual(_task.run(ok), ("ok", '{"n":1}'))
        self.assertEqual(_task.run("{"), ("fail", _task.run("{")[1]))
        self.assertIn("the input is not JSON", _task.run("{")[1])
        self.assertEqual(_task.run('{"lines": 1}'), ("fail", "input.lines: expected a list, got a number"))
        for mode, expected in [("retry", ("retry", "later")), ("fail", ("fail", "never")),
                               ("host", ("retry", "kv.get: transient: down")),
                               ("boom", ("fail", "KeyError: 'k'"))]:
            state["mode"] = mode
            with self.subTest(mode=mode):
                self.assertEqual(_task.run(ok), expected)
        # Out of memory ends the run (a trap the runner reports as
        # memory_limit) instead of becoming a fail.
        state["mode"] = "oom"
        with self.assertRaises(MemoryError):
            _task.run(ok)

    def test_retry_and_fail_take_an_exception(self) -> None:
        state = {"retry": True}

        @_task.task
        def run() -> Any:
            try:
                raise ConnectionError("x")
            except ConnectionError as e:
                raise errors.Retry(e) if state["retry"] else errors.Fail(e)

        self.assertEqual(_task.run("null"), ("retry", "x"))
        state["retry"] = False
        self.assertEqual(_task.run("null"), ("fail", "x"))
        self.assertEqual(errors.Retry(ConnectionError("x")).message, "x")

    def test_an_input_class_defined_after_the_task(self) -> None:
        ns: dict[str, Any] = {}
        exec(
            "from __future__ import annotations\n"
            "from dataclasses import dataclass\n"
            "from runner_task import _task\n"
            "@_task.task\n"
            "def run(x: Later) -> int:\n"
            "    return x.n\n"
            "@dataclass\n"
            "class Later:\n"
            "    n: int\n",
            ns,
        )
        self.assertEqual(_task.run('{"n": 3}'), ("ok", "3"))
        self.assertEqual(_task.run('{"n": "x"}'), ("fail", "input.n: expected an integer, got a string"))

    def test_one_task_and_known_needs(self) -> None:
        @_task.task
        def a() -> int:
            return 1

        self.assertEqual(_task.run("null"), ("ok", "1"))
        with self.assertRaises(RuntimeError):
            @_task.task
            def b() -> int:
                return 2
        _task._TASK = None
        with self.assertRaises(ValueError):
            _task.task(needs=["kv", "smtp"])(a)
        with self.assertRaises(TypeError):
            @_task.task
            def c(x: int, y: int) -> int:
                return x + y


class BuildTest(unittest.TestCase):
    def test_needs_are_read_from_the_source(self) -> None:
        src = "from runner_task import task\n@task(needs=['kv', \"mail\"])\ndef run(x): ...\n"
        self.assertEqual(declared_needs(src, "app.py"), ["kv", "mail"])
        self.assertEqual(declared_needs("import runner_task\n@runner_task.task\ndef run(): ...\n", "a.py"), [])
        self.assertIsNone(declared_needs("def run(): ...\n", "app.py"))
        with self.assertRaises(BuildError):
            declared_needs("N=['kv']\n@task(needs=N)\ndef run(): ...\n", "app.py")
        with self.assertRaises(BuildError):
            declared_needs("@task\ndef a(): ...\n@task\ndef b(): ...\n", "app.py")

    def test_bad_apps_are_refused_before_componentize_py_runs(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            cases = {
                "notpy.txt": ("x = 1\n", "not a Python file"),
                "none.py": ("def run(): ...\n", "no @task function"),
                "syntax.py": ("@task(\ndef run(): ...\n", "syntax.py:"),
                "unknown.py": ("@task(needs=['kv', 'smtp'])\ndef run(): ...\n", "unknown capability 'smtp'"),
                "runner_task.py": ("@task\ndef run(): ...\n", "rename the module"),
            }
            for name, (source, expected) in cases.items():
                with self.subTest(name=name):
                    (d / name).write_text(source)
                    with self.assertRaises(BuildError) as e:
                        build(d / name, d / "out.wasm")
                    self.assertIn(expected, str(e.exception))
            self.assertFalse((d / "out.wasm").exists())

    def test_module_names_the_component_cannot_import_are_refused(self) -> None:
        def componentize(args: list[str]) -> None:
            raise AssertionError("componentize-py ran")

        cases = {
            "email.py": "'email' is a standard library module",
            "calendar.py": "'calendar' is a standard library module",
            "order-total.py": "'order-total' is not a Python module name",
            "class.py": "'class' is not a Python module name",
        }
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            for name, expected in cases.items():
                with self.subTest(name=name):
                    (d / name).write_text("from runner_task import task\n@task\ndef run(): ...\n")
                    with mock.patch("runner_task.build._componentize", componentize):
                        with self.assertRaises(BuildError) as e:
                            build(d / name, d / "out.wasm")
                    self.assertIn(f"{d / name}: rename the file; {expected}", str(e.exception))

    def test_the_sdk_is_bundled_without_what_is_installed_next_to_it(self) -> None:
        bundled: list[list[str]] = []

        def componentize(args: list[str]) -> None:
            paths = [Path(p) for flag, p in zip(args, args[1:]) if flag == "-p"]
            sdk = next(p for p in paths if (p / "runner_task" / "_task.py").is_file())
            bundled.append(sorted(f.name for f in sdk.iterdir()))

        with tempfile.TemporaryDirectory() as tmp:
            app = Path(tmp) / "app.py"
            app.write_text("from runner_task import task\n@task\ndef run(): ...\n")
            with mock.patch("runner_task.build._componentize", componentize):
                build(app, Path(tmp) / "out.wasm")
        self.assertEqual(bundled, [["runner_task"]])

    def test_world_imports_just_the_needs(self) -> None:
        w = world(["kv"])
        self.assertIn("import runner:task/context@0.1.0;", w)
        self.assertIn("import runner:task/kv@0.1.0;", w)
        self.assertNotIn("mail", w)
        self.assertIn("export run: func(input: string) -> result<string, task-error>;", w)


if __name__ == "__main__":
    unittest.main()
