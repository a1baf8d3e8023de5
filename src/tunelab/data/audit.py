"""The data audit, streaming: schema, length/loss-mask preflight, exact and near duplicates, train/eval
contamination, PII, licence and provenance, diversity. Bad records go to `quarantine.jsonl`; the audit goes
on with the rest. Training files are read in chunks (on both cores when large), so memory stays bounded:
what is kept per record is an id, a line number, a 16-byte key and a 512-byte MinHash signature.
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunelab.data.contamination import KINDS, ContaminationResult, EvalIndex
from tunelab.data.diversity import diversity_report, warm_language_identifier
from tunelab.data.formats import Record, Rejected
from tunelab.data.licence import DataPolicy, LicenceCheck, check_licence
from tunelab.data.minhash import lsh_pairs
from tunelab.data.readers import FileNotes, iter_units, stream_records
from tunelab.data.scan import ChunkResult, ScanContext, conversation_key, non_input, scan_chunk
from tunelab.data.tasks import read_datacard
from tunelab.fsutil import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult

    from transformers import PreTrainedTokenizerBase

CHUNK = 2000
PARALLEL_MIN_BYTES = 8 << 20  # below this, worker start-up costs more than it saves


@dataclass
class AuditResult:
    report: dict[str, Any]
    train: list[Record]  # valid, deduplicated, decontaminated (empty unless records were kept)
    eval: dict[str, list[Record]]  # eval file -> valid, deduplicated records
    rejected: list[Rejected] = field(default_factory=list)  # kept with the records

    @property
    def passed(self) -> bool:
        return bool(self.report["verdict"] == "pass")


class _Quarantine:
    """Rejected records, streamed to disk as they are found (and kept in memory for small audits)."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.path, self.keep = path, keep
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._f = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.rows: list[Rejected] = []
        self.reasons: Counter[str] = Counter()
        self.count = 0

    def add(self, r: Rejected) -> None:
        self._f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        self.reasons[_reason_kind(r.reason)] += 1
        self.count += 1
        if self.keep:
            self.rows.append(r)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)


def _length_ok(r: Record, tok: PreTrainedTokenizerBase, max_length: int, stats: list[tuple[int, int]]) -> str | None:
    from tunelab.models.chat import encode_chat

    if r.is_text:
        n = len(tok(r.input, add_special_tokens=False)["input_ids"])
        trained = n
    else:
        enc = encode_chat(tok, r.messages)
        n, trained = len(enc.input_ids), enc.n_trained
    if n > max_length:
        return f"{n} tokens > max length {max_length}"
    if trained == 0:
        return "no token would be trained"
    stats.append((n, trained))
    return None


def _chunks(path: Path, notes: FileNotes) -> Iterator[list[tuple[int, Any]]]:
    buf: list[tuple[int, Any]] = []
    for unit in iter_units(path, notes):
        buf.append(unit)
        if len(buf) >= CHUNK:
            yield buf
            buf = []
    if buf:
        yield buf


_CTX: ScanContext | None = None


def _scan_in_worker(units: list[tuple[int, Any]]) -> ChunkResult:
    assert _CTX is not None
    return scan_chunk(_CTX, units)


