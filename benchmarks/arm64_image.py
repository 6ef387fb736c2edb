"""First answer of the Graviton (arm64) server image under qemu emulation, against the amd64 image natively.

"First answer": container start -> server ready -> one pack loaded (the Python-backend stub imports torch)
-> one KServe v2 gRPC inference answered and equal to torch on the host. The baseline is the same image
built for this machine's own architecture, measured in the same run and interleaved (amd64, arm64,
amd64, arm64, ...), so the ratio says what emulation costs here; neither figure says how fast a real
Graviton is (native there). Needs root and podman; builds an image that is missing (cached builds take
seconds, a cold arm64 build many minutes: `make images ARCH=arm64` first).

    python -m benchmarks.arm64_image              # 2 rounds
    python -m benchmarks.arm64_image --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from deploy import images as builder
from deploy.first_answer import first_answer
from deploy.podman import ensure_emulation, ensure_tools, image_exists
from model_repository.generator import example_inputs, generate
from model_repository.packing import build_repository

REPO_ROOT = Path(__file__).resolve().parents[1]


def _image(arch: str) -> str:
    tag = builder.SPECS["server-cpu"].tag_for(arch)
    return tag if image_exists(tag) else builder.build("server-cpu", arch=arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "arm64_image.json")
    options = parser.parse_args(argv)
    ensure_tools()
    ensure_emulation("arm64")
    native, emulated = builder.host_arch(), "arm64"
    images = {native: _image(native), emulated: _image(emulated)}
    with tempfile.TemporaryDirectory(prefix="arm64-bench-") as tmp:
        root = Path(tmp)
        manifest = generate(3, root / "models", seed=21)
        plans = build_repository(root / "models", root / "repository", pack_size=8)
        entry = next(m for m in manifest.models if m.architecture == "mlp")
        pack = next(p.name for p in plans if any(m.id == entry.id for m in p.members))
        (x,) = example_inputs(entry, batch=4, seed=5)
        with torch.inference_mode():
            expected = torch.jit.load(str(root / "models" / entry.file))(torch.from_numpy(x)).numpy()
        runs: dict[str, list[dict]] = {native: [], emulated: []}
        for round_ in range(options.rounds):
            for arch in (native, emulated):
                answer = first_answer(images[arch], root / "repository", pack, entry.id, x)
                np.testing.assert_allclose(answer.output, expected, rtol=1e-4, atol=1e-5)
                load = os.getloadavg()[0]
                runs[arch].append({"ready_s": answer.ready_s, "loaded_s": answer.loaded_s,
                                   "answered_s": answer.answered_s, "load_average": load})
                print(f"round {round_ + 1} {arch:5} ({answer.architecture}): ready {answer.ready_s:6.1f}s  "
                      f"loaded {answer.loaded_s:6.1f}s  first answer {answer.answered_s:6.1f}s  load {load:.1f}")
    median = {arch: {key: statistics.median(r[key] for r in rs) for key in ("ready_s", "loaded_s", "answered_s")}
              for arch, rs in runs.items()}
    ratio = median[emulated]["answered_s"] / median[native]["answered_s"]
    print(f"median first answer: {native} {median[native]['answered_s']:.1f}s, {emulated} (emulated) "
          f"{median[emulated]['answered_s']:.1f}s: {ratio:.1f}x")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"images": images, "runs": runs, "median": median,
                                       "ratio_first_answer": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
