"""The packages left with no reason to be in the root once LEAN=yes purged
packages/image-drop.txt: nothing still installed needs them (through
Depends and Pre-Depends), they are not named in the package lists, and they
are not essential or required. Like `apt autoremove`, which cannot run on a
root whose dependencies were broken on purpose.

    python3 lean-orphans.py STATUS ROOT_PACKAGE...    prints one name a line

Runs inside the arm64 root (step 20) and in the tests.
"""
import re
import sys


def installed(status_text):
    pkgs = {}
    for block in status_text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            pkgs[fields["Package"]] = fields
    return pkgs


def orphans(pkgs, roots):
    provides = {}
    for name, f in pkgs.items():
        for v in re.split(r"\s*,\s*", f.get("Provides", "")):
            if v:
                provides.setdefault(v.split()[0], []).append(name)
    keep = set()
    stack = [r for r in roots if r in pkgs]
    stack += [n for n, f in pkgs.items()
              if f.get("Essential") == "yes" or f.get("Priority") in ("required", "important")]
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        f = pkgs[name]
        for part in (f.get("Pre-Depends", "") + "," + f.get("Depends", "")).split(","):
            for alt in part.split("|"):
                dep = alt.strip().split(" ")[0].split(":")[0]
                if not dep:
                    continue
                for target in [dep] + provides.get(dep, []):
                    if target in pkgs:
                        stack.append(target)
    return sorted(set(pkgs) - keep)


def main(argv):
    with open(argv[1], encoding="utf-8", errors="replace") as f:
        pkgs = installed(f.read())
    for name in orphans(pkgs, argv[2:]):
        print(name)


if __name__ == "__main__":
    main(sys.argv)
