# device call 2 (session 13), on the machine run13.sh left warm: decode (tg128) at 4-16 threads and prefill (pp128) at 1-2, A and B
set -e
W=/tmp/w; R=$OUT; t0=$(date +%s)
show() { python3 -c "
import json
print('$1', ' '.join(f\"{'pp' if x['n_prompt'] else 'tg'}t{x['n_threads']}={x['avg_ts']:.1f}\" for x in json.load(open('$2'))))"; }
for r in 1 2; do for v in A B; do
  $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 4,8,16 -p 0 -n 128 -r 3 -o json > $R/tg-$v-r$r.json 2>/dev/null
  show "$v r$r" $R/tg-$v-r$r.json
  $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 1,2 -p 128 -n 0 -r 2 -o json > $R/pp12-$v-r$r.json 2>/dev/null
  show "$v r$r" $R/pp12-$v-r$r.json
done; done
echo "bench $(( $(date +%s) - t0 )) s"
# two more calls on the same warm machine: decode at 8 and 16 threads, three rounds; then at 16 threads, six rounds
# in alternating order
W=/tmp/w; for r in 1 2 3; do for v in A B; do echo -n "$v r$r "; $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 8,16 -p 0 -n 128 -r 3 -o csv 2>/dev/null | awk -F, 'NR>1{printf "%s ", $(NF-1)}' | tr -d '"'; echo; done; done
W=/tmp/w; for r in 1 2 3 4 5 6; do if [ $((r%2)) = 1 ]; then o="A B"; else o="B A"; fi; for v in $o; do echo -n "$v r$r "; $W/$v/b/bin/llama-bench -m $W/bm1-q6k.gguf -t 16 -p 0 -n 128 -r 5 -o csv 2>/dev/null | awk -F, 'NR>1{printf "%s ", $(NF-1)}' | tr -d '"'; echo; done; done
