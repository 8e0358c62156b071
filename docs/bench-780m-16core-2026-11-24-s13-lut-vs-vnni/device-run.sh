# device call (session 13): with patches 0001-0018, does the LUT now beat the VNNI kernels this host runs by
# default? One build with the LUT rule edited to take every AVX2 build (lut-rule.txt); llama-bench --repack 0
# runs the sign-identity kernels on the file layout (AVX-512 VNNI here), --repack 1 the LUT on repacked strips.
set -e
S=$PWD/.device-stage; W=/tmp/w; R=$OUT
t0=$(date +%s)
mkdir -p $W && rm -rf $W/C && mkdir $W/C
tar xJf $S/llama-s12-0016.tar.xz -C $W/C
(cd $W/C/llama.cpp && patch -p1 < $S/0017.patch > /dev/null && patch -p1 < $S/0018.patch > /dev/null)
sed -i 's/#if (defined(__AVX2__) \&\& !defined(GGML_BM1_AVX512)) || \\/#if defined(__AVX2__) || \\/' $W/C/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h
grep -n -A2 'define GGML_BM1_AVX512 1' $W/C/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h > $R/lut-rule.txt
cmake -S $W/C/llama.cpp -B $W/C/b -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DGGML_BLAS=OFF -DGGML_METAL=OFF -DGGML_CUDA=OFF > $W/build-C.log 2>&1
cmake --build $W/C/b -j16 --target llama-bench test-bm1 >> $W/build-C.log 2>&1
echo "build $(( $(date +%s) - t0 )) s"
$W/C/b/bin/test-bm1 2>/dev/null | tail -1 | tee $R/test-bm1.txt
rm -rf $W/pkg && mkdir -p $W/pkg && cp -r bimamba_edge $W/pkg/ && cp -r convert $W/pkg/bimamba_edge/convert && cp -r ggml-patches $W/pkg/
export PYTHONPATH=$W/pkg:$W/C/llama.cpp/gguf-py BIMAMBA_EDGE_CACHE=$W/cache
(cd $W && python3 -c "
import json, os
from pathlib import Path
from bimamba_edge.build import patches_key
c = Path('$W/cache'); c.mkdir(exist_ok=True)
src = c / f'patched-{patches_key()}'
if not src.exists(): os.symlink('$W/C/llama.cpp', src)
(c / 'runtime.json').write_text(json.dumps(dict(key='device', source=str(src), build_dir='$W/C/b', flags=[])))
from bimamba_edge.testing import FixtureSpec, write_checkpoint, PAPER_SHAPES
write_checkpoint(Path('$W/780m'), FixtureSpec(PAPER_SHAPES['780m'], dtype='bfloat16', tokenizer=None))")
cp $S/tokenizer.model $W/780m/
(cd $W && python3 -m bimamba_edge.convert.cli $W/780m $W/bm1-q6k.gguf --head-type q6_K 2>&1 | tail -1)
echo "model $(( $(date +%s) - t0 )) s"
show() { python3 -c "
import json
print('$1', ' '.join(f\"r{x['repack']:d}{'pp' if x['n_prompt'] else 'tg'}t{x['n_threads']}={x['avg_ts']:.1f}\" for x in json.load(open('$2'))))"; }
$W/C/b/bin/llama-bench -m $W/bm1-q6k.gguf --repack 0,1 -t 1,2 -p 512 -n 128 -r 2 -o json > $R/bench-t12.json 2>/dev/null
show t12 $R/bench-t12.json
for r in 1 2 3; do
  $W/C/b/bin/llama-bench -m $W/bm1-q6k.gguf --repack 0,1 -t 4,8,16 -p 512 -n 128 -r 2 -o json > $R/bench-t4816-r$r.json 2>/dev/null
  show "t4816 r$r" $R/bench-t4816-r$r.json
done
echo "bench $(( $(date +%s) - t0 )) s"
