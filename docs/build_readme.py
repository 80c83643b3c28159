"""Assembles README.md from the sections in docs/readme/ (edit those, then run this).

    python docs/build_readme.py          # rewrite README.md
    python docs/build_readme.py --check  # exit 1 when README.md is out of date
"""
import os
import sys

SECTIONS = ("00_intro", "05_layout", "synthetic", "converters", "models", "geometry",
            "apportion", "training", "evaluate", "benchmarks", "90_defaults")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assemble() -> str:
    parts = []
    for name in SECTIONS:
        with open(os.path.join(ROOT, "docs", "readme", f"{name}.md"), encoding="utf-8") as f:
            parts.append(f.read() + "\n")
    return "".join(parts)


def main(argv) -> int:
    path = os.path.join(ROOT, "README.md")
    text = assemble()
    if "--check" in argv:
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                print("README.md is out of date: run python docs/build_readme.py")
                return 1
        return 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
