"""Open a rendered page in headless Chromium: a full-page screenshot, and what a reader would see.

Chromium's own command line does both steps, no driver needed. First it loads a copy of the page
with a probe script added (a <base> keeps the page's relative links pointing where they did); on
`load` the probe writes, as JSON into the DOM that --dump-dom prints: how many <img> the page has,
how many of them decoded (naturalWidth > 0), the error outputs shown, and the page's height. Then
it screenshots the page itself at that height, so the PNG holds the whole page.

nbconvert gives an error output and a stderr stream the same element, `.jp-RenderedText` with
data-mime-type `application/vnd.jupyter.stderr`; an error output is the one whose text is a
traceback ("Traceback", or a line starting `SomethingError:`).

Other hosts are mapped to nothing (--host-resolver-rules), so the check is the same offline and
online: a page that needs the network to show its images fails it. (MathJax comes from a CDN in
nbconvert's pages, so formulas show as TeX in the screenshot.)

    python tests/browser_check.py runs/smoke/html/04_sft_lora.html --screenshot /tmp/04.png \
        [--expect-image]

Exit status: 0 the page passed, 1 it did not (the reasons are printed), 3 no Chromium found,
4 the screenshot path exists (it is left as it is).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ERROR_SELECTOR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
WIDTH, MAX_HEIGHT = 1280, 16384  # Chromium draws no taller window than about this
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const errors = Array.from(document.querySelectorAll(%s))
    .map(e => e.textContent)
    .filter(t => /Traceback|^\\s*[A-Za-z_.]*(Error|Exception)\\b:?/m.test(t));
  const result = {
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    errors: errors.map(t => t.trim().slice(0, 300)),
    height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
  };
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>""" % json.dumps(ERROR_SELECTOR)


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome on PATH (CHROMIUM names one explicitly), else None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def chromium(browser: str, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium with `args` and a fresh profile; its stdout. Root needs
    --no-sandbox; there is no GPU here."""
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")
        # The project preloads OpenBLAS (the Makefile's LD_PRELOAD) for MLX; inside Chromium
        # it breaks the page's renderer (no DOM comes back), so Chromium runs without it.
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        done = subprocess.run([browser, *flags, *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
    return done.stdout


def probe(browser: str, page: Path) -> dict:
    """What the loaded page shows (see PROBE), from a probed copy of it in a temporary folder."""
    text = page.read_text(encoding="utf-8")
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    text = re.sub(r"<head[^>]*>", lambda m: m.group(0) + base, text, count=1)
    text = text.replace("</body>", PROBE + "</body>", 1) if "</body>" in text else text + PROBE
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / page.name
        copy.write_text(text, encoding="utf-8")
        # the same width as the screenshot: the height depends on how the text wraps
        dom = chromium(browser, f"--window-size={WIDTH},1000", "--virtual-time-budget=10000",
                       "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    if found:
        return json.loads(html.unescape(found.group(1)))
    raise RuntimeError(f"{page}: the page did not finish loading in Chromium")


def screenshot(browser: str, page: Path, dest: Path, height: int) -> Path:
    """A PNG of the whole page (up to MAX_HEIGHT pixels tall), written beside `dest` and renamed
    onto it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".png")
    os.close(fd)
    try:
        chromium(browser, f"--screenshot={tmp}", f"--window-size={WIDTH},{min(height, MAX_HEIGHT)}",
                 "--virtual-time-budget=10000", page.resolve().as_uri())
        if os.path.getsize(tmp) == 0:
            raise RuntimeError(f"{page}: Chromium wrote no screenshot")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def check(page: str | Path, shot: str | Path, expect_image: bool = False,
          browser: str | None = None) -> dict:
    """Screenshot `page` to `shot` and judge it: `problems` lists why it fails (empty: passes)."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    page = Path(page)
    result = probe(browser, page)
    result["screenshot"] = str(screenshot(browser, page, Path(shot), result["height"]))
    problems = [f"error output shown: {e.splitlines()[-1] if e else e}" for e in result["errors"]]
    if result["loaded"] < result["images"]:
        problems.append(f"{result['images'] - result['loaded']} of {result['images']} images "
                        "did not load")
    if expect_image and result["loaded"] == 0:
        problems.append("no image loaded (expected a plot)")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__[__doc__.index("Exit status:"):])
    parser.add_argument("page", help="a rendered HTML page")
    parser.add_argument("--screenshot", required=True, help="where to write the PNG (a new path)")
    parser.add_argument("--expect-image", action="store_true",
                        help="fail unless at least one <img> loads (a page with a plot)")
    args = parser.parse_args(argv)
    if os.path.lexists(args.screenshot):
        print(f"error: {args.screenshot}: exists; it is left as it is: choose another path",
              file=sys.stderr)
        return 4
    try:
        result = check(args.page, args.screenshot, args.expect_image)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
