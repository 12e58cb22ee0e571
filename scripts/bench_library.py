#!/usr/bin/env python3
"""The large-library benchmark (issue 16): what a photo library of 100k files
costs the daemon, each number beside a baseline measured in the same run.
Driven by scripts/bench_library.sh; the work is done by the real
`instrument-detector watch` and CLI, the measuring from outside.

    bench_library.py --bin target/release/instrument-detector --model color.onnx \
        --work /tmp/instrument-library [--small 1000] [--large 100000] [--db-rows 1000000]

Phases:
1. first classification of a library of `--small` and of `--large` distinct
   photos (the library exists before the daemon starts): images/s between the
   first and the last commit, from the daemon's own `classified_at`;
2. restart on the unchanged, fully classified large library: time from start
   until its start-up scan has finished, against
   `find DIR -type f -printf '%s %T@\\n'` on the same tree; and that nothing was redone;
3. in the running daemon: one file deleted, one renamed, one folder of 1,000
   photos moved: time until the database shows each, and that nothing was
   classified again;
4. inotify watches held by the daemon, against the number of folders;
   then the watch limit cut below the folder count (a private user namespace):
   the fallback to polling still finds a new photo;
5. `query --label L --limit 50`, `query --since 1h`, `stats` and `report` on a
   database of `--db-rows` rows (generated directly), against the same on a
   database of 1% of that;
and the peak RSS of every daemon run.

The photos are tiny JPEGs (32x32) and the model the 4-label test model, so
that what is measured is the library's cost (walks, stats, the database), not
the network: the real model's rate is in BENCHMARKS.md's other sections.

Prints a human table and, last, one JSON line with every number.
"""
import argparse
import atexit
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

from PIL import Image


# ---------------------------------------------------------------- library --

