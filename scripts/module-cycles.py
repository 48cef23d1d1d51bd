#!/usr/bin/env python3
"""Lists import cycles between llmdd's top-level modules (`crate::X` references outside
comments and test modules); exits 1 if there is any. Run from the repository root."""
import glob
import os
import re
import sys

ROOT = "llmdd/src"


def deps_of(files, name):
    deps = set()
    for f in files:
        if f.endswith("tests.rs") or "/tests/" in f:
            continue
        text = re.sub(r"//[^\n]*", "", open(f, encoding="utf-8").read())
        text = text.split("#[cfg(test)]")[0]
        deps.update(re.findall(r"crate::([a-z_]+)", text))
        for block in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
            for part in re.split(r",(?![^{]*\})", block):
                m = re.match(r"\s*([a-z_]+)", part)
                if m:
                    deps.add(m.group(1))
    deps.discard(name)
    return deps


def main():
    mods = {}
    for entry in os.listdir(ROOT):
        if entry in ("lib.rs", "main.rs"):
            continue
        name = entry[:-3] if entry.endswith(".rs") else entry
        path = os.path.join(ROOT, entry)
        files = [path] if entry.endswith(".rs") else glob.glob(f"{path}/**/*.rs", recursive=True)
        mods[name] = deps_of(files, name)
    graph = {a: sorted(d & set(mods)) for a, d in mods.items()}
    state, cycles = {}, []

    def dfs(u, stack):
        state[u] = 1
        stack.append(u)
        for v in graph[u]:
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                dfs(v, stack)
        stack.pop()
        state[u] = 2

    for a in sorted(graph):
        if not state.get(a):
            dfs(a, [])
    for c in cycles:
        print(" -> ".join(c))
    print(f"{len(graph)} modules, {len(cycles)} import cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
