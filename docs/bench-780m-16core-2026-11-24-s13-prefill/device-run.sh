# device call (session 13): LUT prefill thread scaling with shared tables only in one-pass matmuls (A: patches
# 0001-0017) against tables shared in chunks of 16 tokens for batches too (B: A + 0018), the LUT forced on in both
# (this host would run VNNI). One call: build both, make the 780M BM1 file, llama-bench pp512 and tg128, interleaved.
set -e
S=$PWD/.device-stage; W=/tmp/w; R=$OUT
t0=$(date +%s)
mkdir -p $W && rm -rf $W/A $W/B && mkdir $W/A $W/B
tar xJf $S/llama-s12-0016.tar.xz -C $W/A
(cd $W/A/llama.cpp && patch -p1 < $S/0017.patch > /dev/null)
sed -i 's/#if (defined(__AVX2__) \&\& !defined(GGML_BM1_AVX512)) || \\/#if defined(__AVX2__) || \\/' $W/A/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h
grep -n -A2 'define GGML_BM1_AVX512 1' $W/A/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h > $R/lut-rule.txt
cp -r $W/A/llama.cpp $W/B/ && (cd $W/B/llama.cpp && patch -p1 < $S/0018.patch > /dev/null)
for v in A B; do
  cmake -S $W/$v/llama.cpp -B $W/$v/b -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_BLAS=OFF -DGGML_METAL=OFF -DGGML_CUDA=OFF > $R/build-$v.log 2>&1
  cmake --build $W/$v/b -j16 --target llama-bench test-bm1 >> $R/build-$v.log 2>&1
  echo "build $v $(( $(date +%s) - t0 )) s"
done
for v in A B; do $W/$v/b/bin/test-bm1 2>/dev/null | tail -1 > $R/test-bm1-$v.txt; cat $R/test-bm1-$v.txt; done
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
for r in 1 2 3; do for v in A B; do
  $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 4,8,16 -p 512 -n 0 -r 2 -o json > $R/pp-$v-r$r.json 2>/dev/null
  show "$v r$r" $R/pp-$v-r$r.json
done; done
echo "pp $(( $(date +%s) - t0 )) s"
