# device call (session 13): patch 0019 (the batch conv step in SIMD lanes) on this host's native AVX-512 build,
# A: patches 0001-0018, B: 0001-0019, default kernel rule (VNNI). test-bm1 of B runs the conv test with 16 lanes;
# then llama-bench pp512 / tg128 at 1, 4 and 16 threads, interleaved.
set -e
S=$PWD/.device-stage; W=/tmp/w; R=$OUT
t0=$(date +%s)
mkdir -p $W && rm -rf $W/A $W/B && mkdir $W/A $W/B
tar xJf $S/llama-s12-0016.tar.xz -C $W/A
(cd $W/A/llama.cpp && patch -p1 < $S/0017.patch > /dev/null && patch -p1 < $S/0018.patch > /dev/null)
cp -r $W/A/llama.cpp $W/B/ && (cd $W/B/llama.cpp && patch -p1 < $S/0019.patch > /dev/null)
for v in A B; do
  cmake -S $W/$v/llama.cpp -B $W/$v/b -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_BLAS=OFF -DGGML_METAL=OFF -DGGML_CUDA=OFF > $W/build-$v.log 2>&1
  cmake --build $W/$v/b -j16 --target llama-bench test-bm1 >> $W/build-$v.log 2>&1
  echo "build $v $(( $(date +%s) - t0 )) s"
done
$W/B/b/bin/test-bm1 > $W/test-bm1-B.log 2>&1 || true
grep -E "FAIL|ssm_conv|passed" $W/test-bm1-B.log | tail -5 | tee $R/test-bm1-B.txt
grep -m3 -E "AVX512|features" $W/build-B.log > /dev/null || true
rm -rf $W/pkg && mkdir -p $W/pkg && cp -r bimamba_edge $W/pkg/ && cp -r convert $W/pkg/bimamba_edge/convert && cp -r ggml-patches $W/pkg/
export PYTHONPATH=$W/pkg:$W/A/llama.cpp/gguf-py BIMAMBA_EDGE_CACHE=$W/cache
(cd $W && python3 -c "
import json, os
from pathlib import Path
from bimamba_edge.build import patches_key
c = Path('$W/cache'); c.mkdir(exist_ok=True)
src = c / f'patched-{patches_key()}'
if not src.exists(): os.symlink('$W/A/llama.cpp', src)
(c / 'runtime.json').write_text(json.dumps(dict(key='device', source=str(src), build_dir='$W/A/b', flags=[])))
from bimamba_edge.testing import FixtureSpec, write_checkpoint, PAPER_SHAPES
write_checkpoint(Path('$W/780m'), FixtureSpec(PAPER_SHAPES['780m'], dtype='bfloat16', tokenizer=None))")
cp $S/tokenizer.model $W/780m/
(cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/bm1-q6k.gguf --head-type q6_K 2>&1 | tail -1)
echo "model $(( $(date +%s) - t0 )) s"
show() { python3 -c "
import json
print('$1', ' '.join(f\"{'pp' if x['n_prompt'] else 'tg'}t{x['n_threads']}={x['avg_ts']:.1f}\" for x in json.load(open('$2'))))"; }
for r in 1 2; do for v in A B; do
  $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 1,4,16 -p 512 -n 128 -r 2 -o json > $R/conv-$v-r$r.json 2>/dev/null
  show "$v r$r" $R/conv-$v-r$r.json
done; done
echo "bench $(( $(date +%s) - t0 )) s"
# a second call on the same warm machine: two more rounds, the order alternating (B first in round 3)
W=/tmp/w; R=$OUT; for r in 3 4; do if [ $r = 3 ]; then o="B A"; else o="A B"; fi; for v in $o; do $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 1,4,16 -p 512 -n 128 -r 2 -o json > $R/conv-$v-r$r.json 2>/dev/null; python3 -c "
import json
print('$v r$r', ' '.join(f\"{'pp' if x['n_prompt'] else 'tg'}t{x['n_threads']}={x['avg_ts']:.1f}\" for x in json.load(open('$R/conv-$v-r$r.json'))))"; done; done
