"""Nothing read is executed: the package never unpickles, evaluates or runs loaded text, and every model load
asks for safetensors without remote code. Checked on the source's syntax tree, so a new call site cannot slip in."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "learnalign_pipeline"
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _calls(tree):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _violations(source: str) -> list[str]:
    tree = ast.parse(source)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            problems += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
    for call in _calls(tree):
        name = _dotted(call.func)
        keywords = {k.arg: k.value for k in call.keywords}
        if isinstance(call.func, ast.Name) and name in UNSAFE_BUILTINS:
            problems.append(f"line {call.lineno}: calls {name}()")
        if name in {"torch.load", "numpy.load", "np.load"} or name.endswith(".literal_eval"):
            problems.append(f"line {call.lineno}: calls {name}")
        trust = keywords.get("trust_remote_code")
        if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
            problems.append(f"line {call.lineno}: trust_remote_code is not False")
        # tokenizers and generation configs are JSON files: no weights to read as safetensors; a GGUF file holds
        # tensors and metadata only (transformers reads it with the `gguf` package, nothing is unpickled)
        if (
            name.endswith(".from_pretrained")
            and "Tokenizer" not in name
            and "GenerationConfig" not in name
            and "gguf_file" not in keywords
        ):
            safe = keywords.get("use_safetensors")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                problems.append(f"line {call.lineno}: {name} without use_safetensors=True")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_unpickling_eval_or_remote_code(path):
    assert not _violations(path.read_text()), path


def test_the_scan_sees_each_violation():
    """The check above can fail: each pattern in a sample is reported, and safe look-alikes are not."""
    sample = (
        "import pickle\nfrom joblib import load\nx = eval('1')\ntorch.load(f)\nast.literal_eval(s)\n"
        "m = AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True)\n"
        "model.eval()\nok = AutoModelForCausalLM.from_pretrained(p, use_safetensors=True)\nt = AutoTokenizer.from_pretrained(p)\n"
    )
    found = _violations(sample)
    assert [v.split(":")[0] for v in found] == ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6", "line 6"], (
        found
    )
