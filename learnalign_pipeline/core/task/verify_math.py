"""LaTeX / boxed answer verification with `math-verify`, isolated in worker processes.

Model output is untrusted. SymPy can hang or exhaust memory on hostile LaTeX (`10^{10^{10^{10}}}`, thousands of
nested `\\frac{`), and math-verify's own timeouts use `signal.alarm`, which only works in a main thread. So each
answer is checked in a spawned worker process under a wall-clock deadline; a worker that misses it is killed and
replaced, and the answer scores 0. Nothing is evaluated as code: predictions are parsed only with math-verify's
LaTeX extractor (ANTLR grammar, no `eval`), never its `ExprExtractionConfig`, which hands text to SymPy's
`parse_expr` (an `eval`). Without a \\boxed{} answer, "#### N" or the last line's number is used (lm-eval regexes).

Scores are `verify(gold, prediction)` with the gold first: math-verify is deliberately asymmetric.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from multiprocessing.connection import wait

from .verify import extract_answer, last_boxed

MAX_COMPLETION_CHARS = 4000  # the final answer is at the end; the rest only costs parse time
STARTUP_TIMEOUT_S = 120.0  # spawning a worker imports SymPy; slow on a loaded 2-core machine, but not a hang


def _boxed(text: str) -> str:
    return "\\boxed{" + text + "}"


def _parse_prediction(text: str) -> list:
    """The model's final answer, parsed: the last complete \\boxed{}, else a "#### N" line, else the last line
    (as LaTeX when it has math delimiters, else its last number). Parsing the whole text would read currency
    signs ("$12 ... $15") as inline math and pick an intermediate result."""
    from math_verify import LatexExtractionConfig, parse

    boxed = last_boxed(text)
    if boxed is not None:
        return parse(_boxed(boxed), [LatexExtractionConfig()], parsing_timeout=None)
    number = extract_answer(text, "strict")
    if number is None:
        last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        if any(mark in last_line for mark in ("$", "\\(", "\\[")):
            parsed = parse(last_line, [LatexExtractionConfig()], parsing_timeout=None)
            if parsed:
                return parsed
        number = extract_answer(last_line, "flexible")
    return parse(_boxed(str(number)), [LatexExtractionConfig()], parsing_timeout=None) if number is not None else []


def _score_in_worker(gold: str, completion: str, cache: dict) -> tuple[float, str]:
    """(score, status) where status is "correct", "wrong", "gold_unparsed" or "answer_unparsed"."""
    from math_verify import LatexExtractionConfig, parse, verify

    if gold not in cache:
        if len(cache) > 10_000:
            cache.clear()
        cache[gold] = parse(_boxed(gold), [LatexExtractionConfig()], parsing_timeout=None)
    gold_parsed = cache[gold]
    if not gold_parsed:
        return 0.0, "gold_unparsed"
    predicted = _parse_prediction(completion[-MAX_COMPLETION_CHARS:])
    if not predicted:
        return 0.0, "answer_unparsed"
    correct = verify(gold_parsed, predicted, timeout_seconds=None)
    return (1.0, "correct") if correct else (0.0, "wrong")


def _worker_main(conn) -> None:
    import logging

    # math-verify logs a warning per call when its signal timeouts are off; the parent enforces the deadline.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (import before "ready" so the import is not charged to an answer's deadline)

    cache: dict = {}
    conn.send(("ready", ""))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        gold, completion = message
        try:
            conn.send(_score_in_worker(gold, completion, cache))
        except Exception as error:  # a parser bug on hostile input is a wrong answer, not a failed step
            conn.send((0.0, f"error:{type(error).__name__}"))


class _Worker:
    def __init__(self, context):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.spawned = time.monotonic()
        self.task: int | None = None
        self.started = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class MathVerifier:
    """Binary reward from math-verify, `timeout_s` of wall clock per answer, on `workers` processes.

    `stats` counts answers, correct and wrong ones, timeouts, unparseable golds and answers, and worker errors since
    construction, for a stage's metadata. Use as a context manager or call `close()` to stop the workers.
    """

    name = "math_verify"

    def __init__(self, timeout_s: float, workers: int = 2):
        self.timeout_s = timeout_s
        self.num_workers = max(1, workers)
        self._context = mp.get_context("spawn")  # fork would copy a parent that may hold threads and CUDA state
        self._workers: list[_Worker] = []
        self.stats = {
            "answers": 0,
            "correct": 0,
            "wrong": 0,
            "timeouts": 0,
            "gold_unparsed": 0,
            "answer_unparsed": 0,
            "errors": 0,
        }

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def close(self) -> None:
        for worker in getattr(self, "_workers", []):
            worker.kill()
        self._workers = []

    def score(self, completion: str, gold: str) -> float:
        return self.score_batch([completion], [gold])[0]

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._context)

    def score_batch(self, completions: list[str], golds: list[str]) -> list[float]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._context))
        scores = [0.0] * len(completions)
        pending = deque(range(len(completions)))
        remaining = len(completions)
        while remaining:
            for worker in self._workers:
                if worker.ready and worker.task is None and pending:
                    worker.task, worker.started = pending.popleft(), time.monotonic()
                    worker.conn.send((golds[worker.task], completions[worker.task]))
            deadlines = [
                w.started + self.timeout_s if w.ready else w.spawned + STARTUP_TIMEOUT_S
                for w in self._workers
                if w.task is not None or not w.ready
            ]
            by_conn = {w.conn: w for w in self._workers if w.task is not None or not w.ready}
            for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines) - time.monotonic())):
                worker = by_conn[conn]
                try:
                    result, status = conn.recv()
                except (EOFError, OSError) as error:  # the worker died (e.g. a C stack overflow on deep nesting)
                    result, status = 0.0, "error:died"
                    if not worker.ready:
                        raise RuntimeError(
                            "math-verify worker exited during start-up; is math-verify installed?"
                        ) from error
                    self._replace(worker)
                if not worker.ready and status == "":
                    worker.ready = True
                    continue
                task, worker.task = worker.task, None
                self._record(status)
                scores[task] = result
                remaining -= 1
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.task is not None and now > worker.started + self.timeout_s:
                    self.stats["answers"] += 1
                    self.stats["timeouts"] += 1
                    remaining -= 1  # scores[task] stays 0.0
                    self._replace(worker)
                elif not worker.ready and now > worker.spawned + STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"math-verify worker did not start within {STARTUP_TIMEOUT_S:.0f}s")
        return scores

    def _record(self, status: str) -> None:
        self.stats["answers"] += 1
        if status == "correct":
            self.stats["correct"] += 1
        elif status in ("wrong", "gold_unparsed", "answer_unparsed"):
            self.stats[status] += 1
        elif status.startswith("error"):
            self.stats["errors"] += 1
