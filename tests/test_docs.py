"""The documentation site shows exactly the tested notebooks, and a broken link or an error fails its build.

``make docs`` (MkDocs with mkdocs-jupyter, see ``mkdocs.yml`` and ``docs/hooks.py``) renders the README,
the guides in ``docs/`` and the notebooks from their committed outputs — the ones ``pytest --nbval``
compares — into a static site. These tests run that command into ``tmp_path`` (``.ci/run`` builds the site
this way) and read the pages it wrote.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GUIDES = sorted((ROOT / "docs").glob("*.md"))
MERMAID = re.compile(r'<pre class="mermaid">(?:<code>)?(.*?)(?:</code>)?</pre>', re.DOTALL)
# how nbconvert renders an error output or a stderr stream, and what a Python traceback starts with
ERROR_SHOWN = (re.compile(r'<div [^>]*data-mime-type="application/vnd\.jupyter\.stderr"'), re.compile(r"Traceback \("))


def build(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life notice, see mkdocs.yml
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``make docs`` builds it (the venv is this interpreter's: make is told not to rebuild it)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    scripts = sysconfig.get_path("scripts")
    result = build(
        ["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={scripts}", f"SITE={out}", "docs"], ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def first_heading(source: str) -> str:
    """The text of the first ``# `` heading, without inline markup (MkDocs titles a page with it)."""
    heading = next((line[2:].strip() for line in source.splitlines() if line.startswith("# ")), "")
    assert heading, "a page needs a '# ' heading: it is its title in the navigation"
    return re.sub(r"[`*_]", "", heading)


def title_of(page: str) -> str:
    return html.unescape(re.search(r"<title>(.*?) - eventlab</title>", page)[1])


def outputs(path: Path) -> list[dict]:
    return [output for cell in notebook(path)["cells"] for output in cell.get("outputs", [])]


def test_make_docs_builds_a_page_for_the_readme_every_guide_and_every_notebook(site):
    # given: the site `make docs` built (strict: it exits non-zero on any warning)
    home = (site / "index.html").read_text(encoding="utf-8")
    # then: the README is the home page, its picture at the path the README links to
    assert "<title>eventlab</title>" in home
    assert 'src="docs/saga-notebook.png"' in home and (site / "docs/saga-notebook.png").is_file()
    # and: every guide in docs/ has a page, titled by its heading and linked from the navigation
    for guide in GUIDES:
        page = (site / "docs" / guide.with_suffix(".html").name).read_text(encoding="utf-8")
        assert title_of(page) == first_heading(guide.read_text(encoding="utf-8")), guide.name
        assert f'href="docs/{guide.stem}.html"' in home
    # and: every notebook has a page, titled by its heading and linked from the navigation
    assert len(NOTEBOOKS) >= 7
    for path in NOTEBOOKS:
        page = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        title = first_heading("".join(notebook(path)["cells"][0]["source"]))
        assert title_of(page) == title, path.name
        assert f'href="notebooks/{path.stem}.html"' in home
        # and: its links to other notebooks lead to their pages, not to .ipynb files
        assert not re.search(r'href="[^"]*\.ipynb', page), path.name


def test_pages_show_the_committed_outputs_and_no_error(site):
    for path in NOTEBOOKS:
        page = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        # then: each picture the notebook holds (what nbval checked) is on its page, byte for byte
        for output in outputs(path):
            if png := output.get("data", {}).get("image/png"):
                assert "".join(png).replace("\n", "") in page, path.name
        # and: each widget (live only with the notebook's kernel) is named, not left blank or half-loaded
        views = [o for o in outputs(path) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert page.count('class="widget-note"') == len(views), path.name
        assert "widget-view+json" not in page and "addWidgetsRenderer" not in page, path.name
        # and: no page shows an error, a traceback or anything written to stderr
        for marker in ERROR_SHOWN:
            assert not marker.search(page), (path.name, marker.pattern)


def test_the_saga_page_draws_each_saga_as_a_mermaid_diagram(site):
    # given: the saga diagrams notebook 03 displays, generated from each order's events
    saga = ROOT / "notebooks/03-saga.ipynb"
    diagrams = [
        "".join(o["data"]["text/markdown"]).strip().removeprefix("```mermaid").removesuffix("```").strip()
        for o in outputs(saga)
        if "".join(o.get("data", {}).get("text/markdown", "")).startswith("```mermaid")
    ]
    assert len(diagrams) >= 3 and all("sequenceDiagram" in d for d in diagrams)
    # when: its page is read
    page = (site / "notebooks/03-saga.html").read_text(encoding="utf-8")
    # then: each diagram is a mermaid element holding exactly that diagram, for Material's renderer
    shown = [html.unescape(text).strip() for text in MERMAID.findall(page)]
    assert shown == diagrams
    assert re.search(r'src="\.\./assets/javascripts/bundle\.[0-9a-f]+\.min\.js"', page)
    # and: nbconvert's own mermaid loader is gone (with it, each diagram would be drawn twice), and so is its
    # style, which hides every diagram that loader did not draw
    assert "mermaid.esm" not in page and ".jp-Mermaid:not(" not in page
    # and: the README's sequence diagram on the home page is a mermaid element too
    home = (site / "index.html").read_text(encoding="utf-8")
    assert any(text.strip().startswith("sequenceDiagram") for text in MERMAID.findall(home))


def test_a_broken_link_or_an_error_output_fails_the_strict_build(tmp_path):
    # given: a copy of the site's sources with a broken picture link in the README, a link to a missing
    # notebook in notebook 03 and an error output in notebook 01
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", copy / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "mkdocs.yml", copy)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/saga-notebook.png)" in readme
    (copy / "README.md").write_text(readme.replace("](docs/saga-notebook.png)", "](docs/no-such-picture.png)"))
    saga = copy / "notebooks/03-saga.ipynb"
    assert "](04-kafka-underneath.ipynb)" in saga.read_text(encoding="utf-8")
    saga.write_text(saga.read_text(encoding="utf-8").replace("](04-kafka-underneath.ipynb)", "](04-no-such.ipynb)"))
    quickstart = notebook(copy / "notebooks/01-quickstart.ipynb")
    number, cell = next((n, c) for n, c in enumerate(quickstart["cells"], start=1) if c["cell_type"] == "code")
    traceback = ["Traceback (most recent call last)", "ValueError: the shop is closed"]
    cell["outputs"].append({"output_type": "error", "ename": "ValueError", "evalue": "closed", "traceback": traceback})
    (copy / "notebooks/01-quickstart.ipynb").write_text(json.dumps(quickstart))
    # when: the site is built from it, strictly
    result = build([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(tmp_path / "site")], copy)
    # then: the build fails, naming each problem
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Aborted with 3 warnings in strict mode" in output
    assert "'docs/no-such-picture.png'" in output
    assert "notebooks/03-saga.ipynb links to '04-no-such.ipynb', which is not on the site" in output
    assert f"notebooks/01-quickstart.ipynb: cell {number} has an error output (ValueError)" in output
    # and: what the page would have shown is what the test above looks for
    shown = (tmp_path / "site/notebooks/01-quickstart.html").read_text(encoding="utf-8")
    assert all(marker.search(shown) for marker in ERROR_SHOWN)
