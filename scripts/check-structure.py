#!/usr/bin/env python3
"""The house rules that code review keeps forgetting, checked from the source text.

1. No import circles between the files of a crate: an edge A -> B is any `crate::` or
   `super::` path in A (a `use` or an inline path) that names a module whose file is B.
   A path through a module's `mod.rs` (a re-export) counts as an edge to that `mod.rs`; a
   `pub use` itself is no edge (it hands names on), so a `mod.rs` may re-export its children
   while they use what it defines, as long as it calls none of them.
2. No non-test function over 150 lines, and at most 10 over 100 (listed).
3. No clap in a library crate (`clap` only in the crates that build `bevrt` / `bevrt-tool`).

Test code does not count: `#[cfg(test)]` modules, `tests/` folders, `benches/`, `examples/`
and the `tests` crate's own tests. Exit status 1 when a rule is broken; `--list` prints every function
over 100 lines either way.
"""

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 150
LONG_LINES = 100
MAX_LONG = 10


def strip_code(text):
    """Blanks comments, strings and char literals (keeping newlines), so braces and paths
    can be read as code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif (m := re.match(r'b?r(#*)"', text[i:i + 260])) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is blanked.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_spans(code):
    """Character spans of `#[cfg(test)]` items (the test modules)."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", code):
        open_at = m.end() - 1
        spans.append((m.start(), matching_brace(code, open_at)))
    return spans


def in_spans(pos, spans):
    return any(a <= pos <= b for a, b in spans)


def crates():
    for manifest in sorted(ROOT.rglob("Cargo.toml")):
        rel = manifest.parent.relative_to(ROOT)
        if "target" in rel.parts or rel.parts[:1] == ("tests",) or str(rel) == ".":
            continue
        if (manifest.parent / "src").is_dir():
            yield manifest.parent


def crate_files(crate):
    for path in sorted((crate / "src").rglob("*.rs")):
        if "tests" in path.relative_to(crate / "src").parts:
            continue
        yield path


def module_of(crate, path):
    """The module path of a file: src/a/b.rs and src/a/b/mod.rs are ["a", "b"]."""
    parts = list(path.relative_to(crate / "src").with_suffix("").parts)
    if parts == ["main"] and (crate / "src" / "lib.rs").exists():
        return None  # the binary beside a library is a crate root of its own
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return None  # each binary is a crate root of its own
    return tuple(parts)


PATH_RE = re.compile(r"(?<![\w:])\s*\b(crate|super|self|\w+)((?:\s*::\s*(?:\w+|\{))+)")


def expand_use_tree(text):
    """`a::{b::C, d}` -> ["a::b::C", "a::d"]; a plain path is returned whole."""
    text = re.sub(r"\s+", "", text)
    if "{" not in text:
        return [text]
    head, _, rest = text.partition("{")
    depth, parts, cur = 1, [], ""
    for ch in rest:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if ch == "," and depth == 1:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p:
            out.extend(head + q for q in expand_use_tree(p))
    return out


REEXPORT_RE = re.compile(r"\bpub(\([^)]*\))?\s+use\s[^;]*;")


def referenced_paths(code, spans):
    """Every `crate::...` / `super::...` path outside test code, `{}` groups expanded.
    A `pub use` only hands names on (a module's face): it is not an edge."""
    spans = spans + [(m.start(), m.end()) for m in REEXPORT_RE.finditer(code)]
    for m in PATH_RE.finditer(code):
        if in_spans(m.start(), spans):
            continue
        start = m.end(1)
        text = m.group(2)
        if text.rstrip().endswith("{"):
            close = matching_brace(code, m.end() - 1)
            text = code[start:close + 1]
        for p in expand_use_tree(text):
            yield m.group(1), [s for s in p.split("::") if s]


def module_trees(crate):
    """Each crate root's files by module path: the library (or a lone binary) under src/,
    and every binary under src/bin/NAME/ (its main.rs the root)."""
    lib = {}
    bins = {}
    for path in crate_files(crate):
        rel = path.relative_to(crate / "src").parts
        if rel[0] == "bin" and len(rel) > 2:
            parts = list(Path(*rel[2:]).with_suffix("").parts)
            if parts[-1] in ("mod", "main"):
                parts = parts[:-1]
            bins.setdefault(rel[1], {})[tuple(parts)] = path
            continue
        mod = module_of(crate, path)
        if mod is not None:
            lib[mod] = path
    return [lib] + list(bins.values())


