// Runs a notebook in JupyterLab inside headless Debian chromium and checks what a person would see:
// the ipywidgets controls and the mermaid saga diagrams, rendered.
//
//   JUPYTER_URL=http://127.0.0.1:8888 NOTEBOOK=03-saga.ipynb SCREENSHOT=/tmp/saga.png node run.mjs
//
// Environment:
//   JUPYTER_URL   base URL of a running JupyterLab (required), e.g. as `eventlab lab` prints it
//   TOKEN         its token (default: none, a server started without one)
//   NOTEBOOK      path of the notebook relative to the server's root (default 03-saga.ipynb)
//   SCREENSHOT    where to save the screenshot (default saga-notebook.png)
//   CHROMIUM      the browser binary (default /usr/bin/chromium)
//   MIN_MERMAID   how many rendered mermaid diagrams to expect at least (default 4)
//   WIDGET        1 (default): the notebook has the saga dropdown widget, checked and redrawn; 0: it has none
//   TIMEOUT_MS    the one budget every wait draws on, from opening the notebook to the screenshot
//                 (default 240000: a busy two-core machine needed more than two minutes; under pytest's
//                 300 s per test, so a step that never ends is named here, not cut off there)
//
// Prints one JSON line with what it found (first_mermaid_at: when the first saga diagram was drawn
// after Run All, in ms since the epoch, for the launch-to-saga time); exits non-zero (with the reason)
// when a check fails.

import { chromium } from "playwright-core";

const base = (process.env.JUPYTER_URL || "").replace(/\/$/, "");
if (!base) {
  console.error("JUPYTER_URL is required");
  process.exit(2);
}
const notebook = process.env.NOTEBOOK || "03-saga.ipynb";
const token = process.env.TOKEN || "";
const screenshot = process.env.SCREENSHOT || "saga-notebook.png";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const minMermaid = Number(process.env.MIN_MERMAID || 4);
const withWidget = (process.env.WIDGET || "1") === "1";
const timeout = Number(process.env.TIMEOUT_MS || 240000);

const MERMAID = ".jp-RenderedMermaid img, .jp-RenderedMermaid svg";

function log(message) {
  console.error(`[browser] ${message}`);
}

async function menu(page, top, item) {
  await page.locator(".lm-MenuBar-itemLabel", { hasText: new RegExp(`^${top}$`) }).click();
  await page.locator(".lm-Menu-itemLabel", { hasText: new RegExp(`^${item}$`) }).first().click();
}

async function dismissDialogs(page) {
  // "Select Kernel" (accept the notebook's own kernel) and the news toast, if they show up.
  const accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept");
  if (await accept.count()) {
    log(`dialog: ${(await page.locator(".jp-Dialog-header").first().textContent()) || ""}`.trim());
    await accept.first().click();
  }
  const no = page.locator(".jp-toast-button", { hasText: /^No$/ });
  if (await no.count()) await no.first().click();
}

async function kernelIdle(page, ms) {
  // The notebook toolbar's execution indicator carries the kernel status.
  await page.waitForSelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', { timeout: ms });
}

// True once every code cell shows an execution count (after Run All); false again if JupyterLab then
// re-reads the notebook from disk (the test serves copies without outputs, so what was run is gone).
const ALL_RUN = String.raw`(() => {
  const prompts = [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")];
  return prompts.length > 0 && prompts.every((p) => /\[\d+\]/.test(p.textContent || ""));
})()`;

// True once some code cell is queued, running or run.
const STARTED = String.raw`[...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].some((p) => /\[(\d+|\*)\]/.test(p.textContent || ""))`;

