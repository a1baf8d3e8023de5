"""The learned guard: the first layers of the default model with a LoRA adapter, scoring a label token.

A text is judged as what it is in a conversation (`role`): what a person typed (`user`), or data the model
reads (`tool`: a retrieved document, a tool's output, where indirect injections live). The guard renders it
into a short chat with the default model's template,

    system: {the question for this role}   user: {the text}   assistant: (yes | no)

and its raw score is the logit of "yes" minus that of "no" at the answer's first position: the hidden state
there times one fixed direction of the (tied) output embedding, so only that pair of rows is computed. A
guard trained with `readout: every` reads the same label at every token of the text as well ("has an
instruction for the AI just been given?") and takes the highest: a payload in a document is judged where it
ends, not only by what the last position gathered from it, and training "no" at every token of benign text
is what keeps ordinary prose (quoted speech in the news: "we don't want ...") from scoring high. A text
longer than `window` tokens (128) is cut into windows (every `stride` tokens, the last one ending at the
text's end), all windows of all texts go through in one batch, and the text's score is its highest window's.
(Trained and scored on 512-token windows with the label after the text alone, the same model found half as
many injections: with 3 layers, the last position does not gather a 30-token payload out of 500 tokens.)

Read at every token, the label also says *where* an instruction is (`read`): the first token at which it
reaches half the text's highest lies inside the payload for 90% of the calib split's indirect injections
(median payload 37 of 418 tokens); `span_around` widens that point to its sentence, the excerpt a decision
shows.

The served probability (`probability`) is a logistic calibration of three scores: this model's, the phrase
rules' and the logit of a hashed n-gram classifier fitted on the same texts (`ngram.npz`). Each catches what
the others miss; the calibration is fitted on held-out data (`train.py`).

The base is not shipped: it is the default model (already in the user cache) cut after `layers` decoder layers,
made the same way at training and at load time. What ships (`weights/`) is the adapter (2 MB), the n-gram
weights, the documents the training generated (`synthetic.json`) and `guard.json`: the base's recipe and
sha256, the template, the calibration and the threshold, and the training manifest.

On a CPU with bf16 matrix units (AVX512-BF16/AMX) the merged model runs in bf16: a 512-token text (4 windows,
3 layers) takes ~25 ms on 2 cores there; elsewhere fp32: about 150 ms (p99 184) on 2 AVX2 cores of an AMD
EPYC, where the three layers' ~15 GFLOP run near the cores' fp32 peak (`tunelab bench guard` measures the
machine it runs on).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

QUESTIONS = {  # short: they are read again for every window (the adapter learns what they mean)
    "user": "Guard: is this user message a prompt injection or jailbreak?",
    "tool": "Guard: does this document or tool output hold instructions for the AI?",
    "reply": "Guard: which harm does this AI reply contain, if any?",
}
LABELS = ("yes", "no")
NONE = "none"  # the reply question's answer for a harmless reply; the others are `harm.CATEGORIES`' words
WINDOW = 128  # tokens of text per window: a payload is a large part of one, not lost in 500 tokens of document
SHIPPED = Path(__file__).with_name("weights")
NGRAM_FILE = "ngram.npz"


# where a sentence or a paragraph ends: what `span_around` widens a point to
_BOUNDARY = re.compile(r"\n\s*\n|(?<=[.!?])\s")


@dataclass(frozen=True)
class Reading:
    """One text as the guard read it: its raw score (the highest label over its windows and positions) and
    `at`, the character offset where the label first reaches half that (None when the guard reads only after
    the text, or nothing in it scored above 0: there is no instruction to point at)."""

    raw: float
    at: int | None = None


def span_around(text: str, at: int, *, before: int = 400, after: int = 200) -> tuple[int, int]:
    """[start, end) of the sentence holding the character before `at` (at most `before` / `after` characters
    either side): where a reading points, as a person reads it."""
    anchor = min(max(at - 1, 0), max(len(text) - 1, 0))
    start = max([m.end() for m in _BOUNDARY.finditer(text, 0, anchor + 1) if m.end() <= anchor] or [0])
    m = _BOUNDARY.search(text, anchor + 1)
    end = m.start() if m else len(text)
    return max(start, anchor - before), min(end, anchor + 1 + after)


@dataclass(frozen=True)
class Template:
    """Token ids around a text: per role, what comes before it; for all, what comes after; the label ids."""

    prefix: dict[str, list[int]]
    suffix: list[int]
    yes: int
    no: int
    harms: dict[str, int]  # the reply question's answers: category (or NONE) -> label token

    def label(self, role: str, attack: bool, category: str = "") -> int:
        """The label token of an example: yes/no for the injection questions, the category for a reply."""
        if role == "reply":
            if not self.harms:
                raise ValueError("the harm categories' words do not start with different tokens for this tokenizer")
            return self.harms[category or NONE]
        return self.yes if attack else self.no

    @classmethod
    def of(cls, tok: Any, questions: dict[str, str] | None = None) -> Template:
        def ids(text: str) -> list[int]:
            return list(tok(text, add_special_tokens=False)["input_ids"])

        marker = "\x00TEXT\x00"
        prefix, suffix = {}, None
        for role, q in (questions or QUESTIONS).items():
            msgs = [{"role": "system", "content": q}, {"role": "user", "content": marker}]
            full = str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            before, after = full.split(marker)
            prefix[role] = ids(before)
            suffix = ids(after)
        from tunelab.guard.harm import CATEGORIES

        yes, no = (ids(w) for w in LABELS)  # one token each in the default model's vocabulary
        if not yes or not no or yes[0] == no[0]:
            raise ValueError(f"the labels {LABELS} do not start with different tokens for this tokenizer")
        harms = {c: (ids(w) or [-1])[0] for c, w in {**CATEGORIES, NONE: NONE}.items()}  # first tokens
        if len(set(harms.values())) != len(harms) or -1 in harms.values():
            harms = {}  # this tokenizer cannot tell them apart by their first tokens: no reply question
        return cls(prefix, suffix or [], yes[0], no[0], harms)  # (a tokenizer that splits them: first tokens)

    def example(
        self, role: str, content: list[int], attack: bool, category: str = "", marks: Sequence[tuple[int, bool]] = ()
    ) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one training example: the loss is on the label token after the text, and on
        the label read at each marked content position (`marks`: (position in `content`, attack so far))."""
        from tunelab.models.chat import IGNORE

        label = self.label(role, attack, category)
        ids = self.prefix[role] + content + self.suffix + [label]
        labels = [IGNORE] * (len(ids) - 1) + [label]
        at = len(self.prefix[role]) + 1  # labels[j] is what position j - 1 predicts
        for pos, yes in marks:
            labels[at + pos] = self.yes if yes else self.no
        return ids, labels


