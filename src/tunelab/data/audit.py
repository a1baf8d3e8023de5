"""First-version data audit: schema, length/loss-mask preflight, exact duplicates, train/eval overlap,
licence and provenance. Bad records go to `quarantine.jsonl`; the audit goes on with the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.contamination import find_contamination
from tunelab.data.diversity import diversity_report
from tunelab.data.formats import Record, Rejected, read_chat_jsonl
from tunelab.data.licence import DataPolicy, LicenceCheck, check_licence
from tunelab.data.minhash import near_duplicate_clusters
from tunelab.data.pii import find_pii
from tunelab.data.tasks import read_datacard
from tunelab.data.text import text_hash
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class AuditResult:
    report: dict[str, Any]
    train: list[Record]  # valid, deduplicated, decontaminated
    eval: dict[str, list[Record]]  # eval file -> valid, deduplicated records
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["verdict"] == "pass")


def _conversation_key(r: Record) -> str:
    return text_hash("\x1f".join(f"{m['role']}\x1e{m['content']}" for m in r.messages))


def _near_dedup(
    records: list[Record], threshold: float, remove: bool, rejected: list[Rejected]
) -> tuple[list[Record], list[dict[str, Any]]]:
    texts = ["\n".join(m["content"] for m in r.messages if m["role"] != "system") for r in records]
    pairs = near_duplicate_clusters(texts, threshold=threshold)
    clusters: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for idx, kept, j in pairs:
        clusters[kept].append((idx, j))
    report = [
        {"kept": records[k].id, "near": [{"id": records[i].id, "jaccard_estimate": round(j, 3)} for i, j in v]}
        for k, v in clusters.items()
    ]
    if not remove:
        return records, report
    drop = {i for i, _, _ in pairs}
    for i, kept, j in pairs:
        r = records[i]
        rejected.append(Rejected(r.file, r.line, "messages", f"near duplicate of {records[kept].id!r} (J~{j:.2f})"))
    return [r for i, r in enumerate(records) if i not in drop], report


def pii_counts(records: list[Record]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    with_pii = 0
    for r in records:
        found = [f for m in r.messages for f in find_pii(m["content"])]
        with_pii += bool(found)
        for f in found:
            counts[f.type] += 1
            examples.setdefault(f.type, r.id)
    return {"counts": dict(sorted(counts.items())), "records_with_pii": with_pii, "first_record": examples}


def _dedup(records: list[Record], rejected: list[Rejected]) -> tuple[list[Record], list[dict[str, Any]]]:
    kept: dict[str, Record] = {}
    clusters: dict[str, list[str]] = defaultdict(list)
    out = []
    for r in records:
        k = _conversation_key(r)
        if k in kept:
            clusters[k].append(r.id)
            rejected.append(Rejected(r.file, r.line, "messages", f"exact duplicate of {kept[k].id!r}"))
            continue
        kept[k] = r
        out.append(r)
    return out, [{"kept": kept[k].id, "removed": ids} for k, ids in clusters.items()]


def _check_lengths(
    records: list[Record], tok: PreTrainedTokenizerBase, max_length: int, rejected: list[Rejected]
) -> tuple[list[Record], dict[str, Any]]:
    from tunelab.models.chat import encode_chat

    ok, lengths, trained = [], [], []
    for r in records:
        enc = encode_chat(tok, r.messages)
        if len(enc.input_ids) > max_length:
            rejected.append(
                Rejected(r.file, r.line, "messages", f"{len(enc.input_ids)} tokens > max length {max_length}")
            )
            continue
        if enc.n_trained == 0:
            rejected.append(Rejected(r.file, r.line, "messages", "no token would be trained"))
            continue
        ok.append(r)
        lengths.append(len(enc.input_ids))
        trained.append(enc.n_trained)
    stats: dict[str, Any] = {}
    if lengths:
        s = sorted(lengths)
        stats = {
            "tokens_min": s[0],
            "tokens_p50": s[len(s) // 2],
            "tokens_max": s[-1],
            "tokens_total": sum(s),
            "trained_tokens_total": sum(trained),
        }
    return ok, stats


def run_audit(
    train_paths: list[Path],
    eval_paths: list[Path],
    out_dir: Path,
    *,
    policy: DataPolicy,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int | None = None,
    decontaminate: bool = True,
    near_threshold: float = 0.8,
    remove_near: bool = False,
) -> AuditResult:
    """Audit the files and write `audit.json` and `quarantine.jsonl` into `out_dir`."""
    rejected: list[Rejected] = []
    warnings: list[str] = []
    files: list[dict[str, Any]] = []
    licences: list[LicenceCheck] = []

    def read(paths: list[Path], role: str) -> dict[str, list[Record]]:
        by_file: dict[str, list[Record]] = {}
        for p in paths:
            res = read_chat_jsonl(p)
            rejected.extend(res.rejected)
            warnings.extend(res.warnings)
            card = read_datacard(p)
            lic = check_licence(card, policy)
            licences.append(lic)
            files.append(
                {
                    "path": str(p),
                    "role": role,
                    "sha256": sha256_file(p),
                    "records": len(res.records) + len(res.rejected),
                    "valid": len(res.records),
                    "licence": lic.id,
                }
            )
            by_file[str(p)] = res.records
        return by_file

    train_by_file = read(train_paths, "train")
    eval_by_file = read(eval_paths, "eval")
    records_total = sum(f["records"] for f in files)
    schema_rejected = len(rejected)

    train = [r for rs in train_by_file.values() for r in rs]
    length_stats: dict[str, Any] = {}
    if tokenizer is not None and max_length is not None:
        train, length_stats = _check_lengths(train, tokenizer, max_length, rejected)
        for k in list(eval_by_file):
            eval_by_file[k], _ = _check_lengths(eval_by_file[k], tokenizer, max_length, rejected)
    records_valid = len(train) + sum(len(v) for v in eval_by_file.values())

    train, train_clusters = _dedup(train, rejected)
    eval_clusters: list[dict[str, Any]] = []
    for k in list(eval_by_file):
        eval_by_file[k], cl = _dedup(eval_by_file[k], rejected)
        eval_clusters += cl

    train, near_clusters = _near_dedup(train, near_threshold, remove_near, rejected)
    near_count = sum(len(c["near"]) for c in near_clusters)

    contamination: dict[str, Any] = {}
    leaked: set[str] = set()
    train_inputs = [(r.id, r.input) for r in train]
    for path, recs in eval_by_file.items():
        found = find_contamination([(e.id, e.input) for e in recs], train_inputs, near_threshold=near_threshold)
        contamination[path] = found.to_json()
        leaked |= found.train_ids()
    if decontaminate and leaked:
        for r in train:
            if r.id in leaked:
                rejected.append(Rejected(r.file, r.line, "messages", "overlaps an eval item (removed)"))
        train = [r for r in train if r.id not in leaked]
    all_records = train + [r for rs in eval_by_file.values() for r in rs]
    pii = pii_counts(all_records)
    diversity = diversity_report(train, near_count)
    warnings.extend(diversity.pop("warnings"))

    reasons: list[str] = []
    for lic in licences:
        if lic.status == "not-allowed":
            reasons.append(f"licence {lic.id!r} is not in the policy's allowed licences")
        elif lic.status == "unknown":
            msg = "a data file has no recorded licence (add a <file>.datacard.yaml)"
            (reasons if policy.unknown_licence == "fail" else warnings).append(msg)
    n_contaminated = sum(c["contaminated"] for c in contamination.values())
    if n_contaminated and policy.fail_on_contamination and not decontaminate:
        reasons.append(f"{n_contaminated} eval item(s) also appear in the training data")
    ratio = schema_rejected / records_total if records_total else 0.0
    if ratio > policy.max_quarantined_ratio:
        reasons.append(
            f"{schema_rejected} of {records_total} records failed validation "
            f"({ratio:.1%} > policy {policy.max_quarantined_ratio:.1%})"
        )
    if not train:
        reasons.append("no valid training records")
    label_counts = Counter(r.answer.strip() for r in train)

    report: dict[str, Any] = {
        "records_total": records_total,
        "records_valid": records_valid,
        "quarantined": len(rejected),
        "quarantine_reasons": dict(Counter(_reason_kind(q.reason) for q in rejected)),
        "train_records_after_cleaning": len(train),
        "eval_records_after_cleaning": {k: len(v) for k, v in eval_by_file.items()},
        "duplicates": {
            "exact": sum(len(c["removed"]) for c in train_clusters + eval_clusters),
            "near": near_count,
            "near_removed": remove_near,
            "near_threshold": near_threshold,
            "clusters": train_clusters + eval_clusters,
            "near_clusters": near_clusters,
        },
        "contamination": contamination,
        "decontaminated": bool(decontaminate and leaked),
        "licence": [lic.to_json() for lic in licences],
        "files": files,
        "lengths": length_stats,
        "pii": pii,
        "diversity": diversity,
        "labels": dict(sorted(label_counts.items())),
        "policy": policy.model_dump(),
        "warnings": list(dict.fromkeys(warnings)),
        "verdict": "fail" if reasons else "pass",
        "reasons": list(dict.fromkeys(reasons)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / "quarantine.jsonl", [q.to_json() for q in rejected])
    atomic_write_json(out_dir / "audit.json", report)
    return AuditResult(report, train, eval_by_file, rejected)


def _reason_kind(reason: str) -> str:
    kinds = ("exact duplicate", "near duplicate", "tokens >", "invalid JSON", "UTF-8", "overlaps an eval", "no token")
    for key in kinds:
        if key in reason:
            return key.replace(" >", " > max length")
    return "schema"
