"""The README's PyTorch recipes are the very lines tests/test_recipes.py runs, its pass table lists
DEFAULT_PASSES in order, and its test command is CI's."""

import re
from pathlib import Path

import onnx_fuse
import onnx_fuse.passes
from onnx_fuse.passes import DEFAULT_PASSES

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = 'pip install -e ".[test]" && pytest'


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
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in ci


def test_readme_pass_table_lists_every_pass_in_order():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The passes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert rows == [p.name for p in DEFAULT_PASSES], "README's pass table differs from passes.DEFAULT_PASSES"


def test_tests_run_against_the_working_tree():
    """The README's test command installs the checkout in editable mode: onnx_fuse and its passes
    are imported from this folder, not from a copy in site-packages."""
    assert Path(onnx_fuse.__file__).resolve().parent == ROOT / "onnx_fuse"
    assert Path(onnx_fuse.passes.__file__).resolve().parent == ROOT / "passes"
