#!/usr/bin/env python3
"""OpenCV peer for `bevrt-tool calib-bench`: findChessboardCorners + cornerSubPix (11x11, 30 it,
eps 1e-3) + calibrateCamera on a folder of chessboard images; prints one JSON line.

usage: opencv_peer.py DIR [--board 9x6] [--square 0.025] [--dump-corners FILE] [--window-sweep 3,5,7,11]

--window-sweep repeats cornerSubPix + calibrateCamera (untimed) for each half window and reports
each result with its worst view, plus the smallest corner spacing over all views: OpenCV's answer
depends on that window, and a window wider than the spacing pulls corners onto their neighbours'
edges.
Needs: pip install opencv-python-headless numpy
"""
import glob, json, os, sys, time

import cv2
import numpy as np


def main():
    args = sys.argv[1:]
    d = args[0]
    board = (9, 6)
    square = 0.025
    dump = None
    sweep = []
    i = 1
    while i < len(args):
        if args[i] == "--board":
            a, b = args[i + 1].split("x"); board = (int(a), int(b)); i += 2
        elif args[i] == "--square":
            square = float(args[i + 1]); i += 2
        elif args[i] == "--dump-corners":
            dump = args[i + 1]; i += 2
        elif args[i] == "--window-sweep":
            sweep = [int(w) for w in args[i + 1].split(",")]; i += 2
        else:
            raise SystemExit(f"unknown arg {args[i]}")
    files = sorted(glob.glob(os.path.join(d, "*.jpg")) + glob.glob(os.path.join(d, "*.png")))
    imgs = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]  # decoding not timed
    objp = np.zeros((board[0] * board[1], 3), np.float32)
    objp[:, :2] = np.mgrid[0:board[0], 0:board[1]].T.reshape(-1, 2) * square
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    t0 = time.perf_counter()
    obj, img, used, found = [], [], [], []
    for f, im in zip(files, imgs):
        ok, c = cv2.findChessboardCorners(im, board)
        if not ok:
            continue
        if sweep:  # unrefined corners for the sweep (cornerSubPix refines in place)
            found.append((im, c.copy()))
        c = cv2.cornerSubPix(im, c, (11, 11), (-1, -1), crit)
        obj.append(objp); img.append(c); used.append(os.path.basename(f))
    t1 = time.perf_counter()
    rms, K, dist, rv, tv = cv2.calibrateCamera(obj, img, imgs[0].shape[::-1], None, None)
    t2 = time.perf_counter()
    if dump:
        json.dump({u: c.reshape(-1, 2).tolist() for u, c in zip(used, img)}, open(dump, "w"))
    def min_spacing(c):
        g = c.reshape(board[1], board[0], 2)
        return float(min(np.linalg.norm(np.diff(g, axis=1), axis=2).min(),
                         np.linalg.norm(np.diff(g, axis=0), axis=2).min()))

    spacings = [min_spacing(c) for _, c in found]
    tight = int(np.argmin(spacings)) if spacings else 0
    swept = []
    for w in sweep:
        pts = [cv2.cornerSubPix(im, c.copy(), (w, w), (-1, -1), crit) for im, c in found]
        r, k, dd, _, _, _, _, per_view = cv2.calibrateCameraExtended(
            obj, pts, imgs[0].shape[::-1], None, None)
        worst = int(np.argmax(per_view[:, 0]))
        swept.append({"half_window": w, "rms_px": r, "fx": k[0, 0], "fy": k[1, 1],
                      "cx": k[0, 2], "cy": k[1, 2], "worst_view": used[worst],
                      "worst_view_rms_px": float(per_view[worst, 0])})
    print(json.dumps({
        "opencv_version": cv2.__version__, "threads": cv2.getNumThreads(),
        "views_used": len(used), "detect_s": t1 - t0, "solve_s": t2 - t1, "total_s": t2 - t0,
        "rms_px": rms, "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
        "dist": dist.ravel().tolist(), "window_sweep": swept,
        "min_corner_spacing_px": spacings[tight] if spacings else None,
        "min_corner_spacing_view": used[tight] if spacings else None,
    }))


if __name__ == "__main__":
    main()