def _scan_file(path: Path, ctx: ScanContext, notes: FileNotes, workers: int) -> Iterator[ChunkResult]:
    global _CTX
    if workers <= 1 or path.stat().st_size < PARALLEL_MIN_BYTES:
        for units in _chunks(path, notes):
            yield scan_chunk(ctx, units)
        return
    import multiprocessing as mp

    _CTX = ctx  # inherited by the forked workers: the eval index is built once
    with mp.get_context("fork").Pool(workers) as pool:
        warm_language_identifier()  # after the fork: this process mostly waits on the workers meanwhile
        # at most a few chunks in flight, results in order: when the workers outpace this process's
        # aggregation, they wait instead of piling results up in memory (Pool.imap does not bound them)
        pending: deque[AsyncResult[ChunkResult]] = deque()
        for units in _chunks(path, notes):
            pending.append(pool.apply_async(_scan_in_worker, (units,)))
            if len(pending) >= 2 * workers + 1:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    _CTX = None


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
    fmt: str = "auto",
    keep_records: bool = True,
    workers: int | None = None,
    datacard: dict[str, Any] | None = None,
) -> AuditResult:
    """Audit the files and write `audit.json` and `quarantine.jsonl` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_len = tokenizer is not None and max_length is not None
    keep = keep_records or check_len
    quarantine = _Quarantine(out_dir / "quarantine.jsonl", keep)
    try:
        return _audit(
            quarantine, train_paths, eval_paths, out_dir, policy, tokenizer, max_length, check_len, keep,
            decontaminate, near_threshold, remove_near, fmt, keep_records, workers, datacard,
        )  # fmt: skip
    except BaseException:
        quarantine.abort()
        raise


def _audit(
    quarantine: _Quarantine,
    train_paths: list[Path],
    eval_paths: list[Path],
    out_dir: Path,
    policy: DataPolicy,
    tokenizer: PreTrainedTokenizerBase | None,
    max_length: int | None,
    check_len: bool,
    keep: bool,
    decontaminate: bool,
    near_threshold: float,
    remove_near: bool,
    fmt: str,
    keep_records: bool,
    workers: int | None,
    datacard: dict[str, Any] | None,
) -> AuditResult:
    warnings: list[str] = []
    files: list[dict[str, Any]] = []
    licences: list[LicenceCheck] = []
    length_stats: list[tuple[int, int]] = []

    def file_entry(p: Path, role: str, records: int, valid: int) -> None:
        sidecar = read_datacard(p)  # a sidecar describes its own file; flags describe files that have none
        card = sidecar if sidecar is not None else datacard
        lic = check_licence(card, policy)
        licences.append(lic)
        files.append({"path": str(p), "role": role, "sha256": sha256_file(p), "records": records, "valid": valid,
                      "licence": lic.id, "source": (card or {}).get("source"), "owner": (card or {}).get("owner"),
                      "datacard": "sidecar" if sidecar is not None else ("flags" if datacard else None)})  # fmt: skip

    # 1. Eval sets: small, read whole; they become the index training records are checked against.
    eval_by_file: dict[str, list[Record]] = {}
    eval_clusters: list[dict[str, Any]] = []
    records_total = records_valid = 0
    for p in eval_paths:
        notes = FileNotes()
        recs: list[Record] = []
        n = 0
        seen: dict[bytes, Record] = {}
        for r in stream_records(p, fmt, notes):
            n += 1
            if isinstance(r, Rejected):
                quarantine.add(r)
                continue
            reason = _length_ok(r, tokenizer, max_length, []) if check_len else None  # type: ignore[arg-type]
            if reason:
                quarantine.add(Rejected(r.file, r.line, "messages", reason))
                continue
            records_valid += 1
            k = conversation_key(r)
            if k in seen:
                quarantine.add(Rejected(r.file, r.line, "messages", f"exact duplicate of {seen[k].id!r}"))
                eval_clusters.append({"kept": seen[k].id, "removed": [r.id]})
                continue
            seen[k] = r
            recs.append(r)
        warnings += notes.warnings
        records_total += n
        file_entry(p, "eval", n, len(recs))
        eval_by_file[str(p)] = recs
    eval_recs = [(i, r) for i, recs in enumerate(eval_by_file.values()) for r in recs]
    index = None
    if eval_recs:
        items = [(f"{i}\x00{r.id}", r.input) for i, r in eval_recs]
        index = EvalIndex(items, near_threshold, answers=[non_input(r) for _, r in eval_recs])

    # 2. Training files: streamed in chunks.
    ids: list[str] = []
    train_files: list[str] = [str(p) for p in train_paths]
    line_file, line_no = array("H"), array("q")  # per record, compact: no tuple per record
    sig_chunks: list[np.ndarray] = []
    sig_owner: list[int] = []  # signature row -> record position
    first_of: dict[bytes, int] = {}
    exact_clusters: dict[int, list[str]] = {}
    dropped: set[int] = set()
    hits: list[tuple[int, str, str]] = []
    pii: Counter[str] = Counter()
    pii_first: dict[str, str] = {}
    with_pii = 0
    labels: Counter[str] = Counter()
    words: list[int] = []
    sample: list[str] = []
    kept_records: list[Record] = []
    n_workers = workers if workers is not None else (1 if check_len else min(2, os.cpu_count() or 1))
    for file_index, p in enumerate(train_paths):
        notes = FileNotes()
        ctx = ScanContext(fmt, str(p), p.stem, index, keep_records=keep)
        n_file = valid_file = 0
        seen_ids: set[str] = set()
        for chunk in _scan_file(p, ctx, notes, n_workers):
            n_file += chunk.n
            for r in chunk.rejected:
                quarantine.add(r)
            assert chunk.sigs is not None
            keep_rows = []
            for i, rid in enumerate(chunk.ids):
                line = chunk.lines[i]
                if rid in seen_ids:
                    quarantine.add(Rejected(str(p), line, "id", f"duplicate id {rid!r}"))
                    continue
                if check_len:
                    reason = _length_ok(chunk.records[i], tokenizer, max_length, length_stats)  # type: ignore[arg-type]
                    if reason:
                        quarantine.add(Rejected(str(p), line, "messages", reason))
                        continue
                seen_ids.add(rid)
                valid_file += 1
                pos = len(ids)
                ids.append(rid)
                line_file.append(file_index)
                line_no.append(line)
                if keep:
                    kept_records.append(chunk.records[i])
                k = chunk.conv_keys[i]
                if k in first_of:
                    dropped.add(pos)
                    exact_clusters.setdefault(first_of[k], []).append(rid)
                    quarantine.add(Rejected(str(p), line, "messages", f"exact duplicate of {ids[first_of[k]]!r}"))
                    continue
                first_of[k] = pos
                keep_rows.append(i)
                sig_owner.append(pos)
            sig_chunks.append(chunk.sigs[keep_rows])
            base = len(ids) - len(chunk.ids)
            hits += [(base + i, kind, eid) for i, kind, eid in chunk.contaminated]
            pii.update(chunk.pii)
            for t, rid in chunk.pii_first.items():
                pii_first.setdefault(t, rid)
            with_pii += chunk.with_pii
            labels.update(chunk.labels)
            words += chunk.words
            if len(sample) < 20_000:
                sample += chunk.inputs_sample
        warnings += notes.warnings
        records_total += n_file
        records_valid += valid_file
        file_entry(p, "train", n_file, valid_file)
    del first_of

    # 3. Near duplicates among the training records that are not exact duplicates.
    # fill one preallocated matrix, freeing each chunk as it is copied (no concatenate doubling)
    sigs = np.empty((sum(len(c) for c in sig_chunks), 128), dtype=np.uint32)
    at = 0
    while sig_chunks:
        c = sig_chunks.pop(0)
        sigs[at : at + len(c)] = c
        at += len(c)
    pairs = lsh_pairs(sigs, threshold=near_threshold)
    del sigs
    near_clusters: dict[int, list[dict[str, Any]]] = {}
    for m, root, j in pairs:
        pm, pr = sig_owner[m], sig_owner[root]
        near_clusters.setdefault(pr, []).append({"id": ids[pm], "jaccard_estimate": round(j, 3)})
        if remove_near:
            dropped.add(pm)
            f, line = train_files[line_file[pm]], line_no[pm]
            quarantine.add(Rejected(f, line, "messages", f"near duplicate of {ids[pr]!r} (J~{j:.2f})"))

    # 4. Contamination, per eval file.
    eval_files = list(eval_by_file)
    per_file = {f: ContaminationResult(items=len(v)) for f, v in eval_by_file.items()}
    leaked: set[int] = set()
    for pos, kind, key in hits:  # a leak through a record already dropped as a duplicate is still reported
        fi, eid = key.split("\x00", 1)
        per_file[eval_files[int(fi)]].add(kind, eid, ids[pos])
        leaked.add(pos)
    if decontaminate:
        for pos in sorted(leaked - dropped):
            f, line = train_files[line_file[pos]], line_no[pos]
            quarantine.add(Rejected(f, line, "messages", "overlaps an eval item (removed)"))
        dropped |= leaked
    quarantine.close()

    train = [r for pos, r in enumerate(kept_records) if pos not in dropped] if keep else []
    pf: dict[str, Any] = {}
    if check_len and train:
        from tunelab.data.preflight import preflight

        pf = preflight(tokenizer, train)  # type: ignore[arg-type]
    n_train = len(ids) - len(dropped)
    contamination = {f: c.to_json() for f, c in per_file.items()}
    diversity = diversity_report(sample, words, labels, len(pairs), len(ids))
    warnings.extend(diversity.pop("warnings"))

    reasons: list[str] = []
    for lic in licences:
        if lic.status == "not-allowed":
            reasons.append(f"licence {lic.id!r} is not in the policy's allowed licences")
        elif lic.status == "unknown":
            msg = "a data file has no recorded licence (add a <file>.datacard.yaml, or pass --licence)"
            (reasons if policy.unknown_licence == "fail" else warnings).append(msg)
    n_contaminated = sum(c["contaminated"] for c in contamination.values())
    if n_contaminated and policy.fail_on_contamination and not decontaminate:
        reasons.append(f"{n_contaminated} eval item(s) also appear in the training data")
    schema_rejected = sum(v for k, v in quarantine.reasons.items() if k in ("schema", "invalid JSON", "UTF-8"))
    ratio = schema_rejected / records_total if records_total else 0.0
    if ratio > policy.max_quarantined_ratio:
        reasons.append(
            f"{schema_rejected} of {records_total} records failed validation "
            f"({ratio:.1%} > policy {policy.max_quarantined_ratio:.1%})"
        )
    too_long = quarantine.reasons.get("tokens > max length", 0)
    well_formed = records_valid + too_long  # records_valid leaves the too-long ones out
    if too_long and too_long / well_formed > policy.max_too_long_ratio:
        reasons.append(
            f"{too_long} of {well_formed} records ({too_long / well_formed:.1%}) are longer than the max length "
            f"of {max_length} tokens: training would truncate their answers (they are quarantined). Raise the "
            f"max length, shorten them, or raise the policy's max_too_long_ratio ({policy.max_too_long_ratio:.0%})"
        )
    if n_train == 0:
        reasons.append("no valid training records")
    reasons += pf.get("problems", [])
    lengths: dict[str, Any] = {}
    if length_stats:
        s = sorted(n for n, _ in length_stats)
        lengths = {"tokens_min": s[0], "tokens_p50": s[len(s) // 2], "tokens_max": s[-1], "tokens_total": sum(s),
                   "trained_tokens_total": sum(t for _, t in length_stats)}  # fmt: skip
    train_clusters = [{"kept": ids[k], "removed": v} for k, v in exact_clusters.items()]
    report: dict[str, Any] = {
        "records_total": records_total,
        "records_valid": records_valid,
        "quarantined": quarantine.count,
        "quarantine_reasons": dict(quarantine.reasons),
        "train_records_after_cleaning": n_train,
        "eval_records_after_cleaning": {k: len(v) for k, v in eval_by_file.items()},
        "duplicates": {
            "exact": sum(len(c["removed"]) for c in train_clusters + eval_clusters),
            "near": len(pairs),
            "near_removed": remove_near,
            "near_threshold": near_threshold,
            "clusters": train_clusters + eval_clusters,
            "near_clusters": [{"kept": ids[k], "near": v} for k, v in near_clusters.items()],
        },
        "contamination": contamination,
        "contamination_kinds": list(KINDS),
        "decontaminated": bool(decontaminate and leaked),
        "pii": {"counts": dict(sorted(pii.items())), "records_with_pii": with_pii, "first_record": pii_first},
        "licence": [
            lic.to_json()
            for _, lic in sorted(zip(files, licences, strict=True), key=lambda fl: fl[0]["role"] != "train")
        ],
        "files": [f for f in files if f["role"] == "train"] + [f for f in files if f["role"] == "eval"],
        "lengths": lengths,
        "preflight": pf,
        "diversity": diversity,
        "labels": dict(sorted(labels.items())) if len(labels) <= 1000 else {},
        "policy": policy.model_dump(),
        "warnings": list(dict.fromkeys(warnings)),
        "verdict": "fail" if reasons else "pass",
        "reasons": list(dict.fromkeys(reasons)),
    }
    atomic_write_json(out_dir / "audit.json", report)
    return AuditResult(report, train, eval_by_file, quarantine.rows)


def _reason_kind(reason: str) -> str:
    kinds = ("exact duplicate", "near duplicate", "tokens >", "invalid JSON", "UTF-8", "overlaps an eval", "no token")
    for key in kinds:
        if key in reason:
            return key.replace(" >", " > max length")
    return "schema"
