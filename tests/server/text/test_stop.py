from __future__ import annotations

from collections.abc import Sequence

from attnserve_server.text.stop import StopMatcher


def feed(deltas: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool, str]:
    matcher = StopMatcher(stops)
    emitted = []
    for delta in deltas:
        emitted.append(matcher.push(delta))
        if matcher.stopped:
            break
    return emitted, matcher.stopped, matcher.flush()


def test_no_stop_strings_pass_everything_through() -> None:
    assert feed(["a", "b"], []) == (["a", "b"], False, "")


def test_output_is_cut_before_the_stop_string() -> None:
    emitted, stopped, rest = feed(["Hello wor", "ld. END and more"], ["END"])
    assert "".join(emitted) == "Hello world. "
    assert stopped
    assert rest == ""


def test_stop_string_split_across_deltas_never_leaks() -> None:
    emitted, stopped, _ = feed(["abc<", "|st", "op", "|>tail"], ["<|stop|>"])
    assert emitted == ["abc", "", "", ""]
    assert stopped


def test_partial_prefix_that_is_not_a_stop_is_released() -> None:
    emitted, stopped, _ = feed(["x <|st", "ar"], ["<|stop|>"])
    assert emitted == ["x ", "<|star"]
    assert not stopped


def test_held_back_text_is_flushed_when_generation_ends_otherwise() -> None:
    emitted, stopped, rest = feed(["one\n", "\n"], ["\n\n\n"])
    assert emitted == ["one", ""]
    assert not stopped
    assert rest == "\n\n"


def test_earliest_of_several_stop_strings_wins() -> None:
    emitted, stopped, _ = feed(["a STOP b END"], ["END", "STOP"])
    assert emitted == ["a "]
    assert stopped


def test_stop_string_starting_inside_held_back_text() -> None:
    # "ab" is held (prefix of "abc"); the next delta completes a different stop that begins at "b".
    emitted, stopped, _ = feed(["xab", "d"], ["abc", "bd"])
    assert "".join(emitted) == "xa"
    assert stopped


def test_multibyte_stop_string() -> None:
    emitted, stopped, _ = feed(["日本", "語の"], ["本語"])
    assert "".join(emitted) == "日"
    assert stopped


def test_nothing_after_stop() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.push("ax") == "a"
    assert matcher.push("more") == ""
