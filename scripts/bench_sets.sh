# Sourced by the benchmark scripts: the image sets, made once under $WORK.
#   SET224: the first $N224 images of $DATA/train (copies: `classify` skips symbolic links);
#   PHOTOS: $NPHOTOS full-size photos made from dataset images (scripts/make_bench_photos.py).
SET224=$WORK/set224-$N224
if [[ ! -d $SET224 ]]; then
    mkdir -p "$SET224"
    find "$DATA/train" -name '*.jpg' | sort | awk -v n="$N224" 'NR <= n' | nl -nrz -w6 | while read -r i f; do cp "$f" "$SET224/$i.jpg"; done
fi
PHOTOS=$WORK/photos-$NPHOTOS
[[ -d $PHOTOS ]] || "$PY" scripts/make_bench_photos.py "$DATA/train" "$PHOTOS" "$NPHOTOS"
