"""Writes test/fixtures/numpy/permutations.json: np.random.default_rng(seed).permutation(n)
for a grid of seeds and lengths (first 64 entries and a position-weighted checksum), the reference
for src/util/numpy-random.ts. Run once by hand (python3 with NumPy); not part of the tests."""
import json, sys
import numpy as np

SEEDS = [0, 1, 2, 7, 42, 1234, 2**32 - 1, 2**32, 2**40 + 5, 2**53 - 1]
LENGTHS = [0, 1, 2, 3, 16, 128, 1000, 70000]
cases = []
for seed in SEEDS:
    for n in LENGTHS:
        p = np.random.default_rng(seed).permutation(n).astype(np.int64)
        checksum = int((p * np.arange(1, n + 1, dtype=np.int64)).sum() % (2**31 - 1)) if n else 0
        cases.append({"seed": seed, "n": n, "head": p[:64].tolist(), "checksum": checksum})
state = {str(s): np.random.SeedSequence(s).generate_state(8).tolist() for s in SEEDS}
json.dump({"numpy": np.__version__, "permutations": cases, "seedSequenceState8": state}, sys.stdout, separators=(",", ":"))
