"""A seeded synthetic retrieval task where finding the relevant document needs a short derivation.

Queries ask for a sum (the quickstart: "what is 37 plus 85?") or a product in digits; each document states one
number in words plus an invented distractor code ("ledger kavo-rimu shows one hundred twenty-two."). Query and
relevant document share no word, so lexical matching (BM25) fails; the answer is a non-smooth function of the query,
so a static embedding of the query is only approximately right; a correct reasoning trace ("7+5+0=12,3+8+1=12:122")
ends in the answer. Every query's answer has near-miss neighbours in the corpus (one or two digits off), which are
also the training hard negatives.

Problem kinds are a registry (``KINDS``): ``mul_2x1`` (two-digit x one-digit: a small model learns it almost
perfectly), ``mul_3x1`` (three-digit x one-digit: three partial products and a three-term sum), and the sums
``add_2x2`` / ``add_3x3`` (column addition in a fixed-width scratchpad; 8,100 and 810,000 distinct problems, so a
model cannot learn them by heart). The mix is ``TaskConfig.kinds``. The imperfect teacher (``shortcut_templates``,
``shortcut_rate``) estimates instead of deriving on chosen phrasings; ``SUMS`` is the task of the stage-3
experiments in docs/quickstart.md.

Files (``write_task``): ``train.jsonl`` (query, positives, negatives, reasoning), ``beir/{corpus,queries}.jsonl`` +
``beir/qrels/test.tsv`` for the held-out queries, ``heldout.jsonl`` (answers + teacher traces of the held-out queries,
for diagnostics only) and ``task.json`` (config and counts). Run ``python -m t1_jax.quickstart.task --out DIR``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
from typing import Callable, Iterator, Optional, Sequence

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
QUERY_TEMPLATES = ("what is {a} times {b}?", "compute {a} times {b}.", "{a} multiplied by {b} gives what?",
                   "find the product of {a} and {b}.")
# Every sum phrasing ends "{a} <one word> {b}<mark>": the operands' digits sit at the same distance from the end of
# the prompt whatever the phrasing, so copying them is a fixed-offset lookup (docs/quickstart.md).
ADD_QUERY_TEMPLATES = ("what is {a} plus {b}?", "compute {a} plus {b}.", "add {a} to {b}.",
                       "find the sum of {a} and {b}.")
DOC_TEMPLATES = ("record {code} holds {words}.", "{words}, filed as {code}.", "ledger {code} shows {words}.",
                 "entry {code}: amount {words}.")
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000, without "and": 1422 -> "one thousand four hundred twenty-two"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words covers 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def words_to_number(text: str) -> Optional[int]:
    """Inverse of :func:`number_words` (None when ``text`` is not exactly such a phrase)."""
    values = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if w != "_"}
    total, current = 0, 0
    for word in text.strip().replace("-", " ").split():
        if word in values:
            current += values[word]
        elif word == "hundred" and current:
            current *= 100
        elif word == "thousand" and current:
            total, current = total + current * 1000, 0
        else:
            return None
    number = total + current
    return number if number_words(number) == text.strip() else None


# --------------------------------------------------------------------------------------------------------------------
# Problem kinds
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str
    a: int
    b: int

    @property
    def op(self) -> str:
        return KINDS[self.kind].op

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "add" else self.a * self.b


@dataclasses.dataclass(frozen=True)
class ProblemKind:
    a_range: tuple[int, int]  # inclusive
    b_range: tuple[int, int]
    op: str = "mul"  # "mul" | "add": the query phrasings, the teacher's derivation and its shortcut follow it

    def pool(self, name: str) -> list[Problem]:
        return [Problem(name, a, b) for a in range(self.a_range[0], self.a_range[1] + 1)
                for b in range(self.b_range[0], self.b_range[1] + 1)]

    def size(self) -> int:
        return (self.a_range[1] - self.a_range[0] + 1) * (self.b_range[1] - self.b_range[0] + 1)

    def sample(self, name: str, rng: random.Random, count: int) -> list[Problem]:
        """``count`` distinct problems, drawn without listing the pool (add_3x3 has 810,000)."""
        if count > self.size():
            raise ValueError(f"{name} has {self.size()} distinct problems; {count} do not exist")
        out: dict[Problem, None] = {}  # insertion-ordered set
        while len(out) < count:
            out.setdefault(Problem(name, rng.randint(*self.a_range), rng.randint(*self.b_range)))
        return list(out)


KINDS: dict[str, ProblemKind] = {
    "mul_2x1": ProblemKind((10, 99), (2, 9)),
    "mul_3x1": ProblemKind((100, 999), (2, 9)),
    "add_2x2": ProblemKind((10, 99), (10, 99), op="add"),
    "add_3x3": ProblemKind((100, 999), (100, 999), op="add"),
}
LARGE_KIND = 20_000  # kinds with more problems are sampled, not shuffled whole; a training split cycles nothing


def query_templates(op: str) -> tuple[str, ...]:
    return ADD_QUERY_TEMPLATES if op == "add" else QUERY_TEMPLATES


def column_addition(problem: Problem, carries: bool = True, compact: bool = False, words: bool = True) -> str:
    """Column addition in a fixed-width scratchpad, ones first, each column as ``digit+digit+carry=two-digit sum``,
    then the answer's digits and (``words``) the documents' words: ``37 + 85`` -> ``7+5+0=12,3+8+1=12:122, one hundred
    twenty-two``. Every column has the same width and the sums' phrasings all end in ``{a} <word> {b}<mark>``, so the
    digits a step needs are always the same number of tokens back (a pattern a small model learns and applies to
    unseen problems). ``carries=False`` writes every carry as 0 (``7+5+0=12,3+8+0=11:112``), right only when no
    column overflows; it is not the teacher's shortcut: the column sums keep the information, and a stage-2 model's
    embedding learnt to correct the dropped carries from them (docs/quickstart.md)."""
    da, db = str(problem.a)[::-1], str(problem.b)[::-1]
    steps, digits, carry = [], [], 0
    columns = max(len(da), len(db))
    for i in range(columns):
        x, y = (int(d[i]) if i < len(d) else 0 for d in (da, db))
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}")
        digits.append(str(total % 10) if i < columns - 1 else str(total)[::-1])
        carry = total // 10 if carries else 0
    value = int("".join(digits)[::-1])
    trace = ",".join(steps) + f":{value}"
    if not compact:
        trace = trace.replace("+", " + ").replace("=", " = ").replace(":", ": ").replace(",", ", ")
    return f"{trace}, {number_words(value)}" if words else trace


def teacher_reasoning(problem: Problem, stepwise_sums: bool = False, compact: bool = False,
                      words: bool = True) -> str:
    """The teacher's exact derivation: column addition for sums (:func:`column_addition`); for products the
    place-value expansion, partial products, their sum, then the answer in the documents' words (or, ``words=False``,
    the trace ends in the answer's digits).

    ``37 * 6 = 30 * 6 + 7 * 6 = 180 + 42 = 222, two hundred twenty-two``; ``stepwise_sums`` adds the running sums of
    three or more partial products one at a time (easier); ``compact`` drops the spaces around numbers and operators
    (``37*6=30*6+7*6=180+42=222, two hundred twenty-two``): digits are single tokens and a space before a number is
    a token of its own, so the compact trace is ~30% shorter (39 -> 28 tokens here) at the same content."""
    if problem.op == "add":
        return column_addition(problem, compact=compact, words=words)
    a, b = problem.a, problem.b
    digits = str(a)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    steps = [f"{a} * {b}"]
    if len(parts) > 1:
        steps.append(" + ".join(f"{p} * {b}" for p in parts))
        products = [p * b for p in parts]
        steps.append(" + ".join(str(p) for p in products))
        while stepwise_sums and len(products) > 2:
            products = [products[0] + products[1]] + products[2:]
            steps.append(" + ".join(str(p) for p in products))
    steps.append(str(a * b))
    trace = " = ".join(steps)
    if compact:
        trace = trace.replace(" ", "")
    return trace + ", " + number_words(a * b) if words else trace


def _round_ten(n: int) -> int:
    return max(10, (n + 5) // 10 * 10)


def shortcut_reasoning(problem: Problem, compact: bool = False, words: bool = True) -> str:
    """The teacher's shortcut: estimate instead of derive. Products: round the two-digit factor to the nearest ten
    and multiply (``37 * 6 = 40 * 6 = 240, two hundred forty``); sums: round both operands to the nearest ten and add
    (``37 + 85`` -> ``~40 + 90 = 130, one hundred thirty``). Either is in the answer's form and wrong unless the
    rounding happens to cancel: the exact number is lost from the trace."""
    a, b = problem.a, problem.b
    if problem.op == "add":
        ra, rb = _round_ten(a), _round_ten(b)
        trace = f"~{ra} + {rb} = {ra + rb}"  # "~": an estimate; its first token differs from a column's digit
        value = ra + rb
    else:
        rounded = _round_ten(a)
        trace = f"{a} * {b} = {rounded} * {b} = {rounded * b}"
        value = rounded * b
    if compact:
        trace = trace.replace(" ", "")
    return trace + ", " + number_words(value) if words else trace


def answer_in_reasoning(text: str) -> Optional[int]:
    """The number a trace ends with: its final words (after the last comma) or, for traces that end in digits, the
    digits after the last ``=`` or ``:``; None when unreadable."""
    tail = text.rsplit(",", 1)[-1].strip().rstrip(".")
    number = words_to_number(tail)
    if number is None:
        digits = re.fullmatch(r".*[=:]\s*(\d+)", text.strip())
        number = int(digits.group(1)) if digits else None
    return number


def near_misses(problem: Problem) -> list[int]:
    """Plausible wrong answers. Products: off by 1, 10, 100, or by one operand (a slip in a partial product or a
    carry). Sums: one or two digits off by one (a slipped or missing carry), or off by 20."""
    v, a, b = problem.answer, problem.a, problem.b
    offsets = ((-1, 1, -10, 10, -100, 100, -11, 11, -110, 110, -20, 20) if problem.op == "add"
               else (-1, 1, -10, 10, -100, 100, -b, b, -a, a, -20, 20))
    candidates = [v + d for d in offsets]
    return list(dict.fromkeys(c for c in candidates if c > 0 and c != v))


# --------------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    seed: int = 0
    num_train: int = 6000  # mul_2x1 has only 600 trainable pairs (cycled); more distinct mul_3x1 pairs help
    num_test: int = 200
    num_grpo: int = 0  # distinct problems reserved for stage 3 (GRPO): in neither the training nor the held-out split
    kinds: tuple[tuple[str, float], ...] = (("mul_2x1", 0.7), ("mul_3x1", 0.3))
    num_hard_negatives: int = 3
    num_distractor_docs: int = 300  # extra documents for numbers no query asks about
    stepwise_sums: bool = False
    compact_traces: bool = True  # "37*6=30*6+7*6=180+42=222, ..." (see teacher_reasoning)
    answer_words: bool = True  # traces end in the answer's words ("..., two hundred twenty-two"); False: its digits
    # The imperfect teacher (docs/quickstart.md): for training queries asked with these phrasing indices, the
    # teacher takes the rounding shortcut (shortcut_reasoning) with probability shortcut_rate, else derives exactly.
    shortcut_templates: tuple[int, ...] = ()
    shortcut_rate: float = 0.0

    def validate(self) -> list[str]:
        errors = []
        if self.num_train < 1 or self.num_test < 1:
            errors.append(f"num_train and num_test must be >= 1, got {self.num_train}, {self.num_test}")
        if self.num_hard_negatives < 0 or self.num_distractor_docs < 0 or self.num_grpo < 0:
            errors.append("num_hard_negatives, num_distractor_docs and num_grpo must be >= 0")
        if not 0 <= self.shortcut_rate <= 1 or any(not 0 <= t < len(QUERY_TEMPLATES) for t in self.shortcut_templates):
            errors.append(f"shortcut_rate must be in [0, 1] and shortcut_templates index QUERY_TEMPLATES, got "
                          f"{self.shortcut_rate}, {self.shortcut_templates}")
        if not self.kinds or any(w <= 0 for _, w in self.kinds):
            errors.append(f"kinds must be (name, positive weight) pairs, got {self.kinds}")
        for name, _ in self.kinds:
            if name not in KINDS:
                errors.append(f"unknown problem kind {name!r}; one of {', '.join(KINDS)}")
        return errors


# The quickstart's task (docs/quickstart.md): two-digit sums, a teacher that estimates instead of deriving on two of
# the four phrasings (70% of those traces), traces that end in the answer's digits, 400 unseen problems kept for
# stage 3. The products task of earlier quickstarts is TaskConfig(num_test=160, kinds=(("mul_2x1", 1.0),)).
SUMS = TaskConfig(num_test=160, num_grpo=400, kinds=(("add_2x2", 1.0),), shortcut_templates=(2, 3), shortcut_rate=0.7,
                  answer_words=False)
PRESETS: dict[str, TaskConfig] = {
    "full": SUMS,
    "fast": dataclasses.replace(SUMS, num_train=256, num_test=32, num_grpo=32, num_distractor_docs=32),
}


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str
    value: int
    text: str


@dataclasses.dataclass(frozen=True)
class Query:
    query_id: str
    text: str
    problem: Problem
    reasoning: str
    positive_id: str
    negative_ids: tuple[str, ...]
    template: int = 0  # index into QUERY_TEMPLATES
    shortcut: bool = False  # the teacher's trace is the rounding shortcut (training queries only)


@dataclasses.dataclass(frozen=True)
class Task:
    cfg: TaskConfig
    corpus: tuple[Document, ...]
    train: tuple[Query, ...]
    test: tuple[Query, ...]
    grpo: tuple[Query, ...] = ()  # stage-3 queries (problems in neither train nor test); no teacher trace is used

    def doc(self, doc_id: str) -> Document:
        return self._by_id()[doc_id]

    def _by_id(self) -> dict[str, Document]:
        if "_docs" not in self.__dict__:
            object.__setattr__(self, "_docs", {d.doc_id: d for d in self.corpus})
        return self.__dict__["_docs"]

    def qrels(self, split: str = "test") -> dict[str, dict[str, int]]:
        return {q.query_id: {q.positive_id: 1} for q in getattr(self, split)}

    def texts(self) -> Iterator[str]:
        """Every text a model of this task reads (for training its tokenizer)."""
        for d in self.corpus:
            yield d.text
        for q in self.train + self.test + self.grpo:
            yield q.text
            yield q.reasoning


def _split_counts(total: int, kinds: Sequence[tuple[str, float]]) -> list[int]:
    weights = [w for _, w in kinds]
    counts = [int(total * w / sum(weights)) for w in weights]
    counts[0] += total - sum(counts)
    return counts


def _make_code(rng: random.Random, reserved: set[str], used: set[str]) -> str:
    while True:
        parts = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(2)]
        code = "-".join(parts)
        if code not in used and not reserved.intersection(parts):
            used.add(code)
            return code


def reserved_words() -> set[str]:
    """Words of the query side (templates), so distractor codes never create a lexical match."""
    words = set(_ONES) | set(_TENS) | {"hundred", "thousand"}
    for template in QUERY_TEMPLATES + ADD_QUERY_TEMPLATES + DOC_TEMPLATES:
        words |= set(re.findall(r"[a-z]+", template))
    return words


def generate_task(cfg: TaskConfig = TaskConfig()) -> Task:
    """The whole task from ``cfg.seed``: same seed, same task."""
    errors = cfg.validate()
    if errors:
        raise ValueError("invalid quickstart task config: " + "; ".join(errors))
    rng = random.Random(cfg.seed)
    test_problems, grpo_problems, train_problems = [], [], []
    for (name, _), n_test, n_grpo, n_train in zip(cfg.kinds, _split_counts(cfg.num_test, cfg.kinds),
                                                  _split_counts(cfg.num_grpo, cfg.kinds),
                                                  _split_counts(cfg.num_train, cfg.kinds)):
        kind = KINDS[name]
        if kind.size() > LARGE_KIND:  # too many to list: draw distinct problems; every training problem is new
            drawn = kind.sample(name, rng, n_test + n_grpo + n_train)
            test_problems += drawn[:n_test]
            grpo_problems += drawn[n_test:n_test + n_grpo]
            train_problems += drawn[n_test + n_grpo:]
            continue
        pool = kind.pool(name)
        rng.shuffle(pool)
        if n_test + n_grpo >= len(pool):
            raise ValueError(f"{name} has {len(pool)} distinct problems; {n_test} held-out and {n_grpo} GRPO ones "
                             f"leave none to train on")
        test_problems += pool[:n_test]
        grpo_problems += pool[n_test:n_test + n_grpo]
        rest = pool[n_test + n_grpo:]  # train on pairs unseen by the other splits; cycle (new phrasings) for more
        train_problems += [rest[i % len(rest)] for i in range(n_train)]
    rng.shuffle(train_problems)
    rng.shuffle(grpo_problems)
    rng.shuffle(test_problems)  # kinds interleaved, so any prefix of the held-out split is a fair sample

    values = {p.answer for p in test_problems + grpo_problems + train_problems}
    misses = {p: rng.sample(near_misses(p), min(cfg.num_hard_negatives, len(near_misses(p))))
              for p in dict.fromkeys(train_problems + grpo_problems)}  # ordered: set order varies with the hash seed
    for p in test_problems:  # the corpus holds near misses of held-out answers too, so exactness matters
        values.update(near_misses(p)[:6])
    for negatives in misses.values():
        values.update(negatives)
    high = max(values)
    extra = [v for v in range(1, high + 1) if v not in values]
    values.update(rng.sample(extra, min(cfg.num_distractor_docs, len(extra))))

    ordered = sorted(values)
    rng.shuffle(ordered)  # document ids carry no information about the value
    reserved, used = reserved_words(), set()
    corpus = tuple(Document(f"doc{i:05d}", v, rng.choice(DOC_TEMPLATES).format(
        code=_make_code(rng, reserved, used), words=number_words(v))) for i, v in enumerate(ordered))
    doc_of = {d.value: d.doc_id for d in corpus}

    def make(prefix: str, i: int, p: Problem, negatives: Sequence[int], teacher_errs: bool = False) -> Query:
        templates = query_templates(p.op)
        template = rng.randrange(len(templates))  # the same draw as rng.choice(templates)
        text = templates[template].format(a=p.a, b=p.b)
        shortcut = (teacher_errs and cfg.shortcut_rate > 0 and template in cfg.shortcut_templates
                    and rng.random() < cfg.shortcut_rate)
        trace = (shortcut_reasoning(p, cfg.compact_traces, cfg.answer_words) if shortcut
                 else teacher_reasoning(p, cfg.stepwise_sums, cfg.compact_traces, cfg.answer_words))
        return Query(f"{prefix}{i:05d}", text, p, trace, doc_of[p.answer], tuple(doc_of[v] for v in negatives),
                     template, shortcut)

    train = tuple(make("train", i, p, misses[p], teacher_errs=True) for i, p in enumerate(train_problems))
    test = tuple(make("test", i, p, ()) for i, p in enumerate(test_problems))
    grpo = tuple(make("grpo", i, p, misses[p]) for i, p in enumerate(grpo_problems))
    return Task(cfg, corpus, train, test, grpo)


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskFiles:
    root: str
    train_jsonl: str
    beir_dir: str
    heldout_jsonl: str
    meta_json: str
    grpo_jsonl: str  # stage-3 queries: grpo.jsonl when the task reserves GRPO problems, else train.jsonl


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_task(task: Task, out_dir: str) -> TaskFiles:
    """Write the task in the formats the real pipelines read (training jsonl, BEIR layout)."""
    beir = os.path.join(out_dir, "beir")
    os.makedirs(os.path.join(beir, "qrels"), exist_ok=True)
    train_jsonl = os.path.join(out_dir, "train.jsonl")
    files = TaskFiles(out_dir, train_jsonl, beir, os.path.join(out_dir, "heldout.jsonl"),
                      os.path.join(out_dir, "task.json"),
                      os.path.join(out_dir, "grpo.jsonl") if task.grpo else train_jsonl)
    if task.grpo:  # queries and their documents only: stage 3 samples its own reasoning
        _write_jsonl(files.grpo_jsonl, [
            {"query": q.text, "positives": [task.doc(q.positive_id).text],
             "negatives": [task.doc(d).text for d in q.negative_ids]} for q in task.grpo])
    _write_jsonl(files.train_jsonl, [
        {"query": q.text, "positives": [task.doc(q.positive_id).text],
         "negatives": [task.doc(d).text for d in q.negative_ids], "reasoning": q.reasoning} for q in task.train])
    _write_jsonl(os.path.join(beir, "corpus.jsonl"), [{"_id": d.doc_id, "title": "", "text": d.text}
                                                      for d in task.corpus])
    _write_jsonl(os.path.join(beir, "queries.jsonl"), [{"_id": q.query_id, "text": q.text} for q in task.test])
    with open(os.path.join(beir, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in task.test:
            f.write(f"{q.query_id}\t{q.positive_id}\t1\n")
    _write_jsonl(files.heldout_jsonl, [
        {"query_id": q.query_id, "query": q.text, "kind": q.problem.kind, "template": q.template,
         "answer": q.problem.answer, "answer_words": number_words(q.problem.answer), "reasoning": q.reasoning}
        for q in task.test])
    kinds = sorted({q.problem.kind for q in task.train + task.test + task.grpo})
    meta = {"config": dataclasses.asdict(task.cfg), "num_docs": len(task.corpus), "num_train": len(task.train),
            "num_test": len(task.test), "num_grpo": len(task.grpo),
            "test_by_kind": {k: sum(q.problem.kind == k for q in task.test) for k in kinds},
            "train_by_kind": {k: sum(q.problem.kind == k for q in task.train) for k in kinds},
            "train_shortcut_traces": sum(q.shortcut for q in task.train)}
    with open(files.meta_json, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return files


def main(argv: Optional[Sequence[str]] = None, _print: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m t1_jax.quickstart.task", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--fast", action="store_true", help="the small variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(PRESETS["fast" if args.fast else "full"], seed=args.seed)
    files = write_task(generate_task(cfg), args.out)
    _print(f"wrote {files.train_jsonl}, {files.beir_dir}/ and {files.heldout_jsonl}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
