"""speakerzoo.callbacks: TensorBoard metrics, figures, histograms and projections.

A tiny ECAPA is trained for two epochs on FSDD (closed-set ``split: utterance``, so validation
has classes) with a TensorBoardLogger and every callback, then tested once; the event files are
read back with TensorBoard's EventAccumulator. A second short run on a small toy corpus split by
speaker (open set) logs to CSV only: the callbacks must warn once and draw nothing, and no
``val/macro_*`` appears. The metric code is checked on hand-made predictions.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from speakerzoo.callbacks import (
    ClassificationMetrics,
    ClosedSetMetrics,
    EmbeddingProjector,
    VerificationPlots,
    WeightHistograms,
    confusion_figure,
    det_figure,
    histogram,
    most_confused,
    per_class_table,
    render,
    stratified_sample,
)
from speakerzoo.datamodules.corpus import single_torch_thread
from speakerzoo.datamodules import SpeakerDataModule
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.scoring import eer
from speakerzoo.zoo import ECAPA

TINY = dict(channels=[32, 32, 32, 32, 96], embedding_dim=32, attention_channels=16, se_channels=16)
EPOCHS = 2


def macro_f1_by_hand(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[float, torch.Tensor]:
    """Macro F1 over the classes that occur in targets or predictions, and the per-class F1."""
    f1 = torch.zeros(num_classes, dtype=torch.float64)
    present = []
    for c in range(num_classes):
        tp = int(((predicted == c) & (targets == c)).sum())
        fp = int(((predicted == c) & (targets != c)).sum())
        fn = int(((predicted != c) & (targets == c)).sum())
        if tp + fp + fn:
            present.append(c)
            f1[c] = 2 * tp / (2 * tp + fp + fn)
    return float(f1[present].mean()), f1




def callbacks():
    return [ClassificationMetrics(), WeightHistograms(gradients=True), VerificationPlots(), EmbeddingProjector()]


def train(dm, logger, **trainer_args) -> tuple[L.Trainer, ECAPA, list]:
    torch.manual_seed(0)
    model = ECAPA(num_speakers=dm.num_speakers, speaker_names=dm.speaker_names, lr=0.01, **TINY)
    cbs = callbacks()
    options = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=logger, callbacks=cbs,
                   use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, log_every_n_steps=1, num_sanity_val_steps=2)
    options.update(trainer_args)
    trainer = L.Trainer(**options)
    with warnings.catch_warnings(), single_torch_thread():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*|.*trial pairs.*")
        trainer.fit(model, datamodule=dm)
    return trainer, model, cbs


# --------------------------------------------------------------------------- the TensorBoard run


@pytest.fixture(scope="module")
def run(fsdd_corpus, tmp_path_factory):
    """Two epochs on FSDD (6 speakers, split by utterance) with every callback, then one test."""
    # Evaluation: the 128 longest val (test) utterances of 450, which hold 92 (87) of the trial
    # pairs, both kinds, and all 6 speakers; the other pairs are left out (with a warning).
    dm = SpeakerDataModule(str(fsdd_corpus), split="utterance", features="fbank80", crop_seconds=0.5,
                           speakers_per_batch=6, utterances_per_speaker=4, batches_per_epoch=6,
                           eval_max_seconds=1.0, eval_batch_size=64, num_workers=0)
    logger = TensorBoardLogger(str(tmp_path_factory.mktemp("tb")), name="run")
    trainer, model, cbs = train(dm, logger, limit_val_batches=2, limit_test_batches=2)
    with warnings.catch_warnings(), single_torch_thread():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*|.*trial pairs.*")
        trainer.test(model, datamodule=dm, verbose=False)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                             "tensors": 0})
    events.Reload()
    return {"dm": dm, "model": model, "trainer": trainer, "callbacks": cbs, "events": events,
            "log_dir": Path(logger.log_dir)}


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_base_class_scalars_reach_the_event_file(run):
    events = run["events"]
    tags = set(events.Tags()["scalars"])
    # Logged by the model itself per step (and the loss and accuracy per epoch too).
    assert {"train/loss_step", "train/acc_step", "train/lr", "train/loss_epoch", "train/acc_epoch"} <= tags
    assert {"val/eer", "val/mindcf", "test/eer"} <= tags
    steps = run["trainer"].global_step
    assert len(scalars(events, "train/lr")) == steps == EPOCHS * 6
    assert all(0 < lr <= 0.01 for _, lr in scalars(events, "train/lr"))
    assert all(0 <= acc <= 1 for _, acc in scalars(events, "train/acc_step"))
    assert len(scalars(events, "val/eer")) == EPOCHS  # the sanity check logs nothing


def test_classification_scalars(run):
    events, dm = run["events"], run["dm"]
    tags = set(events.Tags()["scalars"])
    for part in ("train", "val", "test"):
        for name in ("macro_precision", "macro_recall", "macro_f1"):
            values = scalars(events, f"{part}/{name}")
            assert len(values) == (1 if part == "test" else EPOCHS), (part, name)
            assert all(0.0 <= v <= 1.0 for _, v in values)
        # 6 classes <= max_per_class_scalars: one F1 scalar per speaker.
        assert {f"{part}/f1_per_class/{name}" for name in dm.speaker_names} <= tags
    assert "val/acc" in tags and "test/acc" in tags and "train/macro_acc" not in tags
    # Nothing from the sanity check (at step 0): one value per training epoch, after its batches.
    assert all(step > 0 for step, _ in scalars(events, "val/macro_f1"))


def test_train_macro_f1_matches_its_confusion_matrix(run):
    result = run["callbacks"][0].results["train"]
    cm = result.confusion
    # Rebuild the predictions from the confusion matrix and recompute by hand.
    targets = torch.repeat_interleave(torch.arange(6).repeat_interleave(6), cm.flatten())
    predicted = torch.repeat_interleave(torch.arange(6).repeat(6), cm.flatten())
    assert result.total == 6 * 24  # the last epoch: 6 batches of 6 speakers x 4
    expected, per_class = macro_f1_by_hand(predicted, targets, 6)
    logged = scalars(run["events"], "train/macro_f1")[-1][1]
    assert logged == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(result.f1.double(), per_class, atol=1e-6)


def test_val_macro_f1_equals_a_recomputation_from_the_embeddings(run):
    model, dm = run["model"], run["dm"]
    kept = model.evaluated["val"]  # the last validation epoch
    targets = dm.classes(kept["index"])
    assert bool((targets >= 0).all())  # split by utterance: every val speaker is a training class
    with torch.no_grad():
        predicted = model.classify(kept["embedding"]).argmax(-1)
    expected, _ = macro_f1_by_hand(predicted, targets, dm.num_speakers)
    logged = dict(scalars(run["events"], "val/macro_f1"))
    assert logged[max(logged)] == pytest.approx(expected, abs=1e-6)
    accuracy = float((predicted == targets).double().mean())
    assert scalars(run["events"], "val/acc")[-1][1] == pytest.approx(accuracy, abs=1e-6)
    result = run["callbacks"][0].results["val"]
    assert result.total == len(kept["index"])
    assert result.support.tolist() == torch.bincount(targets, minlength=6).tolist()


def test_per_class_tables_list_every_speaker(run):
    events, dm = run["events"], run["dm"]
    for part, count in (("train", EPOCHS), ("val", EPOCHS), ("test", 1)):
        texts = events.Tensors(f"{part}/per_class/text_summary")  # add_text appends /text_summary
        assert len(texts) == count
        table = texts[-1].tensor_proto.string_val[0].decode()
        rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
        assert len(rows) == dm.num_speakers
        for c, name in enumerate(dm.speaker_names):
            assert rows[c].startswith(f"| {c} | {name} |")
        assert "macro precision" in table


def test_images(run):
    events = run["events"]
    images = set(events.Tags()["images"])
    assert {"train/confusion_matrix", "val/confusion_matrix", "test/confusion_matrix", "val/det_curve",
            "test/det_curve"} <= images
    for tag, count in (("train/confusion_matrix", EPOCHS), ("val/confusion_matrix", EPOCHS),
                       ("val/det_curve", EPOCHS), ("test/det_curve", 1)):
        shots = events.Images(tag)
        assert len(shots) == count, tag  # none from the sanity check
        assert all(s.step > 0 for s in shots)
        assert shots[-1].width >= 300 and shots[-1].height >= 300
        assert shots[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    # The DET figure's EER is the model's val/eer of the same epoch.
    assert run["callbacks"][2].last_eer["val"] == pytest.approx(scalars(events, "val/eer")[-1][1], abs=1e-6)


def test_weight_histograms(run):
    events, model = run["events"], run["model"]
    tags = set(events.Tags()["histograms"])
    names = {name for name, _ in model.named_parameters()}
    assert names <= tags
    assert {f"grad/{name}" for name, p in model.named_parameters() if p.grad is not None} <= tags
    weight = dict(model.named_parameters())["head.classifier.weight"]
    shots = events.Histograms("head.classifier.weight")
    assert len(shots) == EPOCHS  # every epoch
    last = shots[-1].histogram_value
    assert last.num == weight.numel() and sum(last.bucket) == weight.numel()
    assert last.min == pytest.approx(float(weight.detach().min()), abs=1e-6)
    assert last.max == pytest.approx(float(weight.detach().max()), abs=1e-6)


def test_projector(run):
    log_dir, dm, model = run["log_dir"], run["dm"], run["model"]
    config = (log_dir / "projector_config.pbtxt").read_text()
    entries = re.findall(r'tensor_name: "([^"]+)"\s+metadata_path: "([^"]+)"\s+tensor_path: "([^"]+)"', config)
    names = {name.split(":")[0]: (meta, tensor) for name, meta, tensor in entries}
    # By default only the last validation of training, and the test run.
    assert sorted(names) == ["test/embeddings", "val/embeddings"]
    assert len(entries) == 2
    meta, tensor = names["val/embeddings"]
    rows = list(csv.reader((log_dir / meta).read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["speaker", "utterance"]
    kept = model.evaluated["val"]
    assert len(rows) - 1 == min(1000, len(kept["index"]))
    assert {r[0] for r in rows[1:]} == set(dm.speaker_names)
    assert [r[0] for r in rows[1:]] == dm.speakers_of(torch.tensor([int(r[1]) for r in rows[1:]]))
    vectors = np.loadtxt(log_dir / tensor, delimiter="\t")
    assert vectors.shape == (len(rows) - 1, 32)
    position = {int(i): k for k, i in enumerate(kept["index"].tolist())}
    first = position[int(rows[1][1])]
    np.testing.assert_allclose(vectors[0], kept["embedding"][first].numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- without TensorBoard, open set


class RecordList(logging.Handler):
    """The records one logger emits, whether or not that logger propagates to the root."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_csv_logger_and_open_set_split(tmp_path):
    # 12 toy speakers split by speaker: the validation speakers are no training classes.
    corpus = prepare_toy(tmp_path / "toy.h5", speakers=12, utterances=6, seed=0, features=("fbank80",),
                         progress=False)
    dm = SpeakerDataModule(str(corpus), split="speaker", features="fbank80", crop_seconds=0.5,
                           speakers_per_batch=4, utterances_per_speaker=2, batches_per_epoch=2,
                           eval_max_seconds=1.0, num_workers=0)
    logger = CSVLogger(str(tmp_path), name="csv")
    # rank_zero_info logs to this logger. Whether it also propagates to the root logger depends on
    # whether the root had handlers when lightning was first imported, so the records are read
    # here, at the logger itself, by a handler of the test's own.
    messages = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = RecordList()
    level = messages.level
    messages.addHandler(records)
    messages.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer, model, cbs = train(dm, logger)
    finally:
        messages.removeHandler(records)
        messages.setLevel(level)
    no_tb = [str(w.message) for w in caught if "no TensorBoardLogger" in str(w.message)]
    assert sorted(m.split(":")[0] for m in no_tb) == sorted(type(c).__name__ for c in cbs)  # once each
    open_set = [m for m in records.messages if "no val utterance belongs to a training class" in m]
    assert len(open_set) == 1
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"train/macro_precision", "train/macro_recall", "train/macro_f1", "val/eer"} <= columns
    assert not any(c.startswith("val/macro") or c == "val/acc" for c in columns)
    assert len([c for c in columns if c.startswith("train/f1_per_class/")]) == dm.num_speakers
    assert cbs[3].written == [] and cbs[2].last_eer == {}
    assert not list(Path(tmp_path).rglob("projector_config.pbtxt"))


