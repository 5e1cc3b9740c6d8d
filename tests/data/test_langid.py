from __future__ import annotations

import pytest

from diji.data.langid import LangIdConfig, detect_language

CFG = LangIdConfig()

EN = ("It was a bright cold day in April, and the clocks were striking thirteen. The hallway smelt of "
      "boiled cabbage and old rag mats, and at one end of it a coloured poster had been tacked to the wall.")
ZH = ("今天早上下了一场小雨，空气特别清新。我和朋友们一起去了公园，看到很多老人在打太极拳，"
      "孩子们在草地上放风筝。中午我们在湖边的小饭馆吃了午饭，味道很不错。")
PY = "import os\n\n\ndef main(argv):\n    for name in argv:\n        if os.path.exists(name):\n            print(name)\n    return 0\n"
C = "#include <stdio.h>\n\nint main(void) {\n    int x = 1;\n    printf(\"%d\\n\", x);\n    return 0;\n}\n"
JA = "今日はとても良い天気ですね。私たちは公園に行って、桜の花を見ました。とてもきれいでした。"
KO = "오늘은 날씨가 정말 좋습니다. 우리는 공원에 가서 꽃을 보았습니다. 정말 아름다웠습니다."
FR = ("Il était une fois une petite fille qui vivait dans un village près de la forêt. Elle portait "
      "toujours un chaperon rouge que sa grand-mère lui avait donné.")


@pytest.mark.parametrize(
    ("text", "want"),
    [(EN, "en"), (ZH, "zh"), (PY, "code"), (C, "code"), (JA, "ja"), (KO, "ko"), (FR, "other"), ("... !!! ???", "unknown")],
)
def test_script_backend(text: str, want: str) -> None:
    assert detect_language(text, CFG)[0] == want


def test_english_prose_with_colons_is_not_code() -> None:
    play = "FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\nALL:\nSpeak, speak.\n\nFIRST CITIZEN:\nYou are all resolved rather to die than to famish?\n"
    assert detect_language(play, CFG)[0] == "en"


def test_mixed_chinese_with_some_english_is_zh() -> None:
    assert detect_language(ZH + " We use Python and PyTorch.", CFG)[0] == "zh"


def test_disabled_labels_everything_en() -> None:
    assert detect_language(ZH, LangIdConfig(enabled=False))[0] == "en"


def test_py3langid_backend() -> None:
    pytest.importorskip("py3langid")
    cfg = LangIdConfig(backend="py3langid")
    assert detect_language(EN, cfg)[0] == "en"
    assert detect_language(ZH, cfg)[0] == "zh"
    assert detect_language(FR, cfg)[0] == "fr"
    assert detect_language(PY, cfg)[0] == "code"  # the code rule runs first


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="backend"):
        LangIdConfig(backend="fasttext")
