"""SE-CNN-BiGRU (seed 002): sizes from the spec, padding, the AAM loss by hand, the schedule, the shipped config."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from cli_run import QUIET, REPO, cli
from speech_clips import trimmed_clips
from speakerzoo.zoo import SECNNBiGRU
from speakerzoo.zoo.se_cnn_bigru import SEBlock

CONFIG = str(REPO / "configs" / "se_cnn_bigru.yaml")
SMALL = dict(channels=[8, 16, 32], hidden=32, projection_dim=32, embedding_dim=16)


def test_full_size_model_has_the_seed_layer_sizes():
    model = SECNNBiGRU(num_speakers=5)
    enc = model.encoder
    assert [b.conv.in_channels for b in enc.blocks] == [1, 32, 64]
    assert [b.conv.out_channels for b in enc.blocks] == [32, 64, 128]
    assert all(b.pool.kernel_size == (1, 2) for b in enc.blocks)
    assert enc.gru.input_size == 128 * 64 // 8 == 1024
    assert (enc.gru.hidden_size, enc.gru.num_layers, enc.gru.bidirectional, enc.gru.dropout) == (256, 2, True, 0.2)
    assert (enc.fc1.in_features, enc.fc1.out_features, enc.fc2.out_features) == (1024, 256, 256)
    assert enc.cnn_dropout.p == enc.stats_dropout.p == 0.3
    assert (model.head.margin, model.head.scale) == (0.25, 30.0)
    assert model.frontend.config.kind == "logmel" and model.frontend.dim == 64
    assert (model.frontend.config.f_min, model.frontend.config.f_max, model.frontend.config.floor_db) == (50.0, 8000.0, -80.0)


def test_padding_does_not_change_an_embedding(speech_commands_root):
    torch.manual_seed(0)
    model = SECNNBiGRU(num_speakers=3, **SMALL)
    # Non-trivial BatchNorm statistics, so that a shift of the padding would show.
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.eval()
    waves = trimmed_clips(speech_commands_root)
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for k, w in enumerate(waves):
        batch[k, : len(w)] = w
    with torch.no_grad():
        together = model.embed(batch, lengths)
        for k, w in enumerate(waves):
            alone = model.embed(w[None])
            assert torch.allclose(together[k], alone[0], atol=1e-5), (k, (together[k] - alone[0]).abs().max())
        # Garbage instead of zeros in the padding changes nothing either.
        noisy = batch.clone()
        for k, n in enumerate(lengths):
            noisy[k, n:] = torch.randn(noisy.shape[1] - n)
        assert torch.allclose(model.embed(noisy, lengths), together, atol=1e-5)


def test_squeeze_excitation_averages_valid_frames_only():
    se = SEBlock(8)
    x = torch.randn(1, 8, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    out = se(x, mask)
    gate = torch.sigmoid(se.fc2(F.relu(se.fc1(x[:, :, :3].mean(dim=(2, 3))))))
    assert torch.allclose(out, x * gate[:, :, None, None], atol=1e-6)


def test_aam_loss_equals_a_hand_computed_value():
    torch.manual_seed(0)
    model = SECNNBiGRU(num_speakers=4, **SMALL)
    emb = F.normalize(torch.randn(3, 16), dim=-1)
    labels = torch.tensor([0, 2, 3])
    loss, logits = model.head(emb, labels)
    weight = F.normalize(model.head.classifier.weight.detach().double(), dim=-1)
    cos = emb.double() @ weight.T
    theta = torch.arccos(cos.clamp(-1, 1))
    s, m = 30.0, 0.25
    assert bool((theta[torch.arange(3), labels] < math.pi - m).all())  # the exact branch of cos(theta + m)
    rows = []
    for i, y in enumerate(labels.tolist()):
        target = s * math.cos(float(theta[i, y]) + m)
        others = [s * float(cos[i, j]) for j in range(4) if j != y]
        rows.append(-target + math.log(math.exp(target) + sum(math.exp(o) for o in others)))
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-5)
    assert torch.allclose(logits.double(), s * cos, atol=1e-4)


def test_aam_weights_are_xavier_initialised():
    model = SECNNBiGRU(num_speakers=500, **SMALL)
    w = model.head.classifier.weight
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert float(w.detach().abs().max()) <= bound
    assert float(w.detach().abs().max()) > 0.9 * bound  # uniform over the whole range, not a narrower init


class _Crops(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"waveforms": torch.randn(4000), "lengths": torch.tensor(4000), "speakers": torch.tensor(i % 3)}


class _RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_annealing_over_t_max_epochs():
    torch.manual_seed(0)
    model = SECNNBiGRU(num_speakers=3, t_max_epochs=4, lr=1e-3, **SMALL)
    record = _RecordLR()
    trainer = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[record])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(_Crops(), batch_size=2))
    t_max = 4 * 3  # 4 epochs of 3 batches
    assert len(record.lrs) == 6 * 3
    for step in (0, 3, 6, 9, t_max, 15):
        assert record.lrs[step] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * step / t_max)), abs=1e-9)
    assert record.lrs[t_max] == pytest.approx(0.0, abs=1e-12)


def test_shipped_config_trains_through_the_cli(speech_commands_corpus, tmp_path):
    cli("fit", "-c", CONFIG, f"--data.init_args.corpus={speech_commands_corpus}",
        "--model.init_args.channels=[8,16,32]", "--model.init_args.hidden=32",
        "--model.init_args.projection_dim=32", "--model.init_args.embedding_dim=16",
        "--data.init_args.speakers_per_batch=8", "--data.init_args.num_workers=0",
        "--data.init_args.eval_batch_size=64", "--trainer.accelerator=cpu",
        "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}", *QUIET)


def test_mc_dropout_samples_the_two_seed_dropouts_only(speech_commands_root):
    from speakerzoo.inference.mc_dropout import dropout_layers, mc_dropout, mc_embed

    torch.manual_seed(0)
    model = SECNNBiGRU(num_speakers=3, **SMALL).eval()
    assert [m.p for m in dropout_layers(model)] == [0.3, 0.3]  # after the CNN, on the statistics
    wave = trimmed_clips(speech_commands_root, 1)[0][None]
    with mc_dropout(model):
        assert model.encoder.cnn_dropout.training and model.encoder.stats_dropout.training
        assert not model.encoder.gru.training and not model.encoder.bn.training  # GRU dropout, BN: eval
    assert not model.training and not model.encoder.cnn_dropout.training
    mean, var = mc_embed(model, wave, passes=8)
    assert bool((var > 0).any()) and torch.isfinite(mean).all()
    det_mean, det_var = mc_embed(model, wave, deterministic=True)
    assert torch.equal(det_mean, model.embed(wave)) and not bool(det_var.any())


def test_padded_bigru_equals_torch_bigru_on_packed_sequences():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from speakerzoo.zoo.se_cnn_bigru import PaddedBiGRU

    torch.manual_seed(0)
    reference = torch.nn.GRU(12, 8, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2).eval()
    ours = PaddedBiGRU(12, 8, num_layers=2, dropout=0.2).eval()
    ours.load_state_dict(reference.state_dict())  # nn.GRU's layout is accepted
    x = torch.randn(3, 9, 12)
    lengths = torch.tensor([9, 5, 2])
    x[1, 5:] = 7.0  # padding that must not matter
    x[2, 2:] = -3.0
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=9)
    got = ours(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.allclose(got[b, :n], expected[b, :n], atol=1e-6)
