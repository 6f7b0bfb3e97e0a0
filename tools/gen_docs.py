#!/usr/bin/env python
"""Write docs/cli.md and docs/config.md from the argparse parsers and the config dataclasses, and the
memory-per-device tables of docs/parallel.md and docs/inherit.md from `pangu-pro plan` on the shipped configs.

    python tools/gen_docs.py           # regenerate them
    python tools/gen_docs.py --check   # exit 1 if one is stale (tests/test_docs.py does the same)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pangu_pro.reference import generated  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = parser.parse_args()
    stale = []
    for path, text in generated().items():
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print("stale: " + ", ".join(map(str, stale)) + " (run python tools/gen_docs.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
