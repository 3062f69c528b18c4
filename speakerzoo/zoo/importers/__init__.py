"""Importers: pretrained weights of other toolkits as speakerzoo checkpoints.

Each importer reads another toolkit's released files without running anything from them (no
unpickled code, no instantiated YAML), builds the zoo model whose architecture and frontend
reproduce that toolkit's embeddings, and writes a checkpoint that every speakerzoo command and
:meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.from_pretrained` loads like a trained one
(and that ``init_from`` fine-tunes):

* ``speechbrain``: a folder in the layout of speechbrain's ``spkrec-ecapa-voxceleb``
  (``hyperparams.yaml``, ``embedding_model.ckpt``) -> :class:`~speakerzoo.zoo.ecapa.ECAPA`
  with the ``sb_fbank`` frontend (:mod:`.speechbrain_ecapa`);
* ``3dspeaker`` / ``wespeaker``: a CAM++ state dict (``campplus_*.pt``, ``avg_model.pt``) ->
  :class:`~speakerzoo.zoo.campplus.CAMPPlus` with Kaldi filterbanks (:mod:`.campplus_weights`).

::

    speakerzoo checkpoints import speechbrain pretrained/spkrec-ecapa-voxceleb --output ecapa-vox.ckpt
    speakerzoo checkpoints import 3dspeaker campplus_cn_en_common.pt --output campplus.ckpt
"""

from __future__ import annotations

from pathlib import Path

from speakerzoo.zoo.importers.saving import ImportResult, save_imported

__all__ = ["IMPORTERS", "ImportResult", "import_pretrained", "save_imported"]

#: Source kinds and what each reads.
IMPORTERS = {
    "speechbrain": "a speechbrain ECAPA folder (hyperparams.yaml, embedding_model.ckpt), e.g. spkrec-ecapa-voxceleb",
    "3dspeaker": "a 3D-Speaker CAM++ state dict (.pt), e.g. campplus_cn_en_common.pt",
    "wespeaker": "a wespeaker CAM++ checkpoint (.pt), e.g. avg_model.pt of a campplus recipe",
}


def import_pretrained(kind: str, source: str | Path, output: str | Path) -> ImportResult:
    """Import ``source`` (of ``kind``, a key of :data:`IMPORTERS`) into the checkpoint ``output``."""
    if kind == "speechbrain":
        from speakerzoo.zoo.importers.speechbrain_ecapa import import_speechbrain_ecapa

        model, files = import_speechbrain_ecapa(source)
    elif kind in ("3dspeaker", "wespeaker"):
        from speakerzoo.zoo.importers.campplus_weights import import_campplus

        model, files = import_campplus(source, flavour=kind)
    else:
        raise ValueError(f"unknown import source {kind!r}; choose one of {', '.join(IMPORTERS)}")
    return save_imported(model, output, origin=kind, files=files)
