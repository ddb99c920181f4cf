#!/usr/bin/env python3
"""Module-level import cycles in a Rust crate's src/ (usage: modcycles.py [SRC] [--tests] [-v]).

Nodes: modules, one per file (a/b.rs and a/b/mod.rs -> a::b; lib.rs -> the crate root, which
only declares and re-exports, so edges to it are dropped).
Edges, from code with comments and string literals stripped: every `crate::path` and
`super::path` (use lines and inline paths; `use` brace groups expanded), resolved to the longest
prefix that is a module, and every relative `child::` path into a child module (a parent's
`pub use child::X`). So a child using its parent's own items plus the parent re-exporting the
child is a cycle too. `#[cfg(test)] mod tests` bodies are skipped unless --tests (then they
count as a `tests` child of their file, so their `super::*` is not an edge).
Prints the strongly connected components of more than one module, at file level and collapsed
to top-level modules; exits 1 if there are any.
"""
import os, re, sys

args = [a for a in sys.argv[1:] if not a.startswith('-')]
root = args[0] if args else 'engine/src'
with_tests = '--tests' in sys.argv
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            if rel[-1] == 'mod':
                rel = rel[:-1]
            if rel in (['lib'], ['main']):
                rel = []
            mods['::'.join(rel)] = os.path.join(d, f)


def resolve(parts):
    for n in range(len(parts), -1, -1):
        if '::'.join(parts[:n]) in mods:
            return '::'.join(parts[:n])
    return ''


def expand(path):
    """'a::{b, c::{d}}' -> ['a::b', 'a::c::d']"""
    i = path.find('{')
    if i < 0:
        return [path]
    depth, out, cur = 0, [], ''
    for ch in path[i + 1:path.rfind('}')]:
        depth += (ch == '{') - (ch == '}')
        if ch == ',' and depth == 0:
            out.append(cur)
            cur = ''
        else:
            cur += ch
    out.append(cur)
    return [r for c in out if c.strip() for r in expand(path[:i] + c.strip())]


def scan(m, src, here, out):
    src = re.sub(r'//[^\n]*', '', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    for pm in re.finditer(r'\b(crate|super)::', src):
        j, depth = pm.end(), 0
        while j < len(src):
            ch = src[j]
            if ch == '{':
                depth += 1
            elif ch == '}':
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and not (ch.isalnum() or ch in '_:'):
                break
            j += 1
        for p in expand(src[pm.start():j]):
            parts = [x.split(' as ')[0].strip() for x in p.split('::')]
            parts = [x for x in parts if x and x not in ('self', '*')]
            if parts[0] == 'crate':
                parts = parts[1:]
            else:
                base = list(here)
                while parts and parts[0] == 'super':
                    base, parts = base[:-1], parts[1:]
                parts = base + parts
            out.add(resolve(parts))
    for cm in re.finditer(r'(?<![:\w])(\w+)::', src):
        child = '::'.join(here + [cm.group(1)])
        if child in mods:
            out.add(child)


edges = {}
for m, path in mods.items():
    pieces = re.split(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{',
                      open(path).read(), maxsplit=1)
    out = set()
    for k, src in enumerate(pieces if with_tests else pieces[:1]):
        scan(m, src, (m.split('::') if m else []) + ['tests'] * k, out)
    edges[m] = out - {m, ''}


def sccs(g):
    idx, low, st, on, found, c = {}, {}, [], set(), [], [0]

    def visit(v):
        idx[v] = low[v] = c[0]
        c[0] += 1
        st.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in idx:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(g):
        if v not in idx:
            visit(v)
    return found


top = {}
for m, ts in edges.items():
    for t in ts:
        a, b = m.split('::')[0], t.split('::')[0]
        if a != b:
            top.setdefault(a, set()).add(b)
files, tops = sccs(edges), sccs(top)
print('file-level cycles:', files or 'none')
print('top-level cycles:', tops or 'none')
if '-v' in sys.argv:
    for m in sorted(edges):
        print(f'  {m or "crate"} -> {", ".join(sorted(edges[m]))}')
sys.exit(1 if files or tops else 0)
