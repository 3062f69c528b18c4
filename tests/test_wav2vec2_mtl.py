"""Wav2Vec2MultiTask (seed 003) on a tiny random wav2vec2 and real FSDD / Speech Commands audio."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from speakerzoo.datamodules import Corpus
from speakerzoo.zoo.ctc import greedy_ctc
from speakerzoo.zoo.vocabulary import CharVocabulary
from speakerzoo.zoo.schedules import tri_stage
from speakerzoo.zoo.wav2vec2_mtl import Wav2Vec2MultiTask
from cli_run import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: 4 transformer layers of width 32 over a 2-layer CNN (20 ms frames would need 7 layers;
#: strides 5 x 4 give 1.25 ms frames, plenty for a test).
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            conv_dim=[16, 16], conv_stride=[5, 4], conv_kernel=[10, 4], num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, mask_time_prob=0.05, mask_time_length=2, layerdrop=0.0)


def tiny_model(**kwargs) -> Wav2Vec2MultiTask:
    args = {"num_speakers": 3, "config": TINY, "speaker_layer": 2, "freeze_steps": 0}
    args.update(kwargs)
    return Wav2Vec2MultiTask(**args)


def utterances(corpus_path, items):
    """``{"waveforms", "lengths", "transcripts", "speakers"}`` of corpus utterances, zero-padded."""
    corpus = Corpus(corpus_path)
    waves = [torch.from_numpy(corpus.audio(int(i))) for i in items]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for k, w in enumerate(waves):
        batch[k, : len(w)] = w
    transcripts = corpus.texts("transcript")
    return {"waveforms": batch, "lengths": lengths, "transcripts": [transcripts[int(i)] for i in items],
            "speakers": torch.tensor([k % 3 for k in range(len(items))])}


@pytest.fixture(scope="module")
def fsdd_batch(fsdd_corpus):
    return utterances(fsdd_corpus, [0, 1, 2, 3])


def grads(module: torch.nn.Module) -> bool:
    """Whether any parameter of ``module`` got a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


# ---------------------------------------------------------------- vocabulary and decoding


def test_greedy_decoding_collapses_repeats_and_removes_blanks():
    vocab = CharVocabulary("abc ")
    # frames: a a _ a b b _ _ c (space) (space) c, then padding frames that must be ignored
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0, 3, 4, 4, 3, 1, 1]])
    logits = torch.nn.functional.one_hot(path, len(vocab)).float() * 5
    (ids,) = greedy_ctc(logits, torch.tensor([12]))
    assert ids == [1, 1, 2, 3, 4, 3]
    assert vocab.decode(ids) == "aabc c"
    # A blank between equal characters keeps both; without it they merge.
    assert greedy_ctc(torch.nn.functional.one_hot(torch.tensor([[2, 2, 2]]), 5).float(), torch.tensor([3])) == [[2]]


def test_vocabulary_encodes_normalised_transcripts_and_names_unknown_characters():
    vocab = CharVocabulary()
    targets, lengths = vocab.encode_transcripts(["HELLO  World", "it's"])
    assert lengths.tolist() == [11, 4]
    assert vocab.decode(targets[:11]) == "hello world" and vocab.decode(targets[11:]) == "it's"
    assert 0 not in targets.tolist()  # 0 is the blank
    with pytest.raises(ValueError, match="'7'.*vocabulary"):
        vocab.encode_transcripts(["route 7"])
    assert vocab.missing({"a", "É", "7"}) == ["7", "é"]


