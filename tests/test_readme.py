"""The README's recipes are the very lines that run: the PyTorch ones in tests/test_recipes.py,
the Keras, tf2onnx and Paddle ones in the fixture scripts that export the fixtures (run where
those frameworks are installed); its pass table lists DEFAULT_PASSES in order; and its commands
are the CI's."""

import re
from pathlib import Path

import pytest

import onnx_fuse
import onnx_fuse.passes
from onnx_fuse.passes import DEFAULT_PASSES

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = 'pip install -e ".[test]" && pytest'

RECIPES = {
    "pytorch-torchscript": "tests/test_recipes.py",
    "pytorch-dynamo": "tests/test_recipes.py",
    "keras3-export": "fixtures/make_keras.py",
    "tf2onnx": "fixtures/make_keras.py",
    "paddle2onnx": "fixtures/make_paddle.py",
}


def recipe(name):
    text = (ROOT / RECIPES[name]).read_text()
    found = re.search(rf"# recipe: {name}\n(.*?)# end recipe", text, re.S)
    assert found, f"no '# recipe: {name}' block in {RECIPES[name]}"
    return found.group(1).strip()


def readme_blocks():
    readme = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```python\n(.*?)```", readme, re.S)]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_readme_shows_the_recipe_that_runs(name):
    assert recipe(name) in readme_blocks(), f"the README's {name} recipe differs from {RECIPES[name]}"


def test_the_fixture_scripts_call_their_recipes():
    keras = (ROOT / "fixtures" / "make_keras.py").read_text()
    assert 'run_recipes("[keras3]", recipe_case)' in keras and "(export_and_fuse_keras, (train,)" in keras
    assert "(convert_and_fuse, (model, spec)" in keras
    assert "fused = export_and_fuse_paddle(" in (ROOT / "fixtures" / "make_paddle.py").read_text()


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
