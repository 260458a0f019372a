"""Experiment: instructions of ShuffleNet 0.5x g3 (96x96x3) lowered one group at a time, on Cortex-M4 CMSIS-NN.

    python benchmarks/group_split_cost.py split
"""
import sys, os, json, time
sys.path.insert(0,'.')
from keras_shufflenet.micro import convert, graph, group_split, firmware
from benchmarks import firmware_cost as fc
orig = graph.static_batch_model
def lowered(model, move_relus=True):
    static = orig(model, move_relus=False)
    low = group_split.split_groups(static)
    return low if low is not None else orig(model, move_relus)
if sys.argv[1] == "split":
    convert.static_batch_model = lowered
d = f"/tmp/gs_{sys.argv[1]}"
rep = fc.export_model(fc.SHUFFLENET, d)
print("export", {k: rep.get(k) for k in ("macs","params","flash_bytes","arena_bytes")})
for core, kern in [("cortex-m4","cmsis_nn")] + ([("cortex-m4","reference")] if len(sys.argv)>2 else []):
    t=time.time()
    r = firmware.build_and_measure(os.path.join(d,"tflm"), core, kern, firmware.firmware_dir(d, core, kern), count=True)
    print(core, kern, time.time()-t, {k: r.get(k) for k in ("output_matches_host","max_int8_diff","instructions_per_invoke","flash_bytes","model_bytes","ram_bytes","arena_used_bytes")})
    print(firmware.instructions_by_op_type(r["per_op"]))
