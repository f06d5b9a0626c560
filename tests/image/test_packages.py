"""The package lists in packages/: one file per purpose, read by the
Makefile and by the image build, so a package is named in one place."""
import importlib.metadata
import re

import pytest
from packaging.requirements import Requirement

from image_helpers import REPO, canonical, locked_python, run

NAME = re.compile(r"[a-z0-9][a-z0-9.+-]+")


def listed(name):
    out = []
    for line in (REPO / "packages" / f"{name}.txt").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        assert len(words) <= 1, f"packages/{name}.txt: one package a line: {line!r}"
        out += words
    return out


def make_database():
    p = run(["make", "-C", REPO, "-pn", "--eval", "x-nothing: ; @:", "x-nothing"], check=True)
    return p.stdout


@pytest.mark.parametrize("name", ["run", "build", "test", "image-host", "image-system",
                                  "image-debian", "image-kernel"])
def test_lists_hold_package_names(name):
    packages = listed(name)
    assert packages and all(NAME.fullmatch(p) for p in packages), packages
    assert len(set(packages)) == len(packages), "no package twice in a list"


def test_what_the_next_steps_need_is_listed():
    assert {"libsrtp2-dev", "libssl-dev"} <= set(listed("build"))
    assert {"libsrtp2-1", "libssl3"} <= set(listed("run"))
    assert "firefox-esr" in listed("test")


def test_the_makefile_reads_the_lists_and_its_stamps_depend_on_them():
    db = make_database()
    for var, name in [("DEB_RUN", "run"), ("DEB_BUILD", "build"), ("DEB_TEST", "test"),
                      ("DEB_IMAGE", "image-host")]:
        value = re.search(rf"^{var} := (.*)$", db, re.M).group(1)
        assert value.split() == listed(name), var
    deb_run = re.search(r"^\.venv/\.stamps/deb-run: (.*)$", db, re.M).group(1).split()
    assert {"packages/run.txt", "packages/build.txt"} <= set(deb_run)
    deb_test = re.search(r"^\.venv/\.stamps/deb-test: (.*)$", db, re.M).group(1).split()
    assert "packages/test.txt" in deb_test


def test_the_image_build_reads_the_same_lists():
    p = run(["bash", "-c", '. "$1/image/lib/common.sh"; packages image-system run; packages build; '
             'packages image-kernel; packages nope', "sh", REPO], env={"REPO_DIR": str(REPO)})
    lines = p.stdout.splitlines()
    assert lines[0].split() == listed("image-system") + listed("run")
    assert lines[1].split() == listed("build")
    assert lines[2].split() == listed("image-kernel")
    assert p.returncode != 0 and "no package list" in p.stderr