def test_sanity_check_draws_nothing(tmp_path, fsdd_corpus):
    # Only the sanity check runs (no training batch): no callback writes anything.
    dm = SpeakerDataModule(str(fsdd_corpus), split="utterance", features="fbank80", crop_seconds=0.5,
                           speakers_per_batch=6, utterances_per_speaker=2, eval_max_seconds=1.0,
                           eval_batch_size=64, num_workers=0)
    logger = TensorBoardLogger(str(tmp_path), name="sanity")
    trainer, model, cbs = train(dm, logger, max_epochs=1, limit_train_batches=0, num_sanity_val_steps=2)
    assert "val" in model.evaluated  # the model did score the sanity batches
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                             "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert tags["images"] == [] and tags["histograms"] == [] and tags["tensors"] == []
    assert not any(t.startswith(("val/", "train/macro")) for t in tags["scalars"])
    assert cbs[0].results == {} and cbs[2].last_eer == {} and cbs[3].written == []


# --------------------------------------------------------------------------- the metric code by hand


def test_closed_set_metrics_by_hand():
    # 4 classes; class 3 never occurs. Predictions (argmax of the logits) vs targets:
    #   targets   0 0 0 1 1 2 2 2
    #   predicted 0 0 1 1 2 2 2 0
    predicted = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    logits = torch.nn.functional.one_hot(predicted, 4).float() * 3 + 0.1 * torch.randn(8, 4)
    metrics = ClosedSetMetrics(4)
    metrics.update(logits[:5], targets[:5])  # two batches
    metrics.update(logits[5:], targets[5:])
    r = metrics.compute()
    # class 0: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3
    # class 1: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
    # class 2: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3
    expected = [2 / 3, 1 / 2, 2 / 3, 0.0]
    for values in (r.precision, r.recall, r.f1):
        assert values.tolist() == pytest.approx(expected)
    # Macro over the classes that occur (0, 1, 2): (2/3 + 1/2 + 2/3) / 3 = 11/18.
    assert r.macro_precision == pytest.approx(11 / 18)
    assert r.macro_recall == pytest.approx(11 / 18)
    assert r.macro_f1 == pytest.approx(11 / 18)
    assert r.support.tolist() == [3, 2, 3, 0] and r.predicted.tolist() == [3, 2, 3, 0]
    assert r.confusion.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert r.total == 8 and r.accuracy == pytest.approx(5 / 8)
    # Class indices work as well as logits, and reset empties everything.
    metrics.reset()
    metrics.update(predicted, targets)
    assert metrics.compute().confusion.tolist() == r.confusion.tolist()
    metrics.reset()
    assert metrics.compute().total == 0

    table = per_class_table(r, ["ann", "b|b", "cy", "dee"])
    assert "| 1 | b\\|b | 0.5000 | 0.5000 | 0.5000 | 2 | 2 |" in table
    assert "| 3 | dee | - | - | - | 0 | 0 |" in table
    assert "macro precision 0.6111" in table


