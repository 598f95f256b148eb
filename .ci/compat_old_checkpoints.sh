#!/usr/bin/env bash
# Checkpoints written by an older commit load and resume with this tree, and every command gives what the older
# code gives on them: a tiny run trained by OLD, resumed by OLD and by this tree in turn (weights, metrics.csv,
# test metrics), then zf-eval, zf-visualize top9 and zf-analyze occlusion of both on OLD's checkpoint.
#   bash .ci/compat_old_checkpoints.sh abbe613      (uses this clone's .venv; ~90 s on 2 cores)
set -euo pipefail
NEW="$(cd "$(dirname "$0")/.." && pwd)"; BIN=$NEW/.venv/bin
W=$(mktemp -d); OLD=$W/old
git -C "$NEW" worktree add --detach "$OLD" "${1:?usage: $0 <older commit>}" > /dev/null
trap 'git -C "$NEW" worktree remove --force "$OLD"' EXIT
export ZF_LOG_DIR=$W/logs WANDB_SILENT=true ZF_CACHE_DIR=$W/cache
TINY="model.net.width_multiplier=0.125 data.train_per_class=20 data.val_per_class=4 data.test_per_class=4 data.batch_size=20 data.num_workers=0 ~callbacks.progress_bar logger=csv trainer.deterministic=true"
old() { (cd $OLD && PYTHONPATH=$OLD $BIN/python -c "import sys, zf_lightning; assert zf_lightning.__file__.startswith('$OLD'), zf_lightning.__file__; from zf_lightning.cli.$1 import main; sys.argv=sys.argv[1:]; main()" "$@"); }
new() { (cd $NEW && $BIN/python -c "import sys, zf_lightning; assert zf_lightning.__file__.startswith('$NEW'), zf_lightning.__file__; from zf_lightning.cli.$1 import main; sys.argv=sys.argv[1:]; main()" "$@"); }
old train $TINY trainer.max_epochs=2 hydra.run.dir=$W/run_old > $W/old_train.log 2>&1
cp -a $W/run_old $W/run_before  # the same directory resumed by each code in turn (checkpoints record their dir)
CK=$W/run_before/checkpoints/last.ckpt
old train $TINY trainer.max_epochs=3 hydra.run.dir=$W/run_old ckpt_path=last > $W/old_resume.log 2>&1
mv $W/run_old $W/run_old_done; cp -a $W/run_before $W/run_old
new train $TINY trainer.max_epochs=3 hydra.run.dir=$W/run_old ckpt_path=last > $W/new_resume.log 2>&1
mv $W/run_old $W/run_new; mv $W/run_old_done $W/run_old
old evaluate ckpt_path=$CK data.test_per_class=4 data.num_workers=0 logger=csv hydra.run.dir=$W/eval_old > $W/old_eval.log 2>&1 || true
new evaluate ckpt_path=$CK data.test_per_class=4 data.num_workers=0 logger=csv hydra.run.dir=$W/eval_new > $W/new_eval.log 2>&1 || true
$BIN/python - <<PY
import json, pathlib, torch
W = pathlib.Path("$W")
def summ(d): return json.loads((W / d / "summary.json").read_text())
a, b = summ("run_old"), summ("run_new")
print("resume status", a["status"], b["status"])
print("old test", a.get("test"), "\nnew test", b.get("test"))
wa = torch.load(W / "run_old/checkpoints/last.ckpt", weights_only=True)["state_dict"]
wb = torch.load(W / "run_new/checkpoints/last.ckpt", weights_only=True)["state_dict"]
print("weights bit-equal after resume:", all(torch.equal(wa[k], wb[k]) for k in wa) and wa.keys() == wb.keys())
ca = (W / "run_old/csv/metrics.csv").read_text(); cb = (W / "run_new/csv/metrics.csv").read_text()
print("metrics.csv equal:", ca == cb)
for d in ("eval_old", "eval_new"):
    p = W / d / "summary.json"
    print(d, json.loads(p.read_text()).get("test") if p.exists() else "no summary")
PY
for c in old new; do
  $c visualize top9 ckpt_path=$CK data.val_per_class=4 data.num_workers=0 logger=csv maps_per_layer=2 hydra.run.dir=$W/top9_$c > $W/${c}_top9.log 2>&1
  $c analyze occlusion ckpt_path=$CK data.val_per_class=4 data.num_workers=0 logger=csv hydra.run.dir=$W/occ_$c > $W/${c}_occ.log 2>&1 || echo "$c occlusion failed"
done
$BIN/python - <<PY
import pathlib, numpy as np, json
W = pathlib.Path("$W")
for kind in ("top9", "occ"):
    a, b = W / f"{kind}_old", W / f"{kind}_new"
    names = sorted(p.relative_to(a) for p in a.rglob("*.npz"))
    print(kind, "npz files", [str(n) for n in names], "same set:", names == sorted(p.relative_to(b) for p in b.rglob("*.npz")))
    for n in names:
        x, y = np.load(a / n), np.load(b / n)
        diffs = {k: ("shape" if x[k].shape != y[k].shape else (0 if x[k].dtype.kind in "USO" and (x[k] == y[k]).all() else ("differ" if x[k].dtype.kind in "USO" else float(np.abs(x[k].astype(float) - y[k].astype(float)).max())))) for k in x.files}
        print(" ", n, "keys equal:", sorted(x.files) == sorted(y.files), "max |diff|:", {k: v for k, v in diffs.items() if v != 0} or 0)
    pa, pb = sorted(a.rglob("*.png")), sorted(b.rglob("*.png"))
    print(" png same bytes:", [p.read_bytes() == (b / p.relative_to(a)).read_bytes() for p in pa])
PY