async function runAll(page, left) {
  // Start from a clean slate: the committed outputs would satisfy the checks by themselves.
  await menu(page, "Edit", "Clear Outputs of All Cells");
  await page.waitForFunction(
    () =>
      document.querySelectorAll(".jp-RenderedMermaid, .jp-OutputArea-output").length === 0 &&
      [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].every((p) => !/\[\d+\]/.test(p.textContent || "")),
    null,
    { timeout: left() },
  );

  // Note when the first diagram is drawn (the moment a reader sees the saga).
  await page.evaluate((sel) => {
    window.__firstMermaidAt = null;
    const timer = setInterval(() => {
      if (document.querySelector(sel)) {
        window.__firstMermaidAt = Date.now();
        clearInterval(timer);
      }
    }, 50);
  }, MERMAID);
  log("run all cells");
  await menu(page, "Run", "Run All Cells");
  // Running: a cell shows [*] or a count; done: every code cell has an execution count and the kernel is
  // idle. A Run All that started no cell in 30 s (seen once in CI, the kernel idle throughout) is given again.
  const started = () => page.waitForFunction(STARTED, null, { timeout: Math.min(30000, left()), polling: 200 }).then(() => true, () => false);
  if (!(await started())) {
    log("Run All started no cell in 30 s; giving it again");
    await dismissDialogs(page);
    await menu(page, "Run", "Run All Cells");
    await started();
  }
  await page.waitForFunction(ALL_RUN, null, { timeout: left(), polling: 500 });
  await kernelIdle(page, left());
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let failed = null;
const found = {};
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.on("pageerror", (error) => log(`page error: ${error.message}`));
try {
  const started = Date.now();
  // Every wait below draws on the same budget: on a busy machine one step may take long, another short.
  const left = () => Math.max(1000, timeout - (Date.now() - started));

  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  await page.goto(`${base}/lab/tree/${notebook}${query}`, { waitUntil: "domcontentloaded", timeout: left() });
  await page.waitForSelector(".jp-NotebookPanel .jp-Cell", { timeout: left() });
  log("notebook open; waiting for the kernel");
  await page.waitForTimeout(1500);
  await dismissDialogs(page);
  await kernelIdle(page, left());
  await dismissDialogs(page);
  found.kernel_idle_ms = Date.now() - started;

  // Run All once; once more if JupyterLab re-read the notebook from disk meanwhile (seen once on a
  // loaded CI machine, with a late "Select Kernel" dialog): the page then shows no outputs.
  for (let attempt = 1; ; attempt++) {
    await runAll(page, left);
    found.run_all_ms = Date.now() - started - found.kernel_idle_ms;

    const errors = await page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count();
    const tracebacks = await page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count();
    if (tracebacks > 0) throw new Error(`${tracebacks} cell(s) raised an error`);
    found.stderr_outputs = errors;
    if (errors > 0) {
      // Say what was written to stderr, so a failure names its cause.
      const texts = await page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").allTextContents();
      found.stderr_text = texts.join("\n").slice(0, 2000);
    }

    // Every mermaid block must be drawn (an <img> with an SVG data URL, or an inline <svg>).
    log(`waiting for ${minMermaid} mermaid diagrams`);
    await page.waitForFunction(`document.querySelectorAll(".jp-RenderedMermaid").length >= ${minMermaid} || !(${ALL_RUN})`, null, {
      timeout: left(),
    });
    await page.waitForTimeout(1000);
    if (await page.evaluate(ALL_RUN)) break;
    if (attempt === 2) throw new Error("JupyterLab re-read the notebook from disk during both runs");
    log("JupyterLab re-read the notebook from disk during Run All; running it again");
    found.reread_from_disk = true;
    await dismissDialogs(page);
    await kernelIdle(page, left());
  }
  found.waterfalls = await page.locator("svg.eventlab-waterfall").count(); // tracing's span waterfalls
  found.widgets = await page.locator("[class*='widget-']").count();
  if (withWidget) {
    // The widget: a dropdown inside a widget box.
    const dropdown = page.locator(".widget-dropdown select").first();
    await dropdown.waitFor({ state: "attached", timeout: left() });
    const widgetDiagram = page.locator(".widget-output .jp-RenderedMermaid").first();
    await widgetDiagram.scrollIntoViewIfNeeded();
    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 1, `.widget-output ${MERMAID.split(", ").join(", .widget-output ")}`, {
      timeout: left(),
    });
    found.mermaid = await page.locator(".jp-RenderedMermaid").count();
    found.first_mermaid_at = await page.evaluate(() => window.__firstMermaidAt);
    found.mermaid_drawn = await page.locator(MERMAID).count();

    // Choosing another order redraws the widget's diagram through the kernel.
    const before = await widgetDiagram.innerHTML();
    const options = await dropdown.locator("option").allTextContents();
    const declined = options.find((o) => /payment_failed/.test(o)) || options[options.length - 1];
    await dropdown.selectOption({ label: declined });
    await page.waitForFunction(
      ([old]) => {
        const el = document.querySelector(".widget-output .jp-RenderedMermaid");
        return el && el.innerHTML !== old && el.querySelector("img, svg");
      },
      [before],
      { timeout: left() },
    );
    found.redrawn_for = declined;

    // Frame the widget and its diagram for the screenshot.
    await page.locator(".widget-dropdown").first().scrollIntoViewIfNeeded();
    await page.evaluate(() => {
      const box = document.querySelector(".widget-dropdown");
      const scroller = box && box.closest(".jp-WindowedPanel-outer, .jp-Notebook");
      if (box && scroller) scroller.scrollTop += box.getBoundingClientRect().top - 140;
    });
  } else {
    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 1, MERMAID, { timeout: left() });
    found.mermaid = await page.locator(".jp-RenderedMermaid").count();
    found.first_mermaid_at = await page.evaluate(() => window.__firstMermaidAt);
    found.mermaid_drawn = await page.locator(MERMAID).count();
    await page.locator("svg.eventlab-waterfall").first().scrollIntoViewIfNeeded({ timeout: left() });
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshot });
  found.screenshot = screenshot;
} catch (error) {
  failed = error;
  // What the page showed when it gave up, so the failure says how far it got.
  found.at_failure = await page
    .evaluate((sel) => ({
      seconds: Math.round(performance.now() / 1000),
      mermaid: document.querySelectorAll(".jp-RenderedMermaid").length,
      mermaid_drawn: document.querySelectorAll(sel).length,
      mermaid_warnings: document.querySelectorAll(".jp-RenderedMermaid.jp-mod-warning").length,
      outputs: document.querySelectorAll(".jp-OutputArea-output").length,
      busy: !!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="busy"]'),
      active_cell: document.querySelector(".jp-Notebook .jp-Cell.jp-mod-active .jp-InputArea-editor")?.textContent?.slice(0, 60) || null,
      dialog: document.querySelector(".jp-Dialog-header")?.textContent || null,
    }), MERMAID)
    .catch((e) => `unavailable: ${e.message}`);
  found.still_shown = await page.evaluate(ALL_RUN).catch(() => null);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png") }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(found));
if (failed) {
  console.error(`[browser] FAILED: ${failed.message}`);
  process.exit(1);
}
