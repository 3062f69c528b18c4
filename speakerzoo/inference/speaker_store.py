"""The enrolled-speaker store (middle floor): enrolled speakers kept in one HDF5 file, for one
checkpoint, so that speakers are enrolled once and verified or identified against later.

The file holds every enrolment utterance's embedding with its speaker, profile and source, and
the sha256 and class of the checkpoint that made them; it is refused for another checkpoint
(its embeddings would not be comparable). Written by the package's complete-or-nothing writer
(:class:`speakerzoo.h5file.AtomicH5Writer`: a temporary name renamed when complete, a lock
against a second writer, checksums read back), so an interrupted update keeps the previous store. ``speakerzoo enrol`` adds,
replaces and removes speakers and profiles; ``verify`` and ``identify`` read it with
``--store``; in Python :meth:`speakerzoo.SpeakerRecognizer.enrol_store` and
:meth:`~speakerzoo.SpeakerRecognizer.save_store`.

Layout (schema version 1): datasets ``embedding`` ``[N, D]`` float32, ``speaker``, ``profile``
and ``source`` ``[N]`` strings; attributes ``format = "speakerzoo-speakers"``,
``schema_version``, ``checkpoint_sha256``, ``model_class``, ``embedding_dim``, ``complete``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import torch

from speakerzoo.h5file import AtomicH5Writer, ChecksumMismatch, read_checked, read_texts_checked
from speakerzoo.inference.enrolment import Enrolment, EnrolError

__all__ = ["FORMAT", "SCHEMA_VERSION", "read_store", "write_store"]

FORMAT = "speakerzoo-speakers"
SCHEMA_VERSION = 1
_TEXTS = ("speaker", "source", "profile")


class _StoreWriter(AtomicH5Writer):
    """The writer of one store (the shared complete-or-nothing writer, with its lock and checksums)."""

    def finish(self, embedding, columns: dict[str, list[str]], attrs: dict) -> Path:
        self.dataset("embedding", data=embedding)
        for key in _TEXTS:
            self.text_dataset(key, columns[key])
        self._h5.attrs.update({**attrs, "format": FORMAT, "schema_version": SCHEMA_VERSION, "complete": True})
        return self._commit()


def write_store(path: str | Path, enrolment: Enrolment, checkpoint_sha256: str, model_class: str) -> Path:
    """Write ``enrolment`` as a store of the checkpoint with ``checkpoint_sha256`` (complete or not at all)."""
    path = Path(path)
    rows = [(name, vector, source, profile) for name in enrolment.names
            for vector, source, profile in zip(enrolment.embeddings[name], enrolment.utterances[name],
                                               enrolment.profile_list(name))]
    if not rows:
        raise EnrolError(f"{path}: no speakers to store; enrol some first")
    embedding = torch.stack([r[1] for r in rows]).float().numpy()
    columns = {"speaker": [r[0] for r in rows], "source": [r[2] for r in rows], "profile": [r[3] for r in rows]}
    with _StoreWriter(path) as writer:
        return writer.finish(embedding, columns, {"checkpoint_sha256": str(checkpoint_sha256),
                                                  "model_class": str(model_class),
                                                  "embedding_dim": int(embedding.shape[1])})


def read_store(path: str | Path, checkpoint_sha256: str | None = None) -> Enrolment:
    """The enrolment in a store; with ``checkpoint_sha256``, refuse a store of another checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise EnrolError(f"{path}: no such speaker store; make one with `speakerzoo enrol {path} --checkpoint CKPT "
                         "--enrol NAME=FILE ...`")
    try:
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs)
            if attrs.get("format") != FORMAT:
                raise EnrolError(f"{path}: not a speakerzoo speaker store (format {attrs.get('format')!r}); make one "
                                 "with `speakerzoo enrol`")
            if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                raise EnrolError(f"{path}: speaker store schema {attrs.get('schema_version')}, this speakerzoo reads "
                                 f"{SCHEMA_VERSION}; enrol the speakers again")
            if not bool(attrs.get("complete", False)):
                raise EnrolError(f"{path}: not completely written; enrol the speakers again")
            embedding = torch.from_numpy(read_checked(h5["embedding"]))
            columns = {key: read_texts_checked(h5[key]) for key in _TEXTS}
    except EnrolError:
        raise
    except ChecksumMismatch as err:
        raise EnrolError(f"{path} is damaged: {err} (the file changed after it was written); copy it again, or "
                         "enrol the speakers again") from None
    except (OSError, KeyError) as err:
        raise EnrolError(f"{path}: not a readable speaker store ({err}); enrol the speakers again") from None
    recorded = str(attrs.get("checkpoint_sha256", ""))
    if checkpoint_sha256 and recorded != checkpoint_sha256:
        raise EnrolError(f"{path} holds speakers enrolled with another checkpoint (sha256 {recorded[:12]}..., this one "
                         f"is {checkpoint_sha256[:12]}...): their embeddings are not comparable; enrol them again "
                         "with this checkpoint into another store")
    enrolment = Enrolment()
    for i, name in enumerate(columns["speaker"]):
        enrolment.add(name, embedding[i], columns["source"][i], columns["profile"][i])
    return enrolment
