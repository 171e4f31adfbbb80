import pytest

from app.colors import parse_color


@pytest.mark.parametrize(
    "text, rgb",
    [
        ("#00FF00", (0, 255, 0)),
        ("#00FF0080", (0, 255, 0, 128)),
        ("#0F08", (0, 255, 0, 0x88)),
        ("white", (255, 255, 255)),
        ("RebeccaPurple", (102, 51, 153)),
        ("#00ff00", (0, 255, 0)),
        ("00FF00", (0, 255, 0)),
        ("#0F0", (0, 255, 0)),
        ("#abc", (0xAA, 0xBB, 0xCC)),
        ("255,0,0", (255, 0, 0)),
        (" 1 , 2 , 3 ", (1, 2, 3)),
        ("0,0,0", (0, 0, 0)),
        (None, (255, 255, 255)),
        ("", (255, 255, 255)),
        ("   ", (255, 255, 255)),
    ],
)
def test_accepted_forms(text, rgb):
    expected = rgb if len(rgb) == 4 else (*rgb, 255)
    assert parse_color(text) == expected


@pytest.mark.parametrize("text", ["#GGGGGG", "#12345", "256,0,0", "1,2", "1,2,3,4", "-1,0,0", "reddish", "#1234567", "#12345678a", "1.5,2,3"])
def test_rejected_forms_name_the_accepted_ones(text):
    with pytest.raises(ValueError) as caught:
        parse_color(text)
    assert "#RRGGBB" in str(caught.value) and "R,G,B" in str(caught.value)
