#!/usr/bin/env python3
"""Plot restart time vs history length, with and without snapshot, as a PNG.

Reads the JSON of `ci-tools bench --json --growth` (its "growth" rows) and
writes a PNG with a tiny pure-python PNG writer (stdlib only: zlib, struct).

    python3 tools/plot_restart.py bench/growth.json bench/restart.png
"""
import json
import math
import struct
import sys
import zlib

W, H = 640, 420
ML, MR, MT, MB = 70, 20, 30, 50

# 5x7 bitmap font for digits and a few letters used in labels.
FONT = {
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "3": ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    "4": ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "6": ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    "7": ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    "8": ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    "9": ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
    "e": ["00000", "00000", "01110", "10001", "11111", "10000", "01110"],
    "m": ["00000", "00000", "11010", "10101", "10101", "10101", "10101"],
    "s": ["00000", "00000", "01111", "10000", "01110", "00001", "11110"],
    "v": ["00000", "00000", "10001", "10001", "10001", "01010", "00100"],
    "n": ["00000", "00000", "10110", "11001", "10001", "10001", "10001"],
    "t": ["01000", "01000", "11100", "01000", "01000", "01001", "00110"],
    "o": ["00000", "00000", "01110", "10001", "10001", "10001", "01110"],
    "p": ["00000", "00000", "11110", "10001", "11110", "10000", "10000"],
    "a": ["00000", "00000", "01110", "00001", "01111", "10001", "01111"],
    "h": ["10000", "10000", "10110", "11001", "10001", "10001", "10001"],
    "i": ["00100", "00000", "01100", "00100", "00100", "00100", "01110"],
    "r": ["00000", "00000", "10110", "11001", "10000", "10000", "10000"],
    "w": ["00000", "00000", "10001", "10001", "10101", "10101", "01010"],
    "y": ["00000", "00000", "10001", "10001", "01111", "00001", "01110"],
    "l": ["01100", "00100", "00100", "00100", "00100", "00100", "01110"],
    "g": ["00000", "00000", "01111", "10001", "01111", "00001", "01110"],
    "/": ["00001", "00010", "00010", "00100", "01000", "01000", "10000"],
    " ": ["00000"] * 7,
    "-": ["00000", "00000", "00000", "11111", "00000", "00000", "00000"],
    ".": ["00000", "00000", "00000", "00000", "00000", "01100", "01100"],
    ",": ["00000", "00000", "00000", "00000", "01100", "00100", "01000"],
    "(": ["00010", "00100", "01000", "01000", "01000", "00100", "00010"],
    ")": ["01000", "00100", "00010", "00010", "00010", "00100", "01000"],
    "^": ["00100", "01010", "10001", "00000", "00000", "00000", "00000"],
}


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray([255] * (w * h * 3))

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def line(self, x0, y0, x1, y1, c, width=1):
        n = int(max(abs(x1 - x0), abs(y1 - y0), 1))
        for k in range(n + 1):
            x = round(x0 + (x1 - x0) * k / n)
            y = round(y0 + (y1 - y0) * k / n)
            for dx in range(-(width // 2), width // 2 + 1):
                for dy in range(-(width // 2), width // 2 + 1):
                    self.set(x + dx, y + dy, c)

    def dot(self, x, y, c, r=3):
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    self.set(round(x) + dx, round(y) + dy, c)

    def text(self, x, y, s, c=(0, 0, 0)):
        for ch in s:
            glyph = FONT.get(ch, FONT[" "])
            for row, bits in enumerate(glyph):
                for col, b in enumerate(bits):
                    if b == "1":
                        self.set(x + col, y + row, c)
            x += 6

    def png(self, path):
        raw = b"".join(
            b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind, data):
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)))
            f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
            f.write(chunk(b"IEND", b""))


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/growth.json"
    dst = sys.argv[2] if len(sys.argv) > 2 else "bench/restart.png"
    rows = json.load(open(src))["growth"]
    series = {
        "restart_ms_snapshot": ((0, 110, 200), "snapshot"),
        "restart_ms_no_snapshot": ((210, 60, 40), "no snapshot"),
    }
    pts = {k: sorted((r["size"], r["median"]) for r in rows if r["figure"] == k) for k in series}
    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v]
    lx0, lx1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    if lx1 == lx0:
        lx1 += 1
    ly0 = math.floor(math.log10(max(min(ys), 1e-3)))
    ly1 = math.ceil(math.log10(max(ys)))
    if ly1 == ly0:
        ly1 += 1
    c = Canvas(W, H)
    pw, ph = W - ML - MR, H - MT - MB

    def X(v):
        return ML + (math.log10(v) - lx0) / (lx1 - lx0) * pw

    def Y(v):
        return MT + ph - (math.log10(max(v, 1e-3)) - ly0) / (ly1 - ly0) * ph

    grey = (220, 220, 220)
    for e in range(lx0, lx1 + 1):
        c.line(X(10 ** e), MT, X(10 ** e), MT + ph, grey)
        c.text(int(X(10 ** e)) - 9, MT + ph + 8, "10^%d" % e)
    for e in range(ly0, ly1 + 1):
        c.line(ML, Y(10 ** e), ML + pw, Y(10 ** e), grey)
        label = "%g" % (10 ** e)
        c.text(ML - 8 - 6 * len(label), int(Y(10 ** e)) - 3, label)
    c.line(ML, MT + ph, ML + pw, MT + ph, (0, 0, 0))
    c.line(ML, MT, ML, MT + ph, (0, 0, 0))
    # The 200 ms target.
    if ly0 <= math.log10(200) <= ly1:
        for x in range(ML, ML + pw, 8):
            c.line(x, Y(200), x + 4, Y(200), (120, 120, 120))
        c.text(ML + pw - 60, int(Y(200)) - 10, "200 ms")
    for k, (color, _) in series.items():
        p = pts[k]
        for (x0, y0), (x1, y1) in zip(p, p[1:]):
            c.line(X(x0), Y(y0), X(x1), Y(y1), color, width=2)
        for x, y in p:
            c.dot(X(x), Y(y), color)
    c.text(ML, 10, "restart ms vs history events (log-log)")
    lx = ML + 20
    for k, (color, name) in series.items():
        c.line(lx, MT + 12, lx + 20, MT + 12, color, width=2)
        c.text(lx + 26, MT + 9, name)
        lx += 40 + 6 * len(name)
    c.text(ML + pw // 2 - 40, H - 18, "history events")
    c.png(dst)
    print("wrote", dst)


if __name__ == "__main__":
    main()
