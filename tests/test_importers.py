"""`speakerzoo checkpoints import`: speechbrain's ECAPA, 3D-Speaker's and wespeaker's CAM++, from
random weights saved in each toolkit's layout, checked against that toolkit's own computation on
real Speech Commands clips. Nothing in the files may run."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from cli_run import exit_code as cli
from speakerzoo.zoo import CAMPPlus, ECAPA, InvalidCheckpointError, SpeakerEmbeddingModule
from speakerzoo.zoo.campplus import CAMPPlusEncoder
from speakerzoo.zoo.importers import import_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SB_HYPERPARAMS = """\
# the layout of speechbrain/spkrec-ecapa-voxceleb, small
n_mels: 80
pretrained_path: {folder}
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [32, 32, 32, 32, 96]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    se_channels: 8
    lin_neurons: 16
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 16
    out_neurons: 5
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
"""


def randomise_batch_norm(module: torch.nn.Module) -> None:
    """Running statistics away from 0 / 1, so that a batch norm left out or misplaced shows."""
    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=generator))


@pytest.fixture(scope="module")
def clips(speech_commands_root) -> list[torch.Tensor]:
    files = sorted((speech_commands_root / "no").glob("*.wav"))[:3] + sorted((speech_commands_root / "up").glob("*.wav"))[:2]
    clips = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files]
    return [clips[0], clips[1][:12000], *clips[2:]]  # one shorter clip


# ----------------------------------------------------------------------------- speechbrain ECAPA


@pytest.fixture(scope="module")
def speechbrain_folder(tmp_path_factory) -> Path:
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier

    folder = tmp_path_factory.mktemp("spkrec-ecapa-tiny")
    torch.manual_seed(0)
    embedding_model = ECAPA_TDNN(80, lin_neurons=16, channels=[32, 32, 32, 32, 96], attention_channels=8,
                                 se_channels=8)
    randomise_batch_norm(embedding_model)
    torch.save(embedding_model.state_dict(), folder / "embedding_model.ckpt")
    torch.save(Classifier(input_size=16, out_neurons=5).state_dict(), folder / "classifier.ckpt")
    torch.save({"glob_mean": torch.randn(16), "glob_std": torch.ones(16), "count": 3}, folder / "mean_var_norm_emb.ckpt")
    (folder / "hyperparams.yaml").write_text(SB_HYPERPARAMS.format(folder=folder))
    return folder


def test_speechbrain_ecapa_embeds_as_speechbrains_encoder_classifier(speechbrain_folder, clips, tmp_path):
    from speechbrain.inference.speaker import EncoderClassifier

    output = tmp_path / "ecapa-sb.ckpt"
    assert cli("checkpoints", "import", "speechbrain", str(speechbrain_folder), "--output", str(output)) == 0
    model = SpeakerEmbeddingModule.from_pretrained(str(output))
    assert isinstance(model, ECAPA) and model.frontend.config.kind == "sb_fbank" and model.num_speakers == 0
    reference = EncoderClassifier.from_hparams(source=str(speechbrain_folder), savedir=str(tmp_path / "sb"))
    for clip in clips:
        with torch.no_grad():
            theirs = reference.encode_batch(clip[None])[:, 0]
            ours = model.embed(clip[None])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    meta = torch.load(output, weights_only=True)["speakerzoo"]
    assert meta["imported"]["from"] == "speechbrain"
    assert set(Path(f).name for f in meta["imported"]["files"]) == {"hyperparams.yaml", "embedding_model.ckpt",
                                                                  "mean_var_norm_emb.ckpt"}


def test_speechbrain_hyperparams_are_read_never_run(speechbrain_folder, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "embedding_model.ckpt").write_bytes((speechbrain_folder / "embedding_model.ckpt").read_bytes())
    marker = tmp_path / "ran"
    text = SB_HYPERPARAMS.format(folder=folder) + f'side_effect: !apply:os.system ["touch {marker}"]\n'
    (folder / "hyperparams.yaml").write_text(text)
    import_pretrained("speechbrain", folder, tmp_path / "out.ckpt")
    assert not marker.exists() and (tmp_path / "out.ckpt").is_file()

    (folder / "hyperparams.yaml").write_text(text.replace("speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
                                                          "speechbrain.lobes.models.Xvector.Xvector"))
    with pytest.raises(InvalidCheckpointError, match=r"hyperparams.yaml: embedding_model must be !new:.*ECAPA_TDNN"):
        import_pretrained("speechbrain", folder, tmp_path / "other.ckpt")
    (folder / "hyperparams.yaml").write_text(text.replace("std_norm: False", "std_norm: True"))
    with pytest.raises(InvalidCheckpointError, match="only per-sentence mean normalisation"):
        import_pretrained("speechbrain", folder, tmp_path / "other.ckpt")
    (folder / "embedding_model.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="embedding_model.ckpt: missing"):
        import_pretrained("speechbrain", folder, tmp_path / "other.ckpt")
    assert not (tmp_path / "other.ckpt").exists()


# ----------------------------------------------------------------------------- CAM++


def test_campplus_has_3d_speakers_layout():
    """The key names and shapes of 3D-Speaker's released campplus_cn_en_common.pt (937 tensors,
    6,848,544 parameters), listed from that file."""
    state = CAMPPlusEncoder().state_dict()
    assert len(state) == 937
    assert sum(p.numel() for p in CAMPPlusEncoder().parameters()) == 6_848_544
    shapes = {"head.conv1.weight": (32, 1, 3, 3), "head.layer1.0.shortcut.0.weight": (32, 32, 1, 1),
              "xvector.tdnn.linear.weight": (128, 320, 5), "xvector.block1.tdnnd1.linear1.weight": (128, 128, 1),
              "xvector.block1.tdnnd1.cam_layer.linear_local.weight": (32, 128, 3),
              "xvector.block3.tdnnd16.cam_layer.linear2.bias": (32,), "xvector.transit3.linear.weight": (512, 1024, 1),
              "xvector.out_nonlinear.batchnorm.weight": (512,), "xvector.dense.linear.weight": (192, 1024, 1),
              "xvector.dense.nonlinear.batchnorm.running_var": (192,)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "xvector.dense.nonlinear.batchnorm.weight" not in state  # affine-free


TINY_CAMPPLUS = dict(embedding_dim=16, growth_rate=8, init_channels=16, m_channels=8)


def tiny_campplus_state(std_eps: float = 0.0) -> tuple[CAMPPlusEncoder, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    encoder = CAMPPlusEncoder(feat_dim=80, std_eps=std_eps, **TINY_CAMPPLUS).eval()
    randomise_batch_norm(encoder)
    return encoder, {k: v.clone() for k, v in encoder.state_dict().items()}


@pytest.mark.parametrize("flavour", ["3dspeaker", "wespeaker"])
def test_campplus_import_embeds_as_the_toolkit_computes(flavour, clips, tmp_path):
    wespeaker = flavour == "wespeaker"
    encoder, state = tiny_campplus_state(std_eps=1e-7 if wespeaker else 0.0)
    if wespeaker:  # a DDP training checkpoint: module. prefix, and the loss head
        state = {f"module.{k}": v for k, v in state.items()}
        state["module.projection.weight"] = torch.randn(7, 16)
    source = tmp_path / ("avg_model.pt" if wespeaker else "campplus_tiny.pt")
    torch.save(state, source)
    output = tmp_path / "campplus.ckpt"
    assert cli("checkpoints", "import", flavour, str(source), "--output", str(output)) == 0
    model = SpeakerEmbeddingModule.from_pretrained(str(output))
    assert isinstance(model, CAMPPlus) and model.embedding_dim == 16 and model.head is None
    assert model.hparams["std_eps"] == (1e-7 if wespeaker else 0.0)
    for clip in clips:
        # The toolkit's frontend, written out: Kaldi fbank (wespeaker: of int16 values, Hamming
        # window), minus its mean over time.
        wave = clip[None] * (32768.0 if wespeaker else 1.0)
        feats = kaldi.fbank(wave, num_mel_bins=80, dither=0.0, sample_frequency=16000,
                            window_type="hamming" if wespeaker else "povey")
        feats = feats - feats.mean(dim=0, keepdim=True)
        with torch.no_grad():
            theirs = encoder(feats[None], torch.tensor([feats.shape[0]]))
            ours = model.embed(clip[None])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_campplus_import_refuses_what_is_not_campplus(tmp_path):
    ecapa = ECAPA(num_speakers=0, channels=[16, 16, 16, 16, 48], embedding_dim=8, attention_channels=8, se_channels=8)
    torch.save(ecapa.state_dict(), tmp_path / "ecapa.pt")
    with pytest.raises(InvalidCheckpointError, match=r"ecapa.pt: not a CAM\+\+ state dict"):
        import_pretrained("3dspeaker", tmp_path / "ecapa.pt", tmp_path / "out.ckpt")
    _, state = tiny_campplus_state()
    del state["xvector.block2.tdnnd24.linear1.weight"]
    state = {k: v for k, v in state.items() if not k.startswith("xvector.block2.tdnnd24.")}
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(InvalidCheckpointError, match="D-TDNN block 2 has 23 layers, CAM\\+\\+ has 24"):
        import_pretrained("3dspeaker", tmp_path / "short.pt", tmp_path / "out.ckpt")

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"head.conv1.weight": Payload()}, tmp_path / "pickled.pt")
    with pytest.raises(InvalidCheckpointError, match="refusing to load it"):
        import_pretrained("3dspeaker", tmp_path / "pickled.pt", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
