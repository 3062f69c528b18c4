"""The Python API (``speakerzoo.SpeakerRecognizer``) on real recordings, with no argparse on its path,
against what the commands write for the same files: a checkpoint trained in the session
(``fsdd_tiny_ecapa``), FSDD recordings it did not see (8 kHz, resampled) and Speech Commands clips
(16 kHz)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from speakerzoo import SpeakerRecognizer
from speakerzoo.audio import load_audio
from speakerzoo.commands import embed as embed_cmd
from speakerzoo.commands import identify as identify_cmd
from speakerzoo.commands import score as score_cmd
from speakerzoo.commands import verify as verify_cmd
from speakerzoo.embeddings import EmbeddingFile
from speakerzoo.inference.score_files import score_embeddings
from speakerzoo.scoring import Scorer

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fsdd(root: Path, digit: int, speaker: str, n: int) -> Path:
    return root / "recordings" / f"{digit}_{speaker}_{n}.wav"


@pytest.fixture(scope="module")
def rec(fsdd_tiny_ecapa) -> SpeakerRecognizer:
    return SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)


@pytest.fixture(scope="module")
def files(fsdd_root, speech_commands_root) -> list[Path]:
    """Unseen FSDD recordings of every speaker and Speech Commands clips of two words."""
    out = [fsdd(fsdd_root, d, s, n) for s in SPEAKERS for d, n in ((3, 40), (8, 45))]
    out += sorted((speech_commands_root / "yes").glob("*.wav"))[:6] + sorted((speech_commands_root / "no").glob("*.wav"))[:6]
    return out


def command(module, args, capsys) -> str:
    capsys.readouterr()
    code = module.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_embed_files_equals_the_embed_command_bitwise(rec, fsdd_tiny_ecapa, files, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt nonsense")
    paths = [*files[:5], broken, *files[5:]]
    E = rec.embed_files(paths, batch_size=4)
    assert E.embedding.shape == (len(files), rec.embedding_dim) and E.paths == [str(p) for p in files]
    assert [p for p, _ in E.skipped] == [str(broken)]

    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    command(embed_cmd, [listing, "-c", fsdd_tiny_ecapa, "-o", tmp_path / "emb.h5", "-q"], capsys)
    written = EmbeddingFile(tmp_path / "emb.h5")
    assert written.paths == E.paths
    assert torch.equal(written.embedding, E.embedding)  # the same engine: bitwise, whatever the batch

    one = rec.embed_file(files[7])
    assert one.shape == (rec.embedding_dim,) and torch.equal(one, E.embedding[7])
    waves = [torch.from_numpy(load_audio(p, rec.sample_rate)[0]) for p in files[:3]]
    assert torch.equal(rec.embed_batch(waves), E.embedding[:3])
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([w.numel() for w in waves])
    assert torch.equal(rec.embed_batch(padded, lengths), E.embedding[:3])  # padding never reaches the model


def test_verify_files_matches_the_verify_command(rec, fsdd_tiny_ecapa, fsdd_root, capsys):
    a, b, other = fsdd(fsdd_root, 2, "theo", 41), fsdd(fsdd_root, 6, "theo", 47), fsdd(fsdd_root, 6, "lucas", 47)
    score, same = rec.verify_files(a, a, threshold=0.5)
    assert score == pytest.approx(1.0, abs=1e-5) and same is True
    assert rec.threshold is None  # trained without validation: no stored threshold ...
    assert rec.verify_files(a, b) == (pytest.approx(rec.verify_files(a, b)[0]), None)  # ... so no decision
    for test in (b, other):
        score, same = rec.verify_files(a, test, threshold=0.3)
        shell = json.loads(command(verify_cmd, ["-c", fsdd_tiny_ecapa, a, test, "--threshold", 0.3, "--json", "-q"],
                                   capsys))
        assert shell["trials"][0]["score"] == score and shell["trials"][0]["accepted"] == same
    e = F.normalize(torch.stack([rec.embed_file(a), rec.embed_file(b)]), dim=-1)
    assert rec.verify_files(a, b)[0] == pytest.approx(float(e[0] @ e[1]), abs=1e-6)


def test_enrol_and_identify_match_the_identify_command(fsdd_tiny_ecapa, fsdd_root, capsys):
    rec = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    enrol_args = []
    for s in SPEAKERS:
        paths = [fsdd(fsdd_root, 1, s, 40), fsdd(fsdd_root, 7, s, 41)]
        rec.enrol(s, paths)
        enrol_args += ["--enrol", f"{s}=" + ",".join(map(str, paths))]
    assert rec.speakers == SPEAKERS
    tests = [fsdd(fsdd_root, 5, s, 44) for s in SPEAKERS]
    hits = 0
    for path, truth in zip(tests, SPEAKERS):
        best = rec.identify(path, top_k=3, threshold=0.2)
        assert len(best) == 3 and best[0].score >= best[1].score >= best[2].score
        hits += best[0].speaker == truth
        shell = json.loads(command(identify_cmd, ["-c", fsdd_tiny_ecapa, *enrol_args, path, "--top-k", 3,
                                                  "--threshold", 0.2, "--json", "-q"], capsys))
        assert [(c["speaker"], c["score"], c["accepted"]) for c in shell["results"][0]["candidates"]] == \
            [(v.speaker, v.score, v.accepted) for v in best]
    assert hits >= 4, hits  # unseen recordings of the 6 speakers (chance: 1)
    claimed = rec.verify(tests[0], "george", threshold=0.2)
    assert claimed.speaker == "george" and claimed.score == rec.identify(tests[0], top_k=6)[
        [v.speaker for v in rec.identify(tests[0], top_k=6)].index("george")].score
    rec.forget("george")
    assert "george" not in rec.speakers and all(v.speaker != "george" for v in rec.identify(tests[0], top_k=5))


def test_mc_dropout_and_segments_give_mean_and_variance(rec, fsdd_root):
    path = fsdd(fsdd_root, 4, "nicolas", 43)
    u = rec.embed_file(path, segment_seconds=0.25, mc_passes=5, seed=3)
    again = rec.embed_file(path, segment_seconds=0.25, mc_passes=5, seed=3)
    assert u.passes == 5 and u.segments >= 2 and torch.equal(u.embedding, again.embedding)
    assert float(u.embedding.norm()) == pytest.approx(1.0, abs=1e-5) and bool((u.variance > 0).all())
    whole = rec.embed_file(path, segment_seconds=10)  # one segment, no passes: no spread
    assert whole.segments == 1 and float(whole.variance.abs().max()) == 0.0
    assert torch.allclose(whole.embedding, F.normalize(rec.embed_file(path), dim=0), atol=1e-6)


def test_scoring_with_asnorm_in_python_equals_the_score_command(rec, fsdd_tiny_ecapa, speech_commands_corpus,
                                                                 tmp_path, capsys):
    corpus = speech_commands_corpus  # speakers unseen in training; the val part's speakers are the cohort
    for part in ("test", "val"):
        command(embed_cmd, [corpus, "--split", "speaker", "--part", part, "-c", fsdd_tiny_ecapa, "-o",
                            tmp_path / f"{part}.h5", "-q"], capsys)
    options = dict(corpus=corpus, split="speaker", part="test", asnorm=True, cohort=tmp_path / "val.h5", top_k=50)
    result = score_embeddings([tmp_path / "test.h5"], **options)
    shell = json.loads(command(score_cmd, [tmp_path / "test.h5", "--corpus", corpus, "--split", "speaker", "--part",
                                           "test", "--asnorm", "--cohort", tmp_path / "val.h5", "--top-k", 50,
                                           "--json"], capsys))
    assert result == shell and 0.0 <= result["eer"] < 0.5 and "AS-norm top-50" in result["normalisation"]
    # The same AS-norm on arrays: the Python embeddings of the test part and the cohort.
    test, cohort = EmbeddingFile(tmp_path / "test.h5"), EmbeddingFile(tmp_path / "val.h5")
    scorer = Scorer(test.embedding, cohort.embedding, asnorm_top_k=50)
    plain = Scorer(test.embedding)
    pairs = torch.tensor([[0, 1], [2, 3]])
    assert not torch.allclose(scorer.pairs(pairs[:, 0], pairs[:, 1]), plain.pairs(pairs[:, 0], pairs[:, 1]))


def test_the_readme_python_example_runs_as_written(fsdd_tiny_ecapa, fsdd_root, tmp_path, monkeypatch, capsys):
    block = re.search(r"## In Python\n.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no ```python block under '## In Python'"
    code = block.group(1)
    ckpt = tmp_path / "runs/speakerzoo/version_0/checkpoints/last.ckpt"  # where the README's main job writes it
    ckpt.parent.mkdir(parents=True)
    shutil.copy(fsdd_tiny_ecapa, ckpt)
    for name, (d, s, n) in {"alice_1.wav": (1, "george", 40), "alice_2.wav": (7, "george", 41),
                            "bob_1.wav": (1, "jackson", 40), "unknown.wav": (5, "george", 44)}.items():
        shutil.copy(fsdd(fsdd_root, d, s, n), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out.split()
    assert namespace["E"].embedding.shape == (2, namespace["rec"].embedding_dim)
    assert torch.equal(namespace["e"], namespace["E"].embedding[0])
    assert out[0] in ("alice", "bob") and -1.0 <= float(out[1]) <= 1.0


def test_no_module_below_the_commands_imports_argparse_or_the_commands():
    """The library layer is usable without the command line (DESIGN.md: commands are the top floor)."""
    offenders = []
    for path in sorted((REPO / "speakerzoo").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("speakerzoo/commands/") or rel in ("speakerzoo/cli.py", "speakerzoo/__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{rel}: {n}" for n in names if n == "argparse" or n.startswith("speakerzoo.commands")]
    assert not offenders, offenders
