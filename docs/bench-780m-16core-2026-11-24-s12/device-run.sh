# device calls (session 12): does patch 0016 (decode prefetch of the SSM state and of Q6_K rows) pay or hurt on the
# 16-core Xeon? Build the 0001-0015 tree (A) and A + 0016 (B) natively, as the product builds (VNNI kernels there),
# make the 780M BM1 (Q6_K head), TQ2_0 and all-Q6_K files, then llama-bench A and B interleaved.
# $1: build | bench; $2: threads for bench.
set -e
S=$PWD/.device-stage; W=/tmp/w; R=$OUT
t0=$(date +%s)
if [ "$1" = build ]; then
  lscpu > $R/lscpu.txt
  mkdir -p $W && rm -rf $W/A $W/B && mkdir $W/A $W/B
  tar xJf $S/llama-s12-0015.tar.xz -C $W/A
  cp -r $W/A/llama.cpp $W/B/ && (cd $W/B/llama.cpp && patch -p1 < $S/0016-decode-stream-prefetch.patch > /dev/null)
  for v in A B; do
    cmake -S $W/$v/llama.cpp -B $W/$v/b -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DGGML_BLAS=OFF -DGGML_METAL=OFF -DGGML_CUDA=OFF > $R/build-$v.log 2>&1
    cmake --build $W/$v/b -j16 --target llama-bench llama-quantize test-bm1 >> $R/build-$v.log 2>&1
    echo "build $v $(( $(date +%s) - t0 )) s"
  done
  $W/B/b/bin/test-bm1 2>/dev/null | tail -1 > $R/test-bm1-B.txt
  rm -rf $W/pkg && mkdir -p $W/pkg && cp -r bimamba_edge $W/pkg/ && cp -r convert $W/pkg/bimamba_edge/convert
  cp -r ggml-patches $W/pkg/
  export PYTHONPATH=$W/pkg:$W/A/llama.cpp/gguf-py BIMAMBA_EDGE_CACHE=$W/cache
  (cd $W && python3 -c "
import json, os
from pathlib import Path
from bimamba_edge.build import patches_key
c = Path('$W/cache'); c.mkdir(exist_ok=True)
src = c / f'patched-{patches_key()}'
if not src.exists(): os.symlink('$W/B/llama.cpp', src)
(c / 'runtime.json').write_text(json.dumps(dict(key='device', source=str(src), build_dir='$W/B/b', flags=[])))
from bimamba_edge.testing import FixtureSpec, write_checkpoint, PAPER_SHAPES
write_checkpoint(Path('$W/780m'), FixtureSpec(PAPER_SHAPES['780m'], dtype='bfloat16', tokenizer=None))")
  cp $S/tokenizer.model $W/780m/
  (cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/bm1-q6k.gguf --head-type q6_K 2>&1 | tail -1)
  (cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/f16.gguf --outtype f16 2>&1 | tail -1)
  $W/B/b/bin/llama-quantize --token-embedding-type q6_K --output-tensor-type q6_K $W/f16.gguf $W/TQ2_0.gguf TQ2_0 > /dev/null 2>&1
  $W/B/b/bin/llama-quantize $W/f16.gguf $W/Q6_K.gguf Q6_K > /dev/null 2>&1
  ls -la $W/*.gguf
  echo "models $(( $(date +%s) - t0 )) s"
else
  T=${2:-1,4,16}
  for r in 1 2; do for m in bm1-q6k TQ2_0 Q6_K; do for v in A B; do
    $W/$v/b/bin/llama-bench -m $W/$m.gguf -t $T -p 0 -n 128 -r 2 -o json > $R/$m-$v-r$r.json 2>/dev/null
    python3 -c "
import json,sys
print('$m $v r$r', ' '.join(f\"t{x['n_threads']}={x['avg_ts']:.1f}\" for x in json.load(open('$R/$m-$v-r$r.json'))))"
  done; done; done
  echo "bench $(( $(date +%s) - t0 )) s"
fi