def import_edges(crate):
    edges = {}
    for files in module_trees(crate):
        edges.update(tree_edges(files))
    return edges


def tree_edges(files):
    edges = {path: {} for path in files.values()}
    for mod, path in files.items():
        code = strip_code(path.read_text())
        spans = test_spans(code)
        for root, segs in referenced_paths(code, spans):
            if root == "crate":
                base = []
            elif root == "self" or (root not in ("super",) and mod + (root,) in files):
                # `self::child::X`, or `child::X` naming a submodule of this file's module.
                base = list(mod) if root == "self" else list(mod) + [root]
            elif root != "super":
                continue  # another crate, std, a type's associated item
            else:
                # `super` in a/b.rs is `a`; in a/b/mod.rs it is also `a` (the parent of a::b).
                base = list(mod[:-1])
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            full = base + [s for s in segs if s not in ("self", "*")]
            target = None
            for k in range(len(full), -1, -1):
                if tuple(full[:k]) in files:
                    target = files[tuple(full[:k])]
                    break
            if target is not None and target != path:
                edges[path].setdefault(target, set()).add("::".join(segs[-1:]) or root)
    return edges


def circles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


FN_RE = re.compile(r"\bfn\s+(\w+)")


def function_lengths(path):
    code = strip_code(path.read_text())
    spans = test_spans(code)
    for m in FN_RE.finditer(code):
        if in_spans(m.start(), spans):
            continue
        # The body starts at the first `{` after the signature, unless a `;` ends it first
        # (a trait method without a body).
        j = m.end()
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1 if ch != ">" or code[j - 1] != "-" else 0
            elif ch == ";" and depth <= 0:
                j = -1
                break
            elif ch == "{" and depth <= 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        end = matching_brace(code, j)
        first = code.count("\n", 0, m.start()) + 1
        last = code.count("\n", 0, end) + 1
        yield m.group(1), first, last - first + 1


def all_sources():
    """Every non-test source file, the `tests` crate's binaries and helpers included."""
    for manifest in sorted(ROOT.rglob("Cargo.toml")):
        rel = manifest.parent.relative_to(ROOT)
        if "target" in rel.parts or "fuzz" in rel.parts:
            continue
        src = manifest.parent / "src"
        if src.is_dir():
            for path in sorted(src.rglob("*.rs")):
                if "tests" not in path.relative_to(src).parts:
                    yield path


def clap_in_libraries():
    """Files of a library crate that name clap; a binary-only crate and src/bin/ may."""
    bad = []
    for crate in crates():
        if not (crate / "src" / "lib.rs").exists():
            continue  # a binary-only crate: all of it is command-line code
        for path in crate_files(crate):
            rel = path.relative_to(crate / "src").parts
            if rel[0] == "bin" or rel == ("main.rs",):
                continue
            if re.search(r"\bclap\b", strip_code(path.read_text())):
                bad.append(path.relative_to(ROOT))
    return bad


def main():
    failed = False
    for crate in crates():
        edges = import_edges(crate)
        for comp in circles(edges):
            failed = True
            names = ", ".join(str(p.relative_to(ROOT)) for p in comp)
            print(f"import circle in {crate.relative_to(ROOT)}: {names}")
            for a in comp:
                for b, used in sorted(edges[a].items()):
                    if b in comp:
                        print(f"    {a.relative_to(ROOT)} -> {b.relative_to(ROOT)}: "
                              f"{', '.join(sorted(used))}")
    lengths = []
    for path in all_sources():
        for name, line, n in function_lengths(path):
            lengths.append((n, f"{path.relative_to(ROOT)}:{line} {name}"))
    lengths.sort(reverse=True)
    too_long = [x for x in lengths if x[0] > MAX_LINES]
    long = [x for x in lengths if x[0] > LONG_LINES]
    for n, where in too_long:
        failed = True
        print(f"function over {MAX_LINES} lines: {where} ({n} lines)")
    if len(long) > MAX_LONG:
        failed = True
        print(f"{len(long)} functions over {LONG_LINES} lines (at most {MAX_LONG})")
    if "--list" in sys.argv or len(long) > MAX_LONG:
        for n, where in long:
            print(f"  {n:4d}  {where}")
    for path in clap_in_libraries():
        failed = True
        print(f"clap in a library: {path}")
    if not failed:
        print(f"structure: 0 import circles, {len(long)} functions over {LONG_LINES} lines "
              f"(none over {MAX_LINES}), no clap in a library")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