def photo_bytes(i):
    """A distinct 32x32 JPEG for index i: the index is in the pixels."""
    rng = random.Random(i)
    base = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    img = Image.new("RGB", (32, 32), base)
    px = img.load()
    for k in range(24):  # 24 bits of i as black/white pixels: never two alike
        px[k % 8, k // 8] = (255, 255, 255) if (i >> k) & 1 else (0, 0, 0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photo_dir(root, i, depth=3):
    """Photo i lives in root/aNN/bNN/cNN: 100 per c folder, 1,000 per b folder."""
    parts = [f"a{i // 10000:02d}", f"b{i // 1000 % 10:02d}", f"c{i // 100 % 10:02d}"]
    return os.path.join(root, *parts[:depth])


def photo_path(root, i):
    return os.path.join(photo_dir(root, i), f"{i:07d}.jpg")


def build_library(root, n):
    for i in range(n):
        if i % 100 == 0:
            os.makedirs(photo_dir(root, i), exist_ok=True)
        with open(photo_path(root, i), "wb") as f:
            f.write(photo_bytes(i))


def count_dirs(root):
    return sum(1 for _ in os.walk(root))


# ----------------------------------------------------------------- daemon --

class Daemon:
    """`instrument-detector watch` on a folder, its log in a file."""

    def __init__(self, args, folder, db, log, prefix=(), extra=()):
        self.log_path = log
        cmd = list(prefix) + [args.bin, "watch", folder, "--db", db, "--model", args.model,
                              "--backend", "ort-cpu", "--settle-ms", "200"] + list(extra)
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        atexit.register(lambda p=self.proc: p.poll() is None and p.kill())  # a failed phase leaves no daemon behind

    def pid(self):
        """The daemon's own pid (under `unshare` it is the exec'd child of the same pid)."""
        return self.proc.pid

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, needle, timeout, after=0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log()
            at = text.find(needle, after)
            if at >= 0:
                return text, at
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited ({self.proc.returncode}) before '{needle}':\n{text[-3000:]}")
            time.sleep(0.005)
        raise SystemExit(f"timed out waiting for '{needle}':\n{self.log()[-3000:]}")

    def peak_rss_kb(self):
        with open(f"/proc/{self.pid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def inotify_watches(self):
        n = 0
        fd_dir = f"/proc/{self.pid()}/fdinfo"
        for fd in os.listdir(fd_dir):
            try:
                with open(os.path.join(fd_dir, fd)) as f:
                    n += sum(1 for line in f if line.startswith("inotify wd:"))
            except OSError:
                pass
        return n

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("daemon did not stop within 60 s of SIGINT")
        if self.proc.returncode != 0:
            raise SystemExit(f"daemon exited {self.proc.returncode}:\n{self.log()[-3000:]}")


def db_one(db, sql, args=()):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchone()
    finally:
        con.close()


def done_rows(db):
    try:
        return db_one(db, "SELECT count(*) FROM files WHERE status IN ('ok', 'error')")[0]
    except sqlite3.Error:
        return 0


def wait_until(pred, timeout, what, step=0.002):
    start = time.time()
    while time.time() - start < timeout:
        if pred():
            return time.time() - start
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


# ----------------------------------------------------------------- phases --

def first_classification(args, name, n):
    root = os.path.join(args.work, name)
    folder, db = os.path.join(root, "lib"), os.path.join(root, "results.db")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(folder)
    t = time.time()
    build_library(folder, n)
    print(f"  built {n} photos in {time.time() - t:.0f} s", flush=True)
    d = Daemon(args, folder, db, os.path.join(root, "first.log"))
    wait_until(lambda: done_rows(db) >= n, 7200, f"{n} rows", step=0.5)
    first, last = db_one(db, "SELECT julianday(min(classified_at)), julianday(max(classified_at)) FROM files")
    span = (last - first) * 86400
    # Rows share their transaction's time: between the first commit and the
    # last, exactly the rows after the first commit were written.
    first_commit = db_one(db, "SELECT count(*) FROM files WHERE classified_at = "
                              "(SELECT min(classified_at) FROM files)")[0]
    out = {"photos": n, "seconds": round(span, 2), "images_per_s": round((n - first_commit) / span, 1),
           "errors": db_one(db, "SELECT count(*) FROM files WHERE status = 'error'")[0],
           "peak_rss_mb": round(d.peak_rss_kb() / 1024, 1)}
    d.stop()
    return folder, db, out


def find_floor(folder):
    times = []
    for _ in range(3):
        t = time.time()
        subprocess.run(["find", folder, "-type", "f", "-printf", "%s %T@\\n"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.time() - t)
    return statistics.median(times)


def restart(args, folder, db):
    floor = find_floor(folder)
    rows_before = db_one(db, "SELECT count(*), max(classified_at) FROM files")
    preds_before = db_one(db, "SELECT count(*) FROM predictions")[0]
    log = os.path.join(os.path.dirname(db), "restart.log")
    d = Daemon(args, folder, db, log)
    text, at = d.wait_log("scan finished", 600)
    took = time.time() - d.started
    line = text[text.rfind("\n", 0, at) + 1: text.find("\n", at)]
    fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    time.sleep(1.0)  # anything it wrongly offered would be written by now
    rows_after = db_one(db, "SELECT count(*), max(classified_at) FROM files")
    out = {"find_s": round(floor, 3), "daemon_start_to_scan_done_s": round(took, 3),
           "scan_ms": int(fields.get("ms", "-1")), "ratio_to_find": round(took / floor, 2),
           "scan_ratio_to_find": round(int(fields.get("ms", "0")) / 1000 / floor, 2),
           "offered": int(fields.get("new_or_changed", "-1")),
           "rows_rewritten": rows_after != rows_before,
           "predictions_added": db_one(db, "SELECT count(*) FROM predictions")[0] - preds_before,
           "peak_rss_mb": round(d.peak_rss_kb() / 1024, 1)}
    return d, out


def library_events(d, folder, db, n):
    """Delete, rename, folder move in the running daemon; time until recorded."""
    classified_before = db_one(db, "SELECT count(*) FROM predictions")[0]
    state = lambda p: (db_one(db, "SELECT status FROM files WHERE path = ?", (p,)) or (None,))[0]
    out = {}

    victim = photo_path(folder, n // 3 + 45)
    t = time.time()
    os.remove(victim)
    wait_until(lambda: state(victim) == "deleted", 60, "the deletion")
    out["delete_s"] = round(time.time() - t, 3)

    old = photo_path(folder, 2 * n // 3 + 56)
    new = os.path.join(os.path.dirname(old), "renamed.jpg")
    t = time.time()
    os.rename(old, new)
    wait_until(lambda: state(old) == "deleted" and state(new) == "ok", 60, "the rename")
    out["rename_s"] = round(time.time() - t, 3)

    src = photo_dir(folder, n // 2, depth=2)  # 1,000 photos
    dst = os.path.join(photo_dir(folder, 0, depth=1), "moved-" + os.path.basename(src))
    moved = [os.path.join(dst, c, n) for c in sorted(os.listdir(src)) for n in sorted(os.listdir(os.path.join(src, c)))]
    t = time.time()
    os.rename(src, dst)

    def all_moved():
        gone = db_one(db, "SELECT count(*) FROM files WHERE status = 'deleted' AND path >= ? AND path < ?",
                      (src + "/", src + "0"))[0]
        here = db_one(db, "SELECT count(*) FROM files WHERE status = 'ok' AND path >= ? AND path < ?",
                      (dst + "/", dst + "0"))[0]
        return gone == len(moved) and here == len(moved)

    wait_until(all_moved, 120, "the folder move", step=0.01)
    out["folder_move_s"] = round(time.time() - t, 3)
    out["folder_move_photos"] = len(moved)
    time.sleep(0.5)
    out["reclassified"] = db_one(db, "SELECT count(*) FROM predictions")[0] - classified_before
    return out


def exhausted_watches(args, folder, db, folders):
    """The daemon under a watch limit below the folder count: it says so, polls, and still finds a new photo."""
    limit = max(2, folders // 10)
    prefix = ["unshare", "-U", "-r", "sh", "-c", f"echo {limit} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""]
    probe = prefix[:5] + [f"echo {limit} > /proc/sys/user/max_inotify_watches"]
    if subprocess.run(probe).returncode != 0:
        return {"skipped": "unshare -U not permitted here"}
    log = os.path.join(os.path.dirname(db), "exhausted.log")
    d = Daemon(args, folder, db, log, prefix=prefix)
    try:
        d.wait_log("max_user_watches", 120)
        d.wait_log("scan finished", 600)
        # The last folder in walk order: the scan adds watches as it walks, so
        # the first `limit` folders are watched and this one is only polled.
        extra = os.path.join(photo_dir(folder, args.large - 1), "late-arrival.jpg")
        with open(extra, "wb") as f:
            f.write(photo_bytes(10_000_000))
        t = time.time()
        wait_until(lambda: (db_one(db, "SELECT status FROM files WHERE path = ?", (extra,)) or (None,))[0] == "ok",
                   120, "the photo in the polled library", step=0.05)
        found = time.time() - t
        rss = d.peak_rss_kb()
    finally:
        d.stop()
    return {"watch_limit": limit, "new_photo_found_s": round(found, 2), "peak_rss_mb": round(rss / 1024, 1)}


# ------------------------------------------------------------- 1M queries --

def make_db(args, name, rows):
    """A database of `rows` files with the daemon's own schema (made by the
    daemon on an empty folder), filled directly: 97% ok over the model's
    labels, 2% errors, 1% deleted; classified over the last 30 days."""
    root = os.path.join(args.work, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "empty"))
    db = os.path.join(root, "results.db")
    d = Daemon(args, os.path.join(root, "empty"), db, os.path.join(root, "init.log"))
    d.wait_log("scan finished", 60)
    d.stop()
    con = sqlite3.connect(db)
    sha, labels = con.execute("SELECT sha256, labels FROM models").fetchone()
    labels = json.loads(labels)
    now = time.time()
    rng = random.Random(16)

    def at(age_s):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - age_s)) + ".000Z"

    files, preds = [], []
    for i in range(rows):
        path = f"/library/a{i // 10000:03d}/b{i // 100 % 100:02d}/{i:07d}.jpg"
        h = f"{i:064x}"
        when = at(rng.uniform(3600 * 2, 86400 * 30) if i % 200 else rng.uniform(0, 1800))
        r = i % 100
        if r < 97:
            label = labels[rng.randrange(len(labels))]
            conf = rng.uniform(0.3, 1.0)
            top5 = json.dumps([{"label": label, "confidence": conf}])
            preds.append((h, sha, label, conf, top5, "ort-cpu", 1.0, when))
            files.append((path, h, 1000 + i, i, "ok", None, None, when, when, None))
        elif r < 99:
            files.append((path, h, 1000 + i, i, "error", "corrupt", "the image data is damaged", when, when, None))
        else:
            files.append((path, h, 1000 + i, i, "deleted", None, None, when, when, when))
    con.executemany("INSERT INTO predictions (content_hash, model_sha256, label, confidence, top5, backend,"
                    " inference_ms, classified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", preds)
    con.executemany("INSERT INTO files (path, content_hash, size, mtime_ns, status, error_kind, error,"
                    " first_seen_at, classified_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
    con.commit()
    con.close()
    return db, labels


def time_cli(args, argv, runs=5):
    times = []
    for _ in range(runs):
        t = time.time()
        p = subprocess.run([args.bin, "-q"] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.time() - t)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.decode(errors='replace')[-2000:]}")
    return round(statistics.median(times) * 1000, 1)


def queries(args, db, labels, out_dir):
    rare = labels[-1]
    return {
        "query_label_ms": time_cli(args, ["query", "--db", db, "--label", rare, "--limit", "50"]),
        "query_label_none_match_ms": time_cli(args, ["query", "--db", db, "--label", "none", "--limit", "50"]),
        "query_since_1h_ms": time_cli(args, ["query", "--db", db, "--since", "1h"]),
        "query_since_1h_limit_ms": time_cli(args, ["query", "--db", db, "--since", "1h", "--limit", "50"]),
        "stats_ms": time_cli(args, ["stats", "--db", db]),
        "report_ms": time_cli(args, ["report", "--db", db, "--out", out_dir], runs=1),
    }


# ------------------------------------------------------------------- main --

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--db-rows", type=int, default=1_000_000)
    ap.add_argument("--phases", default="classify,restart,events,watches,queries")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    os.makedirs(args.work, exist_ok=True)
    res = {"small": args.small, "large": args.large, "db_rows": args.db_rows}

    if "classify" in phases:
        print(f"== first classification: {args.small} photos, then {args.large}", flush=True)
        # A small library is classified in a fraction of a second, a handful
        # of commits: one run's rate swings by half. The median of five.
        small_runs = [first_classification(args, "small", args.small)[2] for _ in range(5)]
        rates = sorted(r["images_per_s"] for r in small_runs)
        res["first_small"] = dict(small_runs[0], images_per_s=rates[2], runs_images_per_s=rates)
        print("  ", res["first_small"], flush=True)
        folder, db, res["first_large"] = first_classification(args, "large", args.large)
        print("  ", res["first_large"], flush=True)
        res["rate_ratio_large_to_small"] = round(
            res["first_large"]["images_per_s"] / res["first_small"]["images_per_s"], 2)
    folder = os.path.join(args.work, "large", "lib")
    db = os.path.join(args.work, "large", "results.db")
    if phases & {"restart", "events", "watches"}:
        print(f"== restart on the unchanged library of {args.large}", flush=True)
        d, res["restart"] = restart(args, folder, db)
        print("  ", res["restart"], flush=True)
        folders = count_dirs(folder)
        res["watches"] = {"folders": folders, "inotify_watches": d.inotify_watches()}
        print("  ", res["watches"], flush=True)
        if "events" in phases:
            print("== a deletion, a rename, a folder of 1,000 moved", flush=True)
            res["events"] = library_events(d, folder, db, args.large)
            print("  ", res["events"], flush=True)
        res["restart"]["peak_rss_mb_after_events"] = round(d.peak_rss_kb() / 1024, 1)
        d.stop()
        if "watches" in phases:
            print("== watches exhausted: polling fallback at this size", flush=True)
            res["exhausted"] = exhausted_watches(args, folder, db, folders)
            print("  ", res["exhausted"], flush=True)
    if "queries" in phases:
        for name, rows in (("db_small", max(1, args.db_rows // 100)), ("db_large", args.db_rows)):
            print(f"== query, stats, report on {rows} rows", flush=True)
            t = time.time()
            qdb, labels = make_db(args, name, rows)
            print(f"  generated in {time.time() - t:.0f} s", flush=True)
            res[name] = queries(args, qdb, labels, os.path.join(args.work, name, "report"))
            print("  ", res[name], flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
