"""Splice generated tables into README.md and docs/speed.md between `<!-- name:start -->` /
`<!-- name:end -->`.

    python docs/update_readme.py

Each block is the verbatim output of a command (its file says which); no figure is typed.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parent
TARGETS = [DOCS.parent / "README.md", DOCS / "speed.md"]
BLOCKS = {
    "reproduction": sorted((DOCS / "reproduction").glob("*.md")),
    "vs-keras": [DOCS / "bench" / "vs_keras.md"],
    "throughput": [DOCS / "bench" / "throughput.md"],
    "vs-keras-amx": [DOCS / "bench" / "vs_keras_amx.md"],
    "throughput-amx": [DOCS / "bench" / "throughput_amx.md"],
    "vs-keras-epyc-bf16": [DOCS / "bench" / "vs_keras_epyc_bf16.md"],
    "throughput-epyc-bf16": [DOCS / "bench" / "throughput_epyc_bf16.md"],
    "convs": [DOCS / "bench" / "convs.md"],
    "compare": [DOCS / "figures" / "compare.txt"],
}


def block(files: list[Path]) -> str:
    parts = []
    for f in files:
        if not f.exists():
            continue
        text = f.read_text().strip()
        text = re.sub(r"^#+ .*\n+", "", text) if f.suffix == ".md" else f"```\n{text}\n```"
        parts.append(f"*From `docs/{f.relative_to(DOCS)}`:*\n\n{text}")
    return "\n\n".join(parts) or "*(not generated yet)*"


def main() -> None:
    for target in TARGETS:
        text = target.read_text()
        for name, files in BLOCKS.items():
            pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
            text = pattern.sub(lambda m, f=files: m.group(1) + block(f) + "\n" + m.group(2),
                               text)
        target.write_text(text)


if __name__ == "__main__":
    main()
