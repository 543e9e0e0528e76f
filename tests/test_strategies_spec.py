"""Strategy specs: NAME:key=value,... -- defaults, every documented key, and errors that name
the bad value and list the valid ones."""
import pytest

from gphint import ConfigError
from gphint.host import STRATEGIES, parse_strategies, parse_strategy
from gphint.host.spec import ADVICES, BATCHES, SUBMIT_MODES, defaults


def test_every_strategy_parses_with_defaults():
    assert set(STRATEGIES) == {"none", "balloon", "reporting", "unused", "cmma", "kernel"}
    for name in STRATEGIES:
        spec = parse_strategy(name)
        assert spec.name == name
        assert spec.params == defaults(name)
        assert str(spec) == name          # defaults are not repeated in the canonical form


def test_reporting_defaults_are_linux_defaults():
    spec = parse_strategy("reporting")
    assert (spec.order, spec.capacity, spec.delay) == (9, 32, 2.0)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("submit", SUBMIT_MODES)
@pytest.mark.parametrize("discard", ADVICES)
def test_batching_keys(batch, submit, discard):
    spec = parse_strategy("cmma:batch=%d,submit=%s,discard=%s" % (batch, submit, discard))
    assert (spec.batch, spec.submit, spec.discard) == (batch, submit, discard)


def test_round_trip_and_whitespace():
    spec = parse_strategy(" Reporting : order=5, delay=0.5 ")
    assert (spec.order, spec.delay) == (5, 0.5)
    assert parse_strategy(str(spec)).params == spec.params
    assert parse_strategy(spec) is spec


@pytest.mark.parametrize("text, words", [
    ("foo", ["'foo'", "none", "balloon", "reporting", "unused", "cmma"]),
    ("cmma:bogus=1", ["'bogus'", "batch", "submit", "discard", "scan", "delay"]),
    ("reporting:scan=1", ["'scan'", "order", "capacity", "delay"]),
    ("cmma:batch=3", ["batch", "'3'", "1, 32, 256, 4096"]),
    ("cmma:submit=fast", ["'fast'", "per_page", "coalesce", "vectored"]),
    ("unused:discard=zap", ["'zap'", "dontneed", "free"]),
    ("reporting:order=x", ["order", "'x'", "integer"]),
    ("reporting:order=11", ["order", "11", "range"]),
    ("reporting:delay=-1", ["delay", "-1"]),
    ("cmma:batch", ["'batch'", "key=value"]),
    ("", ["NAME"]),
])
def test_errors_name_the_value_and_list_valid_ones(text, words):
    with pytest.raises(ConfigError) as e:
        parse_strategy(text)
    for w in words:
        assert w in str(e.value)


def test_strategy_lists_carry_options():
    specs = parse_strategies("none,cmma:batch=1,submit=per_page,reporting:order=5")
    assert [s.name for s in specs] == ["none", "cmma", "reporting"]
    assert (specs[1].batch, specs[1].submit) == (1, "per_page")
    assert specs[2].order == 5
    with pytest.raises(ConfigError, match="no strategies"):
        parse_strategies(" , ")


def test_hint_levels():
    # the peers' guests must not produce CMMA states the peers do not have
    assert {n: parse_strategy(n).hints for n in STRATEGIES} == {
        "none": "off", "balloon": "off", "reporting": "off", "unused": "unused", "cmma": "full",
        "kernel": "off"}
