"""Autosave request files (capar.request): macros, defaults, includes, and FILE:LINE errors (no CA here)."""
from __future__ import annotations

import pytest

from capar.request import RequestEntry, RequestFileError, expand, iter_request, parse_macros, read_request


def write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_plain_names_comments_and_blank_lines(tmp_path):
    f = write(tmp_path / "a.req", "# header\n\nIOC:ao\n  IOC:bo   # trailing comment\r\nIOC:ao.EGU\n")
    assert read_request(f) == ["IOC:ao", "IOC:bo", "IOC:ao.EGU"]


def test_macros_both_brackets_defaults_and_nesting(tmp_path):
    f = write(tmp_path / "a.req", "$(P)ao\n${P}s$(N=7)\n$(P)$(M=${P}x)\n$(Q=$(P)q)\n\\$(P)literal\n")
    assert read_request(f, {"P": "T:"}) == ["T:ao", "T:s7", "T:T:x", "T:q", "$(P)literal"]
    assert read_request(f, "P=U:,N=3,M=m") == ["U:ao", "U:s3", "U:m", "U:q", "$(P)literal"]


def test_include_relative_to_the_including_file_with_macros(tmp_path, monkeypatch):
    write(tmp_path / "top" / "main.req", "$(P)first\nfile sub/motor.req M=m1, EXTRA=$(P)e\n"
                                         'file "sub/motor.req" "M=m2"\n$(P)last\n')
    write(tmp_path / "top" / "sub" / "motor.req", "$(P)$(M).VAL\n$(P)$(M).VELO\nfile ../leaf.req\n")
    write(tmp_path / "top" / "leaf.req", "$(P)$(M)_leaf\n")
    monkeypatch.chdir(tmp_path)  # a relative top-level path: includes still resolve next to each file
    names = read_request("top/main.req", {"P": "X:"})
    assert names == ["X:first", "X:m1.VAL", "X:m1.VELO", "X:m1_leaf", "X:m2.VAL", "X:m2.VELO", "X:m2_leaf",
                     "X:last"]
    entries = list(iter_request("top/main.req", {"P": "X:"}))
    assert entries[1] == RequestEntry("X:m1.VAL", "top/sub/motor.req", 1)
    assert entries[3].file == "top/sub/../leaf.req" and entries[3].line == 1


def test_include_macros_override_and_inherit(tmp_path):
    write(tmp_path / "a.req", "file b.req P=inner:\n$(P)outer\n")
    write(tmp_path / "b.req", "$(P)x\n$(Q)y\n")
    assert read_request(tmp_path / "a.req", "P=outer:,Q=q:") == ["inner:x", "q:y", "outer:outer"]


def test_search_path(tmp_path):
    write(tmp_path / "lib" / "common.req", "C:common\n")
    f = write(tmp_path / "a.req", "file common.req\n")
    with pytest.raises(RequestFileError):
        read_request(f)
    assert read_request(f, search_path=[tmp_path / "lib"]) == ["C:common"]


@pytest.mark.parametrize("text, line, words", [
    ("ok:1\n$(P)ao\n", 2, "undefined macro $(P)"),
    ("ok:1\nok:2\n$(P\n", 3, "unterminated"),
    ("a b\n", 1, "one PV name per line"),
    ("ok\nfile\n", 2, "needs a file name"),
    ("file missing.req\n", 1, "not found"),
    ("file other.req P\n", 1, "bad macro definition"),
    ("$(X=)\n", 1, "empty PV name"),
    ("$(P)\n", 1, "refers to itself"),
    ("$(A-B)\n", 1, "bad macro name"),
    ("$(A}\n", 1, "mismatched"),
])
def test_errors_name_file_and_line(tmp_path, text, line, words):
    write(tmp_path / "other.req", "x\n")
    f = write(tmp_path / "bad.req", text)
    with pytest.raises(RequestFileError) as info:
        read_request(f, {"P": "$(P)"} if "itself" in words else None)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.file, err.line) == (str(f), line)
    assert str(err).startswith(f"{f}:{line}: ") and words in str(err)
    assert "\n" not in str(err)


def test_error_inside_an_include_names_the_included_file(tmp_path):
    write(tmp_path / "inc.req", "fine\n$(NOPE)\n")
    f = write(tmp_path / "a.req", "file inc.req\n")
    with pytest.raises(RequestFileError) as info:
        read_request(f)
    assert info.value.file == str(tmp_path / "inc.req") and info.value.line == 2


def test_include_cycle(tmp_path):
    write(tmp_path / "a.req", "A\nfile b.req\n")
    write(tmp_path / "b.req", "B\nfile a.req\n")
    with pytest.raises(RequestFileError) as info:
        read_request(tmp_path / "a.req")
    assert "include cycle: a.req -> b.req -> a.req" in str(info.value)
    assert info.value.line == 2


def test_missing_directory_and_non_utf8(tmp_path):
    with pytest.raises(RequestFileError) as info:
        read_request(tmp_path / "nope.req")
    assert str(info.value) == f"{tmp_path / 'nope.req'}: no such file"
    with pytest.raises(RequestFileError, match="is a directory"):
        read_request(tmp_path)
    f = write(tmp_path / "bin.req", b"ok\n\xff\xfe\n", mode="wb")
    with pytest.raises(RequestFileError) as info:
        read_request(f)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_parse_macros():
    assert parse_macros("P=a:,M=m1") == {"P": "a:", "M": "m1"}
    assert parse_macros(" P = a , Q=b R=c ") == {"P": "a", "Q": "b", "R": "c"}
    assert parse_macros('P="x, y",E=,Q=\'z\'') == {"P": "x, y", "E": "", "Q": "z"}
    assert parse_macros(["P=a", "P=b,Q=c"]) == {"P": "b", "Q": "c"}
    assert parse_macros(None) == {} and parse_macros("") == {}
    for bad in ("P", "=b", "P=a,,3=x"):
        with pytest.raises(RequestFileError):
            parse_macros(bad)


def test_expand_directly():
    assert expand("$(A)-${B=b}-$(C=$(A))", {"A": "a"}) == "a-b-a"
    assert expand("no macros", {}) == "no macros"
    assert expand("$ alone and $x", {}) == "$ alone and $x"
    with pytest.raises(RequestFileError) as info:
        expand("$(Z)", {}, file="f.req", line=9)
    assert str(info.value).startswith("f.req:9: undefined macro $(Z)")
