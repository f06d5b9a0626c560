"""The image's package list: every Debian package in the root with its
version, architecture, installed size and why it is there, the packages
LEAN=yes took out again, and the Python packages of the app's venv.

    python3 package-list.py ROOT REPO PIP_FREEZE > NAME.packages

Why: a package named in packages/*.txt carries that file's comment; any
other is there for the first listed package that depends on it (through
Depends and Pre-Depends; the image installs no Recommends).
"""
import re
import sys
from collections import deque
from pathlib import Path


def stanzas(text):
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            yield fields


def names(relation):
    """Package names in a Depends field (alternatives and all)."""
    return [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0]
            for part in relation.split(",") for alt in part.split("|") if alt.strip()]


def fallback(f):
    if f.get("Essential") == "yes" or f.get("Priority") in ("required", "important"):
        return "base system (essential or required)"
    return "nothing listed needs it (left behind by the LEAN purge)"


def main(root, repo, freeze):
    root, repo = Path(root), Path(repo)
    status = root / "var/lib/dpkg/status"
    pkgs = {}
    if status.exists():
        for f in stanzas(status.read_text(errors="replace")):
            if f.get("Status", "").endswith(" installed"):
                pkgs[f["Package"]] = f
    provides = {}
    for name, f in pkgs.items():
        for virtual in names(f.get("Provides", "")):
            provides.setdefault(virtual, []).append(name)
    listed = {}
    for lst in sorted((repo / "packages").glob("*.txt")):
        if lst.name in ("image-drop.txt", "image-t64.txt", "test.txt", "image-host.txt", "python.txt"):
            continue
        for line in lst.read_text().splitlines():
            word, _, comment = line.partition("#")
            word = word.strip()
            if word:
                listed.setdefault(word, f"{lst.name}" + (f": {comment.strip()}" if comment.strip() else ""))
    for old, new in (l.split("#")[0].split() for l in (repo / "packages/image-t64.txt").read_text().splitlines()
                     if l.split("#")[0].strip()):
        if old in listed:
            listed.setdefault(new, listed[old])
    why = {n: f"listed in {listed[n]}" for n in pkgs if n in listed}
    queue = deque(sorted(why))
    while queue:
        parent = queue.popleft()
        f = pkgs[parent]
        for dep in names(f.get("Pre-Depends", "") + "," + f.get("Depends", "")):
            for target in [dep] + provides.get(dep, []):
                if target in pkgs and target not in why:
                    root_reason = why[parent]
                    origin = parent if root_reason.startswith("listed") else root_reason.split("for ", 1)[-1].split(" ")[0]
                    why[target] = f"for {origin}" + ("" if origin == parent else f" (needed by {parent})")
                    queue.append(target)
    total = sum(int(f.get("Installed-Size", "0") or 0) for f in pkgs.values())
    print(f"# Debian packages: name, version, architecture, installed KiB, why ({len(pkgs)} packages, "
          f"{total / 1024:.0f} MiB installed)")
    for name in sorted(pkgs):
        f = pkgs[name]
        print(f"{name}\t{f.get('Version', '')}\t{f.get('Architecture', '')}\t"
              f"{f.get('Installed-Size', '0')}\t{why.get(name) or fallback(f)}")
    dropped = root / "var/lib/appliance-dropped-packages"
    if dropped.exists():
        print("# Taken out again by LEAN=yes (packages/image-drop.txt: only unused GStreamer plugins need them)")
        for name in dropped.read_text().split():
            print(f"# dropped\t{name}")
    print("# Python packages in /opt/appliance/venv")
    print("\n".join(sorted(Path(freeze).read_text().splitlines())))


if __name__ == "__main__":
    main(*sys.argv[1:4])
