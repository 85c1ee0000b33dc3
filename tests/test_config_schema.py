"""
One config schema, checked against what describes it: the reference table
of docs/configuration.md documents every core setting (L{evsrv.config.SCHEMA})
and every plugin option, with the code's default and, for the core, the
schema's help as its meaning; the example ini files use known keys only,
with values that coerce.

The table's default column, as a rule: the default's ini text in a code span
(whitespace aside), one per key of the row or one for all of them; when the
default is empty (or worked out at start-up: C{None}), an empty cell or a
note in italics, C{*(...)*}.
"""

import configparser
import re
from pathlib import Path

import pytest

from evsrv.config import LISTENER_SECTION, SCHEMA
from evsrv.server import module_factories, transport_factories

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "configuration.md"
EXAMPLES = [ROOT / "etc" / "evsrv.ini", ROOT / "evsrv" / "data" / "production.ini"]

EMPTY = object()  # a default documented as empty or by a note

# what a text says 0 or empty means: then 0 or empty must be accepted
ZERO_MEANS = re.compile(r"(?<![\w.])(?<!port )0\s*[:=]\s")
EMPTY_MEANS = re.compile(r"\bempty\b\s*[:)]|\(empty\b")


def all_options() -> dict:
    """
    section -> key -> C{(default, coerce, help)}: the core's and every
    plugin's.
    """
    options = dict(SCHEMA)
    for kind, factories in (("transport", transport_factories()),
                            ("module", module_factories())):
        for name, factory in factories.items():
            if factory.options:
                options[f"{kind}:{name}"] = factory.options
    return options


