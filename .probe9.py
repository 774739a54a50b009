import time, torch, statistics
torch.set_num_threads(1)
import runtime
from qcompiler import compile_recipe_text
from runtime.tiny import build_tiny_pipeline, run_tiny
import benchmarks.runtime_overhead as b
pipe = build_tiny_pipeline(b.FAMILY)
plan = compile_recipe_text(b.ALL_NATIVE, name="x.yaml", variant="tiny")
run_tiny(pipe)
h = runtime.load(pipe, plan)
h.unload()
bare=[];loaded=[]
for i in range(8):
    t=time.perf_counter(); run_tiny(pipe); bare.append(time.perf_counter()-t)
h = runtime.load(pipe, plan)
for i in range(8):
    t=time.perf_counter(); run_tiny(pipe); loaded.append(time.perf_counter()-t)
import cProfile, pstats
cProfile.run("run_tiny(pipe)", "/tmp/prof2")
h.unload()
print([round(x*1000) for x in bare]); print([round(x*1000) for x in loaded])
pstats.Stats("/tmp/prof2").sort_stats("tottime").print_stats(12)
