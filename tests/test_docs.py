"""The README is a short front page and docs/ is the manual: checks on the Markdown itself.

No network and no model: every relative link of README.md and docs/**/*.md names a file or
folder of the repository (and, when it names a heading of a Markdown file, that heading
exists), the README stays short, keeps the two commands `.ci/run` runs and the `## In Python`
section, and every config and every command of the CLI is documented.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

#: ``[text](target)`` and ``![alt](target)``; the target ends at the first space or ``)``.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
#: How `.ci/run` reads the README's commands (its ``readme_block``): the first two of these run.
CI_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (where brackets are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None  # http:, https:, mailto:, ...


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_the_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the manual belongs in docs/"


def test_the_readme_has_the_in_python_section():
    assert re.search(r"^## In Python[ \t]*$", README.read_text(encoding="utf-8"), re.M)


def test_the_first_two_bash_blocks_are_the_commands_ci_runs():
    blocks = [b.strip() for b in CI_BLOCK.findall(README.read_text(encoding="utf-8"))]
    assert len(blocks) >= 2, "`.ci/run` runs the first two ```bash blocks of README.md"
    main_job, test_job = blocks[:2]
    # .ci/run then checks for data/toy.h5 and a runs/speakerzoo/*/checkpoints/last.ckpt.
    for part in ("pip install -c constraints.txt -e .", "speakerzoo prepare toy --output data/toy.h5",
                 "speakerzoo fit -c configs/ecapa_small.yaml"):
        assert part in main_job, (part, main_job)
    assert "pip install -c constraints.txt" in test_job and "pytest" in test_job, test_job
    assert "\n" not in main_job and "\n" not in test_job, "each command is one line"


def test_docs_exist_and_are_linked_from_the_readme():
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) >= 8, pages
    linked = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if not is_external(t)}
    unlinked = [p.relative_to(REPO).as_posix() for p in pages if p.resolve() not in linked]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_existing_files_and_headings(page: Path):
    broken = []
    for target in links(page):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        if not resolved.exists():
            broken.append(f"{target} (no such file or folder)")
        elif anchor and resolved.is_file() and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(REPO).as_posix()})")
        elif REPO not in resolved.parents and resolved != REPO:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_page_mentions_paths_users_do_not_have(page: Path):
    assert "shared/seeds" not in page.read_text(encoding="utf-8")


def test_every_config_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in markdown_files())
    missing = [c.relative_to(REPO).as_posix() for c in sorted((REPO / "configs").rglob("*.yaml"))
               if c.relative_to(REPO).as_posix() not in text and c.relative_to(REPO / "configs").as_posix() not in text]
    # The trainer presets are documented as a group: configs/trainer/{cpu,gpu,ddp,amp16,bf16}.yaml.
    missing = [m for m in missing if not (m.startswith("configs/trainer/") and Path(m).stem in text)]
    assert not missing, f"configs not mentioned in README.md or docs/: {missing}"


def test_every_command_is_in_the_readme_table():
    """The subcommands of ``speakerzoo`` (``COMMANDS`` of speakerzoo/cli.py, read without importing
    it, plus LightningCLI's four) each have a row in the README's command table."""
    tree = ast.parse((REPO / "speakerzoo" / "cli.py").read_text(encoding="utf-8"))
    names = None
    for node in ast.walk(tree):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in targets) and isinstance(node.value, ast.Dict):
            names = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    if names is None:
        pytest.skip("speakerzoo/cli.py has no COMMANDS dict to read")
    readme = README.read_text(encoding="utf-8")
    table = [line for line in readme.splitlines() if line.startswith("| `speakerzoo ")]
    missing = [n for n in [*names, "fit", "validate", "test", "predict"]
               if not any(re.search(rf"`speakerzoo [^`]*\b{re.escape(n)}\b", row) for row in table)]
    assert not missing, f"commands without a row in the README's command table: {missing}"
