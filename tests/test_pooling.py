"""The shared pooling blocks (speakerzoo.zoo.pooling): a padded batch pools each row as it pools alone."""

from __future__ import annotations

import torch
from speechbrain.dataio.dataio import length_to_mask

from speakerzoo.zoo.pooling import AttentiveStatsPooling, masked_mean, relative_lengths


def padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[n_i, D]`` -> a batch ``[B, max n, D]`` padded with garbage, and the lengths."""
    lengths = torch.tensor([len(r) for r in rows])
    batch = torch.full((len(rows), int(lengths.max()), rows[0].shape[1]), 1e3)
    for k, row in enumerate(rows):
        batch[k, : len(row)] = row
    return batch, lengths


def test_masked_mean_of_a_padded_batch_is_the_mean_of_each_row():
    torch.manual_seed(0)
    rows = [torch.randn(n, 3) for n in (5, 2, 4)]
    batch, lengths = padded(rows)
    expected = torch.stack([r.mean(0) for r in rows])
    assert torch.allclose(masked_mean(batch, lengths), expected, atol=1e-6)


def test_attentive_pooling_of_a_padded_batch_equals_each_row_alone():
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(4).eval()
    rows = [torch.randn(n, 4) for n in (6, 3, 1)]
    batch, lengths = padded(rows)
    alone = torch.cat([pool(r[None], torch.tensor([len(r)])) for r in rows])
    assert torch.allclose(pool(batch, lengths), alone, atol=1e-6)


def test_attentive_pooling_ignores_padded_frames_and_matches_the_formula():
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(4)
    h = torch.randn(1, 6, 4)
    stats = pool(h, torch.tensor([4]))
    alpha = torch.tanh(pool.attention(h[0, :4]))
    w = torch.softmax(alpha, dim=0)
    mu = (w * h[0, :4]).sum(0)
    sigma = torch.sqrt((w * (h[0, :4] - mu) ** 2).sum(0))
    assert torch.allclose(stats[0], torch.cat([mu, sigma]), atol=1e-6)
    h2 = h.clone()
    h2[0, 4:] = 1e3
    assert torch.equal(pool(h2, torch.tensor([4])), stats)


def test_relative_lengths_give_speechbrain_masks_of_exactly_the_valid_frames():
    """speechbrain masks ``i < relative * frames``; n / frames would sometimes let frame n in."""
    for frames in (7, 49, 301, 1000):
        lengths = torch.arange(1, frames + 1)
        features = torch.zeros(len(lengths), frames, 1)
        relative = relative_lengths(lengths, features)
        mask = length_to_mask(relative * frames, max_len=frames)
        assert torch.equal(mask.sum(dim=1).long(), lengths)
