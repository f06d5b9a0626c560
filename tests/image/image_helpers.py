"""Helpers for the image and flash.sh tests (tests/image/): fake sysfs trees (card readers
that lsblk --sysroot believes in), small stub roots, and running scripts."""
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLASH = REPO / "flash.sh"
BUILD = REPO / "image" / "build.sh"

# Tools these tests run; Debian packages in packages/test.txt. A
# missing one is a failure, not a skip.
TOOLS = ["sfdisk", "mkfs.vfat", "mcopy", "mdir", "mtype", "mkfs.ext4", "e2fsck",
         "debugfs", "fakeroot", "xz", "bmaptool", "lsblk", "dpkg-query"]


def canonical(name: str) -> str:
    """A Python project's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_python() -> dict[str, str]:
    """packages/python.txt: {project: exact version} the app runs."""
    out = {}
    for line in (REPO / "packages" / "python.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            out[canonical(name)] = version
    return out


def run(cmd, *, env=None, input=None, check=False, timeout=120):
    full_env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    full_env.update(env or {})
    p = subprocess.run([str(c) for c in cmd], env=full_env, input=input, text=True,
                       capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


MIB = 1024 * 1024
# The smallest image the build makes: fast to write, read back and compress.
SMALL = ["--set", "BOOT_SIZE_MB=36", "--set", "DATA_SIZE_MB=8", "--set", "ROOT_EXTRA_MB=8"]


def make_stub_root(root: Path) -> Path:
    """What steps 10 and 20 would leave: users, dpkg status, firmware."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "appliance:x:999:995::/var/lib/appliance:/usr/sbin/nologin\n"
        "admin:x:1000:1000::/home/admin:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\naudio:x:29:appliance,admin\n")
    (root / "etc/os-release").write_text('PRETTY_NAME="Stub GNU/Linux 12 (bookworm)"\nID=debian\n')
    (root / "etc/ssh").mkdir()
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("must not ship\n")
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "etc/systemd/system/multi-user.target.wants/ssh.service").symlink_to(
        "/lib/systemd/system/ssh.service")
    (root / "usr/share/zoneinfo/Etc").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Etc/UTC").write_bytes(b"TZif2")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "usr/bin/hello").chmod(0o755)
    (root / "home/admin").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: stub-base\nStatus: install ok installed\nMaintainer: x <x@example.org>\n"
        "Version: 1.0-1\nArchitecture: arm64\nDescription: stub\n\n")
    fw = root / "boot/firmware"
    fw.mkdir(parents=True)
    (fw / "config.txt").write_text("arm_64bit=1\nenable_uart=1\n")
    (fw / "cmdline.txt").write_text("console=tty0 root=LABEL=RASPIROOT rw fsck.repair=yes rootwait\n")
    (fw / "vmlinuz-6.12.0-0-arm64").write_bytes(b"\0" * 4096)
    (fw / "overlays").mkdir()
    (fw / "overlays/README").write_text("overlays\n")
    return root


def build(tmp: Path, stub: Path, *extra, name="out"):
    out, work = tmp / name, tmp / f"work-{name}"
    p = run([BUILD, "--stub-root", stub, "--set", f"OUT_DIR={out}", "--set", f"WORK_DIR={work}",
             *SMALL, *extra])
    return p, out / "appliance-0.1.0.img"


