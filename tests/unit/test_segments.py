import pytest

from ratequeue.segments import count_segments, segments_for_body


@pytest.mark.parametrize(
    ("length", "segments"), [(0, 1), (1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3)]
)
def test_gsm7_text_is_160_in_one_segment_then_153_per_segment(length: int, segments: int) -> None:
    assert count_segments("a" * length) == segments


def test_gsm7_extension_characters_take_two_septets() -> None:
    assert count_segments("€" * 80) == 1
    assert count_segments("€" * 81) == 2


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_non_gsm_text_is_ucs2_70_then_67_per_segment(length: int, segments: int) -> None:
    assert count_segments("ж" * length) == segments


def test_characters_outside_the_bmp_count_as_two_ucs2_units() -> None:
    assert count_segments("😀" * 35) == 1
    assert count_segments("😀" * 36) == 2


def test_body_text_comes_from_a_string_or_a_text_field() -> None:
    assert segments_for_body("a" * 161) == 2
    assert segments_for_body({"text": "a" * 161, "to": "x"}) == 2
    assert segments_for_body({"data": [1, 2, 3]}) == 1


def test_a_mixed_text_counts_each_character_by_its_own_table() -> None:
    assert count_segments("a" * 158 + "€") == 1
    assert count_segments("a" * 159 + "€") == 2
    assert count_segments("a" * 70 + "ж") == 2  # one character outside GSM-7: all UCS-2
