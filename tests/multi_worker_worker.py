"""One worker of `test_multi_worker.py` (run as a subprocess with its own TF_CONFIG).

    python tests/multi_worker_worker.py DATA_DIR MODEL_DIR OUT_PREFIX [coopnet|lee]

Runs `coopnet_tf.train`'s code path (gin parsing, then `train_and_evaluate` with
``distribution = 'multi_worker'``) for a few steps on the tiny synthetic world and writes
``OUT_PREFIX.npz`` (every network weight and the P² state, as this worker holds them) and
``OUT_PREFIX.json`` (the metrics `train_and_evaluate` returned on this worker).

``coopnet`` (default): gin/synthetic.gin, 2 steps after no burn-in (the CoopNet
apportionment and its P² update). ``lee``: gin/lee_synthetic.gin, 3 steps, one per phase
of Lee Table 1 (phase 3 trains depth and motion nets on one objective, with the boxes
padded per batch and split between the workers).
"""
import json
import sys

import numpy as np

SIZE = 64


COMMON = [
    "train_and_evaluate.distribution = 'multi_worker'",
    "train_and_evaluate.batch_size = 2",          # global: one snippet per worker
    "train_and_evaluate.eval_batch_size = 2",
    "train_and_evaluate.max_eval_batches = 1",
    "train_and_evaluate.evaluate_before_training = False",
    "train_and_evaluate.progress = False",
    "train_and_evaluate.run_eagerly = True",      # no tracing: seconds, not minutes
    "train_and_evaluate.image_every_steps = 0",
    "train_and_evaluate.checkpoint_every_steps = 0",
    "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
]
METHODS = {
    "coopnet": ("synthetic.gin", [
        "train_and_evaluate.num_epochs = 1",
        "train_and_evaluate.steps_per_epoch = 2",
        "train_and_evaluate.burn_in_epochs = 0",
        "train_and_evaluate.steps_per_loop = 2",
        "train_and_evaluate.summary_every_steps = 2",
        "build_flow_net.decoder_channels = (4, 8, 8, 16, 16)",
        "make_apportionment.sample_size = 256",
    ], ("depth_net", "pose_net", "flow_net")),
    "lee": ("lee_synthetic.gin", [
        "train_and_evaluate.num_epochs = 3",
        "train_and_evaluate.steps_per_epoch = 1",
        "train_and_evaluate.summary_every_steps = 1",
        "lee.phase1_epochs = 1",
        "lee.phase2_epochs = 1",
        "train_and_evaluate.burn_in_epochs = 1",
        "lee.lambda_mc = 0.0",
        "build_motion_net.num_layers = 10",
        "build_motion_net.decoder_channels = (4, 8, 8, 16, 16)",
    ], ("depth_net", "motion_net")),
}


def main(data_dir: str, model_dir: str, out_prefix: str, method: str = "coopnet") -> None:
    from coopnet_tf import train as train_main
    from coopnet_tf.training import loop

    trainers = []

    class CapturingTrainer(loop.Trainer):
        """The loop's Trainer, kept so that the weights can be read after the run."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    loop.Trainer = CapturingTrainer
    gin_file, bindings, networks = METHODS[method]
    train_main.parse_gin([gin_file], [f"train_and_evaluate.data_dir = '{data_dir}'",
                                      f"HEIGHT = {SIZE}", f"WIDTH = {SIZE}"]
                         + COMMON + bindings)
    result = loop.train_and_evaluate(model_dir=model_dir)
    trainer = trainers[0]
    arrays, trainable = {}, []
    for net in (getattr(trainer, name) for name in networks):
        for weight in net.weights:
            arrays[weight.path] = np.asarray(weight.numpy())
            if weight.trainable:
                trainable.append(weight.path)
    apportionment = getattr(trainer, "apportionment", None)
    items = apportionment.checkpoint_items() if apportionment is not None else {}
    for name, item in items.items():
        for i, var in enumerate(item.variables):
            arrays[f"p2/{name}/{i}"] = np.asarray(var.numpy())
    np.savez(out_prefix + ".npz", **arrays)
    with open(out_prefix + ".json", "w") as f:
        json.dump({"result": result, "trainable": trainable, "chief": trainer.is_chief,
                   "write_dir": trainer.write_dir}, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
