"""balancer.yaml written by an adversary (or a slipped paste): whatever the
text, the loader returns a LoadResult, in bounded time and memory, with
problems short enough for one journal line and no character that could
forge another line or drive a terminal.

The property tests draw arbitrary text and YAML-ish text; the named cases
are the inputs that once crashed or exhausted the loader."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pve_balancer import cli
from pve_balancer.config import (
    KNOWN_KEYS,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_PROBLEMS,
    Config,
    LoadResult,
    load_config,
    parse_config,
)

LONGEST_PROBLEM = 400
"""No problem line is longer: the file name plus a message of a few hundred
characters, never a value of the file in full."""


def bomb(levels: int, width: int = 9) -> str:
    """Nested anchors and aliases, the last level as a key: each level
    multiplies the expanded size by `width`."""
    names = "abcdefghijklmnop"
    lines = [f"{names[0]}: &{names[0]} [{','.join(['lol'] * width)}]"]
    for i in range(1, levels):
        aliases = ",".join([f"*{names[i - 1]}"] * width)
        lines.append(f"{names[i]}: &{names[i]} [{aliases}]")
    lines.append(f"? [{','.join([f'*{names[levels - 1]}'] * width)}]\n: 1")
    return "\n".join(lines) + "\n"


def assert_sane(result: LoadResult) -> None:
    """What must hold for any input."""
    assert isinstance(result, LoadResult)
    assert (result.config is None) == any(p.fatal for p in result.problems)
    assert result.config is None or isinstance(result.config, Config)
    assert len(result.problems) <= MAX_PROBLEMS
    for problem in result.problems:
        line = str(problem)
        assert len(line) <= LONGEST_PROBLEM, line
        assert line.isprintable(), repr(line)


def peak_bytes(text: str) -> tuple[LoadResult, int]:
    tracemalloc.start()
    try:
        result = parse_config(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# ------------------------------------------------------------ named cases


@pytest.mark.parametrize("opener", ["[", "{", "[{a: "])
def test_deep_flow_nesting_is_refused_with_its_line(opener: str) -> None:
    result = parse_config("cpu_max: 0.7\nexclude_nodes: " + opener * 1000 + "\n")
    assert_sane(result)
    assert result.config is None
    (problem,) = result.problems
    assert problem.fatal and problem.line == 2
    assert f"nested deeper than {MAX_DEPTH} levels" in problem.message


def test_deep_block_nesting_is_refused() -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "x: 1\n"
    result = parse_config(text)
    assert_sane(result)
    assert result.config is None
    assert f"nested deeper than {MAX_DEPTH} levels" in result.problems[0].message
    result = parse_config("exclude_nodes:\n" + "- " * 500 + "x\n")
    assert result.config is None and "nested deeper" in result.problems[0].message


def test_the_nesting_a_real_file_needs_is_accepted() -> None:
    flow = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    result = parse_config(f"colour: {flow}\nexclude_nodes: [pve3]\n")
    assert result.config == Config(exclude_nodes=frozenset({"pve3"}))
    assert [p.key for p in result.problems] == ["colour"]  # an unknown key, not a refusal


def test_nesting_a_whole_file_deep_is_bounded_in_memory() -> None:
    result, peak = peak_bytes("[" * MAX_BYTES)
    assert_sane(result)
    assert result.config is None and "nested deeper" in result.problems[0].message
    assert peak < 2 << 20, peak


def test_an_alias_bomb_is_refused_at_its_first_anchor() -> None:
    text = bomb(7)
    assert len(text.encode()) < 400
    result, peak = peak_bytes(text)
    assert_sane(result)
    assert result.config is None
    (problem,) = result.problems
    assert problem.fatal and problem.line == 1
    assert "anchors" in problem.message and "not accepted" in problem.message
    assert peak < 2 << 20, peak


@pytest.mark.parametrize(("text", "line"), [
    ("cpu_max: 0.7\nmemory_max: *other\n", 2),
    ("x: &keep 0.7\n", 1),
    ("cpu_max: 0.7\n<<: *base\n", 2),
])
def test_anchors_and_aliases_are_refused_naming_the_line(text: str, line: int) -> None:
    result = parse_config(text)
    assert result.config is None
    (problem,) = result.problems
    assert problem.fatal and problem.line == line
    assert "not accepted" in problem.message and "write the value out" in problem.message


def test_quoted_stars_and_ampersands_are_plain_text() -> None:
    result = parse_config("exclude_tag: '*keep&'\n")
    assert result.config == Config(exclude_tag="*keep&") and result.problems == ()


def test_check_config_on_an_alias_bomb_prints_a_few_lines(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text(bomb(7))
    out = io.StringIO()
    assert cli.main(["check-config", str(path)], out=out) == 1
    assert len(out.getvalue()) < 1000, len(out.getvalue())
    assert f"{path}:1: " in out.getvalue() and "rejected" in out.getvalue()


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text("cpu_max: 0.7\n" + "#" * MAX_BYTES + "\n")
    result = load_config(path)
    assert result.config is None
    (problem,) = result.problems
    assert problem.fatal and problem.line is None
    assert "larger than the 64 KiB limit" in problem.message
    assert parse_config("#" * (MAX_BYTES + 1)).problems[0].message == problem.message


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    head = "cpu_max: 0.7\n"
    path.write_text(head + "#" * (MAX_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == MAX_BYTES
    assert load_config(path) == LoadResult(Config(cpu_max=0.7), ())


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    path = tmp_path / "balancer.yaml"
    os.mkfifo(path)
    result = load_config(path)  # would block forever on a plain open()
    assert result.config is None and result.unreadable
    assert "not a regular file" in result.problems[0].message


def test_many_problems_are_summed_up_after_a_limit() -> None:
    result = parse_config("".join(f"key{i}: {i}\n" for i in range(4000)))
    assert_sane(result)
    assert len(result.problems) == MAX_PROBLEMS
    assert result.problems[-1].message == (
        f"{4000 - MAX_PROBLEMS + 1} more problems not shown (0 errors)")
    assert result.config == Config(), "unknown keys are warnings only"
    errors = parse_config("".join(f"cpu_max: x{i}\n" for i in range(100)))
    assert errors.config is None and errors.problems[-1].fatal
    shown = sum(p.fatal for p in errors.problems[:-1])
    assert errors.problems[-1].message.endswith(f"({100 - shown} errors)")


HUGE = "0b" + "1" * 20000
"""An integer too large for a float and too long to print in decimal."""

ONCE_RAISED = {
    "NUL": ("a\x00b: 1\n", 1),  # PyYAML's reader refuses it in its constructor
    "lone surrogate": ("cpu_max: 0.7\nexclude_tag: \ud800\n", 2),
    "impossible date value": ("cpu_max: 2001-02-30\n", 1),
    "impossible date key": ("? 2001-02-30\n: 1\n", 1),
    "int beyond float": ("cpu_max: 0b" + "1" * 2000 + "\n", 1),
    "huge seed": (f"seed: {HUGE}\n", 1),
    "huge node name": (f"exclude_nodes: [{HUGE}]\n", 1),
}


@pytest.mark.parametrize(("text", "line"), ONCE_RAISED.values(), ids=ONCE_RAISED.keys())
def test_inputs_that_once_raised_are_fatal_problems(text: str, line: int) -> None:
    result = parse_config(text)
    assert_sane(result)
    assert result.config is None and result.errors[0].line == line


ODD = {
    "huge key": f"? {HUGE}\n: 1\n",
    "list key of a huge int": f"? [{HUGE}]\n: 1\n",
    "mapping key": "? {a: 1}\n: 2\n",
    "binary": "exclude_nodes: !!binary aGVsbG8=\n",
    "set": "exclude_nodes: !!set {a, b}\n",
    "python tag": "seed: !!python/name:os.system\n",
    "local tag": "seed: !custom 1\n",
    "tag directive": "%TAG ! tag:x,2000:\n---\nseed: !y 1\n",
    "unhashable key": "exclude_nodes: {[a]: 1}\n",
    "BOM": "\ufeffcpu_max: 0.7\n",
}


@pytest.mark.parametrize("text", ODD.values(), ids=ODD.keys())
def test_odd_yaml_gives_a_load_result(text: str) -> None:
    assert_sane(parse_config(text))


def test_a_huge_seed_is_refused_rather_than_breaking_json() -> None:
    result = parse_config(f"seed: {2 ** 63}\n")
    assert result.config is None and "seed" in str(result.problems[0])
    assert parse_config(f"seed: {2 ** 63 - 1}\n").config == Config(seed=2 ** 63 - 1)
    assert parse_config(f"seed: {-(2 ** 63)}\n").config == Config(seed=-(2 ** 63))


def test_values_are_cut_and_escaped_in_messages() -> None:
    result = parse_config("memory_max: " + "x" * 10_000 + "\n")
    (problem,) = result.problems
    assert problem.fatal and len(str(problem)) < 200
    assert "the string 'xxxxxxxx" in problem.message and problem.message.endswith("…")
    # a key that would forge a second journal line
    (problem,) = parse_config('"cpu_mx\\nmigrated vm 100\\x1b[31m": 1\n').problems
    assert "\n" not in str(problem) and "\x1b" not in str(problem)
    assert "cpu_mx\\nmigrated vm 100\\x1b[31m" in str(problem)
    assert problem.key is not None and len(problem.key) <= 81


def test_a_long_key_is_cut() -> None:
    (problem,) = parse_config(f"? k{'y' * 5000}\n: 1\n").problems
    assert len(str(problem)) < 400 and problem.key is not None and problem.key.endswith("…")


# ------------------------------------------------------------ properties

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

TOKENS = [
    *(f"{k}: " for k in KNOWN_KEYS), "cpu_mx: ", "? ", ": ", "- ", "-", ",", "[", "]", "{", "}",
    "&a ", "*a", "!!str ", "!!binary ", "!!python/object:os.system ", "!x ", "%YAML 1.1\n", "---\n",
    "...\n", "'", '"', "\\", "#", "|\n", ">-\n", "\n", "\n  ", "\n    ", "\t", " ", "0.8", "80",
    "1e999", "-.inf", ".nan", "0b1111", "0x1F", "0o17", "1:30", "2001-12-14", "2001-02-30",
    "yes", "off", "~", "null", "true", "pve1", "\x00", "\x1b[2J", "\u2028", "\ufeff", "é",
    "<<: ", "=", "@", "`",
]

yamlish = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["0.8", "yes", "pve3", "~"]))
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
documents = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12)), structures, max_size=8)


@FUZZ
@given(st.text(max_size=400))
def test_any_text_gives_a_load_result(text: str) -> None:
    assert_sane(parse_config(text))


@FUZZ
@given(yamlish)
def test_any_yamlish_text_gives_a_load_result(text: str) -> None:
    assert_sane(parse_config(text))


@FUZZ
@given(documents, st.sampled_from([None, True, False]))
def test_any_dumped_mapping_gives_a_load_result(doc: dict[object, object],
                                                flow: bool | None) -> None:
    import yaml

    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    result = parse_config(text)
    assert_sane(result)
    if all(k not in KNOWN_KEYS for k in doc):
        assert result.config == Config(), "only unknown keys: the defaults, with warnings"


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_on_disk_give_a_load_result(tmp_path_factory: pytest.TempPathFactory,
                                              data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "balancer.yaml"
    path.write_bytes(data)
    assert_sane(load_config(path))
