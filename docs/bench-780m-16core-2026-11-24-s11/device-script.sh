# device call (session 11): build the patched tree (0001-0014, patch 0013 with session 11's three-plane tables)
# natively with the LUT forced on (ggml-cpu-impl.h otherwise keeps it off where AVX-512 VNNI is), run test-bm1
# there, make the 780M BM1 (Q6_K head) and stock TQ2_0 files if missing, then llama-bench BM1 with --repack 0,1
# (VNNI sign-identity kernels on the file layout vs the LUT on the repacked one) and TQ2_0 at the threads in $1.
set -e
S=$PWD/.device-stage; W=/tmp/w; R=$OUT; THREADS=${1:-1,2}
t0=$(date +%s)
lscpu > $R/lscpu.txt
if [ ! -x $W/b/bin/llama-bench ]; then
  mkdir -p $W && rm -rf $W/llama.cpp && tar xJf $S/llama-s11.tar.xz -C $W
  sed -i 's/#if (defined(__AVX2__) \&\& !defined(GGML_BM1_AVX512)) || \\/#if defined(__AVX2__) || \\/' $W/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h
  grep -n -A2 'define GGML_BM1_AVX512 1' $W/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h > $R/lut-rule.txt
  cmake -S $W/llama.cpp -B $W/b -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_BLAS=OFF -DGGML_METAL=OFF -DGGML_CUDA=OFF > $R/build.log 2>&1
  cmake --build $W/b -j16 --target llama-bench llama-quantize test-bm1 >> $R/build.log 2>&1
  $W/b/bin/test-bm1 2>/dev/null | tail -2 > $R/test-bm1.txt
fi
echo "build $(( $(date +%s) - t0 )) s"
if [ ! -f $W/TQ2_0.gguf ]; then
  rm -rf $W/pkg && mkdir -p $W/pkg && cp -r bimamba_edge $W/pkg/ && cp -r convert $W/pkg/bimamba_edge/convert
  cp -r ggml-patches $W/pkg/
  export PYTHONPATH=$W/pkg:$W/llama.cpp/gguf-py BIMAMBA_EDGE_CACHE=$W/cache
  (cd $W && python3 -c "
import json, os
from pathlib import Path
from bimamba_edge.build import patches_key
c = Path('$W/cache'); c.mkdir(exist_ok=True)
src = c / f'patched-{patches_key()}'
if not src.exists(): os.symlink('$W/llama.cpp', src)
(c / 'runtime.json').write_text(json.dumps(dict(key='device', source=str(src), build_dir='$W/b', flags=[])))
from bimamba_edge.testing import FixtureSpec, write_checkpoint, PAPER_SHAPES
write_checkpoint(Path('$W/780m'), FixtureSpec(PAPER_SHAPES['780m'], dtype='bfloat16', tokenizer=None))")
  cp $S/tokenizer.model $W/780m/
  (cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/bm1-q6k.gguf --head-type q6_K 2>&1 | tail -1)
  (cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/f16.gguf --outtype f16 2>&1 | tail -1)
  $W/b/bin/llama-quantize --token-embedding-type q6_K --output-tensor-type q6_K $W/f16.gguf $W/TQ2_0.gguf TQ2_0 > /dev/null 2>&1
fi
echo "models $(( $(date +%s) - t0 )) s"
T=${THREADS//,/-}
$W/b/bin/llama-bench -m $W/bm1-q6k.gguf --repack 0,1 -t $THREADS -p 512 -n 128 -r 2 -o json > $R/bm1-t$T.json 2> $R/bench-bm1.err
echo "bm1 $(( $(date +%s) - t0 )) s"
$W/b/bin/llama-bench -m $W/TQ2_0.gguf -t $THREADS -p 512 -n 128 -r 2 -o json > $R/tq2-t$T.json 2> $R/bench-tq2.err
echo "tq2 $(( $(date +%s) - t0 )) s"
python3 - $R/bm1-t$T.json $R/tq2-t$T.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    for r in json.load(open(f)):
        print(r["model_type"][:24], "rpk", r.get("repack"), "t", r["n_threads"], "pp" if r["n_prompt"] else "tg", round(r["avg_ts"], 1), "+-", round(r["stddev_ts"], 1))
PY
