"""`make bench`: how fast we train, next to what a PyTorch user would write, and the limit.

One process measures every row side by side (`python -m bnrepro.bench`): two nets (the Fig. 1
MLP and the quick CIFAR CNN), each trained by a set of peers (peers.py: the tutorial loop, a
plain in-memory loop, torch.compile, a torch.func ensemble, members one after another, one
process per member) and by our trainer (ours.py), single and in populations; then the long
tier's conv nets (workloads.LONG_NETS: the full-width CNN, the VGG-style net, a ResNet-20),
each by the plain loops, its members one after another and ours with and without the speed
knobs model.memory_format and trainer.compile (__main__.long_rows). Every row runs
the same warm-up and timed step counts (timing.py); rounds of all rows repeat, so a slow spell
of the machine touches every row alike, and each row reports its median with min..max.
roofline.py puts each row against this machine's measured matrix-multiply and convolution
throughput, conv_execution.py times the population conv's two executions, and
evaluation_cost.py what evaluation adds to a Fig. 1 run. report.py writes
results/bench.json and results/bench.md and checks the issue's targets.
"""
