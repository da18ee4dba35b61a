"""Every content hash and hash-derived seed in the project, in one place, so the byte formulas that ids, artifact
paths, cache keys and seeds depend on are written once.

All are sha256. Changing any formula here changes problem ids, artifact digests or sampled numbers: it is a
data-format change, not a refactor.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in the parts by accident


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, byte count) of a binary stream, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def files_digest(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over (relative path, file sha256) pairs, in the order given (callers sort them)."""
    digest = hashlib.sha256()
    for relative, file_sha in entries:
        digest.update(f"{relative}\0{file_sha}\n".encode())
    return digest.hexdigest()


MANIFEST = "manifest.json"  # a checkpoint's list of files with their sha256 and size: never part of its digest


def tree_files(root: Path) -> list[Path]:
    """Every file under `root` except its manifest, in sorted path order."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.relative_to(root).as_posix() != MANIFEST)


def tree_digest(root: Path) -> str:
    """The files_digest of every file under `root` (its manifest aside), in sorted path order."""
    return files_digest((path.relative_to(root).as_posix(), sha256_file(path)) for path in tree_files(root))


def stable_hash(*parts: str) -> str:
    """sha256 hex of the parts joined by SEPARATOR."""
    return sha256_bytes(SEPARATOR.join(parts).encode())


def settings_hash(settings: dict) -> str:
    """sha256 of the canonical JSON of a settings dict (cache namespaces, resume keys)."""
    return stable_hash(json.dumps(settings, sort_keys=True, default=str))


def problem_id(prompt: str, answer: str) -> str:
    """A problem's id: the first 16 hex digits of the content hash of (prompt, gold answer)."""
    return stable_hash(prompt, answer)[:16]


def hash_int(seed: int, key: str, num_bytes: int) -> int:
    """An integer of `num_bytes` random bytes derived from (seed, key): seeds and draws that depend on content,
    never on row order or on the rest of the pool."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:num_bytes], "little")


def seeded_uniform(keys: list[str], seed: int, purpose: str = "") -> list[float]:
    """A uniform number in [0, 1) per key, from (seed, key). A `purpose` makes draws that share a seed independent
    (which problems are noisy vs. Random's draw); the empty purpose is the original formula."""
    prefix = f"{purpose}:" if purpose else ""
    return [hash_int(seed, prefix + key, 7) / 2**56 for key in keys]


def coin_flip(problem_id: str, sample_seed: int) -> float:
    """A fair coin (0.0 or 1.0) per rollout, keyed by its problem and its sampling seed: reproducible, independent
    of the completion, fresh for every rollout."""
    return float(hashlib.sha256(f"coin_flip:{problem_id}:{sample_seed}".encode()).digest()[0] & 1)


def derived_seed(seed: int, purpose: str) -> int:
    """A 31-bit seed for one purpose of a run seed (warm-up draw, training, evaluation, ...), so streams that share
    a run seed never share a hash."""
    return hash_int(seed, f"derived:{purpose}", 4) % 2**31


@functools.cache
def code_digest(*modules: str) -> str:
    """sha256 of the code of `modules` (dotted names) and of every module of the same package they import,
    directly or not: what cached rows are derived from, so an edit anywhere in that code gives a new digest.
    Each module counts by its syntax tree without docstrings, so comment and docstring edits do not count."""
    digest = hashlib.sha256()
    for name, path in sorted(source_closure(*modules).items()):
        digest.update(f"{name}\0{sha256_bytes(_code_without_docs(path).encode())}\n".encode())
    return digest.hexdigest()


def source_closure(*modules: str) -> dict[str, Path]:
    """Module name -> source file of `modules` and every module of their package they import (found from the
    files' import statements, nothing is imported)."""
    found: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in found or (path := _module_file(name)) is None:
            continue
        found[name] = path
        todo.extend(_package_imports(path, name) - set(found))
    return found


@functools.cache
def _package_dir(root: str) -> Path | None:
    spec = importlib.util.find_spec(root)
    return Path(spec.origin).parent if spec is not None and spec.origin is not None else None


def _module_file(name: str) -> Path | None:
    root, _, rest = name.partition(".")
    if (package := _package_dir(root)) is None:
        return None
    base = package.joinpath(*rest.split(".")) if rest else package
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _package_imports(path: Path, module: str) -> set[str]:
    """The modules of `module`'s top-level package that its source imports (anywhere in the file)."""
    root = module.split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else (node.module or "")
            )
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x`: x may be a module
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if (n == root or n.startswith(root + ".")) and _module_file(n) is not None}


def _code_without_docs(path: Path) -> str:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)
