from __future__ import annotations

import pytest

from diji.data.pii import PIIConfig, cn_id_valid, luhn_valid, scrub_pii

CFG = PIIConfig()
_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def make_id(first17: str) -> str:
    return first17 + "10X98765432"[sum(int(c) * w for c, w in zip(first17, _W, strict=True)) % 11]


VALID_ID = make_id("11010519491231002")  # 1949-12-31, a published example
WRONG_CHECK = VALID_ID[:-1] + ("1" if VALID_ID[-1] != "1" else "2")


def scrub(text: str, cfg: PIIConfig = CFG) -> str:
    return scrub_pii(text, cfg)[0]


def test_validators() -> None:
    assert VALID_ID == "11010519491231002X"
    assert cn_id_valid(VALID_ID) and not cn_id_valid(WRONG_CHECK)
    assert not cn_id_valid(make_id("11010519490230002"))  # 30 February
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("请联系 zhang.san+news@mail.example.com.cn 获取", "请联系 <EMAIL> 获取"),
        ("write to a_b@x.io.", "write to <EMAIL>."),
        ("手机13812345678或138 1234 5678", "手机<PHONE>或<PHONE>"),
        ("电话 +86 139-1234-5678，谢谢", "电话 <PHONE>，谢谢"),
        ("London office: +44 20 7946 0958.", "London office: <PHONE>."),
        ("Call (555) 123-4567 or 555-867-5309 today", "Call <PHONE> or <PHONE> today"),
        (f"身份证号：{VALID_ID}。", "身份证号：<CN_ID>。"),
        ("卡号 6222 0212 3456 7890 128 已绑定", "卡号 <BANK_CARD> 已绑定"),
        ("Visa 4111-1111-1111-1111 expires", "Visa <BANK_CARD> expires"),
        ("server at 192.168.0.17:8080 and 8.8.8.8", "server at <IPV4>:8080 and <IPV4>"),
    ],
)
def test_replaced(text: str, want: str) -> None:
    assert scrub(text) == want


@pytest.mark.parametrize(
    "text",
    [
        f"身份证号：{WRONG_CHECK}",  # checksum wrong: not an ID number, must stay
        "order 4111111111111112 shipped",  # fails Luhn
        "ticket 1234567812345678",  # fails Luhn too
        "Python 3.11.7 and version 1.2.3.4.5 and 999.1.1.1",
        "x = 10000000000000000000000",  # a long constant, not a phone or card
        "12138123456789",  # a mobile-looking run inside a longer number
        "user@localhost has no dot in its domain",
        "the year 2024 and 365 days",
    ],
)
def test_not_replaced(text: str) -> None:
    assert scrub(text) == text


def test_counts_and_kinds() -> None:
    text = f"a@b.co {VALID_ID} 13812345678 10.0.0.1"
    out, counts = scrub_pii(text, CFG)
    assert out == "<EMAIL> <CN_ID> <PHONE> <IPV4>"
    assert counts == {"EMAIL": 1, "CN_ID": 1, "PHONE": 1, "IPV4": 1}
    only_email = PIIConfig(kinds=("EMAIL",))
    assert scrub(text, only_email) == f"<EMAIL> {VALID_ID} 13812345678 10.0.0.1"
    assert scrub(text, PIIConfig(enabled=False)) == text
    with pytest.raises(ValueError, match="pii.kinds"):
        PIIConfig(kinds=("SSN",))
