"""CPU time (time.process_time) per single-photo caption, beam 3, 1 thread, torch path vs capgen.runtime:
less distorted than wall time on a shared machine.

    python benchmarks/runtime_cpu_latency.py EXPORT_DIR      # EXPORT_DIR from capgen export of the bundled model
"""

import sys
import time

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from capgen import Captioner
from capgen.runtime import Runtime

torch.set_num_threads(1)
cap = Captioner.from_pretrained()
rt = Runtime(sys.argv[1], threads=1)
photo = "/tmp/capgen_photo_500x375.jpg"
Image.fromarray(skdata.coffee()).resize((500, 375), Image.BICUBIC).save(photo, quality=90)
pooled, grid = rt.encode([photo])
cfg = cap.decode_config(beam_size=3)
rcfg = rt.decode_config(beam_size=3)


def meas(f, n=30):
    for _ in range(3):
        f()
    c, w = [], []
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        f()
        c.append((time.process_time() - c0) * 1e3)
        w.append((time.perf_counter() - w0) * 1e3)
    return f"cpu p50 {np.percentile(c, 50):.1f} ms, wall p50 {np.percentile(w, 50):.1f} ms"


print("end-to-end torch  ", meas(lambda: cap.caption(photo, beam_size=3)))
print("end-to-end runtime", meas(lambda: rt.caption(photo, beam_size=3)))
print("decode-only torch  ", meas(lambda: cap.forward(pooled, grid, cfg)))
print("decode-only runtime", meas(lambda: rt.decode(pooled, grid, rcfg)))
print("encode-only runtime", meas(lambda: rt.encode([photo])))
