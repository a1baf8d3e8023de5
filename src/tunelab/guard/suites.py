"""Two prompt-injection test suites installed for their data, as more *training-side* authors for the guard.

- spikee 0.9.2 (Reversec, Apache-2.0): its seed datasets pair jailbreak wrappers ("*** NEW IMPORTANT
  INSTRUCTIONS *** <INSTRUCTION>", an apology, a poem ...) with instructions (exfiltration through a markdown
  image, XSS, system-message extraction, investment advice); a finance chatbot's ordinary questions are its
  false-positive set.
- AgentDojo 0.1.35 (Debenedetti et al., MIT): an agent benchmark whose attacks ("<INFORMATION> This is an
  important message from me, Emma Johnson, to you ...", "TODO: {goal}") carry its injection tasks' goals, and
  whose environments are the tool outputs an agent reads: e-mails, calendar entries, files, hotel reviews,
  bank transactions, Slack messages, with a named slot where an injection goes.

Both are read as files (neither package is imported: their imports need dependencies that are not installed).
None of their texts is a held-out source; `injection_corpus.drop_leaks` removes any held-out text that
near-duplicates one of them.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from pathlib import Path

from tunelab.fsutil import read_jsonl
from tunelab.guard.indirect import Generated
from tunelab.serve import injection_corpus as ic

LICENCES = {
    "spikee": "Apache-2.0 (spikee 0.9.2's seed datasets)",
    "agentdojo": "MIT (AgentDojo 0.1.35's attacks, injection tasks and environments)",
}
_INSTRUCTION = "<INSTRUCTION>"
_SLOT = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def _jsonl(path: Path) -> list[dict[str, object]]:
    return read_jsonl(path) if path.is_file() else []


def _distinct(n: int, make: Callable[[int], str]) -> list[str]:
    """Up to `n` different texts from `make(0)`, `make(1)`, ... (at most 3n tries)."""
    out: dict[str, None] = {}
    for k in range(n * 3):
        if len(out) >= n:
            break
        out[make(k)] = None
    return list(out)


def _spikee_root() -> Path | None:
    base = ic.package_dir("spikee")
    root = base / "data" / "workspace" / "datasets" if base else None
    return root if root is not None and root.is_dir() else None


def spikee_attacks(n: int, seed: int, root: Path | None = None) -> list[str]:
    """`n` of spikee's wrappers with one of its instructions in the slot (each wrapper about as often)."""
    root = root or _spikee_root()
    if root is None:
        return []
    wrappers: dict[str, None] = {}
    instructions: dict[str, None] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for r in _jsonl(d / "jailbreaks.jsonl"):
            text = str(r.get("text", ""))
            if _INSTRUCTION in text and len(text.replace(_INSTRUCTION, "").strip(" .\n")) > 0:
                wrappers[text] = None
        for r in _jsonl(d / "instructions.jsonl"):
            if str(r.get("instruction", "")).strip():
                instructions[str(r["instruction"]).strip()] = None
    ws, ins = list(wrappers), list(instructions)
    rng = random.Random(seed)
    return _distinct(n, lambda k: ws[k % len(ws)].replace(_INSTRUCTION, rng.choice(ins)).strip()) if ws and ins else []


def spikee_benign(root: Path | None = None) -> list[str]:
    """The ordinary questions of spikee's false-positive sets (a finance chatbot's users)."""
    root = root or _spikee_root()
    out: dict[str, None] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("-fp")) if root else []:
        for r in _jsonl(d / "standalone_user_inputs.jsonl"):
            if str(r.get("text", "")).strip():
                out[str(r["text"]).strip()] = None
    return list(out)


def _agentdojo_root() -> Path | None:
    base = ic.package_dir("agentdojo")
    return base if base is not None and (base / "data" / "suites").is_dir() else None


def _string_constants(path: Path) -> list[str]:
    """The string literals of a module that are values (implicitly concatenated ones are one), not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [
        n.value for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]  # fmt: skip


def agentdojo_goals(root: Path | None = None) -> list[str]:
    """The injection tasks' goals (`GOAL = f"..."` in each task class, its `_NAME = "..."` constants filled)."""
    from tunelab.guard.external import _eval

    root = root or _agentdojo_root()
    out: dict[str, None] = {}
    for f in sorted(root.glob("default_suites/*/*/injection_tasks.py")) if root else []:
        for cls in (n for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)):
            names: dict[str, str] = {}
            for stmt in cls.body:
                if not (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)):
                    continue
                try:
                    value = _eval(stmt.value, names)
                except (ValueError, TypeError):
                    continue
                if isinstance(value, str):
                    names[stmt.targets[0].id] = value
            goal = names.get("GOAL", "").strip()
            if goal:
                out[" ".join(goal.split())] = None
    return list(out)


