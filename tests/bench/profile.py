"""Profiling the node during an end-to-end run with py-spy, and reading the profile.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;frame count``),
one line per distinct stack, which speedscope and flamegraph.pl/inferno read as they
are. From them come the tables of the report (own time = samples in which a frame is
the innermost one; total time = samples in which it is anywhere on the stack) and a
small self-contained SVG flame graph (frames under 0.2 % of the samples are left out
to keep it small).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


class Recorder:
    """``py-spy record`` attached to a running process for a fixed duration."""

    def __init__(self, pid: int, output: Path, duration: float, rate: int = 200) -> None:
        self.pid, self.output, self.duration, self.rate = pid, output, duration, rate
        self.process: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> bool:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy is not installed (pip install py-spy, or the project's bench extra)"
            return False
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(max(1, round(self.duration))),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.output),
                "--nonblocking",
                "--full-filenames",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return True

    def wait(self, timeout: float) -> bool:
        if self.process is None:
            return False
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate(timeout=10)
            self.error = "py-spy did not finish in time"
            return False
        if self.process.returncode != 0 or not self.output.exists():
            self.error = f"py-spy exited with {self.process.returncode}: {out.decode(errors='replace')[-500:]}"
            return False
        return True


_STDLIB = re.compile(r"/lib/python3\.\d+/")
_LOCATION = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_path(path: str) -> str:
    """``…/site-packages/pkg/mod.py`` → ``pkg/mod.py``; ``…/lib/python3.11/x.py`` → ``x.py``;
    the project's files relative to its root."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    stdlib = _STDLIB.search(path)
    if stdlib:
        return path[stdlib.end() :]
    for marker in ("/app/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def _frame_label(frame: str, *, with_line: bool) -> str:
    """``func (/abs/path/to/file.py:12)`` → ``func (pkg/file.py:12)``."""
    match = _LOCATION.match(frame)
    if not match:
        return frame
    line = f":{match['line']}" if with_line and match["line"] else ""
    return f"{match['name']} ({_short_path(match['file'])}{line})"


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(stack.split(";"))
        # py-spy puts "process"/"thread" pseudo-frames first when asked; drop them.
        frames = tuple(f for f in frames if not f.startswith(("process ", "thread ")))
        stacks[frames] += int(count)
    return stacks


def summarize(path: Path, top: int = 10) -> dict[str, Any]:
    stacks = read_collapsed(path)
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    for frames, count in stacks.items():
        if not frames:
            continue
        own[_frame_label(frames[-1], with_line=True)] += count
        for label in {_frame_label(f, with_line=False) for f in frames}:
            inclusive[label] += count
        match = _LOCATION.match(frames[-1])
        by_module[_module_of(match["file"] if match else frames[-1])] += count

    def rows(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"frame": label, "samples": count, "percent": round(100 * count / total, 1)}
            for label, count in counter.most_common(n)
        ]

    app_inclusive = Counter(
        {label: n for label, n in inclusive.items() if "(app/" in label and "(app/cli/" not in label}
    )
    return {
        "samples": total,
        "top_own": rows(own, top),
        "own_by_package": rows(by_module, top),
        "top_total_app": rows(app_inclusive, 15),
    }


def _module_of(path: str) -> str:
    """Who the innermost frame belongs to: a site-package, a stdlib module, or app/<package>."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    stdlib = _STDLIB.search(path)
    if stdlib:
        return "stdlib " + path[stdlib.end() :].split("/", 1)[0].removesuffix(".py")
    if "/app/" in path:
        rest = path.split("/app/", 1)[1]
        return "app/" + (rest.split("/", 1)[0] if "/" in rest else rest)
    return _short_path(path)


def gzip_file(path: Path) -> Path:
    """``x.txt`` → ``x.txt.gz`` (the original removed)."""
    import gzip

    packed = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(packed, "wb", compresslevel=9) as target:
        shutil.copyfileobj(source, target)
    path.unlink()
    return packed


# -- a small flame graph -------------------------------------------------------------------


def write_svg(collapsed: Path, output: Path, title: str, min_fraction: float = 0.002) -> int:
    """Render collapsed stacks as an SVG flame graph (hover a frame for its share)."""
    stacks = read_collapsed(collapsed)
    total = sum(stacks.values()) or 1
    tree: dict[str, Any] = {"n": 0, "c": {}}
    for frames, count in stacks.items():
        node = tree
        node["n"] += count
        for frame in frames:
            node = node["c"].setdefault(_frame_label(frame, with_line=False), {"n": 0, "c": {}})
            node["n"] += count
    width, row = 1200.0, 16
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        for label, child in sorted(node["c"].items()):
            w = child["n"] / total * width
            if child["n"] / total >= min_fraction:
                depth_max = max(depth_max, depth)
                pct = 100 * child["n"] / total
                hue = 20 + (hash(label.split(" (")[-1]) % 40)
                text = html.escape(label)
                short = html.escape(label[: max(0, int(w / 7) - 1)]) if w > 30 else ""
                rects.append(
                    f"<g><title>{text} — {child['n']} samples ({pct:.1f}%)</title>"
                    f'<rect x="{x:.1f}" y="{{Y{depth}}}" width="{max(w - 0.5, 0.1):.1f}" height="{row - 1}" '
                    f'fill="hsl({hue},85%,60%)"/>'
                    + (f'<text x="{x + 3:.1f}" y="{{T{depth}}}">{short}</text>' if short else "")
                    + "</g>"
                )
                walk(child, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depth_max + 3) * row
    body = "\n".join(rects)
    for depth in range(depth_max + 1):  # flames grow upwards: depth 0 at the bottom
        y = height - (depth + 2) * row
        body = body.replace(f"{{Y{depth}}}", str(y)).replace(f"{{T{depth}}}", str(y + row - 4))
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'font-family="monospace" font-size="11">\n'
        f'<text x="4" y="14" font-size="13">{html.escape(title)} — {total} samples</text>\n{body}\n</svg>\n'
    )
    output.write_text(svg)
    return output.stat().st_size
