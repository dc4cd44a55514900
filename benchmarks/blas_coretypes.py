"""NumPy's float32 matrix products on the shapes of the speed report, under each OpenBLAS kernel set.

    for ct in "" Haswell SkylakeX Cooperlake SapphireRapids; do
        OPENBLAS_CORETYPE=$ct python benchmarks/blas_coretypes.py; done

OpenBLAS picks its kernels for the CPU at load time; ``OPENBLAS_CORETYPE`` (read before NumPy is
imported, so it must be set in the environment) overrides the choice. One line per run: best of
30 calls (8 for the large shapes) of ``a @ b`` for each shape, ms and GFLOP/s. Results and what
they mean are in benchmarks/README.md ("Which OpenBLAS kernels").
"""
import time, numpy as np, os
g = np.random.default_rng(0)
shapes = {"mlp 256x784@784x256": (256, 784, 256), "mlp 256x256@256x256": (256, 256, 256),
          "mlp dW 784x256@256x256": (784, 256, 256),
          "conv2 fwd 64x288@288x25088": (64, 288, 25088), "conv2 dW 64x25088@25088x288": (64, 25088, 288),
          "conv2 dcols 288x64@64x25088": (288, 64, 25088), "square 2048": (2048, 2048, 2048)}
out = []
for name, (m, k, n) in shapes.items():
    a = g.standard_normal((m, k), dtype=np.float32); b = g.standard_normal((k, n), dtype=np.float32)
    a @ b
    reps = 30 if m * k * n < 1e8 else 8
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    out.append(f"{name}: {best*1e3:.3f} ms {2*m*k*n/best/1e9:.0f} GF/s")
print(os.environ.get("OPENBLAS_CORETYPE", "auto"), " | ".join(out))
