"""The README's PyTorch recipes are the very lines tests/test_recipes.py runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recipe(name):
    text = (ROOT / "tests" / "test_recipes.py").read_text()
    return re.search(rf"# recipe: {name}\n(.*?)# end recipe", text, re.S).group(1).strip()


def test_readme_shows_the_tested_pytorch_recipes():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.strip() for b in re.findall(r"```python\n(.*?)```", readme, re.S)]
    for name in ("pytorch-torchscript", "pytorch-dynamo"):
        assert recipe(name) in blocks, f"the README's {name} recipe differs from tests/test_recipes.py"


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install ".[test]" && pytest' in readme
    assert 'pip install ".[test]" && pytest' in ci
