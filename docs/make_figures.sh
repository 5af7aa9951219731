#!/usr/bin/env bash
# Regenerate the comparison table and figures of docs/analysis.md from real runs.
#
#   docs/make_figures.sh                      # trains quick-fc, quick-cnn and a logreg baseline
#   docs/make_figures.sh FC_RUN CNN_RUN LOGREG_RUN   # reuse three finished run folders
#
# Writes docs/figures/: compare.txt (the table), compare_curves.svg (both networks' curves),
# quick-cnn-confusion.png and quick-cnn-mistakes.png. Needs the real Fashion-MNIST data.
set -euo pipefail
cd "$(dirname "$0")/.."
fl=${FASHIONLAB:-.venv/bin/fashionlab}
if [ $# -eq 3 ]; then
    fc=$1 cnn=$2 logreg=$3
else
    out=$(mktemp -d)
    fc=$($fl train quick-fc --out "$out" --quiet --no-plots | sed -n 's/^run: //p')
    cnn=$($fl train quick-cnn --out "$out" --quiet --no-plots | sed -n 's/^run: //p')
    logreg=$($fl baseline logreg --train-size 60000 --out "$out" --quiet --no-plots | sed -n 's/^run: //p')
fi
mkdir -p docs/figures
$fl compare "$fc" "$cnn" "$logreg" --plot docs/figures/compare_curves.svg \
    | tee docs/figures/compare.txt
plots=$(mktemp -d)
$fl plot "$cnn" --out "$plots"
cp "$plots/confusion_test.png" docs/figures/quick-cnn-confusion.png
cp "$plots/mistakes.png" docs/figures/quick-cnn-mistakes.png
ls -l docs/figures
