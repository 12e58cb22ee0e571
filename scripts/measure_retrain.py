#!/usr/bin/env python3
"""Measures "teach it your photos" on real photos, through the real commands.

For each fold: a fresh library (a copy of PHOTOS, DIR/<label>/<photo>) is
classified by the daemon; N of the photos it gets wrong in the fold's
"corrected" half (seeded, at random) are corrected with `correct`; `retrain`
fits a new head; the daemon, still running, hot-swaps to it; `reclassify
--stale` redoes the library. Accuracy is then counted on the photos that were
NOT corrected (and, separately, on the other half, which no correction
touched), before and after, from `query`. Every step is timed.

usage: scripts/measure_retrain.py [--photos DIR] [--data DIR] [--model FILE]
           [--corrections N] [--folds K] [--seed S] [--cache DIR]
           [--retrain-arg=--steps=600 ...]
With --folds 1 the corrections are drawn from the whole set; with more, each
fold draws them from a random half and the other half is never corrected.
The binary is $INSTRUMENT_DETECTOR_BIN, or target/release/instrument-detector
(`source scripts/env.sh && cargo build --release`).
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, time

BIN = os.path.abspath(os.environ.get("INSTRUMENT_DETECTOR_BIN", "target/release/instrument-detector"))


def run(*args, **kw):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True, **kw)


def results(db):
    out = run("query", "--db", db, "--format", "json", "--limit", "10000000").stdout
    return {r["path"]: r for r in json.loads(out)}


def truth(path):
    return os.path.basename(os.path.dirname(path))


def wait_for(db, predicate, timeout=900):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            rows = results(db)
            if predicate(rows):
                return rows
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.5)
    sys.exit(f"timed out waiting on {db}")


def accuracy(rows, paths):
    right = sum(1 for p in paths if rows[p]["label"] == truth(p))
    return right, len(paths)


def fold(args, k, seed, work):
    lib = os.path.join(work, f"fold{k}", "library")
    shutil.copytree(args.photos, lib)
    db = os.path.join(work, f"fold{k}", "library.db")
    model = ["--model", args.model] if args.model else []
    daemon = subprocess.Popen([BIN, "watch", lib, "--db", db, "-q", *model], stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(lib) for f in fs)
        rows = wait_for(db, lambda r: len(r) >= len(files))
        first = time.time() - t0
        rng = random.Random(seed)
        shuffled = files[:]
        rng.shuffle(shuffled)
        half = set(shuffled[: len(files) // 2]) if args.folds > 1 else set(files)
        wrong = [p for p in sorted(half) if rows[p]["label"] != truth(p)]
        chosen = rng.sample(wrong, min(args.corrections, len(wrong)))
        t_loop = time.time()
        for p in chosen:
            run("correct", p, truth(p), "--db", db)
        t_corrected = time.time()
        cmd = ["retrain", "--db", db, "--data", args.data, "--json"] + model
        if args.cache:
            cmd += ["--cache", args.cache]
        cmd += args.retrain_arg
        report = json.loads(run(*cmd).stdout)
        t_retrained = time.time()
        before = rows
        # retrain put its model in use (<db>.models/current.onnx): a daemon
        # started without --model swaps to it on its own; reclassify, given
        # no --model, takes it and redoes what the old model classified.
        run("reclassify", "--stale", "--db", db)
        after = results(db)
        t_done = time.time()
        untouched = [p for p in files if p not in set(chosen)]
        other_half = [p for p in files if p not in half]
        models = {r.get("model_sha256", "?")[:12] for r in after.values()}
        return {
            "fold": k,
            "seed": seed,
            "photos": len(files),
            "wrong_in_half": len(wrong),
            "corrected": len(chosen),
            "first_classification_s": round(first, 1),
            "correct_s": round(t_corrected - t_loop, 1),
            "retrain_s": round(t_retrained - t_corrected, 1),
            "reclassify_s": round(t_done - t_retrained, 1),
            "loop_s": round(t_done - t_loop, 1),
            "untouched_before": accuracy(before, untouched),
            "untouched_after": accuracy(after, untouched),
            "other_half_before": accuracy(before, other_half) if other_half else None,
            "other_half_after": accuracy(after, other_half) if other_half else None,
            # What the new model itself answers on the corrected photos
            # (`query` shows the correction there, whatever the model says).
            "corrections_learnt": report["corrections_right_after"],
            "valid_before_after": (report["valid_right_before"], report["valid_right_after"], report["valid_photos"]),
            "features_computed": report["features_computed"],
            "feature_s": round(report["feature_seconds"], 1),
            "fit_s": round(report["fit_seconds"], 2),
            "models_seen": sorted(models),
        }
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="../shared/data/real-photos-valid")
    ap.add_argument("--data", default="../shared/data/instruments")
    ap.add_argument("--model")
    ap.add_argument("--corrections", type=int, default=20)
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", help="share the feature cache between folds")
    ap.add_argument("--retrain-arg", action="append", default=[], help="passed on to retrain (repeatable)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="measure-retrain-")
    out = [fold(args, k, args.seed + k, work) for k in range(args.folds)]
    for r in out:
        print(json.dumps(r))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
