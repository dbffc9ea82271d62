"""The guides' links: every relative link to a Markdown file names a file that exists and, with a
#fragment, a heading of that file (as GitHub derives heading anchors)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT

LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation except '-' and '_' dropped, spaces -> '-'."""
    anchors = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#+\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_heading_anchors_follow_github():
    page = ROOT / "docs" / "lcacnn.md"
    assert "the-earlier-one-seed-run---code-gain-1" in heading_anchors(page)
    assert "dictionary-modes---dict_training" in heading_anchors(page)


def test_every_link_between_the_guides_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, fragment in LINK.findall(page.read_text()):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and path.suffix == ".md" and fragment not in heading_anchors(path):
                broken.append(f"{page.name}: {target}#{fragment} (no such heading)")
    assert not broken, "\n".join(broken)