def test_the_image_package_list_says_why_each_package_is_there(tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    def st(name: str, deps: str = "", extra: str = "") -> str:
        return (f"Package: {name}\nStatus: install ok installed\nVersion: 1\n"
                f"Architecture: arm64\nInstalled-Size: 10\n"
                + (f"Depends: {deps}\n" if deps else "") + extra)
    (root / "var/lib/dpkg/status").write_text("\n".join([
        st("avahi-daemon", "libavahi-core7 (>= 0.8), adduser"),
        st("libavahi-core7", "libdaemon0 | libfake"),
        st("libdaemon0"),
        st("python3", "libpython3-stdlib (= 3.13)"),
        st("libpython3-stdlib"),
        st("libasound2t64", "", "Provides: libasound2 (= 1.2)\n"),
        st("hostapd", "libssl3"),
        st("libssl3t64", "", "Provides: libssl3 (= 3.5)\n"),
        st("bash", "", "Essential: yes\n"),
        st("libz3-4"),
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n",
    ]))
    (root / "var/lib/appliance-dropped-packages").write_text("libllvm19\nmesa-libgallium\n")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("trio==0.27\nappliance==0.1.0\n")
    p = run(["python3", REPO / "image/lib/package-list.py", root, REPO, freeze], check=True)
    rows = {line.split("\t")[0]: line.split("\t") for line in p.stdout.splitlines() if not line.startswith("#")
            and "\t" in line}
    assert rows["avahi-daemon"][4].startswith("listed in image-system.txt: http://<hostname>.local/")
    assert rows["libavahi-core7"][4] == "for avahi-daemon"
    assert rows["libdaemon0"][4] == "for avahi-daemon (needed by libavahi-core7)"
    assert rows["libpython3-stdlib"][4] == "for python3"
    assert rows["libasound2t64"][4].startswith("listed in run.txt"), "the t64 name of a listed library"
    assert rows["libssl3t64"][4].startswith("listed in run.txt")
    assert rows["bash"][4] == "base system (essential or required)"
    assert rows["libz3-4"][4] == "nothing listed needs it (left behind by the LEAN purge)"
    assert "gone" not in rows
    assert rows["hostapd"][:4] == ["hostapd", "1", "arm64", "10"]
    assert "# dropped\tlibllvm19" in p.stdout and "# dropped\tmesa-libgallium" in p.stdout
    assert p.stdout.rstrip().endswith("appliance==0.1.0\ntrio==0.27")


def test_lean_orphans_are_what_only_purged_packages_needed(tmp_path):
    def st(name: str, deps: str = "", extra: str = "") -> str:
        return (f"Package: {name}\nStatus: install ok installed\n"
                + (f"Depends: {deps}\n" if deps else "") + extra)
    status = tmp_path / "status"
    status.write_text("\n".join([
        # gstreamer1.0-plugins-bad still depends on the purged libllvm19 and libonnx:
        st("gstreamer1.0-plugins-bad", "libllvm19 (>= 1), libonnx, libnice10 | libnice-alt, libssl3"),
        st("libz3-4"),                        # only libllvm19 (purged) needed it
        st("libdnnl", "libgomp1"),            # only libonnx (purged) needed it
        st("libgomp1"),                       # and only libdnnl needed this
        st("libnice10", "libglib2.0-0t64"),
        st("libglib2.0-0t64"),
        st("libssl3t64", "", "Provides: libssl3 (= 3.5)\n"),
        st("bash", "", "Essential: yes\n"),
        st("ifupdown", "", "Priority: important\n"),
        st("stray"),
        "Package: half\nStatus: deinstall ok config-files\n",
    ]))
    p = run(["python3", REPO / "image/lib/lean-orphans.py", status, "gstreamer1.0-plugins-bad",
             "not-installed"], check=True)
    assert p.stdout.split() == ["libdnnl", "libgomp1", "libz3-4", "stray"]


def runtime_closure(project="appliance"):
    """{project: installed version} for everything the app needs at run time
    in this interpreter: its requirements and theirs, extras followed, test
    extras not."""
    found, todo = {}, [(project, ())]
    while todo:
        name, extras = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = canonical(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, tuple(req.extras)))
    del found[canonical(project)]
    return found


def test_the_suite_runs_exactly_the_python_packages_the_image_installs():
    """The image's pip installs with -c packages/python.txt; the suite's venv
    must hold the same versions, or the image runs what no test ran."""
    locked, installed = locked_python(), runtime_closure()
    assert installed == {name: locked[name] for name in installed if name in locked}, \
        "the venv differs from packages/python.txt: `make deps`, or move the lock"
    assert not installed.keys() - locked.keys(), \
        f"needed at run time but not locked: {sorted(installed.keys() - locked.keys())}"
    assert not locked.keys() - installed.keys(), \
        f"locked but not needed: {sorted(locked.keys() - installed.keys())}"


def test_the_image_and_make_deps_install_with_the_lock():
    stage = (REPO / "image/stages/20-customise-chroot.sh").read_text()
    assert re.search(r'\$PIP wheel -q -c "\$B/app/packages/python\.txt"', stage)
    db = make_database()
    venv = re.search(r"^\.venv/\.stamps/venv: (.*)$", db, re.M).group(1).split()
    assert "packages/python.txt" in venv
