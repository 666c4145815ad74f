"""Loading balancer.yaml: defaults, clamping, and problems an operator can act
on (file, line and key in every message)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pve_balancer.config import (
    KNOWN_KEYS,
    RANGES,
    Config,
    ConfigProblem,
    LoadResult,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]


def only(result: LoadResult) -> ConfigProblem:
    assert len(result.problems) == 1, [str(p) for p in result.problems]
    return result.problems[0]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing set\n", "---\n", "~\n"])
def test_empty_file_means_defaults(text: str) -> None:
    assert parse_config(text) == LoadResult(Config(), ())


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    result = load_config(tmp_path / "balancer.yaml")
    assert result == LoadResult(Config(), (), missing=True)
    assert not result.unreadable and result.ok


def test_defaults_match_the_policy() -> None:
    c = Config()
    assert (c.cpu_max, c.memory_max, c.enabled, c.dry_run, c.interval) == (
        0.8, 0.8, True, False, 5.0)
    assert (c.safety_margin, c.proactive_factor, c.vm_cooldown, c.backup_guard) == (
        0.05, 1.2, 900.0, 120.0)
    assert c.proactive_margin == 0.10
    assert c.exclude_tag == "pve-balancer-exclude"
    assert c.exclude_nodes == frozenset() and c.seed is None


def test_every_key_is_read() -> None:
    text = """\
