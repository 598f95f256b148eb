#!/usr/bin/env bash
# The README's figures, from the built-in default run: zf-train with no arguments, then zf-visualize on its
# checkpoint. The PNGs are copied into docs/figures/ with a 256-colour palette (PIL's octree quantizer) so that
# each stays under 300 KB in the repository; the run's own files are full colour.
#   bash docs/make_figures.sh            (about 4 minutes on 2 cores; needs the README's install)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$(mktemp -d)/default
ZF_LOG_DIR=$RUN/logs WANDB_SILENT=true zf-train hydra.run.dir=$RUN/train
ZF_LOG_DIR=$RUN/logs WANDB_SILENT=true zf-visualize top9 ckpt_path=$RUN/train/checkpoints/last.ckpt \
  'layers=[5]' maps_per_layer=3 logger=csv hydra.run.dir=$RUN/top9
python - "$RUN" <<'PY'
import json, pathlib, sys
from PIL import Image

run, out = pathlib.Path(sys.argv[1]), pathlib.Path("docs/figures")
copies = {
    run / "top9/top9_layer5.png": "fig2_top9_layer5.png",
    run / "train/feature_evolution/feature_evolution.png": "fig4_feature_evolution.png",
    run / "train/filters/filters_layer1_start.png": "fig6_filters_layer1_start.png",
    run / "train/filters/filters_layer1_end.png": "fig6_filters_layer1_end.png",
}
for source, name in copies.items():
    image = Image.open(source).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    image.save(out / name, optimize=True)
    print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")
summary = json.loads((run / "train/summary.json").read_text())
print("duration_s", summary["duration_s"], "test", summary["test"], "filters", summary["filter_correlation_with_init"])
PY