class FakeSys:
    """A sysfs + procfs tree for `lsblk --sysroot` with /dev nodes as files."""

    def __init__(self, root: Path):
        self.root = root
        self.minor = 0
        self.mounts = []
        for d in ("sys/block", "sys/dev/block", "dev", "proc/self"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self._write_proc()

    def _write_proc(self):
        lines = [f"{20 + i} 1 {mm} / {mp} rw,relatime shared:1 - {fs} {src} rw"
                 for i, (mm, mp, fs, src) in enumerate(self.mounts)]
        (self.root / "proc/self/mountinfo").write_text("".join(line + "\n" for line in lines))
        (self.root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")

    def add_disk(self, name, size, *, bus="usb", removable=False, model="SD/MMC Reader",
                 vendor="Generic", ro=False, partitions=0, scsi_type=None, node="file"):
        """bus: usb (hot-pluggable), ata (fixed), virtual (loop/ram/zram), mmc."""
        major = {"loop": 7, "sr": 11, "ram": 1, "zram": 252, "mmcblk": 179}.get(
            next((p for p in ("loop", "sr", "zram", "ram", "mmcblk") if name.startswith(p)), ""), 8)
        minor = self.minor
        self.minor += 16
        if bus == "usb":
            parent = "devices/pci0000:00/0000:00:14.0/usb2/2-1"
            dev = f"{parent}/2-1:1.0/host6/target6:0:0/6:0:0:{minor}/block/{name}"
            (self.root / "sys" / parent).mkdir(parents=True, exist_ok=True)
            (self.root / "sys" / parent / "removable").write_text("removable\n")
        elif bus == "ata":
            dev = f"devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:{minor}/block/{name}"
        elif bus == "mmc":
            dev = f"devices/platform/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/{name}"
        else:
            dev = f"devices/virtual/block/{name}"
        d = self.root / "sys" / dev
        (d / "device").mkdir(parents=True, exist_ok=True)
        (d / "dev").write_text(f"{major}:{minor}\n")
        (d / "size").write_text(f"{size // 512}\n")
        (d / "removable").write_text("1\n" if removable else "0\n")
        (d / "ro").write_text("1\n" if ro else "0\n")
        (d / "device/model").write_text(model + "\n")
        (d / "device/vendor").write_text(vendor + "\n")
        if scsi_type is not None:
            (d / "device/type").write_text(f"{scsi_type}\n")
        self._subsystems(dev)
        os.symlink(f"../{dev}", self.root / "sys/block" / name)
        os.symlink(f"../../{dev}", self.root / "sys/dev/block" / f"{major}:{minor}")
        for i in range(1, partitions + 1):
            pname = f"{name}p{i}" if name[-1].isdigit() else f"{name}{i}"
            p = d / pname
            p.mkdir()
            (p / "dev").write_text(f"{major}:{minor + i}\n")
            (p / "partition").write_text(f"{i}\n")
            (p / "start").write_text(f"{8192 * i}\n")
            (p / "size").write_text("8192\n")
            os.symlink(f"../../{dev}/{pname}", self.root / "sys/dev/block" / f"{major}:{minor + i}")
        path = self.root / "dev" / name
        if node == "file":
            with open(path, "wb") as f:
                f.truncate(size)
        elif node:
            os.symlink(node, path)
        return path

    def _subsystems(self, dev):
        """Each level's `subsystem` link: lsblk walks them to tell hot-plug
        buses (usb, mmc) from fixed ones."""
        parts = dev.split("/")
        for i in range(2, len(parts) + 1):
            comp = parts[i - 1]
            if comp == "block":
                continue
            d = self.root / "sys" / "/".join(parts[:i])
            if parts[i - 2] == "block":
                sub = "class/block"
            elif comp.startswith("usb") or comp[0].isdigit() and "-" in comp:
                sub = "bus/usb"
            elif comp.startswith(("host", "target")) or comp.count(":") == 3:
                sub = "bus/scsi"
            elif comp.startswith("mmc0:"):
                sub = "bus/mmc"
            elif comp.startswith("mmc"):
                sub = "class/mmc_host"
            elif comp.startswith(("pci", "0000:")):
                sub = "bus/pci"
            else:
                sub = "bus/platform"
            d.mkdir(parents=True, exist_ok=True)
            link = d / "subsystem"
            if not link.is_symlink():
                os.symlink(str(self.root / "sys" / sub), link)

    def mount(self, devname, mountpoint, majmin, fstype="vfat"):
        self.mounts.append((majmin, mountpoint, fstype, f"/dev/{devname}"))
        self._write_proc()
