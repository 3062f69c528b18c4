"""Deep Speaker (seed 001): sizes of Tables 1-2, clipped ReLU, padding, the triplet miner against brute
force, mining across two CPU ranks, the SGD schedule, and the two training stages through the configs."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cli_run import QUIET, REPO, cli
from speech_clips import trimmed_clips
from speakerzoo.zoo import DeepSpeaker, SpeakerEmbeddingModule
from speakerzoo.zoo.deep_speaker import ResBlock, clipped_relu
from speakerzoo.zoo.triplet import CosineTripletLoss, gather_global_batch, mine_batch_hard, mine_hardest, mine_semi_hard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESCNN = str(REPO / "configs" / "deep_speaker_rescnn.yaml")
GRU = str(REPO / "configs" / "deep_speaker_gru.yaml")
TRIPLET = str(REPO / "configs" / "deep_speaker_triplet.yaml")
TINY = dict(width=0.125, blocks=1, embedding_dim=32)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- architecture


def test_full_size_models_have_the_papers_parameter_counts():
    rescnn = DeepSpeaker(architecture="rescnn")
    gru = DeepSpeaker(architecture="gru")
    # Tables 1 and 2: "total 24M" and "23M"
    assert abs(_params(rescnn) - 24e6) / 24e6 < 0.02, _params(rescnn)
    assert abs(_params(gru) - 23e6) / 23e6 < 0.03, _params(gru)
    stages = rescnn.encoder.frames.stages
    # Table 1, per layer: conv128-s 209K, res512 2.4M x 6 (two 3x3 convolutions per block, 3 blocks)
    assert abs(_params(stages[1][0]) - 209e3) / 209e3 < 0.03
    assert [len(stage) - 1 for stage in stages] == [3, 3, 3, 3]
    assert abs(sum(_params(b) for b in stages[3][1:]) - 6 * 2.4e6) / (6 * 2.4e6) < 0.03
    assert [stage[0].conv.out_channels for stage in stages] == [64, 128, 256, 512]
    assert all(stage[0].conv.stride == (2, 2) and stage[0].conv.kernel_size == (5, 5) for stage in stages)
    assert rescnn.encoder.frames.output_dim == 2048 and rescnn.encoder.affine.out_features == 512
    frames = gru.encoder.frames
    assert frames.conv.conv.out_channels == 64 and [g.hidden_size for g in frames.grus] == [1024] * 3
    assert frames.grus[0].input_size == 2048 and not any(g.bidirectional for g in frames.grus)
    # Table 2: GRU layers 9.4M, 6.3M, 6.3M; affine 500K
    assert [round(_params(g) / 1e5) / 10 for g in frames.grus] == [9.4, 6.3, 6.3]
    assert gru.encoder.affine.in_features == 1024
    assert rescnn.frontend.config.n_mels == 64 and rescnn.frontend.config.normalize == "meanvar"


def test_clipped_relu_and_resblocks_stay_in_zero_to_twenty():
    x = torch.tensor([-5.0, 0.0, 3.5, 20.0, 25.0])
    assert clipped_relu(x).tolist() == [0.0, 0.0, 3.5, 20.0, 20.0]
    block = ResBlock(4).eval()
    out = block(30 * torch.randn(2, 4, 6, 8), None)
    assert out.min() == 0.0 and out.max() == 20.0  # large inputs reach the ceiling, never pass it


@pytest.mark.parametrize("architecture", ["rescnn", "gru"])
def test_padding_does_not_change_an_embedding(architecture, speech_commands_root):
    torch.manual_seed(0)
    model = DeepSpeaker(num_speakers=3, architecture=architecture, **TINY)
    for module in model.modules():  # non-trivial statistics, so that a shift of the padding would show
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.eval()
    waves = trimmed_clips(speech_commands_root, step=1900)
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.randn(len(waves), int(lengths.max()))  # garbage in the padding
    for k, w in enumerate(waves):
        batch[k, : len(w)] = w
    with torch.no_grad():
        together = model.embed(batch, lengths)
        alone = torch.cat([model.embed(w[None]) for w in waves])
    assert torch.allclose(together, alone, atol=1e-5), (together - alone).abs().max()
    assert torch.allclose(together.norm(dim=-1), torch.ones(len(waves)))


# ----------------------------------------------------------------------------- triplet loss and mining


def _brute_force(emb, labels, candidates, cand_labels, offset, margin):
    """Every triplet (a, p, n) spelled out: per AP pair, the most similar of the violating negatives."""
    negatives, hinges = [], []
    for a in range(len(emb)):
        for p in range(len(emb)):
            if a == p or labels[a] != labels[p]:
                continue
            s_ap = float(emb[a] @ emb[p])
            violating = [(float(emb[a] @ candidates[n]), n) for n in range(len(candidates))
                         if cand_labels[n] != labels[a] and float(emb[a] @ candidates[n]) > s_ap - margin]
            if violating:
                s_an, n = max(violating)
                negatives.append(n)
                hinges.append(s_an - s_ap + margin)
            else:
                negatives.append(None)
                hinges.append(0.0)
    return negatives, hinges


def _mining_case():
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    centres = torch.randn(7, 6, generator=gen)
    emb = F.normalize(centres[labels] + 0.7 * torch.randn(10, 6, generator=gen), dim=-1)
    # a larger global batch: 7 rows of other ranks around the local 10 (offset 4)
    others = F.normalize(torch.randn(7, 6, generator=gen), dim=-1)
    candidates = torch.cat([others[:4], emb, others[4:]])
    cand_labels = torch.cat([torch.tensor([4, 0, 5, 1]), labels, torch.tensor([6, 6, 2])])
    return emb, labels, candidates, cand_labels


def test_miner_picks_the_hardest_violating_negative_as_brute_force_does():
    emb, labels, candidates, cand_labels = _mining_case()
    for margin in (0.1, 0.5):
        t = mine_hardest(emb, labels, candidates, cand_labels, offset=4)
        negatives, hinges = _brute_force(emb, labels, candidates, cand_labels, 4, margin)
        assert len(t.anchor) == len(negatives) == 2 * 3 + 2 + 2 + 2 * 3
        hard = F.relu(t.s_an - t.s_ap + margin)
        assert torch.allclose(hard, torch.tensor(hinges), atol=1e-6)
        for k, n in enumerate(negatives):
            if n is not None:  # the hardest violating negative, found in the global batch
                assert int(t.negative[k]) == n
        if margin == 0.1:  # both kinds occur: pairs with a violating negative and pairs without
            assert 0 < sum(n is not None for n in negatives) < len(negatives)
        # the loss module gives the mean hinge and the fraction of hard triplets
        loss_fn = CosineTripletLoss(margin=margin, scope="local")
        local_neg, local_hinges = _brute_force(emb, labels, emb, labels, 0, margin)
        stats = loss_fn(emb, labels)
        assert torch.isclose(stats.loss, torch.tensor(local_hinges).mean(), atol=1e-6)
        assert float(stats.prob_hard) == pytest.approx(sum(n is not None for n in local_neg) / len(local_neg))


def test_semi_hard_miner_picks_faceNets_negative_as_brute_force_does():
    emb, labels, candidates, cand_labels = _mining_case()
    t = mine_semi_hard(emb, labels, candidates, cand_labels, offset=4)
    expected, fallbacks = [], 0
    for a in range(len(emb)):
        for p in range(len(emb)):
            if a == p or labels[a] != labels[p]:
                continue
            s_ap = float(emb[a] @ emb[p])
            scores = [(float(emb[a] @ candidates[n]), n) for n in range(len(candidates)) if cand_labels[n] != labels[a]]
            semi = [x for x in scores if x[0] < s_ap]
            expected.append(max(semi)[1] if semi else min(scores)[1])
            fallbacks += not semi
    assert t.negative.tolist() == expected and len(expected) == 16
    assert (t.s_an < t.s_ap).sum() == 16 - fallbacks  # every found negative is less similar than the positive
    hardest = mine_hardest(emb, labels, candidates, cand_labels, offset=4)
    assert (t.s_an <= hardest.s_an).all() and (t.s_an < hardest.s_an).any()


def test_batch_hard_soft_margin_takes_one_triplet_per_anchor_as_brute_force_does():
    emb, labels, candidates, cand_labels = _mining_case()
    t = mine_batch_hard(emb, labels, candidates, cand_labels, offset=4)
    assert t.anchor.tolist() == list(range(10))
    for a in range(10):
        positives = [(float(emb[a] @ emb[p]), p) for p in range(10) if p != a and labels[p] == labels[a]]
        negatives = [(float(emb[a] @ candidates[n]), n) for n in range(len(candidates)) if cand_labels[n] != labels[a]]
        assert int(t.positive[a]) == min(positives)[1] and int(t.negative[a]) == max(negatives)[1]
    stats = CosineTripletLoss(margin=0.1, scope="local", negatives="batch-hard-soft")(emb, labels)
    local = mine_batch_hard(emb, labels, emb, labels)
    assert torch.isclose(stats.loss, F.softplus(local.s_an - local.s_ap).mean(), atol=1e-6) and stats.triplets == 10
    assert float(stats.prob_hard) == pytest.approx(float((local.s_an - local.s_ap + 0.1 > 0).float().mean()))
    with pytest.raises(ValueError, match="negatives must be one of hardest, semi-hard, batch-hard-soft"):
        CosineTripletLoss(negatives="random")


def test_triplet_gradient_reaches_anchor_positive_and_local_negative():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.5, 0.5]]), dim=-1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    stats = CosineTripletLoss(margin=0.1, scope="local")(emb, labels)
    stats.loss.backward()
    assert stats.triplets == 4 and float(stats.prob_hard) == 1.0
    # anchor 0's hardest negative is row 2 (cos 0.99 against cos 0 for its positive)
    assert emb.grad[2].abs().sum() > 0 and emb.grad[0].abs().sum() > 0 and emb.grad[1].abs().sum() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        if rank == 0:  # speakers 0 and 1, no hard triplet among themselves
            emb = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.0, 0.2, 1.0]])
            labels = torch.tensor([0, 0, 1, 1])
        else:  # speakers 2 and 3, and one more row: ranks may hold different batch sizes
            emb = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, 0.1], [0.95, 0.05, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
            labels = torch.tensor([2, 2, 3, 3, 3])
        emb = F.normalize(emb, dim=-1).requires_grad_()
        batch = gather_global_batch(emb, labels)
        global_stats = CosineTripletLoss(margin=0.1, scope="global")(emb, labels)
        local_stats = CosineTripletLoss(margin=0.1, scope="local")(emb, labels)
        t = mine_hardest(emb, labels, batch.embeddings.detach(), batch.labels, batch.offset)
        semi = CosineTripletLoss(margin=0.1, scope="global", negatives="semi-hard")(emb, labels)
        soft = CosineTripletLoss(margin=0.1, scope="global", negatives="batch-hard-soft")(emb, labels)
        soft_negatives = mine_batch_hard(emb, labels, batch.embeddings.detach(), batch.labels, batch.offset).negative
        global_stats.loss.backward()
        torch.save({"offset": batch.offset, "labels": batch.labels, "negative": t.negative, "anchor": t.anchor,
                    "global_loss": global_stats.loss.detach(), "local_loss": local_stats.loss.detach(),
                    "global_hard": global_stats.prob_hard, "local_hard": local_stats.prob_hard,
                    "grad": emb.grad, "gathered": batch.embeddings.detach(),
                    "own_rows_keep_grad": batch.embeddings.requires_grad, "semi_triplets": semi.triplets,
                    "soft_triplets": soft.triplets, "soft_negatives": soft_negatives}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_cpu_ranks_find_a_negative_that_only_the_other_rank_holds(tmp_path):
    mp.spawn(_two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert (r0["offset"], r1["offset"]) == (0, 4)
    assert r0["labels"].tolist() == r1["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert torch.equal(r0["gathered"], r1["gathered"])
    # rank 0's anchor 0 ([1, 0, 0]) has its hardest negative on rank 1: global row 6 ([0.95, 0.05, 0])
    first = (r0["anchor"] == 0).nonzero()[0, 0]
    assert int(r0["negative"][first]) == 6
    # locally it would only see speaker 1 and find no hard triplet; globally both speaker-0 pairs are hard
    assert float(r0["local_loss"]) == 0.0 and float(r0["local_hard"]) == 0.0
    assert float(r0["global_hard"]) == 0.5 and float(r0["global_loss"]) > 0
    # the gathered batch carries this rank's rows with their gradient
    assert r0["own_rows_keep_grad"] and r0["grad"].abs().sum() > 0 and r1["grad"].abs().sum() > 0
    # the other miners gather across ranks too: batch-hard finds anchor 0's negative on rank 1
    assert r0["semi_triplets"] == 4 and r1["semi_triplets"] == 8 and r0["soft_triplets"] == 4
    assert int(r0["soft_negatives"][0]) == 6


# ----------------------------------------------------------------------------- optimiser and stages


def test_sgd_schedule_falls_linearly_from_005_to_0005():
    model = DeepSpeaker(num_speakers=4, **TINY)
    model.trainer = SimpleNamespace(estimated_stepping_batches=11)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.99
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.005)
    assert rates[5] == pytest.approx((0.05 + 0.005) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:]))


class _WeightsAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        self.end = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_stages_softmax_then_triplet_from_the_shipped_configs(speech_commands_corpus, tmp_path):
    small = [f"--data.init_args.corpus={speech_commands_corpus}", "--model.init_args.width=0.125",
             "--model.init_args.blocks=1", "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
             f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET]
    cli("fit", "-c", RESCNN, *small)
    softmax = tmp_path / "deep_speaker_rescnn" / "softmax" / "checkpoints" / "last.ckpt"
    assert softmax.is_file()
    pre = torch.load(softmax, weights_only=True)
    assert pre["hyper_parameters"]["loss"] == "softmax"

    # Stage 2 through the overlay, started from the softmax checkpoint; a callback sees the start weights.
    from speakerzoo.datamodules import SpeakerDataModule

    data = SpeakerDataModule(str(speech_commands_corpus), split="speaker", speakers_per_batch=8,
                             utterances_per_speaker=2, crop_seconds=1.0, num_workers=0)
    model = DeepSpeaker(num_speakers=data.num_speakers, speaker_names=data.speaker_names, init_from=str(softmax),
                        loss="triplet", **{**TINY, "embedding_dim": 512})
    seen = _WeightsAtStart()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[seen], use_distributed_sampler=False)
    trainer.fit(model, datamodule=data)
    for key, value in pre["state_dict"].items():
        assert torch.equal(seen.state[key], value), key  # every softmax weight, the head included
    moved = [k for k in pre["state_dict"] if k.startswith("encoder.") and k.endswith("weight")
             and not torch.equal(seen.end[k], seen.state[k])]
    assert moved, "the triplet stage did not train the encoder"
    assert torch.equal(seen.end["head.linear.weight"], seen.state["head.linear.weight"])  # frozen head
    assert "train/prob_hard_epoch" in trainer.logged_metrics and "train/acc_epoch" not in trainer.logged_metrics


def test_gru_config_trains_through_the_cli(speech_commands_corpus, tmp_path):
    cli("fit", "-c", GRU, "-c", TRIPLET, f"--data.init_args.corpus={speech_commands_corpus}",
        "--model.init_args.width=0.0625", "--data.init_args.num_workers=0", "--data.init_args.speakers_per_batch=8",
        "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *QUIET)


def test_checkpoint_classifies_with_the_head_it_was_trained_with(tmp_path):
    model = DeepSpeaker(num_speakers=5, **TINY).eval()
    raw = torch.randn(3, 32)
    logits = model.head.linear(raw)
    # no bias: the logits of the normalised embedding rank the classes as the raw ones did
    assert torch.equal(model.classify(F.normalize(raw, dim=-1)).argmax(-1), logits.argmax(-1))
    assert isinstance(model, SpeakerEmbeddingModule)