def test_tri_stage_schedule_at_its_boundaries():
    f = tri_stage(1000, warmup=0.1, hold=0.4, init_scale=0.01, final_scale=0.05)
    assert f(0) == pytest.approx(0.01)
    assert f(50) == pytest.approx(0.01 + 0.99 * 50 / 100)  # linear warm-up
    assert f(100) == pytest.approx(1.0)  # end of warm-up: the peak
    assert f(499) == pytest.approx(1.0)  # end of the constant stage
    assert f(500) == pytest.approx(1.0)
    assert f(750) == pytest.approx(math.sqrt(0.05))  # exponential: half-way in log scale
    assert f(1000) == pytest.approx(0.05)
    assert f(5000) == pytest.approx(0.05)  # stays at the final rate
    decay = [f(s) for s in range(500, 1001, 50)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


# ---------------------------------------------------------------- network


def test_hidden_states_match_transformers_and_layerdrop_passes_the_input_on(fsdd_batch):
    model = tiny_model(config={**TINY, "layerdrop": 0.5}).eval()
    x, n = fsdd_batch["waveforms"][:2, :8000], torch.tensor([8000, 8000])
    hidden = model.hidden_states(x, n)
    reference = model.wav2vec2(model.frontend(x, n)[0], output_hidden_states=True)
    assert len(hidden.states) == model.num_layers + 1 == len(reference.hidden_states)
    for ours, theirs in zip(hidden.states, reference.hidden_states):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(hidden.last, reference.last_hidden_state)
    # The speaker pass stops after layer n.
    early = model.hidden_states(x, n, depth=2)
    assert len(early.states) == 3 and early.last is None
    torch.testing.assert_close(early.states[2], hidden.states[2])
    # LayerDrop in training: a dropped layer passes its input on, so C^k == C^(k-1) somewhere,
    # and every position still has a state.
    model.train()
    model.wav2vec2.config.mask_time_prob = 0.0
    model.ctc_dropout.p = 0.0
    for module in model.wav2vec2.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(0)
    repeats = 0
    for _ in range(6):
        states = model.hidden_states(x, n).states
        assert len(states) == model.num_layers + 1
        repeats += sum(torch.equal(a, b) for a, b in zip(states, states[1:]))
    assert 0 < repeats < 6 * model.num_layers


def test_speaker_pooling_variants_and_padding(fsdd_batch):
    x, n = fsdd_batch["waveforms"], fsdd_batch["lengths"]
    for pooling, dim in (("mean", 32), ("first", 32), ("ecapa", 24)):
        model = tiny_model(pooling=pooling, ecapa={"lin_neurons": 24, "channels": [16, 16, 16, 16, 48],
                                                   "attention_channels": 8, "se_channels": 8}).eval()
        emb = model.embed(x, n)
        assert emb.shape == (4, dim) and torch.isfinite(emb).all()
    # Mean pooling uses valid frames only: an utterance alone equals it inside a padded batch
    # when the network sees the same samples (the embed_unpadded path used in evaluation).
    model = tiny_model().eval()
    batch = {"waveforms": x, "lengths": n}
    together = model.embed_unpadded(batch)
    alone = torch.cat([model.embed(x[k: k + 1, : int(n[k])]) for k in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_a_disjoint_step_gives_both_heads_and_the_network_gradients(fsdd_corpus, speech_commands_corpus):
    torch.manual_seed(0)
    model = tiny_model().train()
    speech = utterances(fsdd_corpus, [5, 6, 7])
    speaker = utterances(speech_commands_corpus, [10, 11, 12])
    losses, (logits, targets) = model.step_losses({"speech": speech, "speaker": speaker})
    assert set(losses) == {"speech", "speaker"} and logits.shape == (3, 3)
    loss = model.training_step({"speech": speech, "speaker": speaker}, 0)["loss"]
    loss.backward()
    assert grads(model.ctc_head) and grads(model.head)
    assert grads(model.wav2vec2.encoder.layers[0]) and grads(model.wav2vec2.feature_projection)
    assert not grads(model.wav2vec2.feature_extractor)  # the CNN is always frozen
    # Layers above the speaker layer learn from the speech loss alone.
    model.zero_grad()
    model.step_losses({"speaker": speaker})[0]["speaker"].backward()
    assert grads(model.head) and not grads(model.ctc_head)
    assert grads(model.wav2vec2.encoder.layers[1]) and not grads(model.wav2vec2.encoder.layers[2])


def test_a_joint_step_gives_both_heads_gradients_from_one_pass(speech_commands_corpus):
    model = tiny_model().train()
    joint = utterances(speech_commands_corpus, [20, 21, 22, 23])
    calls = []
    hook = model.wav2vec2.feature_projection.register_forward_hook(lambda *a: calls.append(1))
    out = model.training_step({"joint": joint}, 0)
    hook.remove()
    assert len(calls) == 1  # one forward pass serves both heads
    out["loss"].backward()
    assert grads(model.ctc_head) and grads(model.head) and grads(model.wav2vec2.encoder.layers[-1])
    assert out["logits"].shape == (4, 3) and torch.equal(out["targets"], joint["speakers"])


def test_weights_of_the_two_losses(fsdd_batch):
    for weight in (0.9, 1.0, 0.0):
        model = tiny_model(speech_weight=weight).eval()  # eval: no dropout, both passes deterministic
        batch = {"speech": fsdd_batch, "speaker": fsdd_batch}
        losses, _ = model.step_losses(batch)
        loss = model.training_step(batch, 0)["loss"]
        torch.testing.assert_close(loss, weight * losses["speech"] + (1 - weight) * losses["speaker"])


def test_ctc_loss_is_float32_under_autocast(fsdd_batch):
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.hidden_states(fsdd_batch["waveforms"], fsdd_batch["lengths"])
        loss = model.ctc_loss(hidden, fsdd_batch["transcripts"])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_argument_errors():
    with pytest.raises(ValueError, match="speaker_layer must be in 1..4"):
        tiny_model(speaker_layer=5)
    with pytest.raises(ValueError, match="pooling"):
        tiny_model(pooling="max")
    with pytest.raises(ValueError, match="no Wav2Vec2Config fields"):
        tiny_model(config={**TINY, "hidden_sise": 8})
    with pytest.raises(ValueError, match="waveform"):
        tiny_model(frontend="fbank80")
    with pytest.raises(ValueError, match="speech_weight"):
        tiny_model(speech_weight=1.5)


def test_weights_from_a_local_pretrained_directory(tmp_path, fsdd_batch):
    config = Wav2Vec2Config(**{k: v for k, v in TINY.items()})
    torch.manual_seed(3)
    source = Wav2Vec2ForPreTraining(config)  # what facebook/wav2vec2-base holds
    source.save_pretrained(tmp_path / "w2v")
    model = Wav2Vec2MultiTask(num_speakers=2, pretrained=str(tmp_path / "w2v"), speaker_layer=2,
                              config={"layerdrop": 0.2})
    theirs = source.wav2vec2.state_dict()
    for key, value in model.wav2vec2.state_dict().items():
        torch.testing.assert_close(value, theirs[key], msg=key)
    assert model.num_layers == 4 and model.layerdrop == 0.2
    with pytest.raises(FileNotFoundError, match="no wav2vec2 weights"):
        Wav2Vec2MultiTask(pretrained=str(tmp_path / "missing"))
    # A checkpoint keeps weights and layout without the directory.
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["pretrained"] is None
    assert checkpoint["hyper_parameters"]["config"]["hidden_size"] == 32
    assert checkpoint["hyper_parameters"]["config"]["layerdrop"] == 0.2
    rebuilt = Wav2Vec2MultiTask(**checkpoint["hyper_parameters"])
    rebuilt.load_state_dict(checkpoint["state_dict"])
    x = fsdd_batch["waveforms"][:2]
    torch.testing.assert_close(rebuilt.eval().embed(x), model.eval().embed(x))


# ---------------------------------------------------------------- training with the DataModule


def disjoint_data(fsdd_corpus, speech_commands_corpus, **kwargs):
    from speakerzoo.datamodules import MultiTaskDataModule

    args = dict(speech_corpus=str(fsdd_corpus), speaker_corpus=str(speech_commands_corpus), mode="disjoint",
                speech_batch_seconds=3.0, speaker_crop_seconds=0.5, speakers_per_batch=3, utterances_per_speaker=1,
                eval_batch_size=16, num_workers=0)
    args.update(kwargs)
    return MultiTaskDataModule(**args)


def trainer(**kwargs):
    import lightning

    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0)
    args.update(kwargs)
    return lightning.Trainer(**args)


class Snapshots:
    """Copies of the model's parameters after every training step, by global step."""

    def __new__(cls):
        import lightning

        class _Callback(lightning.Callback):
            def __init__(self):
                self.states = {}

            def on_train_start(self, trainer, module):
                self.states[0] = copy.deepcopy(module.state_dict())

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.states[trainer.global_step] = copy.deepcopy(module.state_dict())

        return _Callback()


def changed(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_the_network_is_frozen_for_the_first_steps_then_trains(fsdd_corpus, speech_commands_corpus):
    torch.manual_seed(0)
    data = disjoint_data(fsdd_corpus, speech_commands_corpus)
    model = Wav2Vec2MultiTask(num_speakers=data.num_speakers, speaker_names=data.speaker_names, config=TINY,
                              speaker_layer=2, freeze_steps=2, lr=1e-3)
    snapshots = Snapshots()
    trainer(max_steps=4, limit_val_batches=0, callbacks=[snapshots]).fit(model, datamodule=data)
    s = snapshots.states
    assert sorted(s) == [0, 1, 2, 3, 4]
    for step in (1, 2):  # the freeze window: only the heads learn
        assert not changed(s[0], s[step], "wav2vec2.encoder.")
        assert not changed(s[0], s[step], "wav2vec2.feature_projection.")
        assert changed(s[step - 1], s[step], "ctc_head.") and changed(s[step - 1], s[step], "head.")
    for step in (3, 4):  # then the whole network (but the CNN) trains
        assert changed(s[step - 1], s[step], "wav2vec2.encoder.layers.0.")
        assert changed(s[step - 1], s[step], "wav2vec2.encoder.layers.3.")  # above the speaker layer: CTC only
    assert not changed(s[0], s[4], "wav2vec2.feature_extractor.")  # the CNN never trains


def test_validation_logs_wer_eer_and_the_selection_metric(fsdd_corpus, speech_commands_corpus):
    torch.manual_seed(0)
    data = disjoint_data(fsdd_corpus, speech_commands_corpus)
    model = Wav2Vec2MultiTask(num_speakers=data.num_speakers, config=TINY, speaker_layer=2, freeze_steps=0)
    run = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=4)
    run.fit(model, datamodule=data)
    m = run.callback_metrics
    assert {"val/wer", "val/eer", "val/selection", "train/speech_loss", "train/speaker_loss"} <= set(m)
    assert float(m["val/wer"]) >= 0.99  # an untrained model gets (almost) every word wrong
    assert 0 <= float(m["val/eer"]) <= 1
    assert float(m["val/selection"]) == pytest.approx(0.25 * float(m["val/wer"]) + 0.75 * float(m["val/eer"]))


def test_single_task_speech_selection_is_the_wer_and_the_vocabulary_is_checked(fsdd_corpus):
    from speakerzoo.datamodules import MultiTaskDataModule

    data = MultiTaskDataModule(speech_corpus=str(fsdd_corpus), mode="speech", speech_batch_seconds=3.0,
                               eval_batch_size=16, num_workers=0)
    assert data.num_speakers == 0
    model = Wav2Vec2MultiTask(num_speakers=0, config=TINY, freeze_steps=0)
    run = trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=2)
    run.fit(model, datamodule=data)
    assert float(run.callback_metrics["val/selection"]) == float(run.callback_metrics["val/wer"])
    assert "val/eer" not in run.callback_metrics
    narrow = Wav2Vec2MultiTask(num_speakers=0, config=TINY, vocabulary="abc ")
    with pytest.raises(ValueError, match="vocabulary"):
        trainer(max_steps=1).fit(narrow, datamodule=data)


# ---------------------------------------------------------------- the command line


def tiny_cli_args(fsdd_corpus, speech_commands_corpus, root) -> list[str]:
    import json

    from cli_run import QUIET

    return ["-c", str(REPO / "configs" / "wav2vec2_mtl_small.yaml"), f"--model.init_args.config={json.dumps(TINY)}",
            f"--data.init_args.speech_corpus={fsdd_corpus}", f"--data.init_args.speaker_corpus={speech_commands_corpus}",
            "--data.init_args.speech_batch_seconds=3", "--data.init_args.speakers_per_batch=3",
            "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2", f"--trainer.logger.init_args.save_dir={root}", *QUIET]


def test_the_shipped_small_config_trains_and_the_layer_analysis_reads_its_checkpoint(
        fsdd_corpus, speech_commands_corpus, tmp_path, capsys):
    import json

    from speakerzoo.cli import COMMANDS
    from cli_run import cli

    cli("fit", *tiny_cli_args(fsdd_corpus, speech_commands_corpus, tmp_path))
    best = next(tmp_path.rglob("best-*.ckpt"))
    model = Wav2Vec2MultiTask.from_pretrained(best)
    assert model.num_layers == 4 and model.speaker_layer == 2 and model.hparams["pretrained"] is None
    words = model.transcribe(torch.from_numpy(Corpus(fsdd_corpus).audio(0))[None])
    assert len(words) == 1 and set(words[0]) <= set(model.vocabulary.characters)

    from speakerzoo.commands.layers import main

    assert "layers" in COMMANDS
    out = tmp_path / "layers.json"
    code = main(["-c", str(best), "--corpus", str(speech_commands_corpus), "--part", "val", "--max-seconds", "1",
                 "--batch-size", "32", "--output", str(out), "--plot", str(tmp_path / "layers.png"), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [r["layer"] for r in report["layers"]] == [1, 2, 3, 4]  # one EER per transformer layer
    assert all(0 <= r["eer"] <= 1 and 0 <= r["ident_acc"] <= 1 for r in report["layers"])
    assert len({r["eer"] for r in report["layers"]}) > 1  # the layers differ
    assert "<- speaker head" in printed and (tmp_path / "layers.png").stat().st_size > 1000
    # Layer 2's EER is that of the model's own (mean-pooled C^2) embeddings on the same trials.
    from speakerzoo.commands.layers import layer_eers

    again = layer_eers(model, speech_commands_corpus, part="val", max_seconds=1.0, batch_size=32, progress=False)
    assert again == report["layers"]
    # Errors name the problem: another corpus rate, a missing directory.
    assert main(["--pretrained", str(tmp_path / "nothing"), "--corpus", str(speech_commands_corpus), "-q"]) == 2
    assert "no wav2vec2 weights" in capsys.readouterr().err


def test_layer_analysis_of_bare_pretrained_weights(tmp_path, speech_commands_corpus, capsys):
    from speakerzoo.commands.layers import main

    Wav2Vec2ForPreTraining(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path / "w2v")
    assert main(["--pretrained", str(tmp_path / "w2v"), "--corpus", str(speech_commands_corpus), "--part", "val",
                 "--max-seconds", "1", "--batch-size", "32", "--json", "-q"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert len(report["layers"]) == 4 and report["speaker_layer"] == 4


def test_ddp_on_two_cpu_processes(fsdd_corpus, speech_commands_corpus, tmp_path):
    from cli_run import fit_ddp_on_two_cpu_processes

    state = fit_ddp_on_two_cpu_processes(*tiny_cli_args(fsdd_corpus, speech_commands_corpus, tmp_path),
                                         "--trainer.strategy=ddp_find_unused_parameters_true",
                                         root=tmp_path, cwd=REPO)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["config"]["num_hidden_layers"] == 4
