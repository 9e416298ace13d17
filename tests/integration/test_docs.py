"""The documents stay true to the repository and to the binary: README.md and docs/*.md name
only files that exist (markdown links, their #anchors, backticked repository paths); no file
points outside the repository; the configuration reference in docs/operations.md is what
`roomcast serve --help` prints; the metrics reference lists exactly the families a running
roomcast prints on /metrics (without and with DATABASE_URL and REDIS_ADDR); the module graph in
docs/architecture.md matches the #include lines."""

import glob
import importlib.util
import os
import re
import shutil
import subprocess

from pgcluster import free_port
from rc import BIN

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
# Top-level entries a backticked path may start with to count as a repository path.
TOP = ("src/", "include/", "tests/", "tools/", "docs/", "migrations/", "sql/", "deploy/",
       "contrib/", "web/", "clients/", "bench/", ".ci/")
TOP_FILES = ("Makefile", "Dockerfile", "docker-compose.yml", "README.md", ".clang-format")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, ROOT)


def strip_code_blocks(text):
    """Markdown without fenced code blocks (commands and examples, not references)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    h = re.sub(r"`", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    out, seen = set(), {}
    for line in strip_code_blocks(read(path)).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def path_exists(p):
    p = p.split("::")[0]
    p = re.sub(r":\d+$", "", p)
    if any(c in p for c in "*?["):
        return bool(glob.glob(os.path.join(ROOT, p)))
    # A built program is named by its source: bench/sendfloor is bench/sendfloor.c.
    return os.path.exists(os.path.join(ROOT, p)) or bool(glob.glob(os.path.join(ROOT, p) + ".*"))


def test_documents_link_and_name_only_existing_files():
    bad = []
    for doc in DOCS:
        text = strip_code_blocks(read(doc))
        base = os.path.dirname(doc)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(base, path)) if path else doc
            if not os.path.exists(full):
                bad.append(f"{rel(doc)}: link to missing {target}")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                bad.append(f"{rel(doc)}: link to missing anchor {target}")
        for span in re.findall(r"`([^`\n]+)`", text):
            for word in span.split():
                word = word.strip(",;()")
                if "<" in word or "{" in word or "$" in word:
                    continue
                if word.startswith(TOP) or word in TOP_FILES:
                    if not path_exists(word):
                        bad.append(f"{rel(doc)}: names missing path {word}")
    assert not bad, "\n".join(bad)


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in (".git", "build", "node_modules")]
            files += [os.path.relpath(os.path.join(d, n), ROOT) for n in names]
    # Documents not committed yet count too.
    files += [rel(d) for d in DOCS]
    return sorted(set(files))


def test_no_file_points_outside_the_repository():
    # Joined at run time so neither this file nor its bytecode (the compiler folds "a" + "b")
    # matches itself.
    needles = ["".join(p) for p in (("SP", "EC.md"), ("SP", "EC §"), ("../", "shared"),
                                    ("/work/", "shared"))]
    bad = []
    for f in tracked_files():
        full = os.path.join(ROOT, f)
        if not os.path.isfile(full):
            continue
        with open(full, "rb") as fh:
            data = fh.read()
        if b"\0" in data[:4096]:
            continue
        text = data.decode("utf-8", "replace")
        for n in needles:
            for i, line in enumerate(text.splitlines(), 1):
                if n in line:
                    bad.append(f"{f}:{i}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def help_settings():
    """{VARIABLE: (flag, default)} from `roomcast serve --help`."""
    out = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True,
                         timeout=10).stdout
    got = {}
    for line in out.splitlines():
        m = re.match(r"^\s+(--[a-z0-9-]+)\s+([A-Z][A-Z0-9_]*)\s+.*\(default: ([^()]*)\)$", line)
        if m:
            got[m.group(2)] = (m.group(1), m.group(3))
    assert len(got) > 20, out
    return got


def doc_table(path, header):
    """Rows of the markdown table whose header row starts with header, as lists of cells."""
    rows, inside = [], False
    for line in read(path).splitlines():
        if line.startswith(header):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            if re.match(r"^\|[-| ]+\|$", line):
                continue
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([c.strip() for c in cells])
    return rows


def unquote(cell):
    return cell.strip().strip("`")


def test_configuration_reference_matches_serve_help():
    want = help_settings()
    rows = doc_table(os.path.join(ROOT, "docs", "operations.md"), "| variable | flag | default |")
    assert rows, "docs/operations.md has no configuration table"
    doc = {}
    for r in rows:
        default = unquote(r[2])
        doc[unquote(r[0])] = (unquote(r[1]), "unset" if default == "—" else default)
    missing = sorted(set(want) - set(doc))
    extra = sorted(set(doc) - set(want))
    assert not missing, f"in serve --help but not in docs/operations.md: {missing}"
    assert not extra, f"in docs/operations.md but not in serve --help: {extra}"
    wrong = [f"{v}: doc {doc[v]} != help {want[v]}" for v in want if doc[v] != want[v]]
    assert not wrong, "\n".join(wrong)


def families(text):
    """{family: (type, {label: set(values)})} from Prometheus text."""
    fams = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            fams[m.group(1)] = (m.group(2), {})
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        assert m, line
        name = m.group(1)
        fam = name
        if fam not in fams:
            fam = re.sub(r"_(bucket|sum|count)$", "", name)
        assert fam in fams, f"sample without a TYPE line: {line}"
        for k, v in re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""):
            fams[fam][1].setdefault(k, set()).add(v)
    return fams


def doc_metrics():
    """{family: (type, {label: set(values) or None}, when)} from docs/operations.md."""
    out = {}
    for r in doc_table(os.path.join(ROOT, "docs", "operations.md"), "| family | type |"):
        labels = {}
        for part in re.split(r";\s*", r[2]) if r[2] else []:
            names = re.findall(r"`([^`]+)`", part)
            if not names:
                continue
            values = set(names[1:]) if "=" in part else None
            labels[names[0]] = values
        out[unquote(r[0])] = (r[1], labels, r[3])
    return out


def test_metrics_reference_matches_what_roomcast_prints(server_factory):
    plain = server_factory()
    full = server_factory({"DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/none",
                           "REDIS_ADDR": f"127.0.0.1:{free_port()}", "LISTEN_PROBE_S": "0"})
    always = families(plain.metrics())
    with_db = families(full.metrics())
    doc = doc_metrics()
    assert doc, "docs/operations.md has no metrics table"
    bad = []
    for fam, (typ, labels) in {**always, **with_db}.items():
        if fam not in doc:
            bad.append(f"{fam}: printed on /metrics, missing from docs/operations.md")
            continue
        dtype, dlabels, when = doc[fam]
        if dtype != typ:
            bad.append(f"{fam}: documented as {dtype}, printed as {typ}")
        if set(dlabels) != set(labels):
            bad.append(f"{fam}: documented labels {sorted(dlabels)}, printed {sorted(labels)}")
        for k, vals in dlabels.items():
            if vals is not None and k in labels and vals != labels[k]:
                bad.append(f"{fam}{{{k}}}: documented {sorted(vals)}, printed {sorted(labels[k])}")
        expect = "always" if fam in always else "with `DATABASE_URL`"
        if when != expect:
            bad.append(f"{fam}: documented as '{when}', should be '{expect}'")
    for fam in doc:
        if fam not in always and fam not in with_db:
            bad.append(f"{fam}: documented in docs/operations.md, never printed on /metrics")
    assert not bad, "\n".join(bad)


def module_graph():
    """tools/module-graph.py, loaded by path (a dash in its name keeps import from it)."""
    loader = importlib.util.spec_from_file_location(
        "module_graph", os.path.join(ROOT, "tools", "module-graph.py"))
    mg = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mg)
    return mg


def test_module_graph_in_architecture_is_current():
    mg = module_graph()
    text = read(os.path.join(ROOT, "docs", "architecture.md"))
    m = re.search(r"<!-- module-graph:begin -->\n(.*?)<!-- module-graph:end -->", text, re.S)
    assert m, "docs/architecture.md has no module-graph markers"
    assert m.group(1) == mg.mermaid(ROOT), (
        "docs/architecture.md's module graph is out of date: replace it with the output of "
        "tools/module-graph.py")


def test_layers_in_readme_are_current_and_kept():
    mg = module_graph()
    # The README's layer order is the rule: nothing includes upwards, nothing closes a cycle.
    bad = mg.problems(ROOT)
    assert not bad, "\n".join(bad)
    text = read(os.path.join(ROOT, "README.md"))
    m = re.search(r"<!-- layers:begin -->\n(.*?)<!-- layers:end -->", text, re.S)
    assert m, "README.md has no layers markers"
    assert m.group(1) == mg.layered(ROOT), (
        "README.md's include graph is out of date: replace it with the output of "
        "tools/module-graph.py --layers")


def test_layer_check_finds_an_upward_include_and_a_cycle(tmp_path):
    mg = module_graph()
    # A copy of the tree where conn (connection) includes session (doors), and session already
    # includes conn: the check must name both the upward include and the cycle.
    for sub in ("src", "include"):
        shutil.copytree(os.path.join(ROOT, sub), tmp_path / sub)
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    conn_c = tmp_path / "src" / "conn.c"
    conn_c.write_text('#include "session.h"\n' + conn_c.read_text())
    bad = mg.problems(str(tmp_path))
    assert any(b.startswith("conn (connection) includes session") for b in bad), bad
    assert any(b.startswith("cycle:") and "conn" in b and "session" in b for b in bad), bad


def test_unit_tests_link_only_their_layer_and_below():
    mg = module_graph()
    rank = {mod: i for i, (_, mods) in enumerate(mg.layers(ROOT)) for mod in mods}
    make = read(os.path.join(ROOT, "Makefile")).replace("\\\n", " ")
    lists = re.findall(r"^UNIT_LINK_(test_[a-z_0-9]+)\s*:=\s*(.*)$", make, re.M)
    assert len(lists) >= 10, "the Makefile's UNIT_LINK lists were not found"
    bad = []
    for test, objs in lists:
        mods = objs.split()
        # The first object is the module under test; the rest may be its layer or below.
        for m in mods[1:]:
            if m not in mg.EVERYWHERE and rank.get(m, -1) < rank.get(mods[0], 99):
                bad.append(f"{test} tests {mods[0]} but links {m}, a layer above it")
    assert not bad, "\n".join(bad)


def test_architecture_names_every_module():
    text = read(os.path.join(ROOT, "docs", "architecture.md"))
    mods = [os.path.basename(f)[:-2] for f in glob.glob(os.path.join(ROOT, "src", "*.c"))]
    missing = sorted(m for m in mods if f"`{m}`" not in text.split("## Module graph")[0])
    assert not missing, f"modules not described in docs/architecture.md's layers: {missing}"