def test_confusion_figure_caps_the_classes():
    cm = torch.diag(torch.full((167,), 10))
    cm[5, 7] = cm[7, 5] = 4  # the most confused pair
    cm[100, 3] = 1
    assert most_confused(cm, 3).tolist() == [3, 5, 7]  # ties (3 and 100) go to the lower index
    assert most_confused(cm[:4, :4], 50).tolist() == [0, 1, 2, 3]
    names = [f"speaker{i}" for i in range(167)]
    figure = confusion_figure(cm, names, max_classes=50, title="val")
    texts = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert len(texts) == 50 and {"speaker5", "speaker7", "speaker3", "speaker100"} <= set(texts)
    assert "50 most confused of 167" in figure.axes[0].get_title()
    image = render(figure)
    assert image.dtype == np.uint8 and image.shape == (640, 640, 3)


def test_det_figure_eer_is_the_scoring_eer():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=g) < 0.3).long()
    scores = torch.randn(400, generator=g, dtype=torch.float64) + 1.5 * labels
    figure, value = det_figure(scores, labels, title="val, epoch 1")
    assert value == pytest.approx(eer(scores, labels), abs=1e-12)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert f"EER {100 * value:.2f} %" in legend
    assert render(figure).shape[2] == 3


def test_histogram_matches_numpy():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    values[3] = float("nan")
    h = histogram(values, bins=20)
    finite = values[torch.isfinite(values)].numpy()
    counts, edges = np.histogram(finite, bins=20, range=(finite.min(), finite.max()))
    assert h["num"] == 999 and h["bucket_counts"] == counts.tolist()
    assert h["bucket_limits"] == pytest.approx(edges[1:].tolist(), abs=1e-6)
    assert h["sum"] == pytest.approx(float(finite.astype(np.float64).sum()), rel=1e-6)
    assert histogram(torch.zeros(5))["bucket_counts"] == [5.0]
    assert histogram(torch.tensor([float("inf")])) is None


def test_stratified_sample():
    groups = [f"s{i % 5}" for i in range(100)] + ["rare"] * 2
    chosen = stratified_sample(groups, 12, seed=3)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == 12
    counts = {g: sum(groups[i] == g for i in chosen) for g in set(groups)}
    assert counts == {"rare": 2, "s0": 2, "s1": 2, "s2": 2, "s3": 2, "s4": 2}
    assert stratified_sample(groups, 12, seed=3).tolist() == chosen.tolist()
    assert stratified_sample(groups, 12, seed=4).tolist() != chosen.tolist()
    assert stratified_sample(groups, 500).tolist() == list(range(102))