cpu_max: 0.7
memory_max: 0.85
enabled: false
dry_run: yes
interval: 10
safety_margin: 0.1
proactive_factor: 1.5
vm_cooldown: 60
exclude_tag: " keep-here "
exclude_nodes: [pve4, pve5]
backup_guard: 0
seed: 42
"""
    result = parse_config(text)
    assert result.problems == ()
    assert result.config == Config(
        cpu_max=0.7, memory_max=0.85, enabled=False, dry_run=True, interval=10.0,
        safety_margin=0.1, proactive_factor=1.5, vm_cooldown=60.0, exclude_tag="keep-here",
        exclude_nodes=frozenset({"pve4", "pve5"}), backup_guard=0.0, seed=42,
    )
    assert set(KNOWN_KEYS) == set(Config().as_dict())


def test_typo_key_is_a_warning_with_line_and_suggestion() -> None:
    result = parse_config("memory_max: 0.7\n\ncpu_mx: 0.6\n", "/etc/pve/balancer.yaml")
    problem = only(result)
    assert not problem.fatal and problem.line == 3 and problem.key == "cpu_mx"
    assert str(problem) == (
        "/etc/pve/balancer.yaml:3: cpu_mx: unknown key (typo? did you mean cpu_max?), ignored"
    )
    assert result.config == Config(memory_max=0.7)


def test_unrelated_unknown_key_lists_known_keys() -> None:
    problem = only(parse_config("colour: blue\n"))
    assert not problem.fatal and "known keys: cpu_max, memory_max" in problem.message


def test_bad_value_is_fatal_with_line_and_key() -> None:
    result = parse_config("enabled: true\ninterval: 5\nmemory_max: lots\n", "balancer.yaml")
    assert result.config is None
    assert str(only(result)) == (
        "balancer.yaml:3: memory_max: expected a number, got the string 'lots'"
    )


def test_every_bad_value_is_reported_not_only_the_first() -> None:
    result = parse_config("cpu_max: high\nenabled: 1\nexclude_nodes: pve3\nseed: 1.5\n")
    assert result.config is None
    assert [(p.line, p.key) for p in result.errors] == [
        (1, "cpu_max"), (2, "enabled"), (3, "exclude_nodes"), (4, "seed")]
    assert "expected a list of node names (e.g. [pve3])" in result.errors[2].message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("enabled: 'yes'\n", "expected true or false, got the string 'yes'"),
        ("enabled: 0\n", "expected true or false, got the number 0"),
        ("cpu_max: true\n", "expected a number, got the boolean true"),
        ("cpu_max: .nan\n", "expected a finite number"),
        ("interval: .inf\n", "expected a finite number"),
        ("exclude_tag: 5\n", "expected a string, got the number 5"),
        ("exclude_nodes: [pve1, 3]\n", "expected node names as strings"),
        ("exclude_nodes: {pve1: 1}\n", "got a mapping"),
        ("seed: true\n", "expected an integer or null"),
    ],
)
def test_wrong_types_are_fatal(text: str, message: str) -> None:
    problem = only(parse_config(text))
    assert problem.fatal and problem.line == 1 and message in problem.message


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "True", "FALSE"])
def test_yaml_booleans_are_booleans(word: str) -> None:
    result = parse_config(f"dry_run: {word}\n")
    assert result.problems == ()
    assert result.config is not None
    assert result.config.dry_run is (word.lower() in {"yes", "on", "true"})


def test_invalid_yaml_is_fatal_with_line() -> None:
    result = parse_config("cpu_max: 0.7\nexclude_nodes: [pve1,\nmemory_max: 0.8\n")
    problem = only(result)
    assert result.config is None and problem.fatal and problem.line == 4
    assert problem.message.startswith(
        "invalid YAML: while parsing a flow sequence started on line 2, expected ',' or ']'"
    )


def test_tab_indentation_is_fatal_with_line() -> None:
    problem = only(parse_config("cpu_max: 0.7\n\tmemory_max: 0.8\n"))
    assert problem.fatal and problem.line == 2


def test_top_level_must_be_a_mapping() -> None:
    problem = only(parse_config("- cpu_max: 0.7\n"))
    assert problem.fatal and "must be a mapping" in problem.message


def test_two_documents_are_fatal() -> None:
    problem = only(parse_config("cpu_max: 0.7\n---\ncpu_max: 0.6\n"))
    assert problem.fatal and problem.line == 2


def test_python_tags_are_refused() -> None:
    problem = only(parse_config("seed: !!python/object/apply:os.getpid []\n"))
    assert problem.fatal and "invalid YAML" in problem.message


def test_duplicate_key_warns_and_last_wins() -> None:
    result = parse_config("cpu_max: 0.6\ncpu_max: 0.7\n")
    problem = only(result)
    assert not problem.fatal and problem.line == 2 and "first on line 1" in problem.message
    assert result.config == Config(cpu_max=0.7)


@pytest.mark.parametrize(
    ("key", "given", "expected"),
    [
        ("cpu_max", 0.95, 0.9), ("cpu_max", 0.2, 0.5),
        ("memory_max", 1.0, 0.9), ("memory_max", 0, 0.5),
        ("interval", 1, 2.0), ("interval", 600, 60.0),
        ("safety_margin", 0.5, 0.2), ("safety_margin", -0.1, 0.0),
        ("proactive_factor", 1.0, 1.05), ("proactive_factor", 3, 2.0),
        ("proactive_margin", -0.1, 0.0), ("proactive_margin", 0.8, 0.5),
        ("vm_cooldown", -5, 0.0), ("backup_guard", -1, 0.0),
    ],
)
def test_out_of_range_values_are_clamped_with_a_warning(
    key: str, given: float, expected: float
) -> None:
    result = parse_config(f"# header\n{key}: {given}\n")
    problem = only(result)
    assert not problem.fatal and problem.line == 2 and problem.key == key
    assert problem.message.endswith(f"clamped to {expected:g}")
    assert result.config is not None and getattr(result.config, key) == expected


def test_in_range_boundaries_are_not_clamped() -> None:
    for key, (low, high) in RANGES.items():
        for value in (low, high):
            if value is not None:
                assert parse_config(f"{key}: {value}\n").problems == (), key


def test_unreadable_file_is_fatal(tmp_path: Path) -> None:
    result = load_config(tmp_path)  # a directory
    problem = only(result)
    assert result.config is None and problem.fatal and problem.source == str(tmp_path)
    assert result.unreadable and not result.missing
    assert problem.message == "cannot read: a directory, not a file"


def test_non_utf8_is_fatal_with_line(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_bytes(b"cpu_max: 0.7\nexclude_tag: caf\xe9\n")
    problem = only(load_config(path))
    assert problem.fatal and problem.line == 2


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text("interval: 600\n")
    result = load_config(path)
    assert str(only(result)) == f"{path}:1: interval: 600 is above the maximum, clamped to 60"


def test_example_file_parses_to_the_defaults() -> None:
    path = REPO / "balancer.yaml.example"
    assert load_config(path) == LoadResult(Config(), ())
    text = path.read_text()
    for key in KNOWN_KEYS:
        assert f"\n{key}: " in text, f"{key} is not documented in the example"


def test_as_dict_is_plain_data() -> None:
    data = Config(exclude_nodes=frozenset({"b", "a"})).as_dict()
    assert data["exclude_nodes"] == ["a", "b"] and data["cpu_max"] == 0.8


def test_key_without_value_keeps_its_default_with_a_warning() -> None:
    result = parse_config("cpu_max: 0.7\ncpu_max:\nenabled:\nexclude_tag:\nexclude_nodes:\nseed:\n")
    assert [str(p) for p in result.problems] == [
        "balancer.yaml:2: cpu_max: given again (first on line 1); the last value is used",
        "balancer.yaml:2: cpu_max: no value given, the default 0.8 is used",
        "balancer.yaml:3: enabled: no value given, the default true is used",
        "balancer.yaml:4: exclude_tag: no value given, the default pve-balancer-exclude is used",
    ]
    assert result.config == Config()


FRACTIONS = ("cpu_max", "memory_max", "safety_margin", "proactive_margin")


@pytest.mark.parametrize(("key", "given", "meant"), [
    ("cpu_max", "80", "0.80"), ("memory_max", "85.0", "0.85"), ("cpu_max", "100", "1.00"),
    ("safety_margin", "5", "0.05"), ("proactive_margin", "12.5", "0.125"),
    ("memory_max", "1.5", "0.015"),
])
def test_a_percentage_for_a_fraction_is_an_error(key: str, given: str, meant: str) -> None:
    result = parse_config(f"# thresholds\n{key}: {given}\n")
    assert result.config is None
    problem = only(result)
    assert problem.fatal and problem.line == 2 and problem.key == key
    shown = given.removesuffix(".0")
    assert str(problem) == (
        f"balancer.yaml:2: {key}: {shown} looks like a percentage; did you mean {meant}?")


@pytest.mark.parametrize("key", FRACTIONS)
def test_percent_rule_bounds(key: str) -> None:
    # 1 itself and anything above 100 are not read as percentages: clamped
    for value in ("1", "1.0", "101", "1000"):
        result = parse_config(f"{key}: {value}\n")
        assert result.config is not None and not only(result).fatal, (key, value)


def test_non_fraction_keys_are_not_percentages() -> None:
    result = parse_config("interval: 30\nproactive_factor: 1.5\nvm_cooldown: 80\n")
    assert result.problems == () and result.config == Config(
        interval=30.0, proactive_factor=1.5, vm_cooldown=80.0)


def test_every_fraction_key_has_a_range_within_zero_and_one() -> None:
    for key in FRACTIONS:
        low, high = RANGES[key]
        assert low is not None and high is not None and 0 <= low < high <= 1, key
