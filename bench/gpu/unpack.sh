# Sourced by the bench/gpu scripts: unpacks the gzipped release binaries that
# `cargo xtask bench-gpu` left in .gpu/ into $BIN (default /tmp/clip-bin) and sets the
# library path for cudarc. After it: $BIN/clip, $BIN/clip-noautotune, $BIN/clip-plain.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=${BIN:-/tmp/clip-bin}
mkdir -p "$BIN"
for gz in .gpu/*.gz; do
  [ -e "$gz" ] || [ -x "$BIN/clip" ] || { echo "no .gpu/*.gz: run 'cargo xtask bench-gpu' and carry [\".gpu\"]" >&2; exit 2; }
  [ -e "$gz" ] || continue
  name=$(basename "$gz" .gz)
  [ -x "$BIN/$name" ] || { gunzip -c "$gz" > "$BIN/$name" && chmod +x "$BIN/$name"; }
done
