"""MkDocs hooks: the site is laid out like the repository, so the README's links work on it unchanged.

``README.md`` is the home page (one source of truth, and ``../README.md`` links to it work), ``docs/*`` keep their ``docs/`` prefix and the
notebooks their ``notebooks/`` one: ``docs/saga-notebook.png`` and ``notebooks/03-saga.ipynb`` mean the
same thing on GitHub, in JupyterLab and on the site. The navigation lists every guide in ``docs/`` and
every notebook, each titled by its first heading, so a new guide appears without editing ``mkdocs.yml``.

MkDocs checks links in Markdown pages only; a notebook page is HTML made by nbconvert (mkdocs-jupyter, from
the committed outputs: nothing is run again). Its relative links (``02-event-sourcing.ipynb``) are checked
and pointed at the page they name here, and a notebook with an error output is refused: both are
warnings, which ``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

__all__ = ["on_config", "on_files", "on_page_content"]

# under "mkdocs." so that --strict counts its warnings
log = logging.getLogger("mkdocs.hooks.eventlab")

LINK = re.compile(r'(?P<attr>\b(?:href|src))="(?P<url>[^"]*)"')
# nbconvert's own mermaid loader and its style, which hides every diagram it has not drawn itself; Material
# draws each <pre class="mermaid"> already, the README's included
NBCONVERT_MERMAID = re.compile(
    r'<script type="module">(?:(?!</script>).)*?\.jp-Mermaid > pre\.mermaid.*?</script>\s*'
    r"<style>(?:(?!</style>).)*?\.jp-Mermaid:not\(\.jp-RenderedMermaid\).*?</style>",
    re.DOTALL,
)
# a widget's view, and the loader of the widget renderer: it needs RequireJS, which would hide mermaid's
# global from Material (mkdocs.yml), and the widgets do nothing without the notebook's kernel anyway
WIDGET_VIEW = re.compile(r'<script type="application/vnd\.jupyter\.widget-view\+json">.*?</script>', re.DOTALL)
WIDGET_LOADER = re.compile(r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?</script>", re.DOTALL)
WIDGET_NOTE = '<p class="widget-note"><em>An interactive widget: run the notebook in JupyterLab to use it.</em></p>'


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _notebooks(config: MkDocsConfig) -> list[Path]:
    return sorted((_root(config) / "notebooks").glob("*.ipynb"))


def _guides(config: MkDocsConfig) -> list[Path]:
    return sorted(Path(config.docs_dir).glob("*.md"))


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Home, the guides (whatever ``docs/*.md`` exist), then the notebooks in their order."""
    nav: list = [{"Home": "README.md"}]
    if guides := _guides(config):
        nav.append({"Guides": [f"docs/{guide.name}" for guide in guides]})
    nav.append({"Notebooks": [f"notebooks/{notebook.name}" for notebook in _notebooks(config)]})
    config.nav = nav
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which must see the notebooks
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Re-root ``docs/`` under ``docs/``, add the README (the home page) and the notebooks."""
    root = _root(config)

    def repository_file(path: str) -> File:
        # src_uri is the path in the repository (a real file: mkdocs-jupyter reads notebooks by it)
        return File(path, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)

    docs_dir = Path(config.docs_dir).resolve()
    for file in list(files):
        if file.abs_src_path and Path(file.abs_src_path).resolve().is_relative_to(docs_dir):
            files.remove(file)
            if file.inclusion.is_included():  # not this file (exclude_docs in mkdocs.yml)
                files.append(repository_file(f"docs/{file.src_uri}"))
    files.append(repository_file("README.md"))  # MkDocs makes a README.md the index.html of its folder
    for notebook in _notebooks(config):
        files.append(repository_file(f"notebooks/{notebook.name}"))
    return files


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """On a notebook's page: refuse error outputs; check each relative link and point it at its page; leave
    the mermaid diagrams to Material alone (with nbconvert's loader too, both would draw each diagram);
    say where a widget would be instead of leaving a blank output."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    notebook = json.loads(Path(page.file.abs_src_path).read_text(encoding="utf-8"))
    for number, cell in enumerate(notebook["cells"], start=1):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                log.warning("%s: cell %d has an error output (%s)", page.file.src_uri, number, output.get("ename"))

    def relink(match: re.Match[str]) -> str:
        url = match["url"]
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith(("#", "/")) or not parts.path:
            return match[0]
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), parts.path))
        found = files.get_file_from_path(target)
        if found is None:
            log.warning("%s links to '%s', which is not on the site", page.file.src_uri, url)
            return match[0]
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return f'{match["attr"]}="{found.url_relative_to(page.file)}{fragment}"'

    html = WIDGET_LOADER.sub("", NBCONVERT_MERMAID.sub("", html))
    return LINK.sub(relink, WIDGET_VIEW.sub(WIDGET_NOTE, html))
