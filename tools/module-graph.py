#!/usr/bin/env python3
"""Prints roomcast's module graph as a mermaid flowchart, from the #include "x.h" lines of
src/*.c and include/*.h: module A -> B when A's .c or .h includes B's header. docs/architecture.md
holds its output between the module-graph markers; tests/integration/test_docs.py checks it.
With --layers: the same graph as text, by the layers of README.md's layout section (the README
holds that output between its own markers), and every include that goes up a layer or closes a
cycle; it exits 1 when there is one."""

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


# Included from every layer: the settings and the logger (see the README's layout section).
EVERYWHERE = ("config", "log")


def layers(root=ROOT):
    """[(layer, [modules])] from top to bottom, read from the bullets of README.md's layout
    section ("- **name** (...): `a`, `b`."), so the README's word is what gets checked."""
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    out = []
    # A bullet runs on over its indented lines; its parenthesis may hold colons and names.
    for m in re.finditer(r"^- \*\*([a-z ]+)\*\*(.*?)(?=^\S|\Z)", section, re.M | re.S):
        mods = re.sub(r"\([^)]*\)", "", m.group(2)).split(":", 1)[1]
        out.append((m.group(1), re.findall(r"`([a-z_0-9]+)`", mods)))
    return out


def problems(root=ROOT):
    """Every include that goes up the README's layer order (apart from EVERYWHERE), every
    module the layout leaves out, and every cycle, as sentences."""
    g, ls = graph(root), layers(root)
    rank = {mod: i for i, (_, mods) in enumerate(ls) for mod in mods}
    out = ["module %s is in no layer of README.md's layout section" % m for m in g
           if m not in rank]
    for mod, ds in g.items():
        for d in ds:
            if d not in EVERYWHERE and mod in rank and d in rank and rank[d] < rank[mod]:
                out.append("%s (%s) includes %s of the layer above (%s)" %
                           (mod, ls[rank[mod]][0], d, ls[rank[d]][0]))
    # Depth-first search; a grey module met again closes a cycle.
    colour = {}

    def visit(m, path):
        colour[m] = "grey"
        for d in g.get(m, []):
            if colour.get(d) == "grey":
                out.append("cycle: " + " -> ".join(path[path.index(d):] + [d]))
            elif d not in colour:
                visit(d, path + [d])
        colour[m] = "black"

    for m in g:
        if m not in colour:
            visit(m, [m])
    return out


def layered(root=ROOT):
    """The include graph as text, one line per module, by layer from the top."""
    g = graph(root)
    lines = ["```"]
    width = max(len(m) for m in g)
    for name, mods in layers(root):
        lines.append("%s:" % name)
        for mod in mods:
            ds = [d for d in g.get(mod, []) if d not in EVERYWHERE]
            lines.append("  %-*s -> %s" % (width, mod, ", ".join(ds) if ds else "(nothing)"))
    lines.append("```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--layers"]:
        sys.stdout.write(layered())
        bad = problems()
        for line in bad:
            print(line, file=sys.stderr)
        sys.exit(1 if bad else 0)
    sys.stdout.write(mermaid())