def table_rows():
    """
    The rows of the reference table: C{(line number, sections, keys,
    default cell, meaning)}; a row with an empty section cell continues the
    sections of the row above.
    """
    rows = []
    sections = None
    in_table = False
    for number, line in enumerate(TABLE.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("| section | key | default | meaning |"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            break
        if set(line) <= set("|-"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"{TABLE.name}:{number}: expected 4 cells, got {len(cells)}"
        section_cell, key_cell, default_cell, meaning = cells
        if section_cell:
            sections = re.findall(r"`\[([^\]`]+)\]`", section_cell)
            assert sections, f"{TABLE.name}:{number}: no `[section]` in {section_cell!r}"
        assert sections, f"{TABLE.name}:{number}: the first row names no section"
        keys = re.findall(r"`([^`]+)`", key_cell)
        assert keys, f"{TABLE.name}:{number}: no `key` in {key_cell!r}"
        rows.append((number, sections, keys, default_cell, meaning))
    assert rows, f"no reference table in {TABLE}"
    return rows


def documented():
    """
    C{(section, key) -> (line number, documented default, meaning)}.
    """
    found = {}
    for number, sections, keys, default_cell, meaning in table_rows():
        defaults = documented_defaults(number, default_cell, len(keys))
        for section in sections:
            for key, default in zip(keys, defaults):
                assert (section, key) not in found, \
                    f"{TABLE.name}:{number}: [{section}] {key} documented twice"
                found[section, key] = (number, default, meaning)
    return found


def documented_defaults(number, cell, count):
    if not cell or (cell.startswith("*(") and cell.endswith(")*")):
        return [EMPTY] * count
    spans = re.findall(r"`([^`]*)`", cell)
    rest = re.sub(r"`[^`]*`", "", cell)
    assert spans and not rest.replace(",", "").strip(), \
        f"{TABLE.name}:{number}: a default is a `code span` (or empty, or *(a note)*): {cell!r}"
    if len(spans) == 1:
        spans *= count
    assert len(spans) == count, \
        f"{TABLE.name}:{number}: {count} keys but {len(spans)} defaults: {cell!r}"
    return spans


def normal(text):
    return " ".join(text.split())


def test_every_setting_is_documented():
    table = documented()
    missing = [f"[{section}] {key}" for section, options in all_options().items()
               for key in options if (section, key) not in table]
    assert not missing, f"not in {TABLE.name}'s reference table: {', '.join(missing)}"


def test_every_documented_setting_exists():
    options = all_options()
    unknown = [f"{TABLE.name}:{number}: [{section}] {key}"
               for (section, key), (number, _, _) in documented().items()
               if key not in options.get(section, {})]
    assert not unknown, "documented but not in the code:\n" + "\n".join(unknown)


def test_documented_defaults_are_the_code_defaults():
    options = all_options()
    wrong = []
    for (section, key), (number, default, _) in documented().items():
        if key not in options.get(section, {}):
            continue  # test_every_documented_setting_exists
        actual = options[section][key][0]
        if default is EMPTY:
            if actual not in ("", None):
                wrong.append(f"{TABLE.name}:{number}: [{section}] {key}: documented as empty, "
                             f"the code's default is `{actual}`")
        elif actual is None or normal(default) != normal(actual):
            wrong.append(f"{TABLE.name}:{number}: [{section}] {key}: documented `{default}`, "
                         f"the code's default is "
                         f"{'worked out at start-up' if actual is None else f'`{actual}`'}")
    assert not wrong, "\n".join(wrong)


def test_core_meanings_are_the_schema_help():
    wrong = []
    for (section, key), (number, _, meaning) in documented().items():
        if section in SCHEMA and key in SCHEMA[section] and meaning != SCHEMA[section][key].help:
            wrong.append(f"{TABLE.name}:{number}: [{section}] {key}: the meaning is not "
                         f"evsrv.config.SCHEMA's help, which is:\n    "
                         f"{SCHEMA[section][key].help}")
    assert not wrong, "\n".join(wrong)


def test_every_default_coerces():
    for section, options in all_options().items():
        for key, (default, coerce, _help) in options.items():
            if default is not None:
                coerce(default.strip())


def claims():
    """
    Every text saying what a setting's 0 or empty value means, with the
    coercer that must then accept it: the table's meanings and the code's
    help texts.
    """
    options = all_options()
    for (section, key), (number, _, meaning) in documented().items():
        if key in options.get(section, {}):
            yield f"{TABLE.name}:{number}: [{section}] {key}", meaning, options[section][key][1]
    for section, by_key in options.items():
        for key, (_default, coerce, help_text) in by_key.items():
            yield f"help of [{section}] {key}", help_text, coerce


def test_zero_and_empty_are_accepted_where_a_meaning_is_given():
    refused = []
    for where, text, coerce in claims():
        for pattern, value in ((ZERO_MEANS, "0"), (EMPTY_MEANS, "")):
            if pattern.search(text):
                try:
                    coerce(value)
                except ValueError as e:
                    refused.append(f"{where}: says what {value or 'empty'!r} means, but the "
                                   f"coercer refuses it: {e}")
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("text, zero, empty", [
    ("seconds (0: never)", True, False),
    ("AMQP heartbeat, seconds (0 = off)", True, False),
    ("`HOST:PORT` (port 0 = any)", False, False),
    ("at most 10: then", False, False),
    ("path of the MI (empty: off)", False, True),
    ("PEM files (CA empty: system trust)", False, True),
])
def test_the_claim_patterns(text, zero, empty):
    assert bool(ZERO_MEANS.search(text)) is zero
    assert bool(EMPTY_MEANS.search(text)) is empty


def example_settings(path: Path):
    """
    C{(line, section, key, value text or None)} for every key of an example
    ini, C{None} for one commented out (C{;key = value}, no space after the
    C{;}).
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",),
                                       default_section="\0none")
    parser.optionxform = str
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    section = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        header = re.match(r"\[([^\]]+)\]", line)
        if header:
            section = header.group(1)
        key = re.match(r"([A-Za-z_]\w*)\s*=", line)
        if key and section is not None:
            yield number, section, key.group(1), parser[section][key.group(1)]
        commented = re.match(r";([A-Za-z_]\w*)\s*=", line)
        if commented and section is not None:
            yield number, section, commented.group(1), None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_ini_uses_known_keys_and_values_that_coerce(path):
    options = all_options()
    wrong = []
    for number, section, key, text in example_settings(path):
        where = f"{path.name}:{number}: [{section}] {key}"
        schema = options.get(LISTENER_SECTION if section.startswith("mi:udp:") else section)
        if schema is None:
            wrong.append(f"{where}: unknown section")
        elif key not in schema:
            wrong.append(f"{where}: unknown key")
        elif text is not None:
            try:
                schema[key][1](text.strip())
            except ValueError as e:
                wrong.append(f"{where}: bad value {text.strip()!r}: {e}")
    assert not wrong, "\n".join(wrong)


def test_the_example_reader_sees_keys_and_commented_keys(tmp_path):
    ini = tmp_path / "x.ini"
    ini.write_text("[mi]\n; prose = not a key\n;unix_owner = evsrv\nudp = 127.0.0.1:1\n"
                   "allow = 10.0.0.0/8,\n    ::1\n")
    assert list(example_settings(ini)) == [
        (3, "mi", "unix_owner", None), (4, "mi", "udp", "127.0.0.1:1"),
        (5, "mi", "allow", "10.0.0.0/8,\n::1")]


def test_the_shipped_inis_keep_the_default_deny_list():
    # a production install must not get a weaker policy than no ini at all
    from evsrv.config import DEFAULT_DENIED_DESTINATIONS
    from evsrv.util.netlist import NetworkList
    default = NetworkList.parse(DEFAULT_DENIED_DESTINATIONS)
    for ini in (ROOT / "etc" / "evsrv.ini", ROOT / "evsrv" / "data" / "production.ini"):
        parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
        parser.read(ini)
        assert NetworkList.parse(parser["policy"]["deny_destinations"]) == default, ini
