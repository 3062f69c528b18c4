"""Shared fixtures: the real corpora in ../shared/data and corpus files prepared from them once per session.

Fixtures for other test files:

* ``shared_data``, ``fsdd_root``, ``speech_commands_root``: folders of the real corpora
  (tests that use them are skipped with a reason when the folder is absent);
* ``fsdd_corpus``: Path of FSDD prepared at 16 kHz (resampled from 8 kHz), 6 speakers,
  3,000 utterances, cached features ``fbank80`` and ``mfcc26``, seed 0;
* ``speech_commands_corpus``: Path of the Speech Commands test set prepared at 16 kHz,
  239 speakers, 4,482 utterances and 408 noise clips (speaker -1, ``splits/noise``), cached
  ``fbank80``, seed 0;
* ``one_torch_thread``: torch on one intra-op thread for a whole test module (tiny models gain
  nothing from two OpenMP threads, and when the other core is busy their spin-waits made
  forward passes up to 200 times slower); use it with
  ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``;
* ``fsdd_prepared`` / ``speech_commands_prepared``: the same, with the records, the
  :class:`~speakerzoo.datamodules.prepare.PrepareSummary` and the wall time;
* ``fsdd_tiny_ecapa``: Path of a Lightning checkpoint of a tiny ECAPA (dropout 0.3) trained for
  60 AAM steps on FSDD recordings 0-3 of each digit and speaker (240 clips, 6 speakers), so that
  recordings 4-49 are unseen.

The corpus files are shared by the whole session: open them read-only, never modify them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from speakerzoo.datamodules import sources
from speakerzoo.datamodules.prepare import PrepareSummary, prepare

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class PreparedCorpus:
    path: Path
    records: list[sources.Utterance]
    summary: PrepareSummary
    seconds: float  # wall time of prepare()


def _require(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{what} not found at {folder} (the shared real corpora live in ../shared/data beside the repo)")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA, "shared data folder")


@pytest.fixture(scope="session")
def fsdd_root(shared_data: Path) -> Path:
    root = _require(shared_data / "fsdd", "Free Spoken Digit Dataset")
    _require(root / "recordings", "FSDD recordings/ folder")
    return root


@pytest.fixture(scope="session")
def speech_commands_root(shared_data: Path) -> Path:
    return _require(shared_data / "speech_commands_test", "Speech Commands test set")


def _prepare_once(records, out: Path, features) -> PreparedCorpus:
    start = time.perf_counter()
    summary = prepare(records, out, sample_rate=16000, features=features, seed=0, workers=2, progress=False)
    return PreparedCorpus(out, records, summary, time.perf_counter() - start)


@pytest.fixture(scope="session")
def fsdd_prepared(fsdd_root: Path, tmp_path_factory) -> PreparedCorpus:
    records = sources.fsdd(fsdd_root)
    return _prepare_once(records, tmp_path_factory.mktemp("fsdd") / "fsdd.h5", ("fbank80", "mfcc26"))


@pytest.fixture(scope="session")
def speech_commands_prepared(speech_commands_root: Path, tmp_path_factory) -> PreparedCorpus:
    records = sources.speech_commands(speech_commands_root)
    return _prepare_once(records, tmp_path_factory.mktemp("speech_commands") / "speech_commands.h5", ("fbank80",))


@pytest.fixture(scope="session")
def fsdd_corpus(fsdd_prepared: PreparedCorpus) -> Path:
    """FSDD prepared at 16 kHz with cached fbank80 and mfcc26 (session-wide; read only)."""
    return fsdd_prepared.path


@pytest.fixture(scope="session")
def speech_commands_corpus(speech_commands_prepared: PreparedCorpus) -> Path:
    """Speech Commands test set prepared at 16 kHz with cached fbank80 (session-wide; read only)."""
    return speech_commands_prepared.path


@pytest.fixture(scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def fsdd_tiny_ecapa(fsdd_root: Path, tmp_path_factory) -> Path:
    import warnings

    import lightning

    from speakerzoo.datamodules import SpeakerDataModule
    from speakerzoo.zoo import ECAPA

    folder = tmp_path_factory.mktemp("fsdd_tiny_ecapa")
    records = [r for r in sources.fsdd(fsdd_root) if int(r.utt_id.rsplit("_", 1)[1]) < 4]
    prepare(records, folder / "fsdd_small.h5", sample_rate=16000, seed=0, workers=1, progress=False)
    dm = SpeakerDataModule(str(folder / "fsdd_small.h5"), split="utterance", speakers_per_batch=6,
                           utterances_per_speaker=4, crop_seconds=0.5, num_workers=0)
    dm.setup("fit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ECAPA(num_speakers=dm.num_speakers, speaker_names=dm.speaker_names, dropout=0.3, lr=3e-3,
                      channels=[32, 32, 32, 32, 96], embedding_dim=32, attention_channels=16, se_channels=16)
        trainer = lightning.Trainer(use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                                    accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                                    num_sanity_val_steps=0, limit_val_batches=0, max_steps=60)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, datamodule=dm)
        trainer.save_checkpoint(folder / "tiny.ckpt")
    finally:
        torch.set_num_threads(threads)
    return folder / "tiny.ckpt"
