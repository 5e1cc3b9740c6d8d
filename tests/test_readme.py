"""README tells the truth about what `make` installs: the same extras as the Makefile, every extra named."""

import re
from pathlib import Path

from diji.config import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_the_makefile_extras_and_every_extra():
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r"^EXTRAS \?= (\S+)$", makefile, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"diji[{extras}]" in readme, "the `make install` line lists other extras than the Makefile"
    stated = re.search(r"`EXTRAS` defaults to the \w+ extras `([^`]+)`", readme).group(1)
    assert stated == extras
    defined = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = readme.split("Plain `pip install -e .` also works", 1)[1].split("##", 1)[0]
    missing = [name for name in defined if f"`{name}`" not in listed]
    assert not missing, f"extras not described in README: {missing}"
