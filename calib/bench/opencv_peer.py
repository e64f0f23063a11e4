#!/usr/bin/env python3
"""OpenCV peer for `bevrt-tool calib-bench`: findChessboardCorners + cornerSubPix (11x11, 30 it,
eps 1e-3) + calibrateCamera on a folder of chessboard images; prints one JSON line.

usage: opencv_peer.py DIR [--board 9x6] [--square 0.025] [--dump-corners FILE]
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
    i = 1
    while i < len(args):
        if args[i] == "--board":
            a, b = args[i + 1].split("x"); board = (int(a), int(b)); i += 2
        elif args[i] == "--square":
            square = float(args[i + 1]); i += 2
        elif args[i] == "--dump-corners":
            dump = args[i + 1]; i += 2
        else:
            raise SystemExit(f"unknown arg {args[i]}")
    files = sorted(glob.glob(os.path.join(d, "*.jpg")) + glob.glob(os.path.join(d, "*.png")))
    imgs = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]  # decoding not timed
    objp = np.zeros((board[0] * board[1], 3), np.float32)
    objp[:, :2] = np.mgrid[0:board[0], 0:board[1]].T.reshape(-1, 2) * square
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    t0 = time.perf_counter()
    obj, img, used = [], [], []
    for f, im in zip(files, imgs):
        ok, c = cv2.findChessboardCorners(im, board)
        if not ok:
            continue
        c = cv2.cornerSubPix(im, c, (11, 11), (-1, -1), crit)
        obj.append(objp); img.append(c); used.append(os.path.basename(f))
    t1 = time.perf_counter()
    rms, K, dist, rv, tv = cv2.calibrateCamera(obj, img, imgs[0].shape[::-1], None, None)
    t2 = time.perf_counter()
    if dump:
        json.dump({u: c.reshape(-1, 2).tolist() for u, c in zip(used, img)}, open(dump, "w"))
    print(json.dumps({
        "opencv_version": cv2.__version__, "threads": cv2.getNumThreads(),
        "views_used": len(used), "detect_s": t1 - t0, "solve_s": t2 - t1, "total_s": t2 - t0,
        "rms_px": rms, "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
        "dist": dist.ravel().tolist(),
    }))


if __name__ == "__main__":
    main()