def agentdojo_attacks(n: int, seed: int, root: Path | None = None) -> list[str]:
    """`n` of AgentDojo's attack strings (those that carry a `{goal}`) around its goals, the user and model
    names its attacks use filled in."""
    root = root or _agentdojo_root()
    templates: dict[str, None] = {}
    for f in sorted((root / "attacks").glob("*.py")) if root else []:
        for s in _string_constants(f):
            if "{goal}" in s and len(s.replace("{goal}", "").strip()) > 3:
                templates[s] = None
    goals = agentdojo_goals(root)
    users = ("Emma Johnson", "the user", "your owner", "Emma")
    models = ("GPT-4", "Claude", "AI assistant", "Command R+", "AI model developed by Google", "Llama")
    rng = random.Random(seed)
    ts = list(templates)

    def make(k: int) -> str:
        text = ts[k % len(ts)].replace("{goal}", rng.choice(goals)).replace("{user}", rng.choice(users))
        return text.replace("{model}", rng.choice(models)).replace("{task}", "the task").strip()

    return _distinct(n, make) if ts and goals else []


def agentdojo_outputs(root: Path | None = None, size: int = 1500) -> list[tuple[str, dict[str, str]]]:
    """AgentDojo's environments as tool outputs: chunks of about `size` characters of each environment file
    (cut where a record starts), each with its injection slots and their benign defaults."""
    import yaml

    root = root or _agentdojo_root()
    out: list[tuple[str, dict[str, str]]] = []
    for suite in sorted((root / "data" / "suites").iterdir()) if root else []:
        vectors = suite / "injection_vectors.yaml"
        raw = yaml.safe_load(vectors.read_text(encoding="utf-8")) if vectors.is_file() else None
        defaults = {k: str(v.get("default", "")) for k, v in (raw or {}).items() if isinstance(v, dict)}
        for f in sorted(suite.rglob("*.yaml")):
            if f.name == "injection_vectors.yaml":
                continue
            text = f.read_text(encoding="utf-8")
            if "!include" in text:
                continue  # the file of includes: its parts are read on their own
            records = re.split(r"\n(?=\s{0,6}- )", text)
            chunk = ""
            for r in records:
                if chunk and len(chunk) + len(r) > size:
                    out.append((chunk, defaults))
                    chunk = ""
                chunk = f"{chunk}\n{r}" if chunk else r
            if chunk.strip():
                out.append((chunk, defaults))
    return out


def fill(
    chunk: str, defaults: dict[str, str], slot: str | None = None, attack: str = ""
) -> tuple[str, tuple[int, int] | None]:
    """`chunk` with each injection slot filled: the benign default, or `attack` in `slot`; and its span."""
    parts: list[str] = []
    span: tuple[int, int] | None = None
    at = length = 0  # where the next slot's text starts in `chunk`, and in the output
    for m in _SLOT.finditer(chunk):
        name = m.group(1)
        if name not in defaults:
            continue
        value = defaults[name]
        length += m.start() - at
        if name == slot and span is None:  # a slot used twice: the attack in its first place only
            value, span = attack, (length, length + len(attack))
        parts += [chunk[at : m.start()], value]
        length += len(value)
        at = m.end()
    parts.append(chunk[at:])
    return "".join(parts), span


def agentdojo_generated(attacks: list[str], seed: int, copies: int = 4, root: Path | None = None) -> list[Generated]:
    """Each AgentDojo tool output as benign data (its slots' defaults), and `copies` with an attack (from
    `attacks`) in one of its slots, all read as tool outputs; training side only."""
    rng = random.Random(seed)
    out = []
    for chunk, defaults in agentdojo_outputs(root):
        slots = [m.group(1) for m in _SLOT.finditer(chunk) if m.group(1) in defaults]
        text, _ = fill(chunk, defaults)
        out.append(Generated(text, False, "agentdojo", "tool", "train"))
        for _ in range(copies if slots and attacks else 0):
            text, span = fill(chunk, defaults, rng.choice(slots), rng.choice(attacks))
            out.append(Generated(text, True, "agentdojo+injection", "tool", "train", span))
    return out
