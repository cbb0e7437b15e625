"""README and the guides in docs/ are the truth: the curl session runs, every variable, metric and
target is documented, every link lands on a heading, and README stays an entry point."""

import re

import pytest
from support import ROOT, documentation

README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 550


def test_every_environment_variable_is_documented():
    source = (ROOT / "service" / "config.py").read_text()
    names = set(re.findall(r'_get\(env, "([A-Z_]+)"', source)) | {"PROMETHEUS_MULTIPROC_DIR"}
    assert names and not {n for n in names if f"`{n}`" not in documentation()}


def test_every_metric_is_documented():
    source = (ROOT / "service" / "metrics.py").read_text()
    names = set(re.findall(r'"(app_[a-z0-9_]+)"', source))
    assert len(names) >= 12
    assert not {n for n in names if n not in documentation()}


def test_every_make_target_named_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", documentation()))
    assert {"serve", "test"} <= named
    assert named <= targets


def github_anchor(heading):
    """The anchor GitHub gives a heading: lowercase, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(text):
    """The text without fenced code blocks and inline code, where a heading or a link is only an example."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE))


def anchors(text):
    """Every heading's anchor, a repeated one numbered `-1`, `-2` as GitHub does."""
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(text), re.MULTILINE):
        base = github_anchor(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def relative_links(text):
    """The targets of the Markdown links that name no scheme (`docs/x.md#a`, `#a`, `../README.md`)."""
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def lands(page, target, root):
    """Whether a link of a page names a file of the repository and, with an anchor, one of its headings."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.is_file() or not file.is_relative_to(root.resolve()):
        return False
    return not anchor or anchor in anchors(file.read_text())


def broken_links(page, root=ROOT):
    """The links of a page that land nowhere."""
    return [target for target in relative_links(page.read_text()) if not lands(page, target, root)]


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Several instances", "several-instances"),
    ("Simulator: production-like traffic", "simulator-production-like-traffic"),
    ("`make test` & CI_run", "make-test--ci_run"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_every_relative_link_lands_on_a_file_and_a_heading():
    assert GUIDES
    assert {page.name: broken_links(page) for page in [README, *GUIDES]} == {
        page.name: [] for page in [README, *GUIDES]}


def test_readme_links_every_guide():
    linked = {t.partition("#")[0] for t in relative_links(README.read_text())}
    assert {f"docs/{guide.name}" for guide in GUIDES} <= linked


def test_broken_links_are_found(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Guide\n\n## Containers\n\n## Containers\n")
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = root / "README.md"
    page.write_text("## Top\n\n[a](docs/guide.md#containers) [b](docs/guide.md#containers-1) "
                    "[c](#top) [d](docs/guide.md#kubernetes) [e](docs/gone.md) [f](#bottom) "
                    "[g](../outside.md) [h](https://example.com/x.md#y) `[i](docs/gone.md)`\n"
                    "```\n[j](docs/gone.md)\n## Bottom\n```\n")
    assert broken_links(page, root) == ["docs/guide.md#kubernetes", "docs/gone.md", "#bottom",
                                            "../outside.md"]


def test_readme_stays_an_entry_point():
    lines = README.read_text().count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: move deep content to docs/"
