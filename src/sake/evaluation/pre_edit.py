"""The unedited model's answers, kept on disk so that every run and method shares them.

`PreEditCache` holds the outputs of the unedited model per probe (and the first-token logits of
its locality probes, which specificity compares the post-edit distribution with), keyed by
model fingerprint; `LogitsStore` keeps those logits in safetensors files that concurrent jobs
can share without tearing each other's writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sake.data.schema import Probe
from sake.evaluation.metrics import LOCALITY_KINDS
from sake.evaluation.probing import Answers, answer_probes
from sake.models.base import LALM

log = logging.getLogger(__name__)

PRE_EDIT_DIR = "pre_edit"
PRE_EDIT_FILE = "outputs.jsonl"
PRE_EDIT_LOGITS_DIR = "logits"
LOGITS_SUFFIX = ".safetensors"
PRE_EDIT_CHUNK_BATCHES = 8


class PreEditCache:
    """Outputs of the unedited model per probe, kept on disk per model fingerprint.

    A probe's key hashes its question, options, audio file (path, size and modification
    time) and the generation bound; the outputs of one model live in
    `<root>/pre_edit/<fingerprint>/outputs.jsonl`, one line per probe, appended as they are
    generated. With `root=None` the cache lives in memory only.

    On disk it also keeps the first-token logits of every locality probe it generates, which
    specificity compares the post-edit distribution with, so that a run reading cached outputs
    needs no prompt-only pass to recompute them (`keep_logits`): one safetensors file per
    write under `<fingerprint>/logits/`, each row in the narrowest float type that holds it
    exactly (bf16 for a bf16 model), i.e. vocabulary size x 2 or 4 bytes per locality probe.
    """

    def __init__(
        self, root: Path | None, fingerprint: str, max_new_tokens: int, *, keep_logits: bool = True
    ) -> None:
        self.fingerprint = fingerprint
        self.max_new_tokens = max_new_tokens
        self.path = (
            None if root is None else Path(root) / PRE_EDIT_DIR / fingerprint / PRE_EDIT_FILE
        )
        self._outputs: dict[str, str] = self._load()
        self._logits = (
            LogitsStore(self.path.parent / PRE_EDIT_LOGITS_DIR)
            if keep_logits and self.path is not None
            else None
        )
        self.hits = 0
        self.generated = 0

    def key(self, probe: Probe) -> str:
        audio = None
        if probe.audio_path is not None:
            stat = Path(probe.audio_path).stat()
            audio = [str(Path(probe.audio_path).resolve()), stat.st_size, stat.st_mtime_ns]
        identity = [probe.question, list(probe.options), audio, self.max_new_tokens]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def outputs(self, lalm: LALM, probes: Sequence[Probe], batch_size: int) -> list[str]:
        """Pre-edit outputs of `probes` in order, generating (and storing) the missing ones."""
        return self.answers(lalm, probes, batch_size).texts

    def answers(
        self,
        lalm: LALM,
        probes: Sequence[Probe],
        batch_size: int,
        *,
        logits_for: Collection[int] = (),
    ) -> Answers:
        """`outputs`, with the first-token logits of the probes in `logits_for` that were
        generated now or kept on disk (cached outputs whose logits were not kept have none)."""
        keys = [self.key(probe) for probe in probes]
        missing = {key: probe for key, probe in zip(keys, probes, strict=True)}
        missing = {key: probe for key, probe in missing.items() if key not in self._outputs}
        self.hits += sum(key in self._outputs for key in keys)
        wanted = {keys[i] for i in logits_for}
        found = self._generate(lalm, missing, batch_size, wanted) if missing else {}
        if self._logits is not None:
            found.update(self._logits.read(wanted - found.keys()))
        first_logits = {i: found[keys[i]] for i in logits_for if keys[i] in found}
        return Answers([self._outputs[key] for key in keys], first_logits)

    def keep_logits(self, probes: Sequence[Probe], rows: Tensor) -> None:
        """Keep the unedited model's first-token logits of `probes` (one row each) on disk."""
        if self._logits is not None and len(probes):
            self._logits.write(
                {self.key(probe): row for probe, row in zip(probes, rows, strict=True)}
            )

    def _generate(
        self,
        lalm: LALM,
        missing: Mapping[str, Probe],
        batch_size: int,
        logits_wanted: Collection[str],
    ) -> dict[str, Tensor]:
        """Generate and store the missing outputs (and the logits of their locality probes);
        the first-token logits of the wanted keys."""
        pending = sorted(missing.items(), key=lambda item: len(item[1].question))
        chunk = batch_size * PRE_EDIT_CHUNK_BATCHES
        log.info("pre-edit outputs: generating %d, %d cached", len(pending), len(self._outputs))
        first_logits: dict[str, Tensor] = {}
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            kept = [
                i
                for i, (key, probe) in enumerate(part)
                if key in logits_wanted or (self._logits is not None and is_locality(probe))
            ]
            answers = answer_probes(
                lalm,
                [probe for _, probe in part],
                batch_size=batch_size,
                max_new_tokens=self.max_new_tokens,
                logits_for=kept,
            )
            fresh = {key: text for (key, _), text in zip(part, answers.texts, strict=True)}
            scored = {part[i][0]: row for i, row in answers.first_logits.items()}
            first_logits.update({key: row for key, row in scored.items() if key in logits_wanted})
            self._outputs.update(fresh)
            self.generated += len(fresh)
            self._store(fresh)
            if self._logits is not None:
                self._logits.write(
                    {part[i][0]: scored[part[i][0]] for i in kept if is_locality(part[i][1])}
                )
        return first_logits

    def _load(self) -> dict[str, str]:
        if self.path is None or not self.path.is_file():
            return {}
        outputs: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a killed writer; its probe is generated again
                outputs[entry["key"]] = entry["output"]
        return outputs

    def _store(self, fresh: Mapping[str, str]) -> None:
        """Append in one write, so that jobs sharing the cache never interleave lines."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(
            json.dumps({"key": key, "output": output}, ensure_ascii=False) + "\n"
            for key, output in fresh.items()
        )
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, text.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class LogitsStore:
    """(vocab,) logits per probe key on disk: one safetensors file per write, written under a
    temporary name and renamed, never rewritten, so jobs sharing the directory cannot tear
    each other's files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._where: dict[str, Path] = {}
        self._indexed: set[Path] = set()

    def read(self, keys: Collection[str]) -> dict[str, Tensor]:
        """The float32 rows kept for `keys`; keys never kept are left out."""
        if not keys:
            return {}
        self._index()
        by_file: dict[Path, list[str]] = defaultdict(list)
        for key in keys:
            if key in self._where:
                by_file[self._where[key]].append(key)
        rows: dict[str, Tensor] = {}
        for path, wanted in by_file.items():
            try:
                with safe_open(str(path), framework="pt") as handle:
                    rows.update({key: handle.get_tensor(key).float() for key in wanted})
            except FileNotFoundError:  # removed by hand since indexed: computed again instead
                self._indexed.discard(path)
                for key in wanted:
                    del self._where[key]
        return rows

    def write(self, rows: Mapping[str, Tensor]) -> None:
        if not rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        partial = self.directory / f"{name}.partial"
        path = self.directory / f"{name}{LOGITS_SUFFIX}"
        tensors = {key: narrowest_exact(row.detach().cpu()) for key, row in rows.items()}
        try:
            save_file(tensors, str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        self._where.update(dict.fromkeys(rows, path))
        self._indexed.add(path)

    def _index(self) -> None:
        """Learn the keys of the files written since the last look, by any job."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{LOGITS_SUFFIX}")):
            if path not in self._indexed:
                with safe_open(str(path), framework="pt") as handle:
                    self._where.update(dict.fromkeys(handle.keys(), path))
                self._indexed.add(path)


def narrowest_exact(row: Tensor) -> Tensor:
    """`row` (contiguous) as bf16 or fp16 when that type holds every value exactly."""
    row = row.contiguous()
    for dtype in (torch.bfloat16, torch.float16):
        narrow = row.to(dtype)
        if torch.equal(narrow.to(row.dtype), row):
            return narrow
    return row


def is_locality(probe: Probe) -> bool:
    return probe.kind.value in LOCALITY_KINDS