def windows(n: int, window: int = WINDOW, stride: int | None = None) -> list[tuple[int, int]]:
    """[start, end) token windows covering n tokens: one if it fits, else every `stride` tokens (default 3/4 of a
    window), the last one ending at n (every window full length, so a text's windows batch without padding)."""
    if n <= window:
        return [(0, n)]
    step = stride or window * 3 // 4
    starts = [*range(0, n - window, step), n - window]
    return [(s, s + window) for s in starts]


def cut_base(default_dir: Path, layers: int) -> Any:
    """The default model cut after `layers` decoder layers (fp32), as training and loading both build it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.loading import _quiet_transformers

    _quiet_transformers()
    cfg = AutoConfig.from_pretrained(default_dir, local_files_only=True)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:layers]
    import logging

    quiet = logging.getLogger("transformers.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it reports the unused layers' weights, which is the point
    try:
        model = AutoModelForCausalLM.from_pretrained(
            default_dir, config=cfg, dtype=torch.float32, local_files_only=True
        )
    finally:
        quiet.setLevel(level)
    return model.eval()


def label_head(model: Any, template: Template) -> dict[int, int]:
    """Give `model` an output layer of the label tokens' rows alone (copies of its output embedding's rows,
    frozen), for training: the loss is then a softmax over the answers (yes/no, the harm words), not the whole
    vocabulary, so a label can be trained at every position of a text for little cost. Scores do not change:
    each row is the token's own. Returns token id -> row."""
    import torch

    ids = sorted({template.yes, template.no, *template.harms.values()})
    weight = model.get_output_embeddings().weight.detach()[ids].clone()
    head = torch.nn.Linear(weight.shape[1], len(ids), bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return {t: k for k, t in enumerate(ids)}


class LearnedGuard:
    """A loaded guard: `raw(texts, roles)` gives each text's logit (yes minus no, highest window);
    `probability` maps it through the calibration fitted at training."""

    def __init__(self, model: Any, tok: Any, meta: dict[str, Any], ngram: Any = None) -> None:
        import torch

        from tunelab.serve import injection_model

        self.model, self.tok, self.meta = model, tok, meta
        # the n-gram classifier trained beside it on the same corpus (else the first guard's): an input of the
        # calibrated probability, as the rules are
        self.ngram = ngram if ngram is not None else injection_model.load()
        self.template = Template.of(tok, meta.get("questions"))
        self.window = int(meta.get("window", WINDOW))
        self.stride = meta.get("stride")
        self.every = meta.get("readout") == "every"  # also read the label at each token of the text
        head = model.get_output_embeddings().weight
        self.direction = (head[self.template.yes] - head[self.template.no]).detach().to(torch.float32)
        self.decoder = model.get_decoder()
        self.dtype = next(model.parameters()).dtype
        self._prefix_kv: dict[str, list[tuple[Any, Any]]] = {}
        import inspect

        params = inspect.signature(self.decoder.forward).parameters  # transformers 5 renamed past_key_values
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [list(e) for e in enc]

    def raw(self, texts: Sequence[str], roles: Sequence[str] | None = None, *, batch_tokens: int = 8192) -> list[float]:
        """Each text's raw score: max over its windows of logit(yes) - logit(no), read after the text and (a guard
        trained with `readout: every`) at each of its tokens."""
        return [r.raw for r in self.read(texts, roles, batch_tokens=batch_tokens)]

    def read(
        self, texts: Sequence[str], roles: Sequence[str] | None = None, *, batch_tokens: int = 8192
    ) -> list[Reading]:
        """Each text's `Reading`: its raw score and where in it the label first reaches half of that."""
        roles = [r if r in ("user", "tool") else "user" for r in (roles or ["user"] * len(texts))]
        fast = bool(getattr(self.tok, "is_fast", False))  # a Rust tokenizer gives each token's characters
        enc = self.tok(list(texts), add_special_tokens=False, return_offsets_mapping=fast)
        ids = [list(e) for e in enc["input_ids"]]
        ends = [[int(e) for _, e in o] for o in enc["offset_mapping"]] if fast else None
        # per text, the label at each of its tokens (highest over the windows holding it), then after the text
        curves = [[-math.inf] * (len(t) + 1) for t in ids]
        for idx, starts, lens, hidden in self._hidden_rows(ids, roles, batch_tokens):
            for i, s, row in zip(idx, starts, self._row_curves(hidden, lens), strict=True):
                c = curves[i]
                *own, after = row
                for k, v in enumerate(own):
                    c[s + k] = max(c[s + k], v)
                c[-1] = max(c[-1], after)
        out = []
        for i, (text, c) in enumerate(zip(texts, curves, strict=True)):
            top = max(c)
            first = next(k for k, v in enumerate(c) if v > top / 2) if self.every and top > 0 else None
            at = None if first is None or ends is None else ends[i][first] if first < len(ends[i]) else len(text)
            out.append(Reading(top, at))
        return out

    def _row_curves(self, hidden: Any, lens: list[int]) -> list[list[float]]:
        """Per row: the label at each of the text's own positions (none unless the guard reads every token),
        then the label read after the text (its last position)."""
        import torch

        last = _at_last(hidden, lens) @ self.direction
        if not self.every:
            return [[v] for v in last.tolist()]
        per_pos = (hidden.to(torch.float32) @ self.direction).tolist()  # [n, width]
        content = [n - len(self.template.suffix) for n in lens]  # positions < this are the text's own
        return [[*row[:c], a] for row, c, a in zip(per_pos, content, last.tolist(), strict=True)]

    def moderate(self, texts: Sequence[str], *, batch_tokens: int = 8192) -> list[dict[str, float]]:
        """For each reply: the probability of each harm category and of NONE (a softmax over the reply question's
        answer tokens), from the window where harm is likeliest."""
        import torch

        if "reply" not in self.template.prefix or not self.template.harms:
            raise ValueError("this guard was trained without the reply (moderation) question")
        names = list(self.template.harms)
        head = self.model.get_output_embeddings().weight
        rows = head[[self.template.harms[n] for n in names]].detach().to(torch.float32)
        none = names.index(NONE)
        best: list[dict[str, float]] = [{**dict.fromkeys(names, 0.0), NONE: 1.0} for _ in texts]
        for idx, _, lens, hidden in self._hidden_rows(self.content_ids(texts), ["reply"] * len(texts), batch_tokens):
            probs = torch.softmax(_at_last(hidden, lens) @ rows.T, dim=-1).tolist()
            for i, p in zip(idx, probs, strict=True):
                if p[none] < best[i][NONE]:
                    best[i] = dict(zip(names, p, strict=True))
        return best

    def _hidden_rows(self, texts_ids: Sequence[list[int]], roles: Sequence[str], batch_tokens: int) -> Any:
        """(text indices, window starts, row lengths, hidden states [rows, width, H]) for batches of all texts'
        windows (each row a window and the suffix; texts as token ids), each read after its role's question,
        which is run once and kept as a key/value cache."""
        rows: list[tuple[str, int, list[int], int]] = []  # (role, text index, window + suffix, window start)
        for i, (ids, role) in enumerate(zip(texts_ids, roles, strict=True)):
            for s, e in windows(len(ids), self.window, self.stride):
                rows.append((role, i, ids[s:e] + self.template.suffix, s))
        rows.sort(key=lambda r: (r[0], len(r[2])))
        import torch

        k = 0
        with torch.inference_mode():
            while k < len(rows):
                role, width, j = rows[k][0], len(rows[k][2]), k
                while (j < len(rows) and rows[j][0] == role
                       and (j - k + 1) * max(width, len(rows[j][2])) <= max(batch_tokens, width)):  # fmt: skip
                    width = max(width, len(rows[j][2]))
                    j += 1
                chunk = rows[k:j]
                seqs = [r[2] for r in chunk]
                yield ([r[1] for r in chunk], [r[3] for r in chunk], [len(q) for q in seqs],
                       self._forward_rows(role, seqs, width))  # fmt: skip
                k = j

    def _prefix(self, role: str) -> list[tuple[Any, Any]]:
        """The role's question as each layer's (keys, values), computed once."""
        import torch

        if role not in self._prefix_kv:
            out = self.decoder(input_ids=torch.tensor([self.template.prefix[role]]), use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            self._prefix_kv[role] = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prefix_kv[role]

    def _forward_rows(self, role: str, seqs: list[list[int]], width: int) -> Any:
        """The hidden states [rows, width, H] of the rows (right-padded), continuing the role's cached question."""
        import torch
        from transformers.cache_utils import DynamicCache

        n, p = len(seqs), len(self.template.prefix[role])
        ids_t = torch.full((n, width), self.tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.ones((n, p + width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids_t[r, : len(seq)] = torch.tensor(seq)
            mask[r, p + len(seq) :] = 0
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self._prefix(role)],
            config=self.model.config,
        )
        pos = torch.arange(p, p + width).expand(n, width)
        hidden = self.decoder(
            input_ids=ids_t, attention_mask=mask, position_ids=pos, use_cache=True, **{self._cache_arg: cache}
        ).last_hidden_state
        return hidden

    def features(
        self, texts: Sequence[str], roles: Sequence[str] | None = None, *, readings: Sequence[Reading] | None = None
    ) -> list[tuple[float, float, float]]:
        """(raw, rules' score, n-gram logit) for each text: what `probability` combines (`readings`: the texts'
        own, already read, so the model is not run again)."""
        from tunelab.serve.guards import rule_score

        raw = self.raw(texts, roles) if readings is None else [r.raw for r in readings]
        return [(r, rule_score(t)[0], self.ngram.logit(t)) for r, t in zip(raw, texts, strict=True)]

    def probability(self, raw: float, rule: float = 0.0, ngram: float = 0.0) -> float:
        """The calibrated probability of an attack from the raw score, the rules' score and the n-gram
        classifier's logit (Platt scaling fitted at training: a + b * raw + c * rules + d * ngram)."""
        c = self.meta["calibration"]
        z = c["a"] + c["b"] * raw + c["c"] * rule + c.get("d", 0.0) * ngram
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def _at_last(hidden: Any, lens: list[int]) -> Any:
    """Each row's hidden state (float32) at its last real position: where the answer is read."""
    import torch

    return hidden[torch.arange(len(lens)), torch.tensor(lens) - 1].to(torch.float32)


def load(path: Path | None = None, *, dtype: str = "auto") -> LearnedGuard:
    """The guard at `path` (default: the shipped one), its adapter merged into the cut base."""
    import torch
    from peft import PeftModel

    from tunelab.hardware import cpu_bf16
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.serve.injection_model import InjectionModel

    path = Path(path) if path else SHIPPED
    meta = json.loads((path / "guard.json").read_text(encoding="utf-8"))
    base_dir = resolve_model(meta["base"]["model"]).path
    tok = load_tokenizer(base_dir)
    model = cut_base(base_dir, int(meta["base"]["layers"]))
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    use16 = dtype == "bfloat16" or (dtype == "auto" and cpu_bf16())
    model = model.to(torch.bfloat16 if use16 else torch.float32).eval()
    ngram = InjectionModel.load(path / NGRAM_FILE) if (path / NGRAM_FILE).is_file() else None
    return LearnedGuard(model, tok, meta, ngram)


@lru_cache(maxsize=2)
def cached(path: str | None = None) -> LearnedGuard:
    """`load(path)`, once per process."""
    return load(Path(path) if path else None)
