#!/usr/bin/env python3
"""Prints roomcast's module graph as a mermaid flowchart, from the #include "x.h" lines of
src/*.c and include/*.h: module A -> B when A's .c or .h includes B's header. docs/architecture.md
holds its output between the module-graph markers; tests/integration/test_docs.py checks it."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def graph(root=ROOT):
    """{module: sorted list of modules it includes}."""
    deps = {}
    for sub, ext in (("src", ".c"), ("include", ".h")):
        d = os.path.join(root, sub)
        for name in sorted(os.listdir(d)):
            if not name.endswith(ext):
                continue
            mod = name[: -len(ext)]
            with open(os.path.join(d, name), encoding="utf-8") as f:
                for line in f:
                    m = re.match(r'\s*#\s*include\s+"([a-z_0-9]+)\.h"', line)
                    if m and m.group(1) != mod:
                        deps.setdefault(mod, set()).add(m.group(1))
            deps.setdefault(mod, set())
    return {m: sorted(v) for m, v in sorted(deps.items())}


def mermaid(root=ROOT):
    lines = ["```mermaid", "flowchart TD"]
    for mod, ds in graph(root).items():
        if not ds:
            lines.append(f"    {mod}")
        for d in ds:
            lines.append(f"    {mod} --> {d}")
    lines.append("```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(mermaid())
