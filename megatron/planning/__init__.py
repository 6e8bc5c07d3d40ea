"""The layout planner: which T/P/D, ZeRO stage, micro batch, recomputation and offload fit a model on a
cluster and which of them is fastest, predicted from the model's shape alone (``tools/plan.py``).

``layout`` says what is chosen, ``memory`` what a layout needs on each GPU (the same code the trainer uses
for its start-up memory line), ``cost`` how long its step takes, ``search`` enumerates and ranks layouts.
"""
